"""fit(): epochs, early stopping, checkpoints and resume, for both training modes.

frozen:   the head trains on the embedding cache (a random dihedral view per image each epoch);
finetune: the network (or its top N stages) trains on augmented images with layer-wise lr decay.

A run killed after epoch k and resumed from its checkpoint replays epochs k+1.. exactly as an
uninterrupted run would (training/checkpoint.py).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm.auto import tqdm

from galmorph.config import ModelConfig, Params, TrainConfig
from galmorph.data.dataset import (
    ImageDataset,
    PseudoLabels,
    has_vote_counts,
    label_ids,
    outlier_paths,
    pseudo_rows,
    soft_targets,
    vote_counts,
)
from galmorph.data.survey import SurveyAugment, survey_batches
from galmorph.data.transforms import MEAN, STD, BatchAugment, EvalPreset, FramedUint8, TrainPreset, check_views
from galmorph.errors import UserError
from galmorph.models.inference import amp_dtype_for, iterate, resolve_device
from galmorph.models.resnet import (
    GalaxyNet,
    build_head,
    build_model,
    fold_input_standardization,
    outputs_for_loss,
    param_groups,
    set_trainable,
)
from galmorph.paths import repo_root, resolve_path
from galmorph.training.checkpoint import (
    CHECKPOINT_NAME,
    TrainState,
    data_fingerprint,
    determinism,
    epoch_seed,
    restore,
    save_checkpoint,
    seed_epoch,
)
from galmorph.training.distributed import DistContext, barrier, broadcast_buffers, local_device, process_group
from galmorph.training.engine import Batch, BatchMix, Criterion, class_weights, describe, evaluate, train_one_epoch
from galmorph.training.features import FeatureCache, compute_features
from galmorph.training.memory import keep_freed_memory

EpochCallback = Callable[[int, dict[str, float]], None]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class FitResult:
    """The trained model (cpu, eval mode, best epoch's weights) and what happened on the way."""

    model: GalaxyNet
    history: list[dict[str, float]]
    best_epoch: int
    best_metrics: dict[str, float]
    train_cfg: TrainConfig
    model_cfg: ModelConfig
    val_logits: np.ndarray  # (n_val, 2) of the best epoch, in the catalogue's order of validation rows
    val_labels: np.ndarray  # (n_val,) label_id
    stopped_early: bool
    pseudo_images: int = 0  # training rows train.pseudo added


def fit(
    catalogue: pd.DataFrame,
    params: Params,
    *,
    split_column: str = "split",
    on_epoch: EpochCallback | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    features: FeatureCache | None = None,
    progress: bool = True,
) -> FitResult:
    """Train on the rows with split == "train", select and early-stop on split == "val".

    on_epoch(epoch, metrics) runs after each epoch (epochs count from 1) once the checkpoint is saved;
    whatever it raises (Optuna's TrialPruned) propagates. In frozen mode without `features` the cache is
    computed in memory for the train and val rows.
    """
    tcfg, mcfg = params.train, params.model
    train_rows, val_rows, pseudo = _training_rows(catalogue, params, split_column, progress)
    device = resolve_device(tcfg.device)
    if tcfg.keep_freed_memory:
        keep_freed_memory()
    with determinism(tcfg.deterministic), process_group(device) as ctx:
        device = local_device(device, ctx)
        amp = amp_dtype_for(device, tcfg.precision)
        if tcfg.mode == "frozen":
            model, data = _frozen_setup(params, train_rows, val_rows, features, device, ctx, progress)
        else:
            model, data = _finetune_setup(params, train_rows, val_rows, device, ctx, progress)
        model.outputs = outputs_for_loss(tcfg.loss)
        model.to(device)
        trainable: nn.Module = model.head if tcfg.mode == "frozen" else model
        if data.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, tcfg)
        scheduler = _scheduler(optimizer, tcfg, data.steps_per_epoch)
        ema = moving_average(model, tcfg.ema)
        scored = ema.module if ema is not None else model  # what is validated, kept and returned
        criterion = Criterion(
            tcfg.loss,
            class_weights(label_ids(train_rows), tcfg.class_weights),
            tcfg.label_smoothing,
            tcfg.outlier_weight,
        ).to(device)
        train_module = (
            DistributedDataParallel(trainable, device_ids=[device.index] if device.type == "cuda" else None)
            if ctx.is_distributed
            else trainable
        )
        state = TrainState()
        ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
        fingerprint = data_fingerprint(train_rows, val_rows)
        if resume and ckpt_path is not None and ckpt_path.is_file():
            state = restore(ckpt_path, params, fingerprint, model, optimizer, scheduler, ema)
            if ctx.is_main and progress:
                tqdm.write(f"resumed from {ckpt_path} after epoch {state.epoch}")
        elif resume and ctx.is_main and progress:
            tqdm.write(f"no checkpoint at {ckpt_path}; starting from epoch 1")

        for epoch in range(state.epoch + 1, tcfg.epochs + 1):
            if state.stopped:
                break
            seed_epoch(tcfg.seed, epoch, ctx.rank)
            start = time.perf_counter()
            metrics: dict[str, float] = {"epoch": float(epoch)}
            side = progressive_side(tcfg, params.preprocess.image_size, epoch)
            batches = data.train_batches(epoch)
            if side != params.preprocess.image_size:  # train.progressive_start: an early, smaller epoch
                batches = at_side(batches, side)
            metrics |= train_one_epoch(
                train_module,
                batches,
                optimizer,
                scheduler,
                criterion,
                device=device,
                amp_dtype=amp,
                channels_last=data.channels_last,
                ctx=ctx,
                desc=f"epoch {epoch}/{tcfg.epochs}",
                total=data.steps_per_epoch,
                progress=progress,
                after_step=(lambda: ema.update_parameters(model)) if ema is not None else None,
                mix=batch_mix(tcfg, epoch_seed(tcfg.seed + 2, epoch, ctx.rank)),
            )
            broadcast_buffers(model, ctx)
            val_metrics, val_logits = evaluate(
                scored.head if tcfg.mode == "frozen" else scored,
                data.val_batches(),
                n_rows=len(val_rows),
                device=device,
                amp_dtype=amp,
                channels_last=data.channels_last,
                views=data.val_views,
                ctx=ctx,
                progress=progress,
            )
            metrics |= val_metrics
            metrics["lr"] = float(optimizer.param_groups[0]["lr"])
            if tcfg.progressive_start is not None:
                metrics["train_side"] = float(side)
            metrics["epoch_time_s"] = time.perf_counter() - start
            state.record(epoch, metrics, scored, val_logits, tcfg.mode, tcfg.early_stopping_patience)
            if ckpt_path is not None and ctx.is_main:
                save_checkpoint(ckpt_path, state, params, fingerprint, model, optimizer, scheduler, ema)
            barrier(ctx)
            if ctx.is_main and progress:
                flag = "  *best" if state.best_epoch == epoch else ""
                tqdm.write(f"epoch {epoch:>3}/{tcfg.epochs} | {describe(metrics)}{flag}")
            if on_epoch is not None:
                on_epoch(epoch, dict(metrics))

    if state.best_state is None:
        raise UserError(f"train.epochs={tcfg.epochs}: nothing was trained")
    model.load_state_dict(state.best_state, strict=tcfg.mode != "frozen")
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    if data.finalize is not None:
        data.finalize(model)
    return FitResult(
        model=model,
        history=state.history,
        best_epoch=state.best_epoch,
        best_metrics=dict(state.history[state.best_epoch - 1]),
        train_cfg=tcfg,
        model_cfg=mcfg,
        val_logits=state.best_val_logits,
        val_labels=label_ids(val_rows),
        stopped_early=state.stopped,
        pseudo_images=0 if pseudo is None else len(pseudo.rows),
    )


# ---------------------------------------------------------------------------------------------------------
# data of the two modes


@dataclasses.dataclass
class _Data:
    """How one mode feeds fit(): per-epoch training batches and the (fixed) validation batches."""

    train_batches: Callable[[int], Iterator[Batch]]
    val_batches: Callable[[], Iterator[Batch]]
    steps_per_epoch: int
    val_views: list[str] | None
    channels_last: bool
    finalize: Callable[[GalaxyNet], None] | None  # applied to the best model before it is returned


def targets(rows: pd.DataFrame, cfg: TrainConfig) -> np.ndarray:
    """What the loss trains toward besides the label: vote counts (dirichlet) or vote fractions."""
    return vote_counts(rows, cfg.label_votes) if cfg.loss == "dirichlet" else soft_targets(rows)


def _check_targets(train_rows: pd.DataFrame, cfg: TrainConfig, progress: bool) -> None:
    """dirichlet needs vote counts on at least some training galaxies; say how many have them."""
    if cfg.loss != "dirichlet":
        return
    if not cfg.label_votes > 0:
        raise UserError(f"params: train.label_votes: expected a number of votes > 0, got {cfg.label_votes}")
    n = int(has_vote_counts(train_rows).sum())
    if n == 0:
        raise UserError(
            "train.loss=dirichlet: no training galaxy has vote counts (columns count_spiral/count_elliptical: "
            "GZ1 table 2 gives them; for a manifest set data.manifest.count_columns or total_votes_column)"
        )
    if progress:
        tqdm.write(
            f"dirichlet: {n} of {len(train_rows)} training galaxies have vote counts; the other "
            f"{len(train_rows) - n} count as {cfg.label_votes:g} vote(s) for their label"
        )


def check_inputs(catalogue: pd.DataFrame, params: Params) -> None:
    """What fit() refuses in its first second, refused before a stage opens its MLflow run (a refusal a second
    later leaves that run marked failed): the training rows' settings and every row of the tables train.pseudo
    and train.outliers name. fit() reads the tables again: milliseconds against the minutes of training."""
    _training_rows(catalogue, params, "split", progress=False)
    if params.train.outliers:
        outlier_paths(resolve_path(params.train.outliers, repo_root()))


def _training_rows(
    catalogue: pd.DataFrame, params: Params, split_column: str, progress: bool
) -> tuple[pd.DataFrame, pd.DataFrame, PseudoLabels | None]:
    """The training rows (with train.pseudo's), the validation rows and the pseudo-labels, once checked."""
    tcfg = params.train
    train_rows, val_rows = _split_rows(catalogue, split_column)
    pseudo = _pseudo_labels(tcfg, catalogue, progress)
    if pseudo is not None:
        train_rows = pd.concat([train_rows, pseudo.rows], ignore_index=True)
    _check_targets(train_rows, tcfg, progress)
    progressive_side(tcfg, params.preprocess.image_size, 1)  # a start at or above image_size stops here
    return train_rows, val_rows, pseudo


def _pseudo_labels(cfg: TrainConfig, catalogue: pd.DataFrame, progress: bool) -> PseudoLabels | None:
    """train.pseudo's rows (None when off), checked against every image of the catalogue, and said."""
    if not cfg.pseudo:
        return None
    pseudo = pseudo_rows(resolve_path(cfg.pseudo, repo_root()), catalogue)
    if progress:
        tqdm.write(f"train.pseudo: {pseudo.describe()}")
    return pseudo


def _split_rows(catalogue: pd.DataFrame, split_column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    for col in (split_column, "galaxy_id", "image_path", "label_id"):
        if col not in catalogue.columns:
            raise UserError(f"catalogue: missing column {col} (expected the split stage's splits.parquet)")
    train = catalogue[catalogue[split_column] == "train"].reset_index(drop=True)
    val = catalogue[catalogue[split_column] == "val"].reset_index(drop=True)
    if train.empty or val.empty:
        raise UserError(f"catalogue: column {split_column} needs both train and val rows ({len(train)}, {len(val)})")
    return train, val


@dataclasses.dataclass(frozen=True)
class _FrozenInputs:
    """What a frozen fit derives from the cache before its first step: the network with the cached backbone
    and standardised train/val features. The same for every tuning trial on the same rows."""

    template: GalaxyNet
    mean: np.ndarray
    std: np.ndarray
    train_x: torch.Tensor  # float16 (N, V, D), standardised
    val_x: torch.Tensor  # float16 (N, len(val views), D), standardised


def _val_view_index(cfg: TrainConfig, views: list[str]) -> list[int]:
    return list(range(len(views))) if cfg.val_tta or "identity" not in views else [views.index("identity")]


def _frozen_inputs(model: GalaxyNet, train_x: np.ndarray, val_x: np.ndarray, val_views: list[int]) -> _FrozenInputs:
    mean, std = _feature_stats(train_x)
    vx = _standardise(np.asarray(val_x)[:, val_views], mean, std)
    return _FrozenInputs(model, mean, std, _standardise(train_x, mean, std), vx)


def _cached_frozen_inputs(
    params: Params, features: FeatureCache, train_rows: pd.DataFrame, val_rows: pd.DataFrame
) -> _FrozenInputs:
    """Build the frozen inputs once per (cache, rows, val views) and keep them on the cache: building a
    ResNet-50 and standardising 10,000 x 5 x 2048 features took ~1.5 s, paid again by every tuning trial."""
    mcfg = params.model
    meta = features.meta
    if (meta.get("arch"), meta.get("weights")) != (mcfg.arch, mcfg.weights):
        raise UserError(
            f"embedding cache: made with {meta.get('arch')} weights={meta.get('weights')}, params say "
            f"{mcfg.arch} weights={mcfg.weights}; run `galmorph embed`"
        )
    val_views = _val_view_index(params.train, list(features.views))
    key = (data_fingerprint(train_rows, val_rows), tuple(val_views))
    if key not in features.derived:
        model = build_model(dataclasses.replace(mcfg, weights="none"))
        model.backbone.load_state_dict(features.backbone_state)
        train_x = np.asarray(features.features[features.rows(train_rows["galaxy_id"].astype(str).tolist())])
        val_x = np.asarray(features.features[features.rows(val_rows["galaxy_id"].astype(str).tolist())])
        features.derived.clear()  # one entry: the rows of the study at hand
        features.derived[key] = _frozen_inputs(model, train_x, val_x, val_views)
    return features.derived[key]


def _frozen_setup(
    params: Params,
    train_rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    features: FeatureCache | None,
    device: torch.device,
    ctx: DistContext,
    progress: bool,
) -> tuple[GalaxyNet, _Data]:
    tcfg, mcfg = params.train, params.model
    if features is None:
        # no cache given: embed exactly as the embed stage would (same seed, same backbone), in memory
        torch.manual_seed(params.embed.seed)
        model = build_model(mcfg)
        views = check_views(params.embed.views)
        both = pd.concat([train_rows, val_rows], ignore_index=True)
        feats = compute_features(
            model.backbone,
            both,
            params.preprocess,
            views,
            batch_size=params.embed.batch_size,
            num_workers=tcfg.num_workers,
            device=device,
            amp_dtype=amp_dtype_for(device, tcfg.precision),
            progress=progress and ctx.is_main,
        )
        inputs = _frozen_inputs(model, feats[: len(train_rows)], feats[len(train_rows) :], _val_view_index(tcfg, views))
    else:
        views = list(features.views)
        inputs = _cached_frozen_inputs(params, features, train_rows, val_rows)
        model = copy.deepcopy(inputs.template)  # trials must not share (or see each other's) weights
    torch.manual_seed(tcfg.seed)  # the head's initialisation does not depend on where the features came from
    model.head = build_head(mcfg, model.feature_dim)
    set_trainable(model, "frozen", 0)

    mean, std, tx, vx = inputs.mean, inputs.std, inputs.train_x, inputs.val_x
    ty, ts = torch.from_numpy(label_ids(train_rows)), torch.from_numpy(targets(train_rows, tcfg))
    vy, vs = torch.from_numpy(label_ids(val_rows)), torch.from_numpy(targets(val_rows, tcfg))
    bs = tcfg.batch_size
    per_rank = len(tx) // ctx.world_size  # equal step counts on every rank, or DDP would wait forever

    def train_batches(epoch: int) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(epoch_seed(tcfg.seed, epoch, 0))
        order = torch.randperm(len(tx), generator=g)
        view = torch.randint(len(views), (len(tx),), generator=g)  # one random view per image and epoch
        mine = order[: per_rank * ctx.world_size][ctx.rank :: ctx.world_size]
        for i in range(0, len(mine), bs):
            b = mine[i : i + bs]
            yield tx[b, view[b]].float(), ty[b], ts[b], b

    def val_batches() -> Iterator[Batch]:
        mine = torch.arange(len(vx))[ctx.rank :: ctx.world_size]
        for i in range(0, len(mine), 4 * bs):
            b = mine[i : i + 4 * bs]
            yield vx[b].float(), vy[b], vs[b], b

    def finalize(m: GalaxyNet) -> None:
        fold_input_standardization(m.head, torch.from_numpy(mean), torch.from_numpy(std))

    return model, _Data(train_batches, val_batches, math.ceil(per_rank / bs), None, False, finalize)


def _feature_stats(x: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std over images and views, accumulated in float64 a chunk at a time."""
    total = np.zeros(x.shape[-1])
    total_sq = np.zeros(x.shape[-1])
    for i in range(0, len(x), chunk):
        part = np.asarray(x[i : i + chunk], dtype=np.float64).reshape(-1, x.shape[-1])
        total += part.sum(0)
        total_sq += (part**2).sum(0)
    n = x.shape[0] * x.shape[1]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    # dead (constant) features would divide by ~0; they carry nothing, so any finite scale will do
    return mean, np.maximum(std, max(float(std.mean()), 1e-6) * 1e-3)


def _standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray, chunk: int = 2048) -> torch.Tensor:
    out = np.empty(x.shape, dtype=np.float16)
    for i in range(0, len(x), chunk):
        out[i : i + chunk] = (np.asarray(x[i : i + chunk], dtype=np.float32) - mean) / std
    return torch.from_numpy(out)


def decode_once(
    rows: pd.DataFrame | list[Path],
    transform: Callable,
    num_workers: int,
    *,
    progress: bool = True,
    desc: str = "cache",
) -> torch.Tensor:
    """Every image of `rows` through `transform`, decoded once (num_workers processes), as one tensor in the
    rows' order: train.loader: cache keeps the training images framed as uint8 and the validation images as
    the eval preset's tensors, instead of decoding them again every epoch."""
    ds = ImageDataset(rows, transform)
    loader = DataLoader(ds, batch_size=64, num_workers=num_workers)
    out: torch.Tensor | None = None
    bar = tqdm(iterate(loader), desc=desc, unit="batch", total=len(loader), disable=not progress, leave=False)
    for x, _labels, _soft, idx in bar:
        if out is None:
            out = torch.empty((len(ds), *x.shape[1:]), dtype=x.dtype)
        out[idx] = x
    if out is None:
        raise UserError(f"{desc}: no images to train on")
    return out


def _cached_batches(
    params: Params,
    rows: tuple[pd.DataFrame, pd.DataFrame],
    datasets: tuple[ImageDataset, ImageDataset],
    device: torch.device,
    ctx: DistContext,
    bs: int,
    progress: bool,
) -> tuple[Callable[[int], Iterator[Batch]], Callable[[], Iterator[Batch]]]:
    """train.loader: cache. The augmentation runs on whole batches where the network runs (BatchAugment), fed
    from uint8 images in memory (~49 KB each at 128 px: 0.7 GB for 15,000 galaxies)."""
    tcfg = params.train
    train_ds, val_ds = datasets
    outliers = _cached_outliers(params, progress)  # first: a bad table fails before minutes of decoding
    train_x = decode_once(
        rows[0], FramedUint8(params.preprocess, params.augment), tcfg.num_workers, progress=progress, desc="cache train"
    )
    val_x = decode_once(rows[1], EvalPreset(params.preprocess), tcfg.num_workers, progress=progress, desc="cache val")
    augment = BatchAugment(params.preprocess, params.augment)
    labels, soft = torch.from_numpy(train_ds.labels), torch.from_numpy(train_ds.soft)
    val_labels, val_soft = torch.from_numpy(val_ds.labels), torch.from_numpy(val_ds.soft)
    pin = device.type == "cuda"

    def train_batches(epoch: int) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(epoch_seed(tcfg.seed, epoch, ctx.rank))
        order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(epoch_seed(tcfg.seed, epoch, 0)))
        mine = order[ctx.rank :: ctx.world_size]
        draw = torch.Generator().manual_seed(epoch_seed(tcfg.seed + 3, epoch, ctx.rank))
        for k in range(len(mine) // bs):
            j = mine[k * bs : (k + 1) * bs]
            x, y, t = train_x[j], labels[j], soft[j]
            if outliers is not None:  # train.outliers: drawn with replacement, label -1, uniform target
                o = torch.randint(len(outliers), (tcfg.outlier_batch,), generator=draw)
                x = torch.cat([x, outliers[o]])
                y = torch.cat([y, torch.full((len(o),), -1, dtype=y.dtype)])
                t = torch.cat([t, torch.full((len(o), t.shape[1]), 1.0 / t.shape[1], dtype=t.dtype)])
                j = torch.cat([j, torch.full((len(o),), -1, dtype=j.dtype)])
            x = x.pin_memory() if pin else x
            yield augment(x.to(device, non_blocking=True), g), y, t, j

    def val_batches() -> Iterator[Batch]:
        mine = torch.arange(ctx.rank, len(val_x), ctx.world_size)
        for k in range(0, len(mine), tcfg.batch_size):
            j = mine[k : k + tcfg.batch_size]
            yield val_x[j], val_labels[j], val_soft[j], j

    return train_batches, val_batches


def _cached_outliers(params: Params, progress: bool) -> torch.Tensor | None:
    """train.outliers' images, framed as the training images are (uint8, twice image_size), or None when off."""
    if not params.train.outliers:
        return None
    paths = outlier_paths(resolve_path(params.train.outliers, repo_root()))
    transform = FramedUint8(params.preprocess, params.augment)
    x = decode_once(paths, transform, params.train.num_workers, progress=progress, desc="cache outliers")
    if progress:
        tqdm.write(f"train.outliers: {len(x):,} images, {params.train.outlier_batch} in every batch")
    return x


def _finetune_setup(
    params: Params,
    train_rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    device: torch.device,
    ctx: DistContext,
    progress: bool = True,
) -> tuple[GalaxyNet, _Data]:
    tcfg = params.train
    torch.manual_seed(tcfg.seed)
    model = build_model(params.model)
    set_trainable(model, "finetune", tcfg.unfreeze_blocks)
    if tcfg.unfreeze_blocks and params.model.weights == "none" and ctx.is_main:
        log.warning(
            "train.unfreeze_blocks: %d with model.weights: none keeps %s at their random initialisation; "
            "0 trains the whole network",
            tcfg.unfreeze_blocks,
            ", ".join(model.frozen_stages),
        )
    train_ds = ImageDataset(
        train_rows, TrainPreset(params.preprocess, params.augment), targets=targets(train_rows, tcfg)
    )
    val_ds = ImageDataset(val_rows, EvalPreset(params.preprocess), targets=targets(val_rows, tcfg))
    per_rank = len(train_ds) // ctx.world_size
    # BatchNorm cannot train on a batch of one, so the last partial batch is dropped; a set smaller
    # than one batch trains on one batch of everything
    bs = max(2, min(tcfg.batch_size, per_rank))
    pin = device.type == "cuda"
    channels_last = tcfg.channels_last and device.type != "mps"
    val_views = check_views(params.embed.views, "embed.views") if tcfg.val_tta else None
    if tcfg.loader == "cache":
        cached = _cached_batches(params, (train_rows, val_rows), (train_ds, val_ds), device, ctx, bs, progress)
        return model, _Data(*cached, per_rank // bs, val_views, channels_last, None)

    def train_batches(epoch: int) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(epoch_seed(tcfg.seed, epoch, ctx.rank))
        sampler = None
        if ctx.is_distributed:
            sampler = DistributedSampler(train_ds, ctx.world_size, ctx.rank, shuffle=True, seed=tcfg.seed)
            sampler.set_epoch(epoch)
        loader = DataLoader(
            train_ds,
            batch_size=bs,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=tcfg.num_workers,
            generator=g,
            drop_last=True,
            pin_memory=pin,
        )
        if params.augment.survey.p <= 0:
            return iter(loader)
        survey = SurveyAugment(
            params.augment.survey, torch.Generator().manual_seed(epoch_seed(tcfg.seed + 1, epoch, ctx.rank))
        )
        return survey_batches(iter(loader), survey, MEAN, STD)

    val_loader = DataLoader(
        Subset(val_ds, list(range(ctx.rank, len(val_ds), ctx.world_size))),
        batch_size=tcfg.batch_size,
        num_workers=tcfg.num_workers,
        pin_memory=pin,
    )
    return model, _Data(train_batches, lambda: iter(val_loader), per_rank // bs, val_views, channels_last, None)


# ---------------------------------------------------------------------------------------------------------
# optimisation


def batch_mix(tcfg: TrainConfig, seed: int) -> BatchMix | None:
    """The epoch's mixup/CutMix (train.mixup, train.cutmix), or None when both are 0."""
    if tcfg.mixup == 0 and tcfg.cutmix == 0:
        return None
    return BatchMix(tcfg.mixup, tcfg.cutmix, seed)


def progressive_side(tcfg: TrainConfig, image_size: int, epoch: int) -> int:
    """The side (px) of the training images in `epoch` (from 1) under train.progressive_start/until.

    Why: most of what a network learns early is coarse shape, which small images carry at less cost (in pixels
    48 px is 0.56 of 64 px; on 2 CPU cores a ResNet-18 step saves less than that: README); the last epochs at
    the full side let the weights and BatchNorm statistics settle at the resolution validation and serving use
    (fast.ai's progressive resizing; FFCV's ResNet recipes). Linear in the epoch, in steps of 8 px, from the
    start side in epoch 1 to image_size at round(progressive_until x epochs), then constant.
    """
    start = tcfg.progressive_start
    if start is None:
        return image_size
    if start >= image_size:
        raise UserError(
            f"params: train.progressive_start: expected a side below preprocess.image_size ({image_size}), got {start}"
        )
    ramp = max(1, round(tcfg.progressive_until * tcfg.epochs))
    if epoch >= ramp:
        return image_size
    grown = start + (image_size - start) * (epoch - 1) / (ramp - 1)  # ramp > epoch >= 1 here
    return max(start, min(image_size, 8 * int(grown // 8)))


def at_side(batches: Iterator[Batch], side: int) -> Iterator[Batch]:
    """The training images resized (antialiased bilinear) to side x side; unchanged at their own side, and
    feature vectors (frozen mode) unchanged."""
    for x, labels, soft, idx in batches:
        if x.ndim == 4 and (x.shape[-1] != side or x.shape[-2] != side):
            x = x if x.is_floating_point() else x.float()
            x = nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
        yield x, labels, soft, idx


def moving_average(model: GalaxyNet, decay: float | None) -> AveragedModel | None:
    """train.ema: an exponential moving average of the weights and BatchNorm statistics (torch's AveragedModel),
    updated after every step, bias-corrected (debiased_ema); None when off."""
    if decay is None:
        return None
    return AveragedModel(model, multi_avg_fn=debiased_ema(decay), use_buffers=True)


def debiased_ema(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """AveragedModel's multi_avg_fn: after n steps, the average of the n steps' weights w_i, each
    weighted decay^(n-i) and the weights normalised to sum to 1 (Adam's bias correction).

    Why: torch's plain EMA starts from the first step's weights and keeps decay^(n-1) of them, still 60% after
    512 steps at 0.999, so the model validated and saved in the first epochs of a run (and at the end of a short
    one) was mostly the random start. Corrected, the first steps weigh what any step of their age weighs. In
    the update, n - 1 = `n_averaged` steps are already averaged; the kept share is decay (1 - decay^(n-1)) /
    (1 - decay^n). Integer buffers (BatchNorm's step counter) take the latest value.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        done = float(n_averaged)
        keep = decay * (1.0 - decay**done) / (1.0 - decay ** (done + 1.0))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - keep)
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


def build_optimizer(model: GalaxyNet, cfg: TrainConfig, *, fused: bool = True) -> torch.optim.Optimizer:
    """AdamW or SGD over param_groups, fused into one kernel per step where the device has one (CPU, CUDA);
    `fused=False`: torch's multi-tensor update, what fit() used before (the benchmarks' baseline).

    Why fused: the multi-tensor update of ResNet-50's 23.5 M weights is a tenth of a 64-px step on 2 CPU cores; the
    fused kernel halves it (BENCHMARKS.md "the training step"). Same update rule, rounding aside.
    """
    groups = param_groups(model, cfg.lr, cfg.weight_decay, cfg.layer_decay)
    fused = fused and all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


def _scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up over warmup_epochs, then cosine to zero (or constant)."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    total = max(cfg.epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
