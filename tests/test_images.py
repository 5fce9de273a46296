"""Image checks behind `select`: every kind of bad file gets its reason, odd modes are kept and converted."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from galmorph.data import verify
from galmorph.data.images import load_rgb
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


def test_load_rgb_refuses_a_truncated_image_instead_of_padding_it():
    """PIL pads a truncated image with grey once anything sets ImageFile.LOAD_TRUNCATED_IMAGES; the loader of
    select, training and serving must raise instead."""
    jpeg = _jpeg_bytes()
    with pytest.raises(OSError, match="truncated"):
        load_rgb(jpeg[: len(jpeg) // 2])
    assert load_rgb(jpeg).size == (48, 48)


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
    assert checks.loc["truncated.jpg", "detail"].startswith("image file is truncated")
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

    def refuse(im):
        raise ValueError(f"conversion from {im.mode} to RGB not supported")

    monkeypatch.setattr(verify, "to_rgb", refuse)
    reason, detail, width, _, mode = check_image_file(path)
    assert reason == "unsupported_mode" and mode == "RGB" and width == 48 and "not supported" in detail


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
