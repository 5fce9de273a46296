"""Adaptive framing: the central source's Petrosian radius on synthetic galaxies of known size, the fallback and
the clamps, the presets built on it, and model files written before it existed (they keep the fixed crop)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.optimize import brentq
from torchvision.transforms import v2 as T

from galmorph.config import AugmentConfig, PreprocessConfig, replace, stored_preprocess
from galmorph.data import framing
from galmorph.data.transforms import MEAN, STD, EvalPreset, TrainPreset
from galmorph.errors import UserError
from galmorph.evaluation.galleries import display_image
from galmorph.models.resnet import build_model, load_model, save_model
from tests.training_utils import one_thread

_one_thread = pytest.fixture(autouse=True)(one_thread)

SIDE = 424
NOISE = 4.0
SKY = 20.0
ADAPTIVE = PreprocessConfig(resize=424, crop=256, image_size=64, framing="adaptive", frame_scale=2.5, frame_min=48)


def petrosian_over_scale(profile: str) -> float:
    """The Petrosian radius (eta = 0.2) over the profile's scale, solved from its analytic surface brightness:
    Gaussian exp(-r^2 / 2 s^2) in units of s, exponential disc exp(-r / h) in units of h."""
    if profile == "gauss":
        # I(r) / <I>(<r) = x e^-x / (1 - e^-x) with x = r^2 / 2
        x = brentq(lambda x: x * np.exp(-x) / (1 - np.exp(-x)) - 0.2, 0.1, 20)
        return float(np.sqrt(2 * x))
    # I(r) / <I>(<r) = x^2 e^-x / (2 (1 - e^-x (1 + x))) with x = r / h
    return float(brentq(lambda x: x * x * np.exp(-x) / (2 * (1 - np.exp(-x) * (1 + x))) - 0.2, 0.1, 30))


def galaxy(
    scale: float,
    *,
    profile: str = "gauss",
    centre: tuple[float, float] = (SIDE / 2, SIDE / 2),
    peak: float = 200.0,
    side: int = SIDE,
    star: tuple[float, float] | None = None,
    seed: int = 0,
) -> Image.Image:
    """An RGB cut-out: sky + Gaussian noise + a round source of `scale` px (Gaussian sigma or exponential scale
    length) at `centre` (x, y), and optionally a bright unresolved star at `star`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((side, side), dtype=np.float64) + 0.5
    r = np.hypot(xx - centre[0], yy - centre[1])
    light = (
        np.zeros((side, side))
        if scale <= 0
        else peak * (np.exp(-(r**2) / (2 * scale**2)) if profile == "gauss" else np.exp(-r / scale))
    )
    if star is not None:
        light += 255.0 * np.exp(-((xx - star[0]) ** 2 + (yy - star[1]) ** 2) / (2 * 2.0**2))
    grey = SKY + light + rng.normal(0, NOISE, (side, side))
    rgb = np.stack([grey * 0.9, grey, grey * 1.1], axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def box_side(img: Image.Image, cfg: PreprocessConfig = ADAPTIVE) -> float:
    left, top, right, bottom = framing.frame_box(
        img, unit=cfg.resize, fallback=cfg.crop, scale=cfg.frame_scale, min_side=cfg.frame_min
    )
    assert right - left == pytest.approx(bottom - top)
    assert left >= 0 and top >= 0 and right <= img.width + 1e-6 and bottom <= img.height + 1e-6
    return right - left


@pytest.mark.parametrize("profile", ["gauss", "exponential"])
@pytest.mark.parametrize("scale", [6.0, 12.0, 25.0, 45.0])
def test_petrosian_radius_tracks_the_true_size(profile, scale):
    src = framing.measure(galaxy(scale, profile=profile))
    assert src is not None and not src.clamped
    truth = petrosian_over_scale(profile) * scale
    assert src.radius == pytest.approx(truth, rel=0.12)
    assert (src.x, src.y) == pytest.approx((SIDE / 2, SIDE / 2), abs=1.5)


def test_the_crop_scales_with_the_galaxy_and_the_file_size_does_not_matter():
    sides = [box_side(galaxy(s)) for s in (10.0, 20.0, 40.0)]
    assert sides[1] / sides[0] == pytest.approx(2.0, rel=0.1)
    assert sides[2] / sides[1] == pytest.approx(2.0, rel=0.1)
    assert sides[1] == pytest.approx(2.5 * petrosian_over_scale("gauss") * 20.0, rel=0.12)
    # the same galaxy in a 212-px file: the same share of the frame
    small = galaxy(10.0, side=212, centre=(106, 106))
    assert box_side(small) / 212 == pytest.approx(sides[1] / SIDE, rel=0.1)


@pytest.mark.parametrize("centre", [(212.0, 212.0), (170.0, 250.0), (150.0, 212.0)])
def test_an_off_centre_galaxy_is_found_and_the_crop_follows_it(centre):
    src = framing.measure(galaxy(6.0, centre=centre))
    assert src is not None
    assert (src.x, src.y) == pytest.approx(centre, abs=1.5)
    assert src.radius == pytest.approx(petrosian_over_scale("gauss") * 6.0, rel=0.12)
    left, top, right, bottom = framing.frame_box(
        galaxy(6.0, centre=centre), unit=424, fallback=256, scale=2.5, min_side=48
    )
    assert ((left + right) / 2, (top + bottom) / 2) == pytest.approx(centre, abs=1.5)


def test_noise_alone_falls_back_to_the_fixed_centre_crop():
    for seed in range(3):
        img = galaxy(0.0, seed=seed)
        assert framing.measure(img) is None
        box = framing.frame_box(img, unit=424, fallback=256, scale=2.5, min_side=48)
        assert box == pytest.approx((84.0, 84.0, 340.0, 340.0))


def test_a_bright_star_off_centre_does_not_capture_the_frame():
    alone = galaxy(0.0, star=(340.0, 90.0))
    assert framing.measure(alone) is None  # too far from the centre to be the target: the fixed crop
    both = framing.measure(galaxy(8.0, peak=60.0, star=(300.0, 140.0)))  # a fainter galaxy at the centre
    assert both is not None
    assert (both.x, both.y) == pytest.approx((212, 212), abs=2)
    assert both.radius == pytest.approx(petrosian_over_scale("gauss") * 8.0, rel=0.15)


def test_a_brighter_neighbour_merged_into_the_segment_does_not_pull_the_centre():
    img = np.asarray(galaxy(8.0, peak=120.0), dtype=np.float64)
    yy, xx = np.indices(img.shape[:2]) + 0.5
    neighbour = 230.0 * np.exp(-((xx - 262.0) ** 2 + (yy - 230.0) ** 2) / (2 * 12.0**2))  # overlaps the target
    merged = Image.fromarray(np.clip(img + neighbour[..., None], 0, 255).astype(np.uint8), "RGB")
    src = framing.measure(merged)
    assert src is not None
    assert (src.x, src.y) == pytest.approx((212, 212), abs=2.5)  # the segment's centroid is ~30 px off
    left, top, right, bottom = framing.frame_box(merged, unit=424, fallback=256, scale=2.5, min_side=48)
    assert ((left + right) / 2, (top + bottom) / 2) == pytest.approx((212, 212), abs=2.5)


def test_a_galaxy_filling_the_frame_is_clamped_to_the_frame_and_a_tiny_one_to_frame_min():
    big = galaxy(150.0)  # its light still 70 grey levels above the sky at the border
    assert framing.measure(big) is not None  # found (not the fallback, which would be 256 px)
    assert box_side(big) == pytest.approx(SIDE)
    tiny = galaxy(2.0)
    assert framing.measure(tiny) is not None
    assert box_side(tiny) == pytest.approx(48.0)
    # frame_min is in units of `resize`: 48 of 424 is 24 px of a 212-px file
    assert box_side(galaxy(1.0, side=212, centre=(106, 106))) == pytest.approx(24.0)


def test_eval_and_train_presets_give_the_network_its_input_size():
    img = galaxy(12.0)
    x = EvalPreset(ADAPTIVE)(img)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    # the frame is the galaxy: its light reaches the edge of a tight crop, unlike the fixed 256-px crop
    fixed = EvalPreset(replace(ADAPTIVE, framing="fixed"))(img)
    assert fixed.shape == (3, 64, 64)
    assert x[:, :, :4].mean() > fixed[:, :, :4].mean()
    aug = AugmentConfig(rotation=180.0, flip=True, scale=[0.9, 1.1], translate=0.05, color_jitter=0.05)
    assert TrainPreset(ADAPTIVE, aug)(img).shape == (3, 64, 64)
    assert TrainPreset(ADAPTIVE, replace(aug, context=1.5))(img).shape == (3, 64, 64)  # widened about the galaxy
    assert EvalPreset(ADAPTIVE)(galaxy(0.0)).shape == (3, 64, 64)  # the fallback too


def test_gallery_thumbnails_show_the_adaptive_frame(tmp_path):
    path = tmp_path / "small.png"
    galaxy(5.0).save(path)
    adaptive = np.asarray(display_image(path, ADAPTIVE, size=96), dtype=float)
    fixed = np.asarray(display_image(path, replace(ADAPTIVE, framing="fixed"), size=96), dtype=float)
    assert adaptive.shape == fixed.shape == (96, 96, 3)
    # a 5-px galaxy: the fixed 256-px crop is mostly sky, the adaptive one (~48 px) mostly galaxy
    assert adaptive.mean() > fixed.mean() + 8  # 33 against 20 grey levels


def test_fixed_framing_is_the_old_centre_crop_pixel_for_pixel():
    img = galaxy(12.0, side=300, centre=(150, 150))
    old = T.Compose(
        [
            T.Resize(424, antialias=True),
            T.CenterCrop(256),
            T.Resize(64, antialias=True),
            T.ToImage(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(MEAN, STD),
        ]
    )
    assert torch.equal(EvalPreset(PreprocessConfig(424, 256, 64))(img), old(img))


def test_a_model_file_without_framing_keys_loads_as_the_fixed_crop(tmp_path, params):
    assert stored_preprocess({"resize": 424, "crop": 192, "image_size": 64}) == PreprocessConfig(424, 192, 64)
    assert PreprocessConfig(424, 192, 64).framing == "fixed"
    model_cfg = replace(params.model, arch="resnet18", weights="none", head="linear", hidden=16, dropout=0.0)
    path = tmp_path / "model.pt"
    save_model(path, build_model(model_cfg), model_cfg, ADAPTIVE)
    assert load_model(path).preprocess == ADAPTIVE
    bundle = torch.load(path, weights_only=True)
    bundle["preprocess"] = {"resize": 424, "crop": 192, "image_size": 64}  # as written before framing existed
    torch.save(bundle, path)
    loaded = load_model(path)
    assert loaded.preprocess == PreprocessConfig(424, 192, 64)
    assert loaded.preprocess.framing == "fixed"


def test_framing_params_are_checked(params):
    assert params.preprocess.framing in ("fixed", "adaptive")
    with pytest.raises(UserError, match="preprocess.framing"):
        stored_preprocess({**dataclasses.asdict(ADAPTIVE), "framing": "tight"})
    with pytest.raises(UserError, match="frame_scale"):
        stored_preprocess({**dataclasses.asdict(ADAPTIVE), "frame_scale": 0})
    with pytest.raises(UserError, match="frame_min"):
        stored_preprocess({**dataclasses.asdict(ADAPTIVE), "frame_min": 0})
