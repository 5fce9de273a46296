"""The one image loader and select's checks: every kind of bad file gets its reason, the same in select and
everywhere an image is loaded; odd modes are kept and converted; bombs and foreign formats never decode."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from galmorph.data import verify
from galmorph.data.images import ImageError, decode_image, load_rgb
from galmorph.data.verify import (
    DROP_REASONS,
    absolute_paths,
    check_image_file,
    check_images,
    decode_images,
    find_files,
)


def _noise(size: int = 48, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (size, size, channels) if channels > 1 else (size, size)
    return rng.normal(128, 40, shape).clip(0, 255).astype(np.uint8)


def _jpeg_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_noise(seed=seed)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _tiff_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "TIFF")
    return buf.getvalue()


def png_bomb(width: int, height: int, bit_depth: int = 16) -> bytes:
    """A valid greyscale PNG of zeros: a few hundred KB that declare width x height pixels (the issue's
    157 KB 9000x9000 16-bit PNG costs ~1.9 GB to decode)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = bytes(1 + width * bit_depth // 8)  # filter byte 0, then the row's zero samples
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def _fits_bytes(arr: np.ndarray) -> bytes:
    from astropy.io import fits

    buf = io.BytesIO()
    fits.PrimaryHDU(arr).writeto(buf)
    return buf.getvalue()


FITS = _fits_bytes(_noise(channels=1).astype(np.float32))
"""A real one-band FITS image (FITS is read by data.fits: tests/test_fits.py)."""
FITS_GARBAGE = b"SIMPLE  =                    T / conforms to FITS standard" + bytes(range(256)) * 12


def write_image_zoo(root: Path) -> dict[str, tuple[str | None, str | None]]:
    """Every kind of file select meets, under `root`: {relative path: (expected reason, expected mode)}."""
    odd = root / "dir with space" / "ünïcode ✓"
    odd.mkdir(parents=True)
    jpeg = _jpeg_bytes()
    png = _png_bytes(Image.fromarray(_noise()))
    files: dict[str, tuple[bytes | None, str | None, str | None]] = {
        "good.jpg": (jpeg, None, "RGB"),
        "dir with space/ünïcode ✓/galaxy ü 1.jpg": (_jpeg_bytes(1), None, "RGB"),
        "rgba.png": (_png_bytes(Image.fromarray(_noise(channels=4))), None, "RGBA"),
        "grey.png": (_png_bytes(Image.fromarray(_noise(channels=1))), None, "L"),
        "sixteen.png": (_png_bytes(Image.fromarray(_noise(channels=1).astype(np.uint16) * 257)), None, "I;16"),
        "palette.png": (_png_bytes(Image.fromarray(_noise()).convert("P")), None, "P"),
        "empty.jpg": (b"", "zero_bytes", None),
        "text.jpg": (b"<!DOCTYPE html><title>503 Service Unavailable</title>\n", "not_an_image", None),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated", None),
        "zero_tail.jpg": (jpeg[: len(jpeg) // 2] + bytes(len(jpeg) - len(jpeg) // 2), "truncated", None),
        "corrupt.jpg": (jpeg[: len(jpeg) // 2] + b"\xff" * 16 + jpeg[len(jpeg) // 2 + 16 :], "corrupt", None),
        "bad_header.jpg": (b"\xff\xd8\xff" + bytes(range(256)) * 4, "corrupt", None),
        "corrupt.png": (png[: len(png) // 2] + bytes(40) + png[len(png) // 2 + 40 :], "corrupt", None),
        "missing.jpg": (None, "missing", None),
        "paper.jpg": (PDF, "not_an_image", None),
        "figure.eps": (EPS, "unsupported_format", None),
        "sky.fits": (FITS, None, "1 band, BITPIX -32"),
        "cut.fits": (FITS[: len(FITS) - 2880], "truncated", None),
        "garbage.fits": (FITS_GARBAGE, "corrupt", None),
        "float.tif": (_tiff_bytes(_noise(channels=1).astype(np.float32) / 7), None, "F"),
        "nan.tif": (
            _tiff_bytes(np.where(_noise(channels=1) > 200, np.nan, 1.0).astype(np.float32)),
            "non_finite",
            None,
        ),
        "inf.tif": (
            _tiff_bytes(np.where(_noise(channels=1) > 200, np.inf, 1.0).astype(np.float32)),
            "non_finite",
            None,
        ),
    }
    cmyk = io.BytesIO()
    Image.fromarray(_noise()).convert("CMYK").save(cmyk, "JPEG")
    files["cmyk.jpg"] = (cmyk.getvalue(), None, "CMYK")
    expected = {}
    for rel, (data, reason, mode) in files.items():
        if data is not None:
            (root / rel).write_bytes(data)
        expected[rel] = (reason, mode)
    (root / "folder.jpg").mkdir()
    expected["folder.jpg"] = ("unreadable", None)
    os.symlink(root / "nowhere.jpg", root / "dangling.jpg")
    expected["dangling.jpg"] = ("missing", None)
    os.symlink(root / "good.jpg", root / "link.jpg")
    expected["link.jpg"] = (None, "RGB")
    expected["no_such_folder/x.jpg"] = ("missing", None)
    return expected


@pytest.fixture
def zoo(tmp_path) -> tuple[Path, dict[str, tuple[str | None, str | None]]]:
    return tmp_path, write_image_zoo(tmp_path)


def _reason(src) -> str | None:
    try:
        load_rgb(src)
    except ImageError as exc:
        return exc.reason
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unreadable"
    return None


def test_load_rgb_refuses_a_truncated_image_instead_of_padding_it():
    """PIL pads a truncated image with grey once anything sets ImageFile.LOAD_TRUNCATED_IMAGES; the loader of
    select, training and serving must raise instead."""
    jpeg = _jpeg_bytes()
    with pytest.raises(ImageError, match="stops early") as info:
        load_rgb(jpeg[: len(jpeg) // 2])
    assert info.value.reason == "truncated"
    assert load_rgb(jpeg).size == (48, 48)


def test_a_zero_filled_jpeg_tail_is_an_error_wherever_it_is_loaded(tmp_path):
    """select already called it truncated; predict, REST and the web page scored it (half grey) regardless."""
    jpeg = _jpeg_bytes()
    zero_tail = jpeg[: len(jpeg) // 2] + bytes(len(jpeg) - len(jpeg) // 2)
    (tmp_path / "z.jpg").write_bytes(zero_tail)
    for src in (zero_tail, tmp_path / "z.jpg", str(tmp_path / "z.jpg")):
        with pytest.raises(ImageError, match="stops early") as info:
            load_rgb(src)
        assert info.value.reason == "truncated"
    with pytest.raises(ImageError, match="stops early"):
        decode_image(zero_tail)  # what REST and the web page decode
    assert check_image_file(tmp_path / "z.jpg")[0] == "truncated"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_float_tiff_with_nan_or_inf_is_an_error_not_a_black_image(tmp_path, bad):
    arr = np.linspace(0, 1, 48 * 48, dtype=np.float32).reshape(48, 48)
    arr[5, 7] = bad
    (tmp_path / "f.tif").write_bytes(_tiff_bytes(arr))
    with pytest.raises(ImageError, match="1 of 2304 pixels are NaN or infinite") as info:
        load_rgb(tmp_path / "f.tif")
    assert info.value.reason == "non_finite"
    assert check_image_file(tmp_path / "f.tif")[0] == "non_finite"


def test_float_and_16_bit_images_are_rescaled_to_the_full_8_bit_range():
    ramp = np.linspace(-3.0, 5.0, 48 * 48, dtype=np.float32).reshape(48, 48)
    rgb = np.asarray(load_rgb(_tiff_bytes(ramp)))
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 48, 3)
    assert rgb.min() == 0 and rgb.max() == 255 and (rgb[..., 0] == rgb[..., 2]).all()
    sixteen = np.asarray(load_rgb(_png_bytes(Image.fromarray((ramp * 1000 + 3000).astype(np.uint16)))))
    assert sixteen.min() == 0 and sixteen.max() == 255
    flat = np.asarray(load_rgb(_tiff_bytes(np.full((8, 8), 7.0, dtype=np.float32))))
    assert (flat == 0).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_the_black_sky(mode):
    im = Image.fromarray(_noise(channels=4), "RGBA").convert(mode)
    rgba = im.convert("RGBA")
    expected = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    assert np.array_equal(np.asarray(load_rgb(buf.getvalue())), np.asarray(expected))


def test_the_pixel_limit_refuses_a_bomb_from_its_header(monkeypatch):
    """A few hundred KB declaring 6000x6000 16-bit pixels (72 MB raw, more once converted): refused from the
    header, before PIL decodes a single row."""
    bomb = png_bomb(6000, 6000)
    assert len(bomb) < 300_000

    def no_decoding(self):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError, match=r"6000x6000 pixels \(36.0 Mpx\), over the 25 Mpx limit") as info:
        load_rgb(bomb)
    assert info.value.reason == "too_large"
    monkeypatch.undo()
    with pytest.raises(ImageError, match="over the 0.002 Mpx limit"):
        load_rgb(_jpeg_bytes(), max_pixels=2000)  # a parameter: 48x48 = 2304 pixels
    assert load_rgb(_jpeg_bytes(), max_pixels=2304).size == (48, 48)


def test_a_long_strip_is_refused_before_the_framing_blows_it_up():
    """1x100000 is 100 kpx, but the eval framing scales its short side to preprocess.resize: 42 Gpx."""
    for width, height in ((100_000, 1), (1, 100_000), (170, 10)):
        with pytest.raises(ImageError, match="times as long as it is wide") as info:
            load_rgb(png_bomb(width, height, 8))
        assert info.value.reason == "elongated"
    assert load_rgb(png_bomb(160, 10, 8)).size == (160, 10)  # 16:1 is still accepted


def test_the_limit_never_exceeds_pils_bomb_limit(monkeypatch):
    """What PIL would only warn about (over Image.MAX_IMAGE_PIXELS) is an error, whatever max_pixels says."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError) as info:
        load_rgb(_jpeg_bytes(), max_pixels=10**9)
    assert info.value.reason == "too_large"


def test_only_accepted_formats_are_opened(monkeypatch):
    """EPS would make PIL start Ghostscript; ICO, PPM and the rest are parsed by plugins nobody needs here."""
    from PIL import EpsImagePlugin

    def no_ghostscript(*args, **kwargs):
        raise AssertionError("Ghostscript was started")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    accepted = "accepted: JPEG, PNG, TIFF, WEBP, BMP, GIF or FITS"
    ico, ppm = io.BytesIO(), io.BytesIO()
    Image.fromarray(_noise()).save(ico, "ICO")
    Image.fromarray(_noise()).save(ppm, "PPM")
    cases = {
        EPS: ("unsupported_format", "a PostScript/EPS file, not an accepted image format; " + accepted),
        PDF: ("not_an_image", "a PDF document, not an image; " + accepted),
        FITS_GARBAGE: ("corrupt", "starts like a FITS file but its header is not FITS header text"),
        ico.getvalue(): ("unsupported_format", "an ICO icon"),
        ppm.getvalue(): ("not_an_image", "not an image in an accepted format (starts with b'P6"),
        b"<!DOCTYPE html><title>404</title>": ("not_an_image", "an HTML page"),
        b"just some notes\n": ("not_an_image", "plain text, not an image; " + accepted),
    }
    for data, (reason, message) in cases.items():
        with pytest.raises(ImageError) as info:
            load_rgb(data)
        assert info.value.reason == reason and str(info.value).startswith(message), str(info.value)
        assert "0x" not in str(info.value) and "BytesIO" not in str(info.value)
    for fmt in ("TIFF", "WEBP", "BMP", "GIF", "PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(_noise()).save(buf, fmt)
        assert load_rgb(buf.getvalue()).size == (48, 48), fmt


def test_select_and_the_loader_agree_on_every_file(zoo):
    """One loader: a file select keeps is one every surface loads, and a file it drops fails there with the
    same reason."""
    root, expected = zoo
    for rel, (reason, _mode) in expected.items():
        path = root / rel
        if reason == "missing" or path.is_dir():
            continue
        assert _reason(path) == reason, rel
        assert check_image_file(path)[0] == reason, rel


def test_every_kind_of_file_gets_its_reason(zoo):
    root, expected = zoo
    checks = check_images(list(expected), "decode", workers=1, root=root, progress=False)
    got = {rel: (r, m) for rel, r, m in zip(expected, checks["reason"], checks["mode"], strict=True)}
    got = {rel: (None if pd.isna(r) else r, None if pd.isna(m) else m) for rel, (r, m) in got.items()}
    assert got == expected
    assert set(checks["reason"].dropna()) <= set(DROP_REASONS)
    kept = checks["reason"].isna()
    assert (checks.loc[kept, ["width", "height"]] == 48).all().all()
    assert checks.loc[~kept, ["width", "height", "mode"]].isna().all().all()
    assert checks.loc[~kept, "detail"].notna().all()
    # kept really means usable: load_rgb gives 8-bit RGB for every one of them
    for rel in np.array(list(expected))[kept.to_numpy()]:
        assert load_rgb(root / rel).mode == "RGB"


def test_details_are_deterministic_and_readable(zoo):
    root, expected = zoo
    checks = check_images(list(expected), "decode", root=root, progress=False).set_index(pd.Index(list(expected)))
    assert checks.loc["truncated.jpg", "detail"].startswith("the image data stops early (image file is truncated")
    assert checks.loc["paper.jpg", "detail"].startswith("a PDF document, not an image; accepted: JPEG, PNG")
    assert "0x" not in checks.loc["text.jpg", "detail"]  # no object addresses: dropped.csv must be diffable
    assert checks.loc["bad_header.jpg", "detail"] == "starts like a JPEG but its header cannot be read"
    assert checks.loc["no_such_folder/x.jpg", "detail"] == f"folder {root / 'no_such_folder'} does not exist"


def test_exists_mode_checks_presence_and_size_without_decoding(zoo):
    root, expected = zoo
    checks = check_images(list(expected), "exists", root=root, progress=False)
    reasons = dict(zip(expected, checks["reason"], strict=True))
    assert reasons["empty.jpg"] == "zero_bytes" and reasons["missing.jpg"] == "missing"
    assert reasons["folder.jpg"] == "unreadable" and reasons["dangling.jpg"] == "missing"
    assert pd.isna(reasons["truncated.jpg"]) and pd.isna(reasons["text.jpg"])  # not decoded in this mode
    assert checks["mode"].isna().all() and checks["width"].isna().all()


def test_parallel_decoding_matches_single_process(zoo):
    root, expected = zoo
    paths = [str(root / rel) for rel in expected if expected[rel][0] != "missing"] * 3
    single = decode_images(paths, workers=1, progress=False)
    parallel = decode_images(paths, workers=2, chunk_size=4, progress=False)
    assert parallel == single
    frame = check_images(list(expected) * 3, "decode", workers=2, root=root, progress=False, chunk_size=5)
    baseline = check_images(list(expected) * 3, "decode", workers=1, root=root, progress=False)
    pd.testing.assert_frame_equal(frame, baseline)


def test_find_files_lists_each_folder_once(tmp_path, monkeypatch):
    for i in range(20):
        (tmp_path / f"{i}.jpg").write_bytes(b"x")
    calls = []
    real_scandir = os.scandir

    def counting_scandir(path):
        calls.append(path)
        return real_scandir(path)

    monkeypatch.setattr(verify.os, "scandir", counting_scandir)
    reasons, _ = find_files([str(tmp_path / f"{i}.jpg") for i in range(25)] + [None])
    assert calls == [str(tmp_path)]
    assert list(reasons[:20]) == [None] * 20 and set(reasons[20:]) == {"missing"}


def test_too_large_and_unsupported_mode(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(_png_bytes(Image.fromarray(_noise())))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 48*48 > 2*100: a decompression bomb now
    assert check_image_file(path)[0] == "too_large"
    monkeypatch.undo()
    (tmp_path / "bomb.png").write_bytes(png_bomb(6000, 6000))
    reason, detail, *_ = check_image_file(tmp_path / "bomb.png")
    assert reason == "too_large" and "over the 25 Mpx limit" in detail

    real_convert = Image.Image.convert

    def refuse(im, mode=None, *args, **kwargs):
        if mode == "RGB":
            raise ValueError(f"conversion from {im.mode} to RGB not supported")
        return real_convert(im, mode, *args, **kwargs)

    (tmp_path / "grey.png").write_bytes(_png_bytes(Image.fromarray(_noise(channels=1))))
    monkeypatch.setattr(Image.Image, "convert", refuse)
    reason, detail, *_ = check_image_file(tmp_path / "grey.png")
    assert reason == "unsupported_mode" and "pixel mode L cannot be converted to RGB" in detail


def test_bad_arguments_are_user_errors():
    from galmorph.errors import UserError

    with pytest.raises(UserError, match="select.verify"):
        check_images(["a.jpg"], "checksum")
    with pytest.raises(UserError, match="select.workers"):
        check_images(["a.jpg"], "decode", workers=-1)


def test_absolute_paths_join_and_normalise(tmp_path):
    got = absolute_paths(["a/b.jpg", "a//b.jpg", "./a/../a/b.jpg", "/abs/c.jpg", None, "", "ü x/d.jpg"], tmp_path)
    inside = str(tmp_path / "a" / "b.jpg")
    assert got == [inside, inside, inside, "/abs/c.jpg", None, None, str(tmp_path / "ü x" / "d.jpg")]


@pytest.mark.realdata
def test_real_sdss_cutouts_are_all_usable(real_galaxyzoo):
    labels = pd.read_csv(real_galaxyzoo / "labels.csv", usecols=["filename"], nrows=40)
    checks = check_images(labels["filename"].tolist(), "decode", root=real_galaxyzoo, progress=False)
    assert checks["reason"].isna().all(), checks["detail"].dropna().head().tolist()
    assert set(checks["mode"]) == {"RGB"} and (checks["width"] > 100).all()
