"""The evaluation's figures (matplotlib, Agg): confusion matrix, ROC, reliability diagram, coverage vs accuracy,
model probability vs vote fraction, and the stability across repeated splits.

Every figure carries its numbers (counts, AUC, ECE with intervals) so a PNG pasted into a paper or a
talk stands on its own. The same data also goes to CSV files that `dvc plots` draws across experiments.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from galmorph.config import CLASSES  # noqa: E402
from galmorph.evaluation.calibration import ReliabilityCurve  # noqa: E402
from galmorph.evaluation.metrics import Interval  # noqa: E402
from galmorph.io import atomic_path, palette_png  # noqa: E402

#: one colour per class everywhere (galleries too): spirals blue (young stars), ellipticals red (old ones)
CLASS_COLOURS = {"spiral": "#1f5fbf", "elliptical": "#c0392b"}
CALIBRATED_COLOUR = "#1b7f3b"
RAW_COLOUR = "#8c8c8c"


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 130, palette: bool = False) -> None:
    """Write a figure atomically (format from the file's suffix) and close it. `palette`: a PNG in 256 colours,
    about a third of the bytes, for image grids kept in git."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
    with atomic_path(path) as tmp:
        if palette and fmt == "png":
            tmp.write_bytes(palette_png(fig, dpi, bbox_inches="tight"))
        else:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def confusion_figure(counts: np.ndarray, classes: Sequence[str] = CLASSES, title: str = "Confusion matrix") -> Figure:
    """Counts and row percentages (the recall of each true class on the diagonal)."""
    counts = np.asarray(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = counts / counts.sum(axis=1, keepdims=True)
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    im = ax.imshow(np.nan_to_num(rates), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            share = "" if np.isnan(rates[i, j]) else f"\n{rates[i, j]:.1%}"
            ax.text(
                j,
                i,
                f"{counts[i, j]:,}{share}",
                ha="center",
                va="center",
                fontsize=11,
                color="white" if np.nan_to_num(rates[i, j]) > 0.6 else "black",
            )
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("Galaxy Zoo class (votes)")
    ax.set_title(f"{title}\n(n = {int(counts.sum()):,}; row % = share of the true class)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return fig


def roc_figure(roc: pd.DataFrame, auc: Interval, title: str = "ROC, spiral as the positive class") -> Figure:
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], ls="--", color=RAW_COLOUR, lw=1, label="chance")
    ax.plot(roc["fpr"], roc["tpr"], color=CLASS_COLOURS["spiral"], lw=2, label=f"model, AUC {auc:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (ellipticals called spiral)")
    ax.set_ylabel("true positive rate (spirals found)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8, title="AUC [95% CI]", title_fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def reliability_figure(
    curves: Mapping[str, tuple[ReliabilityCurve, Interval]], title: str = "Reliability diagram"
) -> Figure:
    """Accuracy against confidence per bin for each variant (e.g. T = 1 and temperature-scaled), with the
    share of galaxies per bin underneath: a calibrated model sits on the diagonal."""
    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(5.2, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
    )
    ax.plot([0, 1], [0, 1], ls="--", color="black", lw=1, label="perfect calibration")
    colours = [RAW_COLOUR, CALIBRATED_COLOUR, CLASS_COLOURS["spiral"], CLASS_COLOURS["elliptical"]]
    n_curves = max(len(curves), 1)
    for k, (name, (curve, ece)) in enumerate(curves.items()):
        used = curve.count > 0
        colour = colours[k % len(colours)]
        ax.plot(
            curve.confidence[used],
            curve.accuracy[used],
            marker="o",
            ms=4,
            color=colour,
            lw=1.6,
            label=f"{name}: ECE {ece:.3f}",
        )
        width = (curve.edges[1] - curve.edges[0]) / n_curves
        share = curve.count / max(curve.count.sum(), 1)
        hist.bar(curve.edges[:-1] + k * width, share, width=width, align="edge", color=colour, alpha=0.8)
    lowest = min((c.edges[np.argmax(c.count > 0)] for c, _ in curves.values()), default=0.0)
    ax.set_xlim(min(lowest, 0.5), 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy in the bin")
    ax.set_title(f"{title}\n(top-label confidence, equal-width bins)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8, title="ECE [95% CI]", title_fontsize=8)
    ax.grid(alpha=0.3)
    hist.set_ylabel("share of\ngalaxies")
    hist.set_xlabel("model confidence (top-class probability)")
    hist.grid(alpha=0.3)
    return fig


def coverage_figure(
    curve: pd.DataFrame, at: Mapping[str, float] | None = None, title: str = "Abstention: coverage vs accuracy"
) -> Figure:
    """Accuracy of the galaxies the model keeps, as the abstention threshold rises (Galaxy Zoo's
    "uncertain"); `at` (metrics.abstention's dict) marks the chosen threshold."""
    fig, ax = plt.subplots(figsize=(5.0, 4.2))
    ax.plot(curve["coverage"], curve["accuracy"], color=CLASS_COLOURS["spiral"], lw=2, marker=".")
    if at is not None and at["n_kept"] > 0:
        ax.scatter(
            [at["coverage"]],
            [at["accuracy"]],
            s=70,
            color=CLASS_COLOURS["elliptical"],
            zorder=5,
            label=f"threshold {at['threshold']:.2f}: coverage {at['coverage']:.1%}, accuracy {at['accuracy']:.1%}",
        )
        ax.legend(loc="best", fontsize=8)
    ax.set_xlim(0, 1.02)
    ax.invert_xaxis()  # reading left to right: the model abstains on more and more galaxies
    ax.set_xlabel("coverage (share of galaxies the model labels)")
    ax.set_ylabel("accuracy on the labelled galaxies")
    ax.set_title(f"{title}\n(the rest are left 'uncertain')", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def vote_fraction_figure(
    p_model: np.ndarray, p_votes: np.ndarray, labels: np.ndarray | None, title: str, rho: float
) -> Figure:
    """The model's P(spiral) against the citizen-science vote fraction for spiral, one dot per galaxy."""
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ok = np.isfinite(p_votes)
    if labels is None:
        ax.scatter(p_votes[ok], p_model[ok], s=9, alpha=0.6, color="#444444", lw=0)
    else:
        for i, name in enumerate(CLASSES):
            sel = ok & (labels == i)
            ax.scatter(p_votes[sel], p_model[sel], s=9, alpha=0.6, color=CLASS_COLOURS[name], lw=0, label=name)
        ax.legend(loc="upper left", fontsize=8, title="catalogue class", title_fontsize=8)
    ax.plot([0, 1], [0, 1], ls="--", color="black", lw=0.8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("vote fraction for spiral (Galaxy Zoo)")
    ax.set_ylabel("model P(spiral)")
    ax.set_title(f"{title}\n(n = {int(ok.sum()):,}, Spearman ρ = {rho:.2f})", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def stability_figure(per_split: pd.DataFrame, metrics: Sequence[str] = ("accuracy", "macro_f1")) -> Figure:
    """Each repeated split's test KPIs with the mean ± 1 std band: how much the split alone moves them."""
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    x = np.arange(len(per_split))
    for k, name in enumerate(metrics):
        colour = list(CLASS_COLOURS.values())[k % 2]
        values = per_split[name].to_numpy(dtype=float)
        mean, std = values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0
        ax.plot(x, values, marker="o", color=colour, lw=0, label=f"{name}: {mean:.3f} ± {std:.3f}")
        ax.axhspan(mean - std, mean + std, color=colour, alpha=0.12)
        ax.axhline(mean, color=colour, lw=1)
    ax.set_xticks(x, per_split["split"].tolist())
    ax.set_xlabel("repeated split")
    ax.set_ylabel("test score")
    ax.set_title("Stability across repeated splits (mean ± std)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig
