"""Checkpoints, resume and the per-epoch seeding that makes a resumed run replay an uninterrupted one.

Every epoch's randomness (shuffling, views, augmentation workers, dropout) is seeded from (train.seed, epoch,
rank), and one checkpoint dict (weights_only-loadable) holds what a resume needs to continue exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from galmorph.config import Params
from galmorph.data.dataset import label_ids
from galmorph.errors import UserError
from galmorph.io import atomic_path
from galmorph.models.resnet import GalaxyNet

CHECKPOINT_FORMAT = "galmorph.checkpoint/1"
CHECKPOINT_NAME = "last.pt"
# Settings that may change between a killed run and its resume without changing what is computed.
RESUME_FREE_KEYS = ("device", "num_workers", "checkpoint_dir", "out", "metrics", "curves")


@dataclasses.dataclass
class TrainState:
    epoch: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    best_epoch: int = 0
    best_loss: float = math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_val_logits: np.ndarray = dataclasses.field(default_factory=lambda: np.empty((0, 2), dtype=np.float32))
    stopped: bool = False

    def record(
        self,
        epoch: int,
        metrics: dict[str, float],
        model: GalaxyNet,
        val_logits: np.ndarray,
        mode: str,
        patience: int,
    ) -> None:
        self.epoch = epoch
        self.history.append(metrics)
        if metrics["val_loss"] < self.best_loss or self.best_state is None:
            self.best_epoch, self.best_loss = epoch, metrics["val_loss"]
            self.best_state = trainable_state(model, mode)
            self.best_val_logits = val_logits
        # early stopping on validation loss: `patience` epochs without improvement (0 = never stop early)
        self.stopped = patience > 0 and epoch - self.best_epoch >= patience


def trainable_state(model: GalaxyNet, mode: str) -> dict[str, torch.Tensor]:
    """A CPU copy of what training changes: the head alone in frozen mode (the backbone is the cache's)."""
    state = model.state_dict()
    keep = (lambda k: k.startswith("head.")) if mode == "frozen" else (lambda k: True)
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items() if keep(k)}


def fit_params(params: Params) -> dict[str, Any]:
    """The params a checkpoint was made with (what resume must find unchanged)."""
    train = {k: v for k, v in dataclasses.asdict(params.train).items() if k not in RESUME_FREE_KEYS}
    return {
        "model": dataclasses.asdict(params.model),
        "train": train,
        "preprocess": dataclasses.asdict(params.preprocess),
        "augment": dataclasses.asdict(params.augment),
        "embed": dataclasses.asdict(params.embed),
    }


def data_fingerprint(train_rows: pd.DataFrame, val_rows: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for name, rows in (("train", train_rows), ("val", val_rows)):
        h.update(name.encode())
        h.update("\n".join(rows["galaxy_id"].astype(str)).encode())
        h.update(label_ids(rows).tobytes())
    return h.hexdigest()


def save_checkpoint(
    path: Path,
    state: TrainState,
    params: Params,
    fingerprint: str,
    model: GalaxyNet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
) -> None:
    """One dict (weights_only-loadable), written atomically: a kill mid-save leaves the previous one intact."""
    mode = params.train.mode
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "epoch": state.epoch,
        "model": trainable_state(model, mode),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "params": fit_params(params),
        "data_fingerprint": fingerprint,
        "rng": rng_state(),
        "history": state.history,
        "best": {
            "epoch": state.best_epoch,
            "loss": state.best_loss,
            "state": state.best_state,
            "val_logits": torch.from_numpy(np.asarray(state.best_val_logits)),
        },
        "stopped": state.stopped,
    }
    if ema is not None:
        ckpt["ema"] = {"state": trainable_state(ema.module, mode), "n_averaged": ema.n_averaged.detach().cpu()}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint as saved by fit (weights_only: no code runs on load)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure: not our checkpoint
        raise UserError(f"{path}: not a readable training checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a galmorph training checkpoint")
    return ckpt


def restore(
    path: Path,
    params: Params,
    fingerprint: str,
    model: GalaxyNet,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
) -> TrainState:
    ckpt = load_checkpoint(path)
    saved, now = ckpt["params"], fit_params(params)
    changed = [f"{s}.{k}" for s in now for k in now[s] if saved.get(s, {}).get(k) != now[s][k]]
    if changed:
        raise UserError(
            f"{path}: made with other params ({', '.join(changed[:4])}); resume needs the same params, "
            "or delete the checkpoint to start over"
        )
    if ckpt["data_fingerprint"] != fingerprint:
        raise UserError(f"{path}: made on other train/val rows; resume needs the same splits, or delete it")
    model.load_state_dict(ckpt["model"], strict=params.train.mode != "frozen")
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ema is not None:  # train.ema is a fit param: a checkpoint made with it has the average
        ema.module.load_state_dict(ckpt["ema"]["state"], strict=params.train.mode != "frozen")
        ema.n_averaged.copy_(ckpt["ema"]["n_averaged"])
    set_rng_state(ckpt["rng"])
    best = ckpt["best"]
    return TrainState(
        epoch=int(ckpt["epoch"]),
        history=list(ckpt["history"]),
        best_epoch=int(best["epoch"]),
        best_loss=float(best["loss"]),
        best_state=best["state"],
        best_val_logits=best["val_logits"].numpy(),
        stopped=bool(ckpt["stopped"]),
    )


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**63 - 1)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    s = epoch_seed(seed, epoch, rank)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def rng_state() -> dict[str, Any]:
    _name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    n = rng["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = rng["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


@contextlib.contextmanager
def determinism(deterministic: bool) -> Iterator[None]:
    """Deterministic kernels (train.deterministic) for the duration of a fit; global flags restored after."""
    cudnn = torch.backends.cudnn
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.benchmark,
        cudnn.deterministic,
    )
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible GEMMs
        torch.use_deterministic_algorithms(True, warn_only=True)
        cudnn.benchmark, cudnn.deterministic = False, True
    else:
        cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.benchmark, cudnn.deterministic = before[2], before[3]
