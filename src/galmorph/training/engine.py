"""One epoch of training and one pass of evaluation (torchvision references' shape).

Batches are (inputs, label_id, soft_target, row_index) whether the inputs are images (finetune mode) or
cached features (frozen mode), so the same two functions serve both modes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from galmorph.config import CLASSES
from galmorph.errors import UserError
from galmorph.models.inference import autocast, iterate, to_device, view_logits
from galmorph.training.distributed import DistContext, all_gather_objects, all_reduce_sum

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def class_weights(labels: np.ndarray, scheme: str) -> torch.Tensor | None:
    """balanced: n / (K * n_c), so each class contributes equally to the loss; none: unweighted."""
    if scheme == "none":
        return None
    counts = np.bincount(labels[labels >= 0], minlength=len(CLASSES)).astype(np.float64)
    if (counts == 0).any():
        missing = [CLASSES[i] for i in np.flatnonzero(counts == 0)]
        raise UserError(f"training split: no {', '.join(missing)} galaxies; cannot balance class weights")
    return torch.tensor(counts.sum() / (len(CLASSES) * counts), dtype=torch.float32)


LOG_CONCENTRATION_LIMIT = 10.0
"""|log alpha| is clamped here in the Dirichlet-multinomial loss: alpha in [4.5e-5, 22026] covers any vote
split of any number of volunteers, and exp() of an unbounded logit would overflow."""


def dirichlet_multinomial_nll(logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-row negative log-likelihood of vote `counts` (N, K) under a Dirichlet-multinomial whose
    concentrations are alpha = exp(logits) (the network's outputs under train.loss: dirichlet).

    -log p(k | alpha) = -[lgamma(n+1) - sum lgamma(k_i+1) + lgamma(A) - lgamma(n+A) + sum (lgamma(k_i+alpha_i)
    - lgamma(alpha_i))] with n = sum k, A = sum alpha: Zoobot's loss (Walmsley et al. 2022) for one question.
    The multinomial coefficient does not depend on the network but keeps the value a true likelihood.
    Computed in float64 (float32 on MPS): lgamma(A) - lgamma(n+A) cancels badly in float32 for large A.
    """
    dtype = torch.float32 if logits.device.type == "mps" else torch.float64
    log_alpha = logits.to(dtype).clamp(-LOG_CONCENTRATION_LIMIT, LOG_CONCENTRATION_LIMIT)
    alpha, k = log_alpha.exp(), counts.to(dtype)
    n, a = k.sum(dim=1), alpha.sum(dim=1)
    log_p = (
        torch.lgamma(n + 1)
        - torch.lgamma(k + 1).sum(dim=1)
        + torch.lgamma(a)
        - torch.lgamma(n + a)
        + (torch.lgamma(k + alpha) - torch.lgamma(alpha)).sum(dim=1)
    )
    return -log_p


class Criterion(nn.Module):
    """Cross-entropy on hard labels (optionally class-weighted and smoothed), on the vote fractions, or the
    Dirichlet-multinomial likelihood of the vote counts.

    `soft` trains toward what the volunteers said (a 55/45 galaxy is not a confident spiral); rows
    without votes already carry one-hot targets from the dataset, so they fall back to hard labels.
    `dirichlet` reads the same slot as vote counts (data.dataset.vote_counts) and the logits as log
    concentrations: a galaxy with 60 votes constrains the predicted vote fraction far more than one with 3,
    and a 30/30 split teaches "volunteers disagree" instead of a coin-flip label. Class weights weigh each
    row by its label as for `soft`; label smoothing moves a share of each galaxy's votes to uniform.

    Rows labelled -1 are outliers (train.outliers): their term is the cross-entropy to the uniform distribution,
    weighted `outlier_weight` against the galaxies' mean loss (outlier exposure, Hendrycks et al. 2019).
    """

    def __init__(
        self, loss: str, weights: torch.Tensor | None, label_smoothing: float, outlier_weight: float = 0.5
    ) -> None:
        super().__init__()
        if loss not in ("ce", "soft", "dirichlet"):
            raise UserError(f"params: train.loss: expected ce, soft or dirichlet, got {loss!r}")
        self.loss = loss
        self.label_smoothing = label_smoothing
        self.outlier_weight = outlier_weight
        self.register_buffer("weights", weights if weights is not None else torch.ones(len(CLASSES)))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        outlier = labels < 0
        if not outlier.any():
            return self._galaxies(logits, labels, soft)
        galaxies = ~outlier
        uniform = -F.log_softmax(logits[outlier], dim=1).mean(dim=1).mean()
        return self._galaxies(logits[galaxies], labels[galaxies], soft[galaxies]) + self.outlier_weight * uniform

    def _galaxies(self, logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        if self.loss == "ce":
            return F.cross_entropy(logits, labels, weight=self.weights, label_smoothing=self.label_smoothing)
        k = logits.shape[1]
        if self.loss == "dirichlet":
            total = soft.sum(dim=1, keepdim=True)
            counts = soft * (1 - self.label_smoothing) + self.label_smoothing * total / k
            per_row = dirichlet_multinomial_nll(logits, counts).float()
        else:
            target = soft * (1 - self.label_smoothing) + self.label_smoothing / k
            per_row = -(target * F.log_softmax(logits, dim=1)).sum(dim=1)
        w = self.weights[labels]
        return (per_row * w).sum() / w.sum()


class BatchMix:
    """train.mixup / train.cutmix: each training batch blended with a shuffled copy of itself, the loss the same
    blend of the two rows' losses (Zhang et al. 2018, mixup; Yun et al. 2019, CutMix).

    Why: a network that only ever sees one galaxy per image with a one-hot target learns to be certain; blends
    with targets in proportion teach it in-between answers, which regularises a small data set and tends to
    keep the probabilities honest. Mixup blends whole images (or cached features, frozen mode); CutMix pastes a
    box of the partner image, its share by area. With both on, each batch takes one of them at even odds. The
    blend's share is drawn from Beta(alpha, alpha) and kept at or above one half, so each row's own label stays
    the larger part (what train_acc is counted against). Draws come from the epoch's own seed, so a resumed run
    replays them.
    """

    def __init__(self, mixup: float, cutmix: float, seed: int) -> None:
        if not (mixup >= 0 and cutmix >= 0 and mixup + cutmix > 0):  # TrainConfig has told the user already
            raise ValueError(f"BatchMix: expected alphas >= 0, not both 0; got mixup={mixup!r}, cutmix={cutmix!r}")
        self.mixup, self.cutmix = float(mixup), float(cutmix)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(mixed inputs, each row's partner as indices into the batch, each row's own share of the loss)."""
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or self.rng.random() < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        share = float(self.rng.beta(alpha, alpha))
        share = max(share, 1.0 - share)
        partner = torch.randperm(len(x), generator=self.generator).to(x.device)
        if not use_cutmix:
            return x * share + x[partner] * (1.0 - share), partner, share
        if x.ndim != 4:
            raise ValueError(f"BatchMix: CutMix needs a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        cut = np.sqrt(1.0 - share)  # the box's side over the image's side, so its area is 1 - share
        bh, bw = round(h * cut), round(w * cut)
        y0, x0 = int(self.rng.integers(0, h - bh + 1)), int(self.rng.integers(0, w - bw + 1))
        mixed = x.clone()
        mixed[..., y0 : y0 + bh, x0 : x0 + bw] = x[partner][..., y0 : y0 + bh, x0 : x0 + bw]
        return mixed, partner, 1.0 - bh * bw / (h * w)


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
    after_step: Callable[[], None] | None = None,
    mix: BatchMix | None = None,
) -> dict[str, float]:
    """One pass over `batches`; returns train_loss, train_acc, images_per_s (summed over processes).
    `after_step` runs after every optimizer step (the weights' moving average); `mix` blends each batch."""
    ctx = ctx or DistContext()
    model.train()
    # loss * n, correct, n, accumulated on the device so a GPU step never waits for a .item()
    sums = torch.zeros(3, device=device, dtype=torch.float32 if device.type == "mps" else torch.float64)
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="batch", leave=False, disable=not (ctx.is_main and progress) or total == 0)
    for step, (x, labels, soft, _idx) in enumerate(iterate(batches)):
        x = to_device(x, device, channels_last)
        labels, soft = labels.to(device, non_blocking=True), soft.to(device, non_blocking=True)
        partner, share = None, 1.0
        if mix is not None:
            x, partner, share = mix(x)
        with autocast(device, amp_dtype):
            logits = model(x)
        loss = criterion(logits, labels, soft)
        if partner is not None:
            loss = share * loss + (1.0 - share) * criterion(logits, labels[partner], soft[partner])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step()
        galaxies = labels >= 0  # outliers (train.outliers) have no class to be right about
        n = galaxies.sum()
        sums[0] += loss.detach() * n
        sums[1] += (logits.detach().argmax(1) == labels)[galaxies].sum()
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
    if "train_side" in metrics:  # train.progressive_start: the side this epoch trained at
        parts.insert(2, f"{metrics['train_side']:.0f} px")
    return " | ".join(parts)
