"""Temperature scaling, ECE, Brier score and the reliability curve on fixed, deliberately miscalibrated sets."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from galmorph.evaluation.calibration import (
    T_MAX,
    T_MIN,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_curve,
)
from galmorph.models.inference import softmax_t as softmax


def overconfident_set(n: int = 2000, true_t: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose calibrated temperature is `true_t`: labels drawn from softmax(logits / true_t)."""
    rng = np.random.default_rng(seed)
    margin = rng.normal(0.0, 4.0, n)
    logits = np.stack([margin / 2, -margin / 2], axis=1)
    p = softmax(logits, true_t)
    labels = (rng.random(n) >= p[:, 0]).astype(int)  # 0 = spiral with probability p[:, 0]
    return logits, labels


def test_nll_matches_sklearn_log_loss():
    logits, labels = overconfident_set(300)
    assert nll(logits, labels) == pytest.approx(log_loss(labels, softmax(logits), labels=[0, 1]), rel=1e-9)


def test_fit_temperature_recovers_the_true_temperature_and_lowers_nll_and_ece():
    logits, labels = overconfident_set(4000, true_t=3.0)
    t = fit_temperature(logits, labels)
    assert 2.5 < t < 3.6
    assert nll(logits, labels, t) < nll(logits, labels, 1.0) - 0.05
    before = expected_calibration_error(softmax(logits), labels, 15)
    after = expected_calibration_error(softmax(logits, t), labels, 15)
    assert after < before / 2
    assert before > 0.1


def test_fit_temperature_sharpens_an_underconfident_model():
    logits, labels = overconfident_set(4000, true_t=0.5)
    assert fit_temperature(logits, labels) < 0.7


def test_fit_temperature_is_robust_on_tiny_and_degenerate_sets():
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int)) == 1.0
    # three galaxies, all right: the unregularised optimum is T -> 0; the prior keeps T sane
    logits = np.array([[2.0, -2.0], [1.5, -1.0], [-1.0, 3.0]])
    t = fit_temperature(logits, np.array([0, 0, 1]))
    assert 0.2 < t < 1.0
    # identical logits carry no information about T
    assert fit_temperature(np.zeros((5, 2)), np.array([0, 1, 0, 1, 0])) == pytest.approx(1.0, abs=1e-3)
    # wildly wrong and sure: T goes up to the bound, never to infinity
    t = fit_temperature(np.array([[50.0, -50.0]] * 50), np.ones(50, dtype=int))
    assert T_MIN <= t <= T_MAX
    assert t > 5


def test_bad_shapes_and_values_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        fit_temperature(np.zeros(4), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="labels"):
        expected_calibration_error(np.full((3, 2), 0.5), np.array([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match="integers"):
        brier_score(np.full((2, 2), 0.5), np.array([0, 2]))


def test_ece_by_hand():
    # two bins used of 10: confidence 0.95 (2 galaxies, 1 right) and 0.65 (2 galaxies, both right)
    probs = np.array([[0.95, 0.05], [0.05, 0.95], [0.65, 0.35], [0.35, 0.65]])
    labels = np.array([0, 0, 0, 1])
    expected = (2 * abs(0.5 - 0.95) + 2 * abs(1.0 - 0.65)) / 4
    assert expected_calibration_error(probs, labels, 10) == pytest.approx(expected)
    # a perfectly calibrated set has ECE 0
    assert expected_calibration_error(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([0, 1]), 10) == 0.0
    # confidence 1.0 falls into the top bin, not past it
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0]), 5) == 0.0


def test_brier_score_matches_sklearn():
    logits, labels = overconfident_set(500)
    probs = softmax(logits)
    # sklearn's positive class is label 1 (elliptical) with P(elliptical); symmetric for two classes
    assert brier_score(probs, labels) == pytest.approx(brier_score_loss(labels, probs[:, 1]))


def test_reliability_curve_bins_and_rows():
    logits, labels = overconfident_set(2000, true_t=3.0)
    curve = reliability_curve(softmax(logits), labels, 10)
    assert curve.count.sum() == 2000
    assert len(curve.edges) == 11
    assert np.all(curve.count[:5] == 0)  # two classes: the top-label confidence is at least 0.5
    assert np.isnan(curve.accuracy[0])
    used = curve.count > 0
    assert np.all(
        (curve.confidence[used] >= curve.edges[:-1][used]) & (curve.confidence[used] <= curve.edges[1:][used])
    )
    # over-confident: in the high bins accuracy trails confidence
    assert curve.accuracy[-1] < curve.confidence[-1]
    rows = curve.to_rows()
    assert len(rows) == int(used.sum())
    assert {"bin_low", "bin_high", "confidence", "accuracy", "count"} <= set(rows[0])
    # the curve and the ECE agree
    ece = np.nansum(np.abs(curve.accuracy - curve.confidence) * curve.count) / curve.count.sum()
    assert ece == pytest.approx(expected_calibration_error(softmax(logits), labels, 10))
