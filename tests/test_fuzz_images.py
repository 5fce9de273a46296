"""Property-based fuzzing (Hypothesis) of the one image loader and of the served model's input decoding.

Random bytes, truncated and bit-flipped images of every accepted format (FITS too: one band, a cube, RICE
tiles), other formats' headers and headers that declare huge or absurd dimensions: every input either decodes (within the pixel limit) or raises the
loader's ImageError; through the classifier, every row either scores or gets a per-row error, never an
exception, and the process's peak memory stays bounded.
"""

from __future__ import annotations

import base64
import io
import json
import re
import resource
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from galmorph.config import CLASSES, PreprocessConfig
from galmorph.data.images import REASONS, ImageError, InputLimits, load_rgb
from galmorph.models.inference import ERROR_PREFIX, UNCERTAIN, GalaxyClassifier
from galmorph.tracking.logged_model import nulls_for_failed_rows
from tests.test_fits import fits_bytes, fits_header_only

LIMIT = 2**20  # a small pixel limit keeps each example fast; the code path is the default's
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
RSS_GROWTH_BOUND_MB = 400


def _image(fmt: str, size: int = 24, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(len(fmt) + size)
    arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, fmt)
    return buf.getvalue()


VALID = {
    "JPEG": _image("JPEG"),
    "PNG": _image("PNG"),
    "PNG16": (lambda b: (Image.fromarray(np.arange(576, dtype=np.uint16).reshape(24, 24)).save(b, "PNG"), b)[1])(
        io.BytesIO()
    ).getvalue(),
    "TIFF": _image("TIFF"),
    "WEBP": _image("WEBP"),
    "BMP": _image("BMP"),
    "GIF": _image("GIF", mode="P"),
    "FITS": fits_bytes(np.arange(576, dtype=np.float32).reshape(24, 24)),
    "FITS_CUBE": fits_bytes(None, np.arange(3 * 576, dtype=np.int16).reshape(3, 24, 24), names=("SCI",)),
    "FITS_RICE": fits_bytes(None, np.arange(576, dtype=np.int32).reshape(24, 24), names=("SCI",), compress="RICE_1"),
}
FOREIGN_HEADERS = [
    b"%PDF-1.7\n",
    b"%!PS-Adobe-3.0 EPSF-3.0\n",
    b"\xc5\xd0\xd3\xc6",
    b"SIMPLE  =                    T",
    b"8BPS\x00\x01",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",
    b"\x00\x00\x01\x00\x01\x00",
    b"P6\n24 24\n255\n",
    b"PK\x03\x04",
    b"\x1f\x8b\x08",
    b"<!DOCTYPE html>",
    b"<?xml version='1.0'?><svg",
    b"\x00\x00\x00\x18ftypheic",
    *(v[:16] for v in VALID.values()),  # an accepted format's signature over garbage: corrupt
]


def _png_header(width: int, height: int, bit_depth: int = 8, colour: int = 0) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    idat = zlib.compress(bytes(64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A valid JPEG whose SOF0 marker now declares width x height."""
    data = bytearray(VALID["JPEG"])
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _gif_with_size(width: int, height: int) -> bytes:
    data = bytearray(VALID["GIF"])
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def _bmp_with_size(width: int, height: int) -> bytes:
    data = bytearray(VALID["BMP"])
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


dims = st.integers(min_value=0, max_value=2**31 - 1) | st.sampled_from([0, 1, 2, 1023, 1025, 65535, 65536, 10**6])
huge = st.one_of(
    st.builds(_png_header, dims, dims, st.sampled_from([1, 8, 16]), st.sampled_from([0, 2, 6])),
    st.builds(_jpeg_with_size, st.integers(0, 65535), st.integers(0, 65535)),
    st.builds(_gif_with_size, st.integers(0, 65535), st.integers(0, 65535)),
    st.builds(_bmp_with_size, st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1)),
    st.builds(fits_header_only, dims, dims, st.sampled_from([1, 3, 5]), st.sampled_from([8, 16, -32, -64])),
)


@st.composite
def truncated(draw) -> bytes:
    data = draw(st.sampled_from(list(VALID.values())))
    cut = draw(st.integers(0, len(data)))
    tail = draw(st.sampled_from([b"", b"\x00" * 64, b"\xff" * 8]))
    return data[:cut] + tail


@st.composite
def flipped(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(list(VALID.values()))))
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


hostile_bytes = st.one_of(
    st.binary(max_size=4096),
    st.builds(lambda h, t: h + t, st.sampled_from(FOREIGN_HEADERS), st.binary(max_size=512)),
    truncated(),
    flipped(),
    huge,
    st.sampled_from(list(VALID.values())),
)


@pytest.fixture(scope="module")
def peak_rss():
    """The process's peak RSS must not grow by more than RSS_GROWTH_BOUND_MB over the module's examples."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < RSS_GROWTH_BOUND_MB, f"peak RSS grew by {grown_mb:.0f} MB"


@FUZZ
@given(data=hostile_bytes)
def test_the_loader_decodes_or_says_why(peak_rss, data):
    try:
        image = load_rgb(data, max_pixels=LIMIT)
    except ImageError as exc:
        assert exc.reason in REASONS and str(exc)
        assert not re.search(r"\b0x[0-9a-f]{6,}", str(exc))  # never an object address (12390x100000 pixels is a size)
        return
    assert image.mode == "RGB" and image.width * image.height <= LIMIT
    assert max(image.size) <= 16 * min(image.size)


@FUZZ
@given(width=st.integers(5001, 2**31 - 1), height=st.integers(5001, 2**31 - 1))
def test_huge_declared_dimensions_are_refused_at_the_default_limit(peak_rss, width, height):
    with pytest.raises(ImageError) as info:
        load_rgb(_png_header(width, height, 16))
    assert info.value.reason in ("too_large", "corrupt")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    (root / "g.png").write_bytes(VALID["PNG"])
    (root.parent / "outside.png").write_bytes(VALID["PNG"])
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, len(CLASSES))).eval()
    limits = InputLimits(image_root=str(root), max_pixels=LIMIT, max_rows=8, max_request_bytes=2**16)
    return GalaxyClassifier(net, PreprocessConfig(16, 12, 8), device="cpu", batch_size=3, limits=limits)


text_items = st.one_of(
    st.text(max_size=200),
    st.builds(lambda b: base64.b64encode(b).decode(), hostile_bytes),
    st.builds(lambda b: "data:image/png;base64," + base64.b64encode(b).decode(), hostile_bytes),
    st.builds(lambda t: "file:" + t, st.text(max_size=80)),
    st.sampled_from(["file:g.png", "file:../outside.png", "file:/etc/passwd", "/etc/passwd", "file:", "data:,x"]),
)
items = st.one_of(
    hostile_bytes,
    text_items,
    st.none(),
    st.floats(allow_nan=True),
    st.integers(),
    st.lists(st.integers(), max_size=3),
)


@FUZZ
@given(rows=st.lists(items, min_size=1, max_size=10))
def test_every_row_scores_or_gets_its_own_error(peak_rss, classifier, rows):
    """What `mlflow models serve` hands the pyfunc: never an exception (the scoring server would answer with
    a traceback), one answer per row, null for a failed row's probabilities."""
    out = classifier.predict(rows)
    assert len(out) == len(rows) and list(out.columns) == [*(f"p_{c}" for c in CLASSES), "label"]
    for _, row in out.iterrows():
        probs = row[[f"p_{c}" for c in CLASSES]].to_numpy(dtype=float)
        if row["label"].startswith(ERROR_PREFIX):
            assert np.isnan(probs).all() and len(row["label"]) > len(ERROR_PREFIX)
            assert "Errno" not in row["label"] and "/etc" not in row["label"]
        else:
            assert row["label"] in (*CLASSES, UNCERTAIN) and abs(probs.sum() - 1) < 1e-6
    served = nulls_for_failed_rows(out.copy()).to_dict(orient="records")
    json.dumps(served, allow_nan=False)  # what the REST answer carries: valid JSON


def test_the_pyfunc_input_shapes_are_all_answered(classifier):
    for model_input in (pd.DataFrame({"image": [VALID["PNG"], "nope"]}), {"image": VALID["JPEG"]}, [None]):
        out = classifier.predict(model_input)
        assert len(out) >= 1
