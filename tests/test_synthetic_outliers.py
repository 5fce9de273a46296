"""benchmarks/synthetic_outliers.py: made-up outliers (blends, disturbed galaxies) are made of the galaxies they
name, only add what they claim to add, and never replace or half-write a folder's images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from galmorph.errors import UserError

from .conftest import REPO, benchmark_module


def test_blend_pair_adds_a_second_galaxy_off_centre_and_no_edge(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    synthetic = benchmark_module("synthetic_outliers")
    yy, xx = np.mgrid[:64, :64]
    blob = (200 * np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / 20.0))[..., None].repeat(3, 2).astype(np.uint8) + 5
    frame = np.full((64, 64, 3), 255, np.uint8)  # a galaxy that fills its frame to the edge
    out = synthetic.blend_pair(blob, blob, np.random.default_rng(1))
    assert out.shape == blob.shape and out.dtype == np.uint8
    assert (out.astype(int) >= blob.astype(int) - 1).all()  # screen blending only adds light
    added = out.astype(int) - blob
    cy, cx = np.unravel_index(added[..., 0].argmax(), added.shape[:2])
    assert 0.06 * 64 <= np.hypot(cy - 32, cx - 32) <= 0.2 * 64  # the second galaxy sits 8-18% of the frame away
    edged = synthetic.blend_pair(np.zeros((64, 64, 3), np.uint8), frame, np.random.default_rng(1))
    assert edged[0].max() == edged[-1].max() == edged[:, 0].max() == edged[:, -1].max() == 0  # tapered to nothing


def test_write_synthetic_writes_jpegs_of_one_source_and_refuses_to_replace(monkeypatch, tmp_path):
    from PIL import Image

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    synthetic = benchmark_module("synthetic_outliers")
    paths = grey_images(tmp_path, [0, 40, 80])
    datasets = ["gz1_sdss", "gz1_sdss", "gz2_sdss_cutout128"]  # gz2 has one image: never drawn
    images = pd.DataFrame({"image_path": paths, "dataset": datasets})
    out = tmp_path / "blends"
    table = synthetic.write_synthetic(out, images, 4, seed=0)
    assert len(table) == 4 and set(table["group"]) == {"synthetic blend of two train galaxies"}
    assert sorted(p.name for p in out.iterdir()) == [f"blend_{k:05d}.jpg" for k in range(4)]  # no temporaries
    for p in table["image_path"]:
        with Image.open(p) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    with pytest.raises(UserError, match="already holds"):
        synthetic.write_synthetic(out, images, 1, seed=0)
    assert len(synthetic.write_synthetic(out, images, 2, seed=1, force=True)) == 2
    (tmp_path / "g1.png").write_bytes(b"not a png")  # a training image that no longer decodes: named, not traced
    with pytest.raises(UserError, match=r"^g1\.png: not a decodable image"):
        synthetic.write_synthetic(tmp_path / "bad", images.iloc[:2], 1, seed=0)
    with pytest.raises(UserError, match="no dataset has 2 galaxies to make a blend of"):
        synthetic.write_synthetic(tmp_path / "none", images.iloc[[0, 2]], 1, seed=0)
    assert not (tmp_path / "none").exists()  # refused before anything is written


def test_disturb_makes_a_symmetric_galaxy_lopsided_and_leaves_the_far_sky_alone(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    synthetic = benchmark_module("synthetic_outliers")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128] + 0.5
    sky = rng.normal(20, 3, (128, 128, 3))  # a noisy sky: what the warp must not smear
    blob = 200 * np.exp(-((yy - 64) ** 2 + (xx - 64) ** 2) / (2 * 6.0**2))
    galaxy = np.clip(sky + blob[..., None], 0, 255)
    a = galaxy.astype(np.uint8)

    def asymmetry(img: np.ndarray) -> float:
        """CAS asymmetry: |I - I rotated by 180 degrees| over the light above the sky, in the central 24 px."""
        light = img[52:76, 52:76].astype(float) - 20
        return float(np.abs(light - light[::-1, ::-1]).sum() / np.abs(light).sum())

    out = synthetic.disturb(a, np.random.default_rng(3))
    assert out.shape == a.shape and out.dtype == np.uint8
    assert asymmetry(a) < 0.1 and asymmetry(out) > 0.3  # 0.05 and 0.46-0.64 over seeds 0-5
    np.testing.assert_array_equal(out, synthetic.disturb(a, np.random.default_rng(3)))  # one seed, one image
    # the sky's noise is left where it was: the corners, far from the galaxy, move by rounding only where no tail
    # reaches them (the tail only adds light, so the darker of the two is the original)
    corner = (slice(0, 12), slice(0, 12))
    assert np.median(np.abs(out[corner].astype(int) - a[corner].astype(int))) <= 1
    # no central source (a blank frame): the frame's own fallback radius, and no error
    blank = np.full((64, 64, 3), 10, np.uint8)
    assert synthetic.disturb(blank, np.random.default_rng(0)).shape == blank.shape


def test_write_synthetic_disturbed_uses_one_galaxy_and_its_own_stream(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    synthetic = benchmark_module("synthetic_outliers")
    paths = grey_images(tmp_path, [0, 80])
    images = pd.DataFrame({"image_path": paths, "dataset": ["gz1_sdss", "gz2_sdss_cutout128"]})  # one per dataset
    out = tmp_path / "synth"
    table = synthetic.write_synthetic(out, images, 3, seed=0, kind="disturbed")
    assert set(table["group"]) == {"synthetic disturbed train galaxy"} and len(table) == 3
    assert sorted(p.name for p in out.iterdir()) == [f"disturbed_{k:05d}.jpg" for k in range(3)]
    # blends beside them in the same folder: each kind refuses to replace only its own files
    blends = pd.DataFrame({"image_path": paths * 2, "dataset": ["a"] * 4})
    assert len(synthetic.write_synthetic(out, blends, 1, seed=0)) == 1
    with pytest.raises(UserError, match="already holds disturbed_"):
        synthetic.write_synthetic(out, images, 1, seed=0, kind="disturbed")
    # the preview: each made image beside the galaxy it was made from, framed as the model sees them
    assert set(table["made_from"]) <= set(paths)
    png = tmp_path / "preview.png"
    assert synthetic.preview_synthetic(table, png, per_kind=2) == 4 and png.read_bytes()[:4] == b"\x89PNG"


def grey_images(folder, levels: list[int]) -> list[str]:
    """One flat 32-px RGB PNG per grey level, so a test can tell which images a blend was made of."""
    from PIL import Image

    paths = []
    for k, level in enumerate(levels):
        path = folder / f"g{k}.png"
        Image.fromarray(np.full((32, 32, 3), level, np.uint8)).save(path)
        paths.append(str(path))
    return paths
