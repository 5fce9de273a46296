"""fit(), its losses, checkpoints and resume, prediction, and the train stage end to end."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from galmorph import cli
from galmorph.config import load_params, params_from_raw, replace, with_tuned
from galmorph.data.dataset import soft_targets
from galmorph.data.transforms import EvalPreset
from galmorph.errors import UserError
from galmorph.models.inference import amp_dtype_for, cpu_has_fast_bf16, predict_logits, resolve_device
from galmorph.models.resnet import build_model, param_groups
from galmorph.training import loop
from galmorph.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from galmorph.training.engine import BatchMix, Criterion, class_weights, train_one_epoch
from galmorph.training.features import build_feature_cache
from galmorph.training.loop import at_side, build_optimizer, fit, moving_average, progressive_side
from tests.training_utils import make_catalogue, one_thread, tiny_params, write_params

TIMING = ("images_per_s", "epoch_time_s")
_one_thread = pytest.fixture(autouse=True)(one_thread)


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    return make_catalogue(tmp_path_factory.mktemp("tiny"), n=40)


def _without_timing(history):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


# ------------------------------------------------------------------------------------------------ losses


def test_cross_entropy_with_balanced_weights_and_smoothing():
    labels = np.array([0, 0, 0, 1])
    w = class_weights(labels, "balanced")
    torch.testing.assert_close(w, torch.tensor([4 / 6, 4 / 2]))
    assert class_weights(labels, "none") is None
    with pytest.raises(UserError, match="no elliptical"):
        class_weights(np.array([0, 0]), "balanced")
    logits, y = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 0, 1])
    soft = F.one_hot(y, 2).float()
    crit = Criterion("ce", w, 0.1)
    torch.testing.assert_close(crit(logits, y, soft), F.cross_entropy(logits, y, weight=w, label_smoothing=0.1))


def test_soft_targets_equal_ce_on_one_hot_and_follow_the_votes():
    logits, y = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 0, 1])
    one_hot = F.one_hot(y, 2).float()
    torch.testing.assert_close(Criterion("soft", None, 0.0)(logits, y, one_hot), F.cross_entropy(logits, y))
    # a 60/40 galaxy: the loss is minimal at the logit difference log(0.6/0.4), not at infinity
    target = torch.tensor([[0.6, 0.4]])
    crit = Criterion("soft", None, 0.0)
    losses = [float(crit(torch.tensor([[d, 0.0]]), torch.tensor([0]), target)) for d in (0.0, np.log(1.5), 3.0)]
    assert losses[1] < losses[0] and losses[1] < losses[2]


def test_soft_target_rows_fall_back_to_labels():
    df = pd.DataFrame(
        {"label_id": [0, 1, 1, 0], "p_spiral": [0.7, np.nan, 0.2, 0.6], "p_elliptical": [0.1, np.nan, 0.8, 0.6]}
    )
    np.testing.assert_allclose(soft_targets(df), [[0.875, 0.125], [0, 1], [0.2, 0.8], [0.5, 0.5]], rtol=1e-6)
    assert np.allclose(soft_targets(df[["label_id"]]), [[1, 0], [0, 1], [0, 1], [1, 0]])


def test_device_and_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_device("cpu") == cpu
    assert amp_dtype_for(cpu, "fp32") is None and amp_dtype_for(cpu, "bf16") == torch.bfloat16
    assert amp_dtype_for(cpu, "auto") == (torch.bfloat16 if cpu_has_fast_bf16() else None)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(UserError, match="train.device"):
        resolve_device("tpu9")


# --------------------------------------------------------------------------------------------------- fit


def test_finetune_learns_a_separable_set(catalogue, params, tmp_path, caplog):
    p = tiny_params(params, tmp_path, mode="finetune", epochs=3, lr=0.003)
    seen = []
    with caplog.at_level("WARNING", logger="galmorph.training.loop"):
        result = fit(catalogue, p, on_epoch=lambda e, m: seen.append((e, m)), progress=False)
    assert "unfreeze_blocks" not in caplog.text  # the whole network trains: nothing stays random
    assert [e for e, _ in seen] == [1, 2, 3]
    keys = {"train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "images_per_s"}
    assert keys <= set(seen[0][1])
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_metrics["val_acc"] >= 0.9
    assert not result.model.training and next(result.model.parameters()).device.type == "cpu"
    # the returned model is the best epoch's: its predictions reproduce the kept validation logits
    val = catalogue[catalogue["split"] == "val"]
    logits = predict_logits(
        result.model, val, p.preprocess, batch_size=8, num_workers=0, device="cpu", precision="fp32"
    )
    np.testing.assert_allclose(logits, result.val_logits, rtol=1e-3, atol=1e-3)


def test_finetune_from_scratch_says_when_frozen_stages_stay_random(catalogue, params, tmp_path, caplog):
    """Freezing stages pays with pretrained weights; from scratch they would keep their random weights."""
    p = tiny_params(params, tmp_path, mode="finetune", epochs=1, unfreeze_blocks=3)
    with caplog.at_level("WARNING", logger="galmorph.training.loop"):
        result = fit(catalogue, p, progress=False)
    assert "train.unfreeze_blocks: 3 with model.weights: none keeps stem, layer1 at their random" in caplog.text
    assert result.model.frozen_stages == ("stem", "layer1")


def test_frozen_mode_learns_and_its_model_is_backbone_plus_head(catalogue, params, tmp_path):
    p = tiny_params(params, tmp_path, mode="frozen", epochs=3, lr=0.003)
    result = fit(catalogue, p, progress=False)
    assert result.best_metrics["val_acc"] >= 0.9
    val = catalogue[catalogue["split"] == "val"]
    logits = predict_logits(
        result.model, val, p.preprocess, batch_size=8, num_workers=0, device="cpu", precision="fp32"
    )
    # the cache is float16: the full network on images agrees with the head on cached features to that precision
    np.testing.assert_allclose(logits, result.val_logits, rtol=2e-2, atol=2e-2)


def test_fits_on_one_cache_share_its_derived_inputs_not_their_weights(catalogue, params, tmp_path):
    """Tuning trials reuse what fit() derives from the cache (standardised features, the built backbone) and
    still train exactly as a fit on a fresh cache does, without touching each other's network."""
    p = tiny_params(params, tmp_path, mode="frozen", epochs=2, lr=0.003)
    train_val = catalogue[catalogue["split"].isin(["train", "val"])]
    cache = build_feature_cache(train_val, p.model, p.preprocess, p.embed, device="cpu", progress=False)
    fresh = dataclasses.replace(cache, derived={})
    first = fit(catalogue, p, features=cache, progress=False)
    (template,) = [inputs.template for inputs in cache.derived.values()]
    second = fit(catalogue, p, features=cache, progress=False)
    alone = fit(catalogue, p, features=fresh, progress=False)
    assert len(cache.derived) == 1
    np.testing.assert_array_equal(second.val_logits, first.val_logits)
    np.testing.assert_array_equal(alone.val_logits, first.val_logits)
    assert first.model.backbone is not template.backbone and second.model.backbone is not first.model.backbone
    other = dataclasses.replace(p, train=replace(p.train, val_tta=True))  # other validation views: its own entry
    fit(catalogue, other, features=cache, progress=False)
    assert len(cache.derived) == 1 and next(iter(cache.derived))[1] != (0,)


def test_early_stopping_on_validation_loss(catalogue, params, tmp_path):
    # lr 0: the validation loss never improves after epoch 1, so patience 2 stops after epoch 3
    p = tiny_params(params, tmp_path, mode="frozen", epochs=10, lr=0.0, schedule="constant", early_stopping_patience=2)
    result = fit(catalogue, p, progress=False)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_on_epoch_exceptions_propagate(catalogue, params, tmp_path):
    class Pruned(Exception):
        pass

    def prune(epoch, metrics):
        raise Pruned(epoch)

    with pytest.raises(Pruned):
        fit(catalogue, tiny_params(params, tmp_path, mode="frozen", epochs=3), on_epoch=prune, progress=False)


def test_missing_split_column_is_a_user_error(catalogue, params, tmp_path):
    with pytest.raises(UserError, match="split_9"):
        fit(catalogue, tiny_params(params, tmp_path), split_column="split_9", progress=False)


def _kill_after_first_epoch(catalogue, p, checkpoint_dir):
    """A run killed once epoch 1 is checkpointed (what a resume then starts from)."""

    class Killed(Exception):
        pass

    def kill_after_first(epoch, metrics):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        fit(catalogue, p, checkpoint_dir=checkpoint_dir, on_epoch=kill_after_first, progress=False)


def _assert_resumes_to(straight, catalogue, p, checkpoint_dir):
    """A run of `p` killed after epoch 1 and resumed ends with `straight`'s history and weights."""
    _kill_after_first_epoch(catalogue, p, checkpoint_dir)
    resumed = fit(catalogue, p, checkpoint_dir=checkpoint_dir, resume=True, progress=False)
    assert _without_timing(resumed.history) == _without_timing(straight.history)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_resume_after_a_kill_equals_an_uninterrupted_run(catalogue, params, tmp_path, mode):
    extra = {"num_workers": 1} if mode == "finetune" else {}  # augmentation in a worker process, reseeded per epoch
    p = tiny_params(params, tmp_path, mode=mode, epochs=3, lr=0.003, warmup_epochs=1, **extra)
    straight = fit(catalogue, p, checkpoint_dir=tmp_path / "a", progress=False)

    _kill_after_first_epoch(catalogue, p, tmp_path / "b")
    ckpt = load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 1
    resumed_epochs = []
    resumed = fit(
        catalogue,
        p,
        checkpoint_dir=tmp_path / "b",
        resume=True,
        on_epoch=lambda e, m: resumed_epochs.append(e),
        progress=False,
    )
    assert resumed_epochs == [2, 3]
    assert _without_timing(resumed.history) == _without_timing(straight.history)
    assert resumed.best_epoch == straight.best_epoch
    for k, v in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    np.testing.assert_array_equal(resumed.val_logits, straight.val_logits)


def test_a_checkpoint_of_the_multi_tensor_optimizer_resumes_with_the_fused_one(
    catalogue, params, tmp_path, monkeypatch
):
    """A run killed before fit() fused its optimizer resumes after the upgrade: the multi-tensor AdamW's moments
    and step counts load into the fused one, which then steps from them (not from a fresh start)."""
    p = tiny_params(params, tmp_path, mode="finetune", epochs=2, lr=0.003)
    with monkeypatch.context() as m:
        m.setattr(loop, "build_optimizer", functools.partial(loop.build_optimizer, fused=False))
        _kill_after_first_epoch(catalogue, p, tmp_path / "old")
    saved = load_checkpoint(tmp_path / "old" / CHECKPOINT_NAME)["optimizer"]
    built = []
    monkeypatch.setattr(loop, "build_optimizer", lambda *a, **k: built.append(build_optimizer(*a, **k)) or built[-1])
    resumed = fit(catalogue, p, checkpoint_dir=tmp_path / "old", resume=True, progress=False)
    assert len(resumed.history) == 2 and np.isfinite(resumed.history[-1]["train_loss"])
    (opt,) = built
    assert opt.defaults["fused"]
    steps = {float(v["step"]) for v in opt.state_dict()["state"].values()}
    first = {float(v["step"]) for v in saved["state"].values()}
    assert len(first) == 1 and steps == {2 * first.pop()}  # epoch 2 continued epoch 1's count


def test_checkpoint_is_one_weights_only_dict(catalogue, params, tmp_path):
    p = tiny_params(params, tmp_path, mode="finetune", epochs=1)
    fit(catalogue, p, checkpoint_dir=tmp_path / "ck", progress=False)
    ckpt = torch.load(tmp_path / "ck" / CHECKPOINT_NAME, weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "params", "rng", "history", "best"} <= set(ckpt)
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved from the unwrapped model
    assert ckpt["params"]["train"]["lr"] == p.train.lr and ckpt["best"]["epoch"] == 1
    assert not list((tmp_path / "ck").glob("*.tmp"))


def test_resume_refuses_other_params(catalogue, params, tmp_path):
    p = tiny_params(params, tmp_path, mode="frozen", epochs=1)
    fit(catalogue, p, checkpoint_dir=tmp_path / "ck", progress=False)
    other = dataclasses.replace(p, train=replace(p.train, lr=0.5))
    with pytest.raises(UserError, match="train.lr"):
        fit(catalogue, other, checkpoint_dir=tmp_path / "ck", resume=True, progress=False)
    # settings that do not change the computation may differ
    moved = dataclasses.replace(p, train=replace(p.train, num_workers=1))
    assert len(fit(catalogue, moved, checkpoint_dir=tmp_path / "ck", resume=True, progress=False).history) == 1


# ----------------------------------------------------------------------------------------- train stage


def test_tuned_params_override(params, tmp_path):
    out = tmp_path / "best_params.yaml"
    p = dataclasses.replace(params, tune=replace(params.tune, out=str(out)))
    assert with_tuned(p)[0] is p
    out.write_text(yaml.safe_dump({"train.lr": 0.003, "model.hidden": 256}))
    t, flat = with_tuned(p)
    assert (t.train.lr, t.model.hidden, t.train.epochs) == (0.003, 256, params.train.epochs)
    assert flat == {"train.lr": 0.003, "model.hidden": 256}
    assert with_tuned(params, out)[0].train.lr == 0.003  # an explicit path instead of tune.out
    out.write_text(yaml.safe_dump({"train.nope": 1}))
    with pytest.raises(UserError, match="nope"):
        with_tuned(p)


@pytest.mark.slow
def test_train_stage_end_to_end(catalogue, params, tmp_path, mlflow_uri):
    import mlflow

    p, path = write_params(tiny_params(params, tmp_path, mode="frozen", epochs=2), tmp_path, catalogue)
    assert cli.main(["--params", path, "train"]) == 1  # frozen mode needs the embed stage first
    assert cli.main(["--params", path, "embed"]) == 0
    assert cli.main(["--params", path, "train"]) == 0
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert metrics["best_epoch"] in (1, 2) and metrics["temperature"] > 0 and metrics["model_uri"]
    bundle = torch.load(p.train.out, weights_only=True)
    assert bundle["temperature"] == pytest.approx(metrics["temperature"])
    curves = pd.read_csv(p.train.curves)
    assert list(curves["epoch"]) == [1, 2] and {"train_loss", "val_loss", "train_acc", "val_acc"} <= set(curves)

    client = mlflow.MlflowClient(mlflow_uri)
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.data.tags["galmorph.stage"] == "train" and run.data.params["train.mode"] == "frozen"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert steps == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "train")}
    assert {"train/curves.csv", "train/curves.png", "train/confusion_val.png"} <= artifacts
    model = mlflow.pyfunc.load_model(metrics["model_uri"])
    out = model.predict(pd.DataFrame({"image": list(catalogue["image_path"].iloc[:3])}))
    assert list(out.columns[:2]) == ["p_spiral", "p_elliptical"]


def test_train_preset_without_augmentation_frames_like_the_eval_preset(params):
    """TrainPreset augments at twice the input size; with every augmentation off it must still frame and scale
    the galaxy as EvalPreset does (only the resampling order differs)."""
    from PIL import Image

    from galmorph.data.transforms import TrainPreset

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:424, :424]
    blob = np.exp(-((xx - 212.0) ** 2 + (yy - 190.0) ** 2) / (2 * 30.0**2))  # an off-centre smooth galaxy
    pixels = (255 * np.clip(blob[..., None] * [1.0, 0.8, 0.6] + rng.normal(0, 0.01, (424, 424, 3)), 0, 1)).astype(
        np.uint8
    )
    img = Image.fromarray(pixels)
    off = replace(params.augment, rotation=0.0, flip=False, scale=[1.0, 1.0], translate=0.0, color_jitter=0.0)
    train = TrainPreset(params.preprocess, off)(img)
    evaluated = EvalPreset(params.preprocess)(img)
    assert train.shape == evaluated.shape == (3, params.preprocess.image_size, params.preprocess.image_size)
    assert params.preprocess.crop > 2 * params.preprocess.image_size  # the downscaled path is the one tested
    assert float((train - evaluated).abs().max()) < 0.1  # normalised units: a few grey levels at most


def test_mixup_blends_whole_rows_by_a_share_of_at_least_one_half_and_replays_from_its_seed():
    x = torch.arange(6 * 3 * 4 * 4, dtype=torch.float32).reshape(6, 3, 4, 4)
    mixed, partner, share = BatchMix(0.4, 0.0, seed=7)(x)
    assert 0.5 <= share <= 1.0 and sorted(partner.tolist()) == list(range(6))
    torch.testing.assert_close(mixed, share * x + (1 - share) * x[partner])
    again = BatchMix(0.4, 0.0, seed=7)(x)
    assert torch.equal(again[0], mixed) and torch.equal(again[1], partner) and again[2] == share
    assert BatchMix(0.4, 0.0, seed=8)(x)[2] != share
    features = torch.randn(5, 8)  # frozen mode: cached features blend the same way
    f_mixed, f_partner, f_share = BatchMix(0.4, 0.0, seed=1)(features)
    torch.testing.assert_close(f_mixed, f_share * features + (1 - f_share) * features[f_partner])


def test_cutmix_pastes_one_box_of_the_partner_and_its_share_is_by_area():
    x = torch.arange(8 * 3 * 16 * 16, dtype=torch.float32).reshape(8, 3, 16, 16)  # every pixel distinct
    for seed in range(20):
        mixed, partner, share = BatchMix(0.0, 1.0, seed=seed)(x)
        moved = partner != torch.arange(8)
        assert moved.any()  # a permutation of 8 rows that moves none: 1 in 40,320
        pasted = (mixed != x).any(dim=1)  # (N, H, W): where a row shows its partner's pixels
        box = pasted[moved]
        assert (box == box[0]).all()  # the same box in every row that has a partner
        rows, cols = box[0].nonzero(as_tuple=True)
        if len(rows):  # one rectangle
            assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert float(box[0].float().mean()) == pytest.approx(1 - share)
        where = pasted.unsqueeze(1).expand_as(x)
        assert torch.equal(mixed[where], x[partner][where]) and torch.equal(mixed[~where], x[~where])

    def everywhere(mixed: torch.Tensor, partner: torch.Tensor) -> bool:
        moved = partner != torch.arange(8)
        return bool((mixed != x).any(dim=1)[moved].all())

    kinds = {everywhere(*BatchMix(0.4, 1.0, seed=s)(x)[:2]) for s in range(30)}
    assert kinds == {True, False}  # both on: some batches blended everywhere (mixup), some only in a box


@pytest.mark.parametrize("loss", ["ce", "soft", "dirichlet"])
def test_a_mixed_batch_is_trained_on_the_same_blend_of_both_rows_losses(loss):
    """Whatever train.loss is: the blend is of the two rows' losses, each against its own targets (labels,
    vote fractions or vote counts)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    x, labels = torch.randn(6, 4), torch.tensor([0, 1, 1, 0, 1, 0])
    fractions = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.45, 0.55], [1.0, 0.0], [0.2, 0.8], [0.6, 0.4]])
    soft = {"ce": F.one_hot(labels, 2).float(), "soft": fractions, "dirichlet": fractions * 40}[loss]
    crit = Criterion(loss, torch.tensor([0.8, 1.3]), 0.05)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    got = train_one_epoch(
        model,
        [(x, labels, soft, torch.arange(6))],
        optimizer,
        None,
        crit,
        device=torch.device("cpu"),
        progress=False,
        mix=BatchMix(0.4, 0.0, seed=3),
    )
    mixed, partner, share = BatchMix(0.4, 0.0, seed=3)(x)
    with torch.no_grad():
        logits = model(mixed)
        want = share * crit(logits, labels, soft) + (1 - share) * crit(logits, labels[partner], soft[partner])
    assert got["train_loss"] == pytest.approx(float(want), rel=1e-6)
    with torch.no_grad():
        assert float(want) != pytest.approx(float(crit(model(x), labels, soft)), rel=1e-3)


def test_mixup_and_cutmix_train_resume_and_refuse_bad_settings(catalogue, params, tmp_path):
    """Both on in finetune mode: a different model than without, and a run killed after epoch 1 resumes to the
    same one (the draws come from the epoch's seed). Bad values stop fit before any image is decoded."""
    p = tiny_params(params, tmp_path, mode="finetune", epochs=2, lr=0.003, mixup=0.4, cutmix=1.0)
    plain = fit(catalogue, tiny_params(params, tmp_path, mode="finetune", epochs=2, lr=0.003), progress=False)
    straight = fit(catalogue, p, checkpoint_dir=tmp_path / "a", progress=False)
    assert any(not torch.equal(v, straight.model.state_dict()[k]) for k, v in plain.model.state_dict().items())
    _assert_resumes_to(straight, catalogue, p, tmp_path / "b")


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"mixup": -0.2}, "train.mixup: expected a Beta alpha >= 0"),
        ({"cutmix": float("nan")}, "train.cutmix: expected a Beta alpha >= 0"),
        ({"mode": "frozen", "cutmix": 1.0}, "train.cutmix needs images"),
        ({"ema": 1.5}, "train.ema: expected a decay between 0 and 1"),
        ({"ema": 0}, "train.ema"),
        ({"mode": "finetune", "progressive_start": 8}, "train.progressive_start: expected a side in px >= 16"),
        ({"mode": "finetune", "progressive_start": 48, "progressive_until": 0}, "train.progressive_until"),
        ({"mode": "frozen", "progressive_start": 48}, "progressive_start needs images"),
    ],
)
def test_bad_mix_ema_or_progressive_settings_stop_when_params_are_read(tmp_path, train, message):
    """Checked with params.yaml itself, so `galmorph train` stops with one line before it opens an MLflow run
    or decodes an image (as a -S flag would set them)."""
    raw = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    raw["train"].update(train)
    with pytest.raises(UserError, match=message):
        params_from_raw(raw)


def test_ema_weights_are_what_is_validated_kept_and_resumed(catalogue, params, tmp_path):
    """train.ema: validation, the best epoch and the returned model are the moving average (not the last step's
    weights), and a run killed after epoch 1 resumes to the same average."""
    p = tiny_params(params, tmp_path, mode="finetune", epochs=3, lr=0.003, ema=0.9)
    plain = fit(catalogue, tiny_params(params, tmp_path, mode="finetune", epochs=3, lr=0.003), progress=False)
    straight = fit(catalogue, p, checkpoint_dir=tmp_path / "a", progress=False)
    assert any(not torch.equal(v, straight.model.state_dict()[k]) for k, v in plain.model.state_dict().items())
    val = catalogue[catalogue["split"] == "val"]
    logits = predict_logits(
        straight.model, val, p.preprocess, batch_size=8, num_workers=0, device="cpu", precision="fp32"
    )
    np.testing.assert_allclose(logits, straight.val_logits, rtol=1e-3, atol=1e-3)

    _assert_resumes_to(straight, catalogue, p, tmp_path / "b")


def test_ema_is_the_normalised_average_of_the_steps_so_far():
    """train.ema is bias-corrected: after n steps each step's weights count decay^(n-i), normalised, so a short
    run's average is not the first step's weights (torch's plain EMA keeps decay^(n-1) of them); integer
    buffers take the latest value."""
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    values = [1.0, 2.0, 4.0, 8.0]
    for decay in (0.5, 0.999):
        ema = moving_average(net, decay)
        for v in values:
            with torch.no_grad():
                net[0].weight.fill_(v)
                net[1].num_batches_tracked.fill_(int(v))
            ema.update_parameters(net)
        w = decay ** np.arange(len(values) - 1, -1, -1)
        expected = float((w * values).sum() / w.sum())
        assert ema.module[0].weight.item() == pytest.approx(expected, rel=1e-6)
        assert ema.module[1].num_batches_tracked.item() == 8
    assert expected == pytest.approx(np.mean(values), rel=1e-3)  # at 0.999: close to the mean, not the first (1.0)


# ------------------------------------------------------------------------------------------- progressive


def test_progressive_side_grows_in_steps_of_8_to_image_size_and_stays():
    tcfg = replace(tiny_train(), mode="finetune", progressive_start=48, progressive_until=0.7, epochs=10)
    sides = [progressive_side(tcfg, 80, e) for e in range(1, 11)]
    assert sides[0] == 48 and sides[6:] == [80] * 4  # round(0.7 x 10) = epoch 7 onwards at image_size
    assert sides == sorted(sides) and all(s % 8 == 0 for s in sides)
    assert len(set(sides)) >= 4  # grows through the sides between, not one jump
    assert [progressive_side(replace(tcfg, progressive_start=None), 80, e) for e in (1, 10)] == [80, 80]
    with pytest.raises(UserError, match="below preprocess.image_size"):
        progressive_side(tcfg, 48, 1)


def test_at_side_resizes_training_batches_and_leaves_their_side_alone():
    x = torch.rand(4, 3, 32, 32)
    batch = (x, torch.zeros(4, dtype=torch.long), torch.zeros(4, 2), torch.arange(4))
    ((small, *rest),) = list(at_side(iter([batch]), 16))
    assert small.shape == (4, 3, 16, 16) and rest[0] is batch[1]
    torch.testing.assert_close(small.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=5e-3, rtol=0)  # antialiased: means kept
    ((same, *_),) = list(at_side(iter([batch]), 32))
    assert same is x
    features = (torch.rand(4, 512), *batch[1:])  # frozen mode's batches: feature vectors, left alone
    ((kept, *_),) = list(at_side(iter([features]), 16))
    assert kept is features[0]


@pytest.mark.parametrize("loader", ["files", "cache"])
def test_progressive_resizing_trains_small_first_and_resumes(catalogue, params, tmp_path, loader):
    """Epoch 1 trains at progressive_start, the last at image_size (validation always there); the network
    differs from a run without, and a run killed after epoch 1 resumes to the same weights."""
    p = tiny_params(
        params,
        tmp_path,
        mode="finetune",
        epochs=3,
        lr=0.003,
        loader=loader,
        progressive_start=16,
        progressive_until=1.0,
    )
    straight = fit(catalogue, p, checkpoint_dir=tmp_path / "a", progress=False)
    assert [row["train_side"] for row in straight.history] == [16.0, 24.0, 32.0]
    plain = fit(catalogue, replace_train(p, progressive_start=None), progress=False)
    assert "train_side" not in plain.history[0]
    assert any(not torch.equal(v, straight.model.state_dict()[k]) for k, v in plain.model.state_dict().items())
    _assert_resumes_to(straight, catalogue, p, tmp_path / "b")


def test_a_progressive_start_at_image_size_stops_before_decoding(catalogue, params, tmp_path):
    missing = catalogue.assign(image_path=str(tmp_path / "nowhere.jpg"))  # decoding it would fail differently
    with pytest.raises(UserError, match=r"below preprocess.image_size \(32\)"):
        fit(missing, tiny_params(params, tmp_path, mode="finetune", progressive_start=32), progress=False)


def tiny_train():
    """params.yaml's train section (progressive_side reads only epochs and the progressive keys)."""
    return load_params(Path(__file__).parents[1] / "params.yaml").train


def replace_train(p, **changes):
    return dataclasses.replace(p, train=replace(p.train, **changes))


def test_criterion_gives_outlier_rows_the_uniform_cross_entropy_weighted():
    """Rows labelled -1 (train.outliers) add outlier_weight x the mean cross-entropy to 50/50; the galaxies' term
    is the same as without them."""
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [3.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1, -1, -1])
    soft = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    for loss in ("ce", "soft"):
        crit = Criterion(loss, torch.tensor([0.8, 1.3]), 0.05, outlier_weight=0.7)
        galaxies = crit(logits[:2], labels[:2], soft[:2])
        uniform = -F.log_softmax(logits[2:], 1).mean()
        torch.testing.assert_close(crit(logits, labels, soft), galaxies + 0.7 * uniform)
    # at 50/50 the outlier term is its minimum, log 2
    torch.testing.assert_close(-F.log_softmax(logits[3:], 1).mean(), torch.tensor(np.log(2.0), dtype=torch.float32))


def test_train_acc_counts_only_the_galaxies_not_the_outliers():
    """Outlier rows (label -1) have no class: one galaxy right and one wrong is 0.5, not 1 of 4."""
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, -1, -1])
    soft = torch.full((4, 2), 0.5)
    got = train_one_epoch(
        model,
        [(x, labels, soft, torch.arange(4))],
        torch.optim.SGD(model.parameters(), lr=0.0),
        None,
        Criterion("ce", None, 0.0),
        device=torch.device("cpu"),
        progress=False,
    )
    assert got["train_acc"] == 0.5


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_build_optimizer_fuses_the_update_and_keeps_the_rule(params, tmp_path, optimizer):
    """fit()'s optimizer is one fused kernel on CPU (BENCHMARKS.md "the training step"), with the groups'
    learning rates and weight decays, and its steps are those of torch's multi-tensor optimizer of the same rule
    (built here, independently) up to rounding; `fused=False` is that multi-tensor optimizer."""
    p = tiny_params(params, tmp_path, optimizer=optimizer, lr=0.01, weight_decay=0.05, layer_decay=0.5)
    assert not build_optimizer(build_model(p.model), p.train, fused=False).defaults["fused"]
    nets = []
    for fused in (True, False):
        torch.manual_seed(0)
        net = build_model(p.model)
        groups = param_groups(net, p.train.lr, p.train.weight_decay, p.train.layer_decay)
        if fused:
            opt = build_optimizer(net, p.train)
        else:  # the reference: the same groups, torch's default (multi-tensor) implementation
            opt = (
                torch.optim.SGD(groups, lr=p.train.lr, momentum=0.9, nesterov=True)
                if optimizer == "sgd"
                else torch.optim.AdamW(groups, lr=p.train.lr)
            )
        assert bool(opt.defaults["fused"]) is fused
        assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
            (g["lr"], g["weight_decay"]) for g in groups
        ]
        assert len({g["lr"] for g in groups}) > 1  # layer decay: several groups, each its own rate
        start = torch.cat([w.detach().flatten() for w in net.parameters()])
        torch.manual_seed(1)
        x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        nets.append(net)
    fused_w, plain_w = (torch.cat([w.detach().flatten() for w in n.parameters()]) for n in nets)
    assert (fused_w - start).abs().max() > 1e-3  # the steps moved the weights
    # Adam divides by sqrt(v) + eps: where a gradient is near zero, rounding moves that weight's step by up to
    # lr, so a few elements of millions differ; a different rule (decay, lr, momentum) would move all of them.
    diff = (fused_w - plain_w).abs()
    assert diff.max() <= p.train.lr
    assert (diff > 1e-6).float().mean() < 1e-3
