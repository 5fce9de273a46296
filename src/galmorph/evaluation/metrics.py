"""Classification KPIs with bootstrap confidence intervals, abstention and agreement with the votes.

A test split of a few hundred galaxies gives an accuracy that is uncertain in the second digit, so every
KPI comes with a 95% bootstrap interval. The bootstrap is vectorised: a resample is a row of counts
(how often each galaxy was drawn, multinomial), and every KPI is a function of a few count-weighted sums,
so 1000 resamples are one matrix product per block instead of 1000 Python loops.

Conventions (the same as scikit-learn's): precision, recall and F1 are 0 when undefined (zero_division=0);
ROC-AUC scores P(spiral) with spiral as the positive class and counts ties as half; log loss clips
probabilities at 1e-15; the ECE and Brier score are galmorph.evaluation.calibration's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_curve

from galmorph.config import CLASSES
from galmorph.evaluation.calibration import confidence_bins, validate

LOG_LOSS_EPS = 1e-15
_MAX_BLOCK_CELLS = 4_000_000
"""Resamples are drawn in blocks of at most this many (resample, galaxy) cells: bounded memory for a test
split of a million galaxies."""


@dataclasses.dataclass(frozen=True)
class Interval:
    """A KPI measured on the test split and its bootstrap percentile interval (NaN when not computable)."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}

    def __format__(self, spec: str) -> str:
        spec = spec or ".3f"
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def metric_names(classes: Sequence[str] = CLASSES) -> list[str]:
    """The KPIs classification_metrics returns, in report order.

    `confusion_<a>_as_<b>`: the share of true class a predicted as b (a row of the normalised matrix).
    """
    per_class = [f"{m}_{c}" for c in classes for m in ("precision", "recall", "f1")]
    cells = [f"confusion_{a}_as_{b}" for a in classes for b in classes]
    return ["accuracy", "macro_f1", *per_class, "roc_auc", "log_loss", "brier", "ece", *cells]


class _Design:
    """Per-galaxy columns whose count-weighted sums give every KPI (see the module docstring)."""

    def __init__(self, probs: np.ndarray, labels: np.ndarray, n_bins: int) -> None:
        n, k = probs.shape
        self.n, self.k, self.n_bins = n, k, n_bins
        pred = probs.argmax(axis=1)
        conf = probs.max(axis=1)
        correct = (pred == labels).astype(np.float64)
        picked = probs[np.arange(n), labels]
        onehot = np.eye(k)[labels]
        cols = [
            correct[:, None],
            -np.log(np.clip(picked, LOG_LOSS_EPS, 1.0))[:, None],
            (0.5 if k == 2 else 1.0) * ((probs - onehot) ** 2).sum(axis=1)[:, None],
            np.eye(k * k)[labels * k + pred],  # confusion-matrix cell
            np.eye(n_bins)[confidence_bins(conf, n_bins)] * (correct - conf)[:, None],  # calibration gap per bin
        ]
        self.matrix = np.concatenate(cols, axis=1)
        # ROC: galaxies sorted by P(positive), grouped by equal scores so ties count half
        score = probs[:, 0]
        self.order = np.argsort(score, kind="stable")
        sorted_score = score[self.order]
        self.group_starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
        self.is_pos_sorted = (labels[self.order] == 0).astype(np.float64)

    def kpis(self, counts: np.ndarray, classes: Sequence[str]) -> dict[str, np.ndarray]:
        """Every KPI for each row of `counts` (R, N): how many times each galaxy is in a resample."""
        k = self.k
        s = counts @ self.matrix
        total = counts.sum(axis=1)
        cm = s[:, 3 : 3 + k * k].reshape(-1, k, k)
        gap = s[:, 3 + k * k :]
        true_n, pred_n, tp = cm.sum(axis=2), cm.sum(axis=1), np.diagonal(cm, axis1=1, axis2=2)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(pred_n > 0, tp / pred_n, 0.0)
            recall = np.where(true_n > 0, tp / true_n, 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
            rates = cm / true_n[:, :, None]
        out = {
            "accuracy": s[:, 0] / total,
            "macro_f1": f1.mean(axis=1),
            "roc_auc": self._auc(counts),
            "log_loss": s[:, 1] / total,
            "brier": s[:, 2] / total,
            "ece": np.abs(gap).sum(axis=1) / total,
        }
        for i, name in enumerate(classes):
            out[f"precision_{name}"] = precision[:, i]
            out[f"recall_{name}"] = recall[:, i]
            out[f"f1_{name}"] = f1[:, i]
            for j, other in enumerate(classes):
                out[f"confusion_{name}_as_{other}"] = rates[:, i, j]
        return out

    def _auc(self, counts: np.ndarray) -> np.ndarray:
        if self.k != 2:
            return np.full(len(counts), np.nan)
        c = counts[:, self.order]
        pos, neg = c * self.is_pos_sorted, c * (1.0 - self.is_pos_sorted)
        if len(self.group_starts) < self.n:  # tied scores: one group per distinct score
            pos = np.add.reduceat(pos, self.group_starts, axis=1)
            neg = np.add.reduceat(neg, self.group_starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
        return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _class_names(k: int, classes: Sequence[str]) -> list[str]:
    if len(classes) != k:
        raise ValueError(f"probabilities have {k} columns but {len(classes)} class names were given")
    return list(classes)


def confusion_matrix(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Counts (n_classes, n_classes): rows are the true class, columns the predicted one."""
    probs, labels = validate(probs, labels, "probs")
    k = probs.shape[1]
    return np.bincount(labels * k + probs.argmax(axis=1), minlength=k * k).reshape(k, k)


def bootstrap_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """`size` bootstrap resamples of n galaxies as multiplicities (size, n): row r, column i = how often
    galaxy i was drawn into resample r (one bincount; 4x faster than rng.multinomial for large n)."""
    draws = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)


def mean_interval(
    values: np.ndarray, rng: np.random.Generator, *, n_resamples: int = 2000, level: float = 0.95
) -> Interval:
    """The mean of one number per galaxy with its bootstrap percentile interval: accuracy from 0/1 correctness,
    or a paired accuracy difference from correct_B - correct_A over the same galaxies (each resample draws the
    same galaxies for both models, so what they agree on cancels). The benchmarks' accuracy comparisons use it."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("mean_interval: expected a non-empty 1-D array of per-galaxy values")
    means = bootstrap_counts(rng, len(values), n_resamples) @ values / len(values)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(values.mean()), float(low), float(high))


def classification_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    n_bins: int = 15,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    classes: Sequence[str] = CLASSES,
) -> dict[str, Interval]:
    """Every KPI of metric_names() with its bootstrap percentile interval at `level`.

    A resample is a multinomial draw of galaxy counts; resamples are processed in blocks of bounded size.
    Seeded (the same seed gives the same intervals); n_resamples = 0 skips the bootstrap (NaN bounds).
    Resamples where a KPI is undefined (ROC-AUC of a resample without one class) are left out of its interval.
    """
    probs, labels = validate(probs, labels, "probs")
    n = len(labels)
    if n == 0:
        raise ValueError("classification_metrics: no samples")
    names = _class_names(probs.shape[1], classes)
    design = _Design(probs, labels, n_bins)
    point = design.kpis(np.ones((1, n)), names)
    draws: dict[str, list[np.ndarray]] = {name: [] for name in point}
    rng = np.random.default_rng(seed)
    block = max(1, min(n_resamples, _MAX_BLOCK_CELLS // n))
    done = 0
    while done < n_resamples:
        size = min(block, n_resamples - done)
        counts = bootstrap_counts(rng, n, size)
        for name, values in design.kpis(counts, names).items():
            draws[name].append(values)
        done += size
    alpha = (1.0 - level) / 2.0
    out = {}
    for name in metric_names(names):
        sample = np.concatenate(draws[name]) if draws[name] else np.empty(0)
        sample = sample[np.isfinite(sample)]
        low, high = np.quantile(sample, [alpha, 1.0 - alpha]) if sample.size else (math.nan, math.nan)
        out[name] = Interval(float(point[name][0]), float(low), float(high))
    return out


def flat_metrics(prefix: str, intervals: Mapping[str, Interval]) -> dict[str, float]:
    """`{prefix}_{kpi}` plus `_ci_low` / `_ci_high`: the flat keys register, promote and MLflow read."""
    flat: dict[str, float] = {}
    for name, iv in intervals.items():
        flat[f"{prefix}_{name}"] = iv.value
        flat[f"{prefix}_{name}_ci_low"] = iv.low
        flat[f"{prefix}_{name}_ci_high"] = iv.high
    return flat


def confusion_table(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str] = CLASSES) -> pd.DataFrame:
    """One row per galaxy, `actual` and `predicted` class names: what DVC's confusion template reads."""
    probs, labels = validate(probs, labels, "probs")
    names = np.asarray(classes)
    return pd.DataFrame({"actual": names[labels], "predicted": names[probs.argmax(axis=1)]})


def roc_curve_table(probs: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """ROC of P(spiral), spiral positive: fpr, tpr, threshold (sklearn's curve, without its inf threshold)."""
    probs, labels = validate(probs, labels, "probs")
    fpr, tpr, thr = roc_curve((labels == 0).astype(int), probs[:, 0], drop_intermediate=True)
    thr = np.where(np.isfinite(thr), thr, 1.0)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})


def coverage_curve(
    probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | None = None, *, min_kept: int | None = None
) -> pd.DataFrame:
    """Abstention like Galaxy Zoo's "uncertain": keep a galaxy only when its top probability >= threshold.

    One row per threshold: coverage (share kept), accuracy and macro F1 of the kept ones, n_kept. Thresholds
    that keep fewer than `min_kept` galaxies are left out (an accuracy of 2 galaxies is noise, not a curve);
    the default is a tenth of the set, at most 20.
    """
    probs, labels = validate(probs, labels, "probs")
    if thresholds is None:
        thresholds = np.round(np.linspace(1.0 / probs.shape[1], 1.0, 51), 4)
    if min_kept is None:
        min_kept = max(1, min(20, len(labels) // 10))
    conf = probs.max(axis=1)
    rows = []
    for t in np.asarray(thresholds, dtype=np.float64):
        keep = conf >= t
        if keep.sum() >= min_kept:
            rows.append({"threshold": float(t), **_selective(probs[keep], labels[keep], len(labels))})
    return pd.DataFrame(rows, columns=["threshold", "coverage", "accuracy", "macro_f1", "n_kept"])


def _selective(probs: np.ndarray, labels: np.ndarray, n_total: int) -> dict[str, float]:
    n = len(labels)
    if n == 0:
        return {"coverage": 0.0, "accuracy": math.nan, "macro_f1": math.nan, "n_kept": 0}
    design = _Design(probs, labels, 1)
    k = design.kpis(np.ones((1, n)), [str(i) for i in range(probs.shape[1])])
    return {
        "coverage": n / n_total,
        "accuracy": float(k["accuracy"][0]),
        "macro_f1": float(k["macro_f1"][0]),
        "n_kept": n,
    }


def abstention(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """At one threshold: coverage, accuracy and macro F1 of the confident calls, and how many abstained."""
    probs, labels = validate(probs, labels, "probs")
    keep = probs.max(axis=1) >= threshold
    out = _selective(probs[keep], labels[keep], len(labels))
    return {"threshold": float(threshold), **out, "n_uncertain": int((~keep).sum())}


def vote_agreement(probs: np.ndarray, p_spiral: np.ndarray, p_elliptical: np.ndarray, threshold: float) -> dict:
    """Do the model's calls agree with the majority of the votes on galaxies the catalogue left UNCERTAIN?

    The vote majority is spiral when p_spiral > p_elliptical, elliptical when lower; ties and galaxies
    without votes are counted and left out. Reported for every call and for the confident ones
    (top probability >= threshold), the calls a survey would keep.
    """
    probs = np.asarray(probs, dtype=np.float64)
    p_sp = np.asarray(p_spiral, dtype=np.float64)
    p_el = np.asarray(p_elliptical, dtype=np.float64)
    known = np.isfinite(p_sp) & np.isfinite(p_el)
    tie = known & (p_sp == p_el)
    usable = known & ~tie
    majority = np.where(p_sp > p_el, 0, 1)
    pred = probs.argmax(axis=1)
    agree = usable & (pred == majority)
    confident = probs.max(axis=1) >= threshold
    n_usable, n_conf = int(usable.sum()), int((usable & confident).sum())
    return {
        "n_scored": len(probs),
        "n_without_votes": int((~known).sum()),
        "n_vote_ties": int(tie.sum()),
        "n_compared": n_usable,
        "agreement": float(agree.sum() / n_usable) if n_usable else math.nan,
        "n_confident": n_conf,
        "confident_share": float(n_conf / n_usable) if n_usable else math.nan,
        "n_confident_agree": int((agree & confident).sum()),
        "confident_agreement": float((agree & confident).sum() / n_conf) if n_conf else math.nan,
        "threshold": float(threshold),
        "called_spiral": int((usable & confident & (pred == 0)).sum()),
        "called_elliptical": int((usable & confident & (pred == 1)).sum()),
    }


def vote_correlation(probs: np.ndarray, p_spiral: np.ndarray) -> float:
    """Spearman rank correlation of the model's P(spiral) with the vote fraction (NaN without votes)."""
    p = np.asarray(p_spiral, dtype=np.float64)
    ok = np.isfinite(p)
    if ok.sum() < 3 or np.ptp(p[ok]) == 0 or np.ptp(probs[ok, 0]) == 0:
        return math.nan
    return float(spearmanr(probs[ok, 0], p[ok]).statistic)


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """macro F1 of model B minus model A on the same galaxies, with its paired-bootstrap interval."""

    n: int
    diff: float
    low: float
    high: float


def _macro_f1_weighted(weights: np.ndarray, labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """Macro F1 of each row of `weights` (resample multiplicities, shape (size, n)); a class with no true
    and no predicted galaxy in a resample scores 0, as sklearn's zero_division=0."""
    scores = np.zeros(weights.shape[0])
    for c in range(k):
        tp = weights @ ((labels == c) & (predicted == c)).astype(np.float64)
        wrong = weights @ ((labels == c) != (predicted == c)).astype(np.float64)  # fp + fn
        denominator = 2 * tp + wrong
        scores += np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return scores / k


def paired_f1_difference(
    labels: np.ndarray,
    predicted_a: np.ndarray,
    predicted_b: np.ndarray,
    *,
    n_classes: int = len(CLASSES),
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedDifference:
    """Paired bootstrap of macro F1(B) - macro F1(A): each resample draws the same galaxies for both models,
    so what the two models agree on cancels and the interval is far narrower than two separate intervals.
    Labels and predictions are class indices."""
    labels, predicted_a, predicted_b = (np.asarray(x, dtype=np.int64) for x in (labels, predicted_a, predicted_b))
    if not (len(labels) == len(predicted_a) == len(predicted_b)) or len(labels) == 0:
        raise ValueError("paired_f1_difference: labels and both predictions need the same, non-zero length")
    ones = np.ones((1, len(labels)))
    diff = float(
        _macro_f1_weighted(ones, labels, predicted_b, n_classes)[0]
        - _macro_f1_weighted(ones, labels, predicted_a, n_classes)[0]
    )
    weights = bootstrap_counts(np.random.default_rng(seed), len(labels), n_resamples)
    diffs = _macro_f1_weighted(weights, labels, predicted_b, n_classes) - _macro_f1_weighted(
        weights, labels, predicted_a, n_classes
    )
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return PairedDifference(len(labels), diff, float(low), float(high))
