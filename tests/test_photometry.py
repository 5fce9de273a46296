"""Sky-background normalisation (data/photometry.py) and its preprocess keys."""

import dataclasses
import shutil

import numpy as np
import pytest
from PIL import Image

from galmorph.cli import resolve_params
from galmorph.config import PreprocessConfig, stored_preprocess
from galmorph.data.photometry import SkyNormalise, normalise_sky, sky_steps
from galmorph.errors import UserError

from .conftest import REPO


def galaxy(size: int = 96, sky=(0.0, 0.0, 0.0), gain=(1.0, 1.0, 1.0), seed: int = 0) -> np.ndarray:
    """A smooth central galaxy (flux 0..150 levels) on a sky of `sky` levels, each channel x `gain`, as uint8."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    flux = 150.0 * np.exp(-np.hypot(xx, yy) / (size / 12))
    noise = np.random.default_rng(seed).normal(0, 1.0, (size, size, 3))
    img = (flux[..., None] + noise) * np.asarray(gain) + np.asarray(sky)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def test_blue_and_grey_skies_come_out_alike():
    blue = galaxy(sky=(15, 30, 70), gain=(0.7, 0.9, 1.3), seed=1)  # bluish sky, bluish colour balance
    grey = galaxy(sky=(45, 45, 45), gain=(1.1, 1.1, 1.1), seed=2)  # a grey, brighter sky
    before = np.abs(blue.astype(float) - grey.astype(float)).mean()
    a, b = normalise_sky(blue).astype(float), normalise_sky(grey).astype(float)
    after = np.abs(a - b).mean()
    assert before > 20 and after < before / 8, (before, after)  # what is left: the two images' own noise
    for out in (a, b):
        ring = np.concatenate([out[:9].reshape(-1, 3), out[-9:].reshape(-1, 3)])
        assert np.all(np.median(ring, axis=0) <= 1)  # the sky lands on black in every channel
        assert np.all(np.abs(np.percentile(out.reshape(-1, 3), 99.5, axis=0) - 0.9 * 255) <= 3)


@pytest.mark.parametrize("value", [0, 77, 255])
def test_a_constant_image_maps_to_black_without_nan(value):
    out = normalise_sky(np.full((40, 50, 3), value, np.uint8))
    assert out.dtype == np.uint8 and out.shape == (40, 50, 3) and not out.any()


def test_pil_and_numpy_give_the_same_pixels_in_their_own_types():
    arr = galaxy(size=430, sky=(20, 25, 40))  # large: statistics on every 2nd pixel
    pil = normalise_sky(Image.fromarray(arr))
    out = normalise_sky(arr)
    assert isinstance(pil, Image.Image) and pil.mode == "RGB" and pil.size == (430, 430)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(np.asarray(pil), out)
    assert out.max() <= 255 and out.min() >= 0 and out.max() > 200
    grey = normalise_sky(Image.fromarray(arr[..., 0]))  # mode L: normalised as RGB
    assert grey.mode == "RGB"
    with pytest.raises(ValueError, match="uint8"):
        normalise_sky(arr.astype(np.float32))


def test_the_percentile_and_level_are_the_parameters():
    arr = galaxy(sky=(30, 30, 30))
    low = normalise_sky(arr, percentile=99.5, level=0.5)
    assert abs(np.percentile(low[..., 1], 99.5) - 0.5 * 255) <= 2
    assert normalise_sky(arr, percentile=90.0).mean() > normalise_sky(arr, percentile=99.9).mean()


def test_preprocess_sky_keys_default_to_none_and_are_checked():
    base = {"resize": 424, "crop": 256, "image_size": 64}
    old = stored_preprocess(dict(base))  # a model file from before the sky keys
    assert old.sky == "none" and sky_steps(old) == []
    cfg = dataclasses.replace(old, sky="border", sky_percentile=99.0, sky_level=0.8)
    (step,) = sky_steps(cfg)
    assert isinstance(step, SkyNormalise)
    np.testing.assert_array_equal(np.asarray(step(Image.fromarray(galaxy()))), normalise_sky(galaxy(), 0.1, 99.0, 0.8))
    for key, bad in [("sky_border", 0.5), ("sky_percentile", 40), ("sky_level", 0), ("sky", "median")]:
        with pytest.raises(UserError, match=f"preprocess.{key}"):
            stored_preprocess({**base, key: bad})
    assert stored_preprocess(dataclasses.asdict(cfg)) == cfg


def test_params_yaml_sets_sky_and_dvc_writes_back_one_line(tmp_path):
    from dvc.utils.hydra import apply_overrides

    params = resolve_params(str(REPO / "params.yaml"), ["preprocess.sky=border"])
    assert isinstance(params.preprocess, PreprocessConfig) and params.preprocess.sky == "border"
    assert resolve_params(str(REPO / "params.yaml"), []).preprocess.sky == "none"  # default: off
    for override in ("preprocess.sky=border", "augment.survey.p=0.8"):
        copy = tmp_path / "params.yaml"
        shutil.copy(REPO / "params.yaml", copy)
        apply_overrides(str(copy), [override])
        before, after = (REPO / "params.yaml").read_text().splitlines(), copy.read_text().splitlines()
        changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
        key, value = override.split("=")
        assert len(changed) == 1 and changed[0][1].strip().startswith(f"{key.rsplit('.', 1)[1]}: {value}"), changed
