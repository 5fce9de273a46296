"""The fast loader (issue 9 item 3): JPEG draft decoding, one-resample fixed framing, and train.loader: cache
with its batched augmentation. Each fast path is checked against the path it replaces."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from galmorph.config import load_params, replace
from galmorph.data.images import load_rgb, read_image
from galmorph.data.transforms import (
    MEAN,
    STD,
    VIEWS,
    AdaptiveFrame,
    BatchAugment,
    EvalPreset,
    FramedUint8,
    TrainPreset,
    draft_side,
    resample_box,
)
from galmorph.errors import UserError
from galmorph.models.inference import GalaxyClassifier, predict_logits
from galmorph.models.resnet import load_model, save_model
from galmorph.training.loop import fit
from tests.training_utils import make_catalogue, one_thread, tiny_params

_one_thread = pytest.fixture(autouse=True)(one_thread)


def _galaxy_jpeg(size: int = 424, *, grey: bool = False) -> bytes:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-((xx - size / 2) ** 2 + (yy - size / 2.2) ** 2) / (2 * (size / 14) ** 2))
    rgb = np.clip(blob[..., None] * [1.0, 0.8, 0.6] + rng.normal(0.05, 0.01, (size, size, 3)), 0, 1)
    im = Image.fromarray((255 * rgb).astype(np.uint8))
    buf = io.BytesIO()
    (im.convert("L") if grey else im).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _pre(params, **kw):
    return replace(params.preprocess, **kw)


def test_draft_side_covers_the_input_and_is_off_by_default(params):
    assert params.preprocess.decode == "full" and draft_side(params.preprocess, 64) is None
    fixed = _pre(params, decode="draft", resize=424, crop=256, image_size=64)
    assert draft_side(fixed, 64) == 106  # the 256-px crop of a 106-px frame still has 64 px
    assert (
        EvalPreset(fixed).draft == 106
        and FramedUint8(fixed, params.augment).draft == 212
        and TrainPreset(fixed, params.augment).draft == 212
    )
    adaptive = replace(fixed, framing="adaptive", frame_min=48)
    assert draft_side(adaptive, 64) == 566  # the smallest adaptive frame needs the whole 424-px image


@pytest.mark.parametrize("grey", [False, True])
def test_a_drafted_jpeg_decodes_at_a_dct_scale_but_reports_its_own_size(grey):
    data = _galaxy_jpeg(grey=grey)
    full = read_image(io.BytesIO(data), len(data))
    small = read_image(io.BytesIO(data), len(data), draft=106)
    assert full.image.size == (424, 424) and small.image.size == (106, 106)  # 1/4 scale: 106 >= 106
    assert (small.width, small.height) == (424, 424) and small.image.mode == "RGB"
    assert load_rgb(data, draft=300).size == (424, 424)  # 1/2 would be 212 < 300: decoded in full
    assert load_rgb(data, draft=1000).size == (424, 424)  # never upsampled


def test_png_is_never_drafted():
    buf = io.BytesIO()
    Image.new("RGB", (400, 200), (10, 20, 30)).save(buf, "PNG")
    assert load_rgb(buf.getvalue(), draft=50).size == (400, 200)


def test_draft_preset_frames_the_same_pixels_as_the_full_decode(params):
    """decode: draft (1/4-scale DCT decoding + one resample) against full (Resize, CenterCrop, Resize): the same
    galaxy at the same place, within a few grey levels."""
    data = _galaxy_jpeg()
    full_cfg = _pre(params, resize=424, crop=256, image_size=64)
    draft_cfg = replace(full_cfg, decode="draft")
    full = EvalPreset(full_cfg)(load_rgb(data))
    fast_preset = EvalPreset(draft_cfg)
    fast = fast_preset(load_rgb(data, draft=fast_preset.draft))
    assert full.shape == fast.shape == (3, 64, 64)
    diff = (full - fast).abs()
    assert float(diff.mean()) < 0.03 and float(diff.max()) < 0.3  # normalised units (1 grey level ~ 0.017)
    # the same place: the brightness-weighted centroids agree to a fraction of a pixel
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")

    def centroid(img: torch.Tensor) -> tuple[float, float]:
        w = img[0] - img[0].min()
        return float((w * yy).sum() / w.sum()), float((w * xx).sum() / w.sum())

    assert np.allclose(centroid(full), centroid(fast), atol=0.5)


def test_batch_augment_with_everything_off_frames_like_the_eval_preset(params):
    data = _galaxy_jpeg()
    cfg = _pre(params, resize=424, crop=256, image_size=64)
    off = replace(params.augment, rotation=0.0, flip=False, scale=[1.0, 1.0], translate=0.0, color_jitter=0.0)
    framed = FramedUint8(cfg, off)(load_rgb(data))
    assert framed.dtype == torch.uint8 and framed.shape == (3, 128, 128)
    out = BatchAugment(cfg, off)(framed[None], torch.Generator().manual_seed(0))[0]
    evaluated = EvalPreset(cfg)(load_rgb(data))
    assert float((out - evaluated).abs().max()) < 0.1


def _sky_galaxy(sky: float = 0.4) -> Image.Image:
    """A galaxy on a flat grey sky that fills the whole 424-px frame: any black pixel is the augmentation's fill."""
    yy, xx = np.mgrid[:424, :424]
    blob = np.exp(-((xx - 212.0) ** 2 + (yy - 212.0) ** 2) / (2 * 25.0**2))
    return Image.fromarray((255 * np.clip(sky + 0.5 * blob[..., None], 0, 1)).astype(np.uint8).repeat(3, 2))


def _darkest(x: torch.Tensor) -> torch.Tensor:
    """Per image, the darkest pixel in [0, 1] of normalised (B, 3, H, W) tensors."""
    return (x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)).amin((1, 2, 3))


@pytest.mark.parametrize("decode", ["draft", "full"])
def test_context_turns_and_shrinks_galaxies_in_their_own_sky_and_frames_like_the_eval_preset(params, decode):
    """augment.context: the cache's frames and TrainPreset's carry the sky around the eval frame, so a turned
    or zoomed-out galaxy has sky in its corners where context 1 leaves black; with every augmentation off the
    frame cut back out is the eval preset's."""
    img = _sky_galaxy()
    cfg = _pre(params, resize=424, crop=192, image_size=32, decode=decode)
    off = replace(params.augment, rotation=0.0, flip=False, scale=[1.0, 1.0], translate=0.0, color_jitter=0.0)
    turn = replace(off, rotation=180.0, scale=[0.75, 1.0])
    wide = FramedUint8(cfg, replace(off, context=1.9))(img)
    assert wide.shape == (3, 122, 122)  # 64 px of frame + 29 px of sky each side (an even margin)
    x1 = FramedUint8(cfg, turn)(img)[None].expand(16, -1, -1, -1)
    x2 = wide[None].expand(16, -1, -1, -1)
    black = _darkest(BatchAugment(cfg, turn)(x1, torch.Generator().manual_seed(0)))
    sky = _darkest(BatchAugment(cfg, replace(turn, context=1.9))(x2, torch.Generator().manual_seed(0)))
    assert float(black.min()) < 0.05 and float(sky.min()) > 0.35  # the flat sky is 0.4
    plain = BatchAugment(cfg, replace(off, context=1.9))(x2[:1], torch.Generator())[0]
    assert plain.shape == (3, 32, 32) and float((plain - EvalPreset(cfg)(img)).abs().max()) < 0.1

    torch.manual_seed(0)
    per_image = torch.stack([TrainPreset(cfg, replace(turn, context=1.9))(img) for _ in range(8)])
    assert per_image.shape == (8, 3, 32, 32) and float(_darkest(per_image).min()) > 0.35
    torch.manual_seed(0)
    assert float(_darkest(torch.stack([TrainPreset(cfg, turn)(img) for _ in range(8)])).min()) < 0.05
    still = TrainPreset(cfg, replace(off, context=1.9))(img)
    assert float((still - EvalPreset(cfg)(img)).abs().max()) < 0.1


def test_context_beyond_the_image_is_black_and_adaptive_frames_widen_about_the_galaxy(params):
    img = Image.new("RGB", (100, 100), (200, 100, 50))
    out = np.asarray(resample_box(img, (-50.0, -50.0, 150.0, 150.0), 40))
    assert (out[:10, :10] == 0).all() and (out[30:, 30:] == 0).all()  # a quarter of each side is outside
    assert np.abs(out[12:28, 12:28].astype(int) - [200, 100, 50]).max() <= 1
    cfg = _pre(params, resize=424, crop=192, framing="adaptive", frame_scale=2.5, frame_min=48)
    galaxy = _sky_galaxy(sky=0.02)
    framed = np.asarray(AdaptiveFrame(cfg, 64)(galaxy), dtype=float)
    widened = np.asarray(AdaptiveFrame(cfg, 128, 2.0)(galaxy), dtype=float)
    # the same frame, at the same pixels per frame, in the middle of its context
    assert np.abs(widened[32:96, 32:96] - framed).max() <= 3


def test_context_must_be_at_least_the_frame(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(Path("params.yaml").read_text().replace("  context: 1.0 ", "  context: 0.5 "))
    with pytest.raises(UserError, match=r"augment.context: expected a number in \[1, 3\], got 0.5"):
        load_params(path)


def test_batch_augment_flips_are_exact_and_seeded(params):
    cfg = _pre(params, image_size=16)
    flips = replace(params.augment, rotation=0.0, flip=True, scale=[1.0, 1.0], translate=0.0, color_jitter=0.0)
    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    aug = BatchAugment(cfg, flips)
    out = aug(x, torch.Generator().manual_seed(3))
    ref = BatchAugment(cfg, replace(flips, flip=False))(x, torch.Generator())  # normalised, not moved
    seen = set()
    for o, r in zip(out, ref, strict=True):
        match = [v for v in ("identity", "hflip", "vflip", "rot180") if torch.allclose(o, VIEWS[v](r), atol=1e-5)]
        assert match, "a flip-only augmentation must give one of the four flips exactly"
        seen.add(match[0])
    assert len(seen) == 4
    assert torch.equal(out, aug(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(out, aug(x, torch.Generator().manual_seed(4)))


def test_batch_augment_rotates_about_the_centre_and_keeps_range(params):
    cfg = _pre(params, image_size=32)
    rot = replace(params.augment, rotation=180.0, flip=False, scale=[0.9, 1.1], translate=0.0, color_jitter=0.05)
    yy, xx = np.mgrid[:64, :64]
    blob = np.exp(-((xx - 31.5) ** 2 / (2 * 12.0**2) + (yy - 31.5) ** 2 / (2 * 3.0**2)))  # an elongated galaxy
    x = torch.from_numpy((255 * blob).astype(np.uint8)).expand(8, 3, 64, 64).contiguous()
    out = BatchAugment(cfg, rot)(x, torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 32, 32) and torch.isfinite(out).all()
    pixels = out[:, 0] * 0.229 + 0.485  # back to [0, 1]
    assert float(pixels.min()) >= -1e-5 and float(pixels.max()) <= 1 + 1e-5
    # rotated, not moved: the light stays centred, but the long axis points a different way in each image
    yy_t, xx_t = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    w = pixels.clamp(min=0)
    cy = (w * yy_t).sum((1, 2)) / w.sum((1, 2))
    cx = (w * xx_t).sum((1, 2)) / w.sum((1, 2))
    assert float((cy - 15.5).abs().max()) < 1.0 and float((cx - 15.5).abs().max()) < 1.0
    spread_x = ((w * (xx_t - cx[:, None, None]) ** 2).sum((1, 2)) / w.sum((1, 2))).tolist()
    assert max(spread_x) / min(spread_x) > 2


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    return make_catalogue(tmp_path_factory.mktemp("tiny_loader"), n=40)


def test_cache_loader_trains_reproducibly_and_its_model_decodes_as_it_was_trained(catalogue, params, tmp_path):
    p = tiny_params(params, tmp_path, mode="finetune", epochs=5, lr=0.003, loader="cache")
    p = dataclasses.replace(p, preprocess=replace(p.preprocess, decode="draft"))
    a = fit(catalogue, p, progress=False)
    b = fit(catalogue, p, progress=False)
    assert a.best_metrics["val_acc"] >= 0.875
    for k, v in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[k], v), k
    # augment.context: the frames cached wider, cut back out in BatchAugment; it learns as well, differently
    c = fit(catalogue, dataclasses.replace(p, augment=replace(p.augment, context=1.5)), progress=False)
    assert c.best_metrics["val_acc"] >= 0.875 and not np.array_equal(c.val_logits, a.val_logits)
    # validation in memory scores exactly what the one inference path scores from the files
    val = catalogue[catalogue["split"] == "val"]
    logits = predict_logits(a.model, val, p.preprocess, batch_size=8, num_workers=0, device="cpu", precision="fp32")
    np.testing.assert_allclose(logits, a.val_logits, rtol=1e-3, atol=1e-3)
    save_model(tmp_path / "m.pt", a.model, p.model, p.preprocess)
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.preprocess.decode == "draft"
    clf = GalaxyClassifier.from_artifacts(tmp_path / "m.pt", device="cpu")
    assert clf.transform.draft == draft_side(p.preprocess, p.preprocess.image_size)
    probs, errors = clf.predict_proba([Path(f).read_bytes() for f in val["image_path"]])
    assert errors == [None] * len(val)
    np.testing.assert_allclose(np.log(probs[:, 0] / probs[:, 1]), logits[:, 0] - logits[:, 1], atol=1e-3)


def test_old_model_files_decode_in_full(params, tmp_path):
    from galmorph.config import stored_preprocess

    stored = {"resize": 424, "crop": 256, "image_size": 64}
    assert stored_preprocess(stored).decode == "full"


def test_sky_normalisation_reaches_every_preset_and_survey_effects_the_batches(params):
    """preprocess.sky: border runs first in the eval preset, the training framing and the cache's frames alike;
    augment.survey acts inside BatchAugment, seeded by its generator."""
    yy, xx = np.mgrid[:424, :424]
    blob = np.exp(-((xx - 212.0) ** 2 + (yy - 212.0) ** 2) / (2 * 25.0**2))
    sky = np.array([0.15, 0.2, 0.35])  # a bluish sky level, as in photographs from other telescopes
    img = Image.fromarray((255 * np.clip(sky + blob[..., None] * [0.8, 0.7, 0.5], 0, 1)).astype(np.uint8))
    cfg = _pre(params, resize=424, crop=256, image_size=32, sky="border")
    black = ((0.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])).view(3, 1)
    corner = EvalPreset(cfg)(img)[:, :2, :2].reshape(3, -1)
    assert torch.allclose(corner, black.expand_as(corner), atol=0.05)  # the sky is gone, in every channel
    assert int(FramedUint8(cfg, params.augment)(img)[:, :4, :4].max()) <= 2
    kept = EvalPreset(_pre(params, resize=424, crop=256, image_size=32))(img)[2, 0, 0]
    assert float(kept - black[2, 0]) > 1.0  # sky: none keeps the blue sky

    x = FramedUint8(cfg, params.augment)(img)[None].expand(4, -1, -1, -1)
    off = replace(params.augment, rotation=0.0, flip=False, scale=[1.0, 1.0], translate=0.0, color_jitter=0.0)
    on = dataclasses.replace(off, survey=replace(off.survey, p=1.0))
    plain = BatchAugment(cfg, off)(x, torch.Generator().manual_seed(0))
    a = BatchAugment(cfg, on)(x, torch.Generator().manual_seed(0))
    assert not torch.allclose(a, plain) and torch.equal(a, BatchAugment(cfg, on)(x, torch.Generator().manual_seed(0)))


def test_the_context_grid_draws_each_image_at_each_context(params, tmp_path):
    from galmorph.evaluation.galleries import context_augment_grid

    path = tmp_path / "g.jpg"
    path.write_bytes(_galaxy_jpeg(size=96))
    cfg = _pre(params, resize=96, crop=48, image_size=16, decode="draft")
    assert context_augment_grid([path], cfg, params.augment, [1.0, 2.0], tmp_path / "grid.png", draws=4) == 2
    with Image.open(tmp_path / "grid.png") as im:
        assert im.format == "PNG" and im.width > 1.5 * im.height  # 4 columns, 2 rows


def _outlier_table(folder: Path, n: int = 6) -> Path:
    """n images that are neither class (stripes and noise) and a train.outliers table listing them, relative."""
    rng = np.random.default_rng(5)
    (folder / "odd").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        stripes = np.zeros((48, 48, 3), np.uint8)
        stripes[:, i % 4 :: 4] = 255
        img = stripes if i % 2 else rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / "odd" / f"o{i}.png")
    table = folder / "outliers.csv"
    table.write_text("image_path\n" + "".join(f"odd/o{i}.png\n" for i in range(n)))
    return table


def test_outlier_exposure_makes_the_model_unsure_on_the_outliers_and_keeps_the_galaxies(catalogue, params, tmp_path):
    """train.outliers: the listed images join each batch with a uniform target; the galaxies still train (train_acc
    counts only them) and the model's answer on the outliers moves toward 50/50, against the same fit without."""
    table = _outlier_table(tmp_path)
    p = tiny_params(params, tmp_path, mode="finetune", epochs=5, lr=0.003, loader="cache")
    plain = fit(catalogue, p, progress=False)
    exposed_p = dataclasses.replace(p, train=replace(p.train, outliers=str(table), outlier_batch=4, outlier_weight=1.0))
    exposed = fit(catalogue, exposed_p, progress=False)
    assert exposed.best_metrics["val_acc"] >= 0.875

    def max_p(model) -> float:
        clf_logits = predict_logits(
            model, pd.DataFrame({"image_path": sorted(str(f) for f in (tmp_path / "odd").iterdir())}), p.preprocess,
            batch_size=8, num_workers=0, device="cpu", precision="fp32",
        )  # fmt: skip
        return float(torch.softmax(torch.from_numpy(clf_logits), 1).max(1).values.mean())

    assert max_p(exposed.model) < max_p(plain.model) - 0.05
    assert max_p(exposed.model) < 0.75


def test_outlier_settings_and_tables_fail_in_one_line(params, tmp_path):
    from galmorph.data.dataset import outlier_paths

    with pytest.raises(UserError, match="train.outliers needs train.loader: cache"):
        replace(params.train, mode="finetune", loader="files", outliers="x.csv")
    with pytest.raises(UserError, match="train.outliers needs train.mode: finetune"):
        replace(params.train, mode="frozen", loader="cache", outliers="x.csv")
    with pytest.raises(UserError, match="uniform target"):
        replace(params.train, mode="finetune", loader="cache", loss="dirichlet", outliers="x.csv")
    with pytest.raises(UserError, match="outlier_batch: expected an integer >= 1"):
        replace(params.train, outlier_batch=0)
    with pytest.raises(UserError, match="outlier_weight"):
        replace(params.train, outlier_weight=0.0)
    table = _outlier_table(tmp_path, n=2)
    assert outlier_paths(table) == [tmp_path / "odd" / "o0.png", tmp_path / "odd" / "o1.png"]
    table.write_text("image_path\nodd/o0.png\nodd/missing.png\n")
    with pytest.raises(UserError, match=r"outliers.csv: row 2, column image_path: expected an image file, got 'odd/m"):
        outlier_paths(table)
    table.write_text("path\nodd/o0.png\n")
    with pytest.raises(UserError, match="image_path"):
        outlier_paths(table)
    with pytest.raises(UserError, match="not found"):
        outlier_paths(tmp_path / "none.csv")


def _axis_ratio(x: torch.Tensor) -> torch.Tensor:
    """Per image of (B, C, H, W), the square root of the ratio of the light's principal second moments (b / a)."""
    w = x[:, 0] - x[:, 0].amin((1, 2), keepdim=True)
    h, s = w.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(float(h)), torch.arange(float(s)), indexing="ij")
    total = w.sum((1, 2))
    cy, cx = (w * yy).sum((1, 2)) / total, (w * xx).sum((1, 2)) / total
    dy, dx = yy - cy[:, None, None], xx - cx[:, None, None]
    myy, mxx, mxy = ((w * m).sum((1, 2)) / total for m in (dy * dy, dx * dx, dx * dy))
    half_diff = torch.sqrt(((mxx - myy) / 2) ** 2 + mxy**2)
    mean = (mxx + myy) / 2
    return torch.sqrt((mean - half_diff) / (mean + half_diff))


def test_squeeze_turns_a_round_galaxy_into_an_elongated_one_pointing_anywhere(params):
    """augment.squeeze: in the batch path and the per-image path alike, a round galaxy comes out with the drawn axis
    ratio (here exactly 0.5) at any angle; off ([1, 1]) it stays round and the other draws are unchanged."""
    cfg = _pre(params, resize=128, crop=128, image_size=32)
    off = replace(params.augment, rotation=180.0, flip=False, scale=[1.0, 1.0], translate=0.0, color_jitter=0.0)
    half = replace(off, squeeze=[0.5, 0.5])
    yy, xx = np.mgrid[:64, :64]
    blob = np.exp(-((xx - 31.5) ** 2 + (yy - 31.5) ** 2) / (2 * 6.0**2))  # round, well inside the frame
    x = torch.from_numpy((255 * blob).astype(np.uint8)).expand(16, 3, 64, 64).contiguous()
    round_out = BatchAugment(cfg, off)(x, torch.Generator().manual_seed(0))
    squeezed = BatchAugment(cfg, half)(x, torch.Generator().manual_seed(0))
    assert float(_axis_ratio(round_out).min()) > 0.95
    ratio = _axis_ratio(squeezed)
    assert float((ratio - 0.5).abs().max()) < 0.05
    # pointing anywhere: the long axis's angle spreads over the half circle
    w = squeezed[:, 0] - squeezed[:, 0].amin((1, 2), keepdim=True)
    yy_t, xx_t = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    dy, dx = yy_t - 15.5, xx_t - 15.5
    angle = 0.5 * torch.atan2(2 * (w * dx * dy).sum((1, 2)), (w * (dx * dx - dy * dy)).sum((1, 2)))
    assert float(angle.max() - angle.min()) > 2.0  # radians, of a possible pi
    # off draws nothing, so seeded runs without it are unchanged: on consumes exactly one more draw per image
    g_off, g_on = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    BatchAugment(cfg, off)(x, g_off)
    BatchAugment(cfg, half)(x, g_on)
    torch.rand(16, generator=g_off)
    assert torch.equal(g_off.get_state(), g_on.get_state())
    # the per-image path (train.loader: files) squeezes alike
    img = Image.fromarray((255 * np.exp(-((np.mgrid[:128, :128] - 63.5) ** 2).sum(0) / (2 * 12.0**2))).astype(np.uint8))
    per_image = torch.stack([TrainPreset(cfg, half)(img.convert("RGB")) for _ in range(8)])
    assert float((_axis_ratio(per_image) - 0.5).abs().max()) < 0.05
    assert float(_axis_ratio(torch.stack([TrainPreset(cfg, off)(img.convert("RGB")) for _ in range(4)])).min()) > 0.95


@pytest.mark.parametrize("bad", ["[0.0, 1.0]", "[0.8, 0.6]", "[0.5, 1.2]", "[0.5]"])
def test_squeeze_must_be_a_share_range(tmp_path, bad):
    path = tmp_path / "params.yaml"
    text = Path("params.yaml").read_text()
    start = text.index("  squeeze:")
    end = text.index("  survey:", start)
    path.write_text(text[:start] + f"  squeeze: {bad}\n" + text[end:])
    with pytest.raises(UserError, match=r"augment.squeeze: expected \[low, high\] with 0 < low <= high <= 1"):
        load_params(path)
