"""Calibration: is P(spiral) = 0.8 right 80% of the time?

A network trained with cross-entropy is usually over-confident. Temperature scaling (Guo et al. 2017,
"On Calibration of Modern Neural Networks") divides the logits by one scalar T fitted on the validation
split: it changes no prediction, only how sure the model says it is. The train stage fits T and stores it
with the model; evaluate reports the expected calibration error (ECE) before (T = 1) and after.

Every function takes plain numpy arrays: logits or probabilities (N, 2) in galmorph.config.CLASSES order
and integer labels (N,) indexing that order.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.optimize import minimize_scalar

T_MIN, T_MAX = 0.05, 20.0
"""Search range of the temperature: far wider than any sane network needs, narrow enough to stay finite."""

LOG_T_PRIOR_SIGMA = 1.0
"""Width of a weak log-normal prior on T (centred on T = 1). Its weight falls as 1/N, so it only matters on
tiny validation sets, where a handful of all-correct galaxies would otherwise drive T to its lower bound and
make the model absurdly sure of itself."""


def validate(values: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) float scores and (N,) integer labels in [0, K), checked; ValueError names what is wrong."""
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels)
    if values.ndim != 2 or values.shape[1] < 2:
        raise ValueError(f"{what}: expected shape (N, n_classes), got {values.shape}")
    if labels.shape != (values.shape[0],):
        raise ValueError(f"labels: expected shape ({values.shape[0]},), got {labels.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what}: contains NaN or infinite values")
    if labels.size and (labels.min() < 0 or labels.max() >= values.shape[1]):
        raise ValueError(f"labels: expected integers in [0, {values.shape[1] - 1}]")
    return values, labels.astype(np.int64)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    logits, labels = validate(logits, labels, "logits")
    if not len(labels):
        raise ValueError("nll: no samples")
    logp = _log_softmax(logits / temperature)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T that minimises the NLL of softmax(logits / T) on (validation) labels.

    A bounded scalar search on log T (the NLL is smooth and unimodal in it) in [T_MIN, T_MAX], with a weak
    prior towards T = 1 that only tiny sets feel. Returns 1.0 for an empty set (nothing to learn from).
    """
    logits, labels = validate(logits, labels, "logits")
    n = len(labels)
    if n == 0:
        return 1.0
    picked = np.arange(n)
    prior_weight = 1.0 / (2.0 * LOG_T_PRIOR_SIGMA**2 * n)

    def objective(log_t: float) -> float:
        logp = _log_softmax(logits / math.exp(log_t))
        return float(-logp[picked, labels].mean()) + prior_weight * log_t**2

    result = minimize_scalar(
        objective, bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded", options={"xatol": 1e-6}
    )
    return float(math.exp(result.x))


def confidence_bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index of each confidence: equal-width bins on [0, 1], the top one closed at 1."""
    return np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: sum over equal-width confidence bins of |accuracy - mean confidence| x bin share.

    Guo et al.'s definition (bins on [0, 1]), so numbers compare with the literature; 0 is perfect.
    """
    probs, labels = validate(probs, labels, "probs")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    if not len(labels):
        raise ValueError("expected_calibration_error: no samples")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = confidence_bins(confidence, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.bincount(bins, weights=correct - confidence, minlength=n_bins)
    return float(np.abs(gap).sum() / count.sum())


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared error of P(spiral) against the 0/1 truth (sklearn's brier_score_loss; 0 is perfect).

    For two classes this is half the multi-class Brier score and the same whichever class is "positive".
    """
    probs, labels = validate(probs, labels, "probs")
    if not len(labels):
        raise ValueError("brier_score: no samples")
    onehot = np.eye(probs.shape[1])[labels]
    scale = 0.5 if probs.shape[1] == 2 else 1.0
    return float(scale * ((probs - onehot) ** 2).sum(axis=1).mean())


@dataclasses.dataclass(frozen=True)
class ReliabilityCurve:
    """Per confidence bin: the bin's edges, its galaxies' mean confidence, their accuracy and their count.

    Empty bins have NaN confidence and accuracy (a plot skips them).
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def centres(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2.0

    def to_rows(self) -> list[dict[str, float]]:
        """One dict per non-empty bin, the shape DVC plots and CSV files want."""
        return [
            {
                "bin_low": float(self.edges[i]),
                "bin_high": float(self.edges[i + 1]),
                "confidence": float(self.confidence[i]),
                "accuracy": float(self.accuracy[i]),
                "count": int(self.count[i]),
            }
            for i in range(len(self.count))
            if self.count[i]
        ]


def reliability_curve(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> ReliabilityCurve:
    """The reliability diagram's data, with the same bins as expected_calibration_error."""
    probs, labels = validate(probs, labels, "probs")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bins = confidence_bins(confidence, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return ReliabilityCurve(np.linspace(0.0, 1.0, n_bins + 1), mean_conf, accuracy, count)
