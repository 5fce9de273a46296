"""One epoch of training, one pass of evaluation, and batched prediction (torchvision references' shape).

Batches are (inputs, label_id, soft_target, row_index) whether the inputs are images (finetune mode,
prediction) or cached features (frozen mode), so the same two functions serve both modes; `views` asks
for the mean logits over dihedral views (test-time augmentation).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from galmorph.config import CLASSES, PreprocessConfig
from galmorph.data.dataset import ImageDataset, ImageSource
from galmorph.data.transforms import EvalPreset
from galmorph.errors import UserError
from galmorph.training.distributed import DistContext, all_gather_objects, all_reduce_sum
from galmorph.training.features import apply_view, check_views

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def resolve_device(name: str = "auto") -> torch.device:
    """auto = cuda, then mps, then cpu; an explicit device that is not there is the user's error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"params: train.device: expected auto, cpu, cuda[:N] or mps, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("params: train.device: cuda was asked for but no CUDA device is available (use auto or cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("params: train.device: mps was asked for but is not available (use auto or cpu)")
    return device


def cpu_has_fast_bf16() -> bool:
    """bf16 pays on CPU only with native bf16 dot products (AVX512-BF16 or AMX); emulated it is slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return torch.backends.mkldnn.is_available() and any(getattr(cpu, c, lambda: False)() for c in checks)


def amp_dtype_for(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for `precision` on `device` (None = plain fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise UserError(f"params: train.precision: expected auto, bf16 or fp32, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def iterate(loader: Iterable) -> Iterator:
    """Iterate a DataLoader, turning a UserError raised in a worker back into its one-line message."""
    try:
        yield from loader
    except UserError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        if lines and lines[0].startswith("Caught UserError"):
            raise UserError(lines[-1].split("UserError: ", 1)[-1]) from None
        raise


def class_weights(labels: np.ndarray, scheme: str) -> torch.Tensor | None:
    """balanced: n / (K * n_c), so each class contributes equally to the loss; none: unweighted."""
    if scheme == "none":
        return None
    counts = np.bincount(labels[labels >= 0], minlength=len(CLASSES)).astype(np.float64)
    if (counts == 0).any():
        missing = [CLASSES[i] for i in np.flatnonzero(counts == 0)]
        raise UserError(f"training split: no {', '.join(missing)} galaxies; cannot balance class weights")
    return torch.tensor(counts.sum() / (len(CLASSES) * counts), dtype=torch.float32)


class Criterion(nn.Module):
    """Cross-entropy on hard labels (optionally class-weighted and smoothed) or on the vote fractions.

    `soft` trains toward what the volunteers said (a 55/45 galaxy is not a confident spiral); rows
    without votes already carry one-hot targets from the dataset, so they fall back to hard labels.
    """

    def __init__(self, loss: str, weights: torch.Tensor | None, label_smoothing: float) -> None:
        super().__init__()
        if loss not in ("ce", "soft"):
            raise UserError(f"params: train.loss: expected ce or soft, got {loss!r}")
        self.loss = loss
        self.label_smoothing = label_smoothing
        self.register_buffer("weights", weights if weights is not None else torch.ones(len(CLASSES)))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.loss == "ce":
            return F.cross_entropy(logits, labels, weight=self.weights, label_smoothing=self.label_smoothing)
        k = logits.shape[1]
        target = soft * (1 - self.label_smoothing) + self.label_smoothing / k
        per_row = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)
        w = self.weights[labels]
        return (per_row * w).sum() / w.sum()


def view_logits(model: nn.Module, x: torch.Tensor, views: Sequence[str] | None) -> torch.Tensor:
    """Logits, averaged over views: images (B,3,H,W) are transformed, features (B,V,D) are already per view."""
    if x.ndim == 3:
        return torch.stack([model(x[:, v]) for v in range(x.shape[1])]).float().mean(0)
    if not views or list(views) == ["identity"]:
        return model(x).float()
    return torch.stack([model(apply_view(x, v)) for v in views]).float().mean(0)


def _confusion(labels: torch.Tensor, preds: torch.Tensor) -> torch.Tensor:
    k = len(CLASSES)
    return torch.bincount(labels * k + preds, minlength=k * k).reshape(k, k).double()


def macro_f1(confusion: np.ndarray | torch.Tensor) -> float:
    """Mean over classes of F1 from a (true, predicted) confusion matrix; a class never seen scores 0."""
    c = torch.as_tensor(confusion, dtype=torch.float64)
    tp = c.diag()
    denom = c.sum(0) + c.sum(1)
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1e-12), torch.zeros_like(tp))
    return float(f1.mean())


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    criterion: nn.Module,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    ctx: DistContext | None = None,
    desc: str = "train",
    total: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """One pass over `batches`; returns train_loss, train_acc, images_per_s (summed over processes)."""
    ctx = ctx or DistContext()
    model.train()
    # loss * n, correct, n, accumulated on the device so a GPU step never waits for a .item()
    sums = torch.zeros(3, device=device, dtype=torch.float32 if device.type == "mps" else torch.float64)
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="batch", leave=False, disable=not (ctx.is_main and progress) or total == 0)
    for step, (x, labels, soft, _idx) in enumerate(iterate(batches)):
        x = to_device(x, device, channels_last)
        labels, soft = labels.to(device, non_blocking=True), soft.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(x)
        loss = criterion(logits, labels, soft)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = len(labels)
        sums[0] += loss.detach() * n
        sums[1] += (logits.detach().argmax(1) == labels).sum()
        sums[2] += n
        bar.update(1)
        if step % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{float(sums[0] / sums[2]):.3f}", refresh=False)
    bar.close()
    elapsed = time.perf_counter() - start
    loss_sum, correct, n = all_reduce_sum(sums.cpu().double(), ctx).tolist()
    if n == 0:
        raise UserError("training split: no batches (fewer training galaxies than one batch?)")
    return {"train_loss": loss_sum / n, "train_acc": correct / n, "images_per_s": n / max(elapsed, 1e-9)}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    n_rows: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    views: Sequence[str] | None = None,
    ctx: DistContext | None = None,
    desc: str = "val",
    prefix: str = "val",
    progress: bool = True,
) -> tuple[dict[str, float], np.ndarray]:
    """Plain NLL (no weights, no smoothing: comparable across configs), accuracy and macro F1.

    Returns the metrics and the logits (n_rows, 2) in row order, gathered from every process.
    """
    ctx = ctx or DistContext()
    model.eval()
    idx_parts, logit_parts, label_parts = [], [], []
    for x, labels, _soft, idx in tqdm(
        iterate(batches), desc=desc, unit="batch", leave=False, disable=not (ctx.is_main and progress)
    ):
        x = to_device(x, device, channels_last)
        with autocast(device, amp_dtype):
            logits = view_logits(model, x, views)
        idx_parts.append(idx.cpu())
        logit_parts.append(logits.float().cpu())
        label_parts.append(labels.cpu())
    local = (
        torch.cat(idx_parts) if idx_parts else torch.empty(0, dtype=torch.long),
        torch.cat(logit_parts) if logit_parts else torch.empty(0, len(CLASSES)),
        torch.cat(label_parts) if label_parts else torch.empty(0, dtype=torch.long),
    )
    parts = all_gather_objects(local, ctx)
    idx = torch.cat([p[0] for p in parts])
    logits_all = torch.cat([p[1] for p in parts])
    labels_all = torch.cat([p[2] for p in parts])
    out = torch.full((n_rows, len(CLASSES)), float("nan"))
    out[idx] = logits_all
    known = labels_all >= 0
    metrics: dict[str, float] = {}
    if known.any():
        lg, lb = logits_all[known], labels_all[known]
        conf = _confusion(lb, lg.argmax(1))
        metrics = {
            f"{prefix}_loss": float(F.cross_entropy(lg, lb)),
            f"{prefix}_acc": float(conf.diag().sum() / conf.sum()),
            f"{prefix}_macro_f1": macro_f1(conf),
        }
    return metrics, out.numpy()


def prepare_for_inference(model: nn.Module, device: torch.device, *, channels_last: bool = True) -> nn.Module:
    """The fastest exact form of the model for inference: BN folded into convs, channels_last on CPU/GPU.

    Measured on a 2-core AVX2 CPU (BENCHMARKS.md): folding + channels_last is the largest exact win there;
    bf16 is used only where the hardware has native bf16 (see amp_dtype_for).
    """
    from galmorph.models.resnet import GalaxyNet, fold_batchnorm

    model = fold_batchnorm(model) if isinstance(model, GalaxyNet | torchvision.models.ResNet) else model
    model = model.to(device).eval()
    if channels_last and device.type != "mps":
        model = model.to(memory_format=torch.channels_last)
    return model


def predict_logits(
    model: nn.Module,
    catalogue_or_paths: pd.DataFrame | Sequence[ImageSource],
    preprocess: PreprocessConfig,
    *,
    batch_size: int = 64,
    tta_views: Sequence[str] | None = None,
    num_workers: int = 2,
    device: str | torch.device = "auto",
    precision: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """Logits (N, 2) in input order: eval preset, BN folded, channels_last, bf16 where the hardware has it."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if tta_views is not None:
        check_views(tta_views, "tta_views")
    fast = prepare_for_inference(model, dev)
    dataset = ImageDataset(catalogue_or_paths, EvalPreset(preprocess))
    if len(dataset) == 0:
        return np.empty((0, len(CLASSES)), dtype=np.float32)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=min(num_workers, os.cpu_count() or 1),
        pin_memory=dev.type == "cuda",
    )
    out = np.empty((len(dataset), len(CLASSES)), dtype=np.float32)
    amp = amp_dtype_for(dev, precision)
    with torch.inference_mode():
        for x, _labels, _soft, idx in tqdm(
            iterate(loader), desc="predict", unit="batch", total=len(loader), disable=not progress, leave=False
        ):
            with autocast(dev, amp):
                logits = view_logits(fast, to_device(x, dev, dev.type != "mps"), tta_views)
            out[idx.numpy()] = logits.float().cpu().numpy()
    return out


def softmax_t(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities softmax(logits / T), computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def predict_proba(
    model: nn.Module,
    catalogue_or_paths: pd.DataFrame | Sequence[ImageSource],
    preprocess: PreprocessConfig,
    *,
    batch_size: int = 64,
    tta_views: Sequence[str] | None = None,
    temperature: float = 1.0,
    num_workers: int = 2,
    device: str | torch.device = "auto",
    precision: str = "auto",
    progress: bool = False,
) -> np.ndarray:
    """(N, 2) probabilities in CLASSES order = softmax(mean logits over tta_views / temperature)."""
    logits = predict_logits(
        model,
        catalogue_or_paths,
        preprocess,
        batch_size=batch_size,
        tta_views=tta_views,
        num_workers=num_workers,
        device=device,
        precision=precision,
        progress=progress,
    )
    return softmax_t(logits, temperature)


def describe(metrics: dict[str, Any]) -> str:
    """The concise per-epoch line."""
    parts = [
        f"train loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.4f}",
        f"val loss {metrics.get('val_loss', float('nan')):.4f} acc {metrics.get('val_acc', float('nan')):.4f} "
        f"f1 {metrics.get('val_macro_f1', float('nan')):.4f}",
        f"lr {metrics['lr']:.2e}",
        f"{metrics['images_per_s']:.0f} img/s",
        f"{metrics.get('epoch_time_s', 0.0):.1f} s",
    ]
    return " | ".join(parts)
