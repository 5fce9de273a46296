"""Survey and camera augmentations on batches (data/survey.py) and their augment.survey params."""

import dataclasses

import pytest
import torch

from galmorph.cli import resolve_params
from galmorph.config import SurveyConfig, from_dict
from galmorph.data.survey import EFFECTS, SurveyAugment, augment_normalised, only, survey_batches
from galmorph.errors import UserError
from galmorph.tracking.params import flatten_params

from .conftest import REPO

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def run(cfg: SurveyConfig, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return SurveyAugment(cfg, torch.Generator().manual_seed(seed))(x)


def batch(n: int = 6, size: int = 24, lo: float = 0.2, hi: float = 0.6, seed: int = 0) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(seed))


def blob(n: int = 4, size: int = 33, peak: float = 0.9) -> torch.Tensor:
    """A point-like galaxy at the centre of a black sky (one bright pixel and a faint halo)."""
    x = torch.zeros(n, 3, size, size)
    c = size // 2
    x[:, :, c - 1 : c + 2, c - 1 : c + 2] = 0.2
    x[:, :, c, c] = peak
    return x


def test_probability_zero_is_the_identity():
    x = batch()
    assert run(SurveyConfig(p=0.0), x) is x  # the default: off
    none = dataclasses.replace(SurveyConfig(p=1.0), **{f"{e}_p": 0.0 for e in EFFECTS})
    torch.testing.assert_close(run(none, x), x, rtol=0, atol=0)


@pytest.mark.parametrize("effect", [*EFFECTS, "all"])
def test_every_effect_keeps_shape_dtype_range_and_seeds(effect):
    cfg = SurveyConfig(p=1.0) if effect == "all" else only(SurveyConfig(), effect)
    x = batch(lo=0.0, hi=1.0)
    for dtype in (torch.float32, torch.float64):
        y = run(cfg, x.to(dtype))
        assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
        assert y.min() >= 0 and y.max() <= 1
    a, b, c = run(cfg, x, seed=3), run(cfg, x, seed=3), run(cfg, x, seed=4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, x) and (effect == "grey" or not torch.equal(a, c))  # grey draws no strength


def test_greyscale_makes_the_channels_equal():
    y = run(only(SurveyConfig(), "grey"), batch())
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])


def test_sky_moves_every_pixel_of_a_channel_by_one_offset():
    x = batch()
    cfg = dataclasses.replace(only(SurveyConfig(), "sky"), sky_offset=[0.05, 0.15])
    d = run(cfg, x) - x
    offset = d.flatten(2).median(2).values  # the border median moves by it too: the whole channel does
    assert ((offset >= 0.05 - 1e-6) & (offset <= 0.15 + 1e-6)).all()
    torch.testing.assert_close(d, offset[:, :, None, None].expand_as(d))
    assert offset.std(1).min() > 0  # a coloured sky: the channels' offsets differ


def test_colour_balance_is_one_gain_per_channel():
    x = batch()
    ratio = run(only(SurveyConfig(), "colour"), x) / x
    gain = ratio.flatten(2).mean(2)
    torch.testing.assert_close(ratio, gain[:, :, None, None].expand_as(ratio))
    assert ((gain >= 0.75 - 1e-6) & (gain <= 1.3 + 1e-6)).all()


def test_blur_lowers_the_peak_and_keeps_the_flux():
    x = blob()
    y = run(only(SurveyConfig(), "blur"), x)
    assert (y.amax((2, 3)) < 0.8 * x.amax((2, 3))).all()
    torch.testing.assert_close(y.sum((2, 3)), x.sum((2, 3)), rtol=1e-4, atol=1e-4)
    assert (y.flatten(2).argmax(2) == 16 * 33 + 16).all()  # still centred


def test_pixel_scale_smooths_fine_detail_and_keeps_the_mean():
    x = torch.zeros(4, 3, 32, 32)
    x[:, :, ::2] = 1.0  # stripes one pixel wide
    y = run(only(SurveyConfig(), "pixel"), x)
    assert (y.std((2, 3)) < 0.5 * x.std((2, 3))).all()
    torch.testing.assert_close(y.mean((2, 3)), x.mean((2, 3)), rtol=0, atol=0.05)


def test_noise_has_the_drawn_level_and_grows_with_the_signal():
    x = torch.full((4, 3, 64, 64), 0.5)
    cfg = dataclasses.replace(only(SurveyConfig(), "noise"), noise_sigma=[0.05, 0.05], noise_gain=[0.0, 0.0])
    d = run(cfg, x) - x
    assert abs(float(d.std()) - 0.05) < 0.005 and abs(float(d.mean())) < 0.005
    poisson = dataclasses.replace(cfg, noise_sigma=[0.0, 0.0], noise_gain=[0.01, 0.01])
    dark, bright = torch.full((2, 3, 64, 64), 0.2), torch.full((2, 3, 64, 64), 0.8)
    assert (run(poisson, bright) - bright).std() > 1.7 * (run(poisson, dark) - dark).std()  # sqrt(4) = 2


def test_gamma_is_a_power_that_keeps_the_order():
    x = batch()
    cfg = dataclasses.replace(only(SurveyConfig(), "gamma"), gamma=[2.0, 2.0])
    torch.testing.assert_close(run(cfg, x), x**2)


def test_saturation_whitens_only_the_brightest_share():
    x = batch(n=4, size=40)
    cfg = dataclasses.replace(only(SurveyConfig(), "saturate"), saturate_fraction=[0.02, 0.02])
    y = run(cfg, x)
    white = (y == 1.0).all(1)
    assert (white.sum((1, 2)) == 32).all()  # ceil(2% of 1600)
    lum = (x * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1)
    assert (lum[white].min() >= lum[~white].reshape(4, -1).amax(1).min()).item()
    gain = 1 / lum.flatten(1).topk(32).values[:, -1]  # the rest: stretched so the threshold is white
    rest = ~white[:, None].expand_as(y)
    expected = (x * gain[:, None, None, None]).clamp(max=1.0)
    torch.testing.assert_close(y[rest], expected[rest])
    assert (gain > 1).all()
    flat = torch.full((2, 3, 16, 16), 0.4)
    torch.testing.assert_close(run(cfg, flat), flat)  # nothing brighter than the rest: no core to saturate


def test_stars_add_compact_peaks_and_nothing_else():
    x = torch.zeros(8, 3, 48, 48)
    cfg = dataclasses.replace(only(SurveyConfig(), "stars"), stars_count=[2, 4], star_sigma=[0.8, 0.8])
    y = run(cfg, x)
    lit = (y.amax(1) > 0.05).flatten(1).sum(1)
    assert (lit > 0).all() and (lit < 0.05 * 48 * 48).all()  # compact: a few per cent of the pixels at most
    assert (y.amax((1, 2, 3)) >= 0.2 * 0.7 * 0.9).all()
    pooled = torch.nn.functional.max_pool2d(y.amax(1, keepdim=True), 3, 1, 1)
    peaks = ((y.amax(1, keepdim=True) == pooled) & (y.amax(1, keepdim=True) > 0.1)).flatten(1).sum(1)
    assert ((peaks >= 1) & (peaks <= 4)).all()


def test_master_probability_picks_a_share_of_images():
    x = batch(n=400, size=8)
    cfg = dataclasses.replace(only(SurveyConfig(), "grey"), p=0.5)
    changed = (run(cfg, x) != x).flatten(1).any(1).float().mean()
    assert 0.4 < float(changed) < 0.6


def test_normalised_batches_are_augmented_in_image_space():
    x = batch()
    norm = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    aug = SurveyAugment(only(SurveyConfig(), "grey"), torch.Generator().manual_seed(0))
    (y, labels), *_ = list(survey_batches([(norm, "labels")], aug, MEAN, STD))
    back = y * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    torch.testing.assert_close(back[:, 0], back[:, 2])
    assert labels == "labels"
    off = SurveyAugment(SurveyConfig(p=0.0))
    torch.testing.assert_close(augment_normalised(off, norm, MEAN, STD), norm)


def test_bad_input_and_unknown_effects_are_errors():
    with pytest.raises(ValueError, match="B, 3, H, W"):
        run(SurveyConfig(p=1.0), torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="unknown survey effect"):
        only(SurveyConfig(), "trails")


def test_params_round_trip_and_bad_ranges_name_the_key():
    params = resolve_params(str(REPO / "params.yaml"), [])
    assert params.augment.survey == SurveyConfig()  # params.yaml's values are the defaults: off
    on = resolve_params(str(REPO / "params.yaml"), ["augment.survey.p=0.8", "augment.survey.blur_sigma=[0.5,2.0]"])
    assert on.augment.survey.p == 0.8 and on.augment.survey.blur_sigma == [0.5, 2.0]
    assert from_dict(SurveyConfig, dataclasses.asdict(on.augment.survey)) == on.augment.survey
    flat = flatten_params(on.augment)
    assert flat["augment.survey.p"] == "0.8" and flat["augment.survey.stars_count"] == "[1, 8]"
    for key, bad in [("p", 1.5), ("blur_sigma", [0.0, 1.0]), ("pixel_scale", [0.5, 1.5]), ("gamma", [2.0, 1.0])]:
        with pytest.raises(UserError, match=f"augment.survey.{key}"):
            SurveyConfig(**{key: bad})


def test_the_augment_grid_shows_each_effect_on_real_files(tmp_path):
    from PIL import Image

    from galmorph.config import PreprocessConfig
    from galmorph.evaluation.galleries import survey_augment_grid, survey_columns

    paths = []
    for i in range(2):
        arr = (blob(n=1, size=96, peak=0.9)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")
        paths.append(tmp_path / f"g{i}.jpg")
        Image.fromarray(arr).save(paths[-1])
    assert list(survey_columns(SurveyConfig())) == [*EFFECTS, "all"]
    cfg = PreprocessConfig(resize=96, crop=64, image_size=32)
    assert survey_augment_grid(paths, cfg, SurveyConfig(), tmp_path / "grid.png") == 2
    with Image.open(tmp_path / "grid.png") as im:
        assert im.format == "PNG" and im.width > 4 * im.height  # 12 columns, 2 rows
