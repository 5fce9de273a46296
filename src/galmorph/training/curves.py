"""What a training run leaves for people: the per-epoch curves (CSV + figure), the validation confusion
matrix, and the flat metrics of train.metrics. One CSV feeds both DVC plots and the MLflow artifact."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from galmorph.config import CLASSES  # noqa: E402
from galmorph.training.loop import FitResult  # noqa: E402

CURVE_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "train_acc",
    "val_acc",
    "val_macro_f1",
    "lr",
    "images_per_s",
    "epoch_time_s",
)


def curves_frame(history: list[Mapping[str, float]]) -> pd.DataFrame:
    """One row per epoch with the CURVE_COLUMNS (train.curves; x = epoch for DVC plots)."""
    frame = pd.DataFrame(list(history))
    for col in CURVE_COLUMNS:
        if col not in frame:
            frame[col] = np.nan
    frame = frame[list(CURVE_COLUMNS)]
    frame["epoch"] = frame["epoch"].astype(int)
    return frame


def curves_figure(frame: pd.DataFrame, best_epoch: int) -> Figure:
    """Loss and accuracy per epoch, train vs validation, with the kept (best) epoch marked."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric, label in ((ax_loss, "loss", "loss (cross-entropy)"), (ax_acc, "acc", "accuracy")):
        ax.plot(frame["epoch"], frame[f"train_{metric}"], "o-", label="train", ms=3)
        ax.plot(frame["epoch"], frame[f"val_{metric}"], "s-", label="validation", ms=3)
        ax.axvline(best_epoch, color="grey", ls=":", lw=1, label=f"kept: epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    fig.suptitle("Training curves (train loss includes class weights / smoothing; validation is plain NLL)", fontsize=9)
    fig.tight_layout()
    return fig


def confusion_counts(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    k = len(CLASSES)
    ok = labels >= 0
    return np.bincount(labels[ok] * k + logits[ok].argmax(1), minlength=k * k).reshape(k, k)


def summary(result: FitResult, temperature: float, val_nll_calibrated: float) -> dict[str, Any]:
    """The flat numbers of train.metrics (DVC metric; evaluate and register read mlflow_run_id from it)."""
    best = result.best_metrics
    seen = [h["images_per_s"] for h in result.history]
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "val_loss": best["val_loss"],
        "val_acc": best["val_acc"],
        "val_macro_f1": best["val_macro_f1"],
        "train_loss": best["train_loss"],
        "train_acc": best["train_acc"],
        "temperature": temperature,
        "val_loss_calibrated": val_nll_calibrated,
        "images_per_s": float(np.median(seen)) if seen else float("nan"),
        "train_time_s": float(sum(h.get("epoch_time_s", 0.0) for h in result.history)),
    }
