"""KPIs against scikit-learn on fixed arrays, the seeded bootstrap, abstention and agreement with the votes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from galmorph.evaluation.calibration import brier_score, expected_calibration_error
from galmorph.evaluation.metrics import (
    Interval,
    abstention,
    bootstrap_counts,
    classification_metrics,
    confusion_matrix,
    confusion_table,
    coverage_curve,
    flat_metrics,
    mean_interval,
    metric_names,
    roc_curve_table,
    vote_agreement,
    vote_correlation,
)


def scored_set(n: int = 400, seed: int = 1, decimals: int | None = 2) -> tuple[np.ndarray, np.ndarray]:
    """An imbalanced test set with a decent classifier; rounded probabilities create tied scores."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.35).astype(int)  # 35% elliptical
    margin = rng.normal(0, 1.3, n) + np.where(labels == 0, 1.2, -1.2)
    p_spiral = 1 / (1 + np.exp(-margin))
    if decimals is not None:
        p_spiral = np.round(p_spiral, decimals)
    return np.stack([p_spiral, 1 - p_spiral], axis=1), labels


@pytest.mark.parametrize("decimals", [2, None])
def test_point_estimates_match_sklearn(decimals):
    probs, labels = scored_set(decimals=decimals)
    pred = probs.argmax(axis=1)
    m = classification_metrics(probs, labels, n_resamples=0)
    assert list(m) == metric_names()
    assert m["accuracy"].value == pytest.approx(skm.accuracy_score(labels, pred))
    assert m["macro_f1"].value == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    prec, rec, f1, _ = skm.precision_recall_fscore_support(labels, pred, labels=[0, 1], zero_division=0)
    for i, c in enumerate(("spiral", "elliptical")):
        assert m[f"precision_{c}"].value == pytest.approx(prec[i])
        assert m[f"recall_{c}"].value == pytest.approx(rec[i])
        assert m[f"f1_{c}"].value == pytest.approx(f1[i])
    assert m["roc_auc"].value == pytest.approx(skm.roc_auc_score(labels == 0, probs[:, 0]))
    assert m["log_loss"].value == pytest.approx(skm.log_loss(labels, probs, labels=[0, 1]))
    assert m["brier"].value == pytest.approx(brier_score(probs, labels))
    assert m["ece"].value == pytest.approx(expected_calibration_error(probs, labels, 15))
    cm = skm.confusion_matrix(labels, pred, labels=[0, 1])
    assert np.array_equal(confusion_matrix(probs, labels), cm)
    rates = cm / cm.sum(axis=1, keepdims=True)
    assert m["confusion_spiral_as_elliptical"].value == pytest.approx(rates[0, 1])
    assert m["confusion_elliptical_as_elliptical"].value == pytest.approx(rates[1, 1])
    assert math.isnan(m["accuracy"].low)  # no bootstrap asked for


def test_zero_division_and_single_class_follow_sklearn():
    # the model never says elliptical, and the set has no elliptical at all
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]])
    labels = np.zeros(3, dtype=int)
    m = classification_metrics(probs, labels, n_resamples=20)
    assert m["precision_elliptical"].value == 0.0
    assert m["recall_elliptical"].value == 0.0
    assert m["macro_f1"].value == pytest.approx(
        skm.f1_score(labels, [0, 0, 0], average="macro", labels=[0, 1], zero_division=0)
    )
    assert math.isnan(m["roc_auc"].value)  # undefined with one class: NaN, not a crash
    assert math.isnan(m["roc_auc"].low)


def test_bootstrap_interval_contains_the_estimate_narrows_with_n_and_is_seeded():
    probs, labels = scored_set(400)
    a = classification_metrics(probs, labels, n_resamples=500, seed=7)
    b = classification_metrics(probs, labels, n_resamples=500, seed=7)
    c = classification_metrics(probs, labels, n_resamples=500, seed=8)
    assert a == b
    assert a["accuracy"] != c["accuracy"]
    for name in ("accuracy", "macro_f1", "roc_auc", "log_loss", "recall_spiral", "precision_elliptical"):
        iv = a[name]
        assert iv.low < iv.value < iv.high, name
    # the binomial standard error of the accuracy sets the interval's width (about +-1.96 se)
    acc = a["accuracy"].value
    se = math.sqrt(acc * (1 - acc) / len(labels))
    assert a["accuracy"].high - a["accuracy"].low == pytest.approx(2 * 1.96 * se, rel=0.2)
    big_probs, big_labels = scored_set(4000)
    big = classification_metrics(big_probs, big_labels, n_resamples=300)
    assert big["accuracy"].high - big["accuracy"].low < (a["accuracy"].high - a["accuracy"].low) / 2


def test_bootstrap_counts_are_resamples():
    rng = np.random.default_rng(0)
    counts = bootstrap_counts(rng, 50, 200)
    assert counts.shape == (200, 50)
    assert np.all(counts.sum(axis=1) == 50)
    assert counts.mean() == pytest.approx(1.0)
    # P(a galaxy is left out of a resample) = (1 - 1/n)^n, about 0.364 for n = 50
    assert (counts == 0).mean() == pytest.approx((1 - 1 / 50) ** 50, abs=0.02)


def test_mean_interval_is_the_accuracy_interval_and_pairs_differences():
    probs, labels = scored_set(400)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    iv = mean_interval(correct, np.random.default_rng(7), n_resamples=1000)
    # the same resamples as classification_metrics draws give its accuracy interval
    assert iv == classification_metrics(probs, labels, n_resamples=1000, seed=7)["accuracy"]
    assert iv.low < iv.value == correct.mean() < iv.high
    # a second model wrong on 20 galaxies the first gets right: only those 20 vary between resamples, so the
    # paired interval is about +-1.96 sqrt(20)/400 wide (half the accuracy's own) and excludes 0
    other = correct.copy()
    other[np.flatnonzero(correct)[:20]] = 0
    diff = mean_interval(other - correct, np.random.default_rng(7), n_resamples=1000)
    assert diff.value == pytest.approx(-20 / 400)
    assert diff.high < 0
    assert diff.high - diff.low == pytest.approx(2 * 1.96 * math.sqrt(20) / 400, rel=0.2)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        mean_interval(np.array([]), np.random.default_rng(0))


def test_bootstrap_blocks_give_the_same_intervals_as_one_block(monkeypatch):
    import galmorph.evaluation.metrics as metrics

    sizes: list[int] = []

    def counted(rng, n, size):
        sizes.append(size)
        return bootstrap_counts(rng, n, size)

    monkeypatch.setattr(metrics, "bootstrap_counts", counted)
    probs, labels = scored_set(100)
    one = classification_metrics(probs, labels, n_resamples=64, seed=3)
    assert sizes == [64]
    sizes.clear()
    monkeypatch.setattr(metrics, "_MAX_BLOCK_CELLS", 100 * 5)  # blocks of 5 resamples
    many = classification_metrics(probs, labels, n_resamples=64, seed=3)
    assert sizes == [5] * 12 + [4]  # every resample drawn once, the last block partial
    # the blocks draw the same random stream in the same order: the very same intervals
    assert many == one


def test_flat_metrics_keys():
    flat = flat_metrics("test", {"accuracy": Interval(0.9, 0.85, 0.94)})
    assert flat == {"test_accuracy": 0.9, "test_accuracy_ci_low": 0.85, "test_accuracy_ci_high": 0.94}
    assert format(Interval(0.9, 0.85, 0.94), ".2f") == "0.90 [0.85, 0.94]"


def test_coverage_curve_and_abstention():
    probs, labels = scored_set(600, decimals=None)
    curve = coverage_curve(probs, labels)
    assert curve["threshold"].iloc[0] == 0.5
    assert curve["coverage"].iloc[0] == 1.0
    assert curve["accuracy"].iloc[0] == pytest.approx(skm.accuracy_score(labels, probs.argmax(1)))
    assert curve["coverage"].is_monotonic_decreasing
    # a useful confidence: accuracy rises as the model abstains on more galaxies
    kept = curve[curve["n_kept"] >= 50]
    assert kept["accuracy"].iloc[-1] > kept["accuracy"].iloc[0] + 0.05
    at = abstention(probs, labels, 0.8)
    conf = probs.max(axis=1)
    assert at["n_uncertain"] == int((conf < 0.8).sum())
    assert at["coverage"] == pytest.approx((conf >= 0.8).mean())
    assert at["accuracy"] == pytest.approx((probs.argmax(1) == labels)[conf >= 0.8].mean())
    nobody = abstention(probs, labels, 1.01)
    assert nobody["coverage"] == 0.0 and math.isnan(nobody["accuracy"])


def test_curve_tables_for_dvc_plots():
    probs, labels = scored_set(200)
    table = confusion_table(probs, labels)
    assert list(table.columns) == ["actual", "predicted"]
    assert set(table["actual"]) == {"spiral", "elliptical"}
    assert (table["actual"] == table["predicted"]).mean() == pytest.approx(skm.accuracy_score(labels, probs.argmax(1)))
    roc = roc_curve_table(probs, labels)
    assert roc["fpr"].iloc[0] == 0.0 and roc["tpr"].iloc[-1] == 1.0
    assert np.isfinite(roc["threshold"]).all()
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(skm.roc_auc_score(labels == 0, probs[:, 0]))


def test_vote_agreement_counts():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.1, 0.9], [0.6, 0.4]])
    p_sp = np.array([0.7, 0.3, 0.2, 0.6, np.nan, 0.5])
    p_el = np.array([0.2, 0.6, 0.7, 0.3, np.nan, 0.5])
    out = vote_agreement(probs, p_sp, p_el, threshold=0.75)
    assert out["n_scored"] == 6
    assert out["n_without_votes"] == 1
    assert out["n_vote_ties"] == 1
    assert out["n_compared"] == 4
    assert out["agreement"] == pytest.approx(3 / 4)  # rows 0, 2, 3 agree; row 1 does not
    assert out["n_confident"] == 3  # rows 0, 1, 2
    assert out["n_confident_agree"] == 2
    assert out["confident_agreement"] == pytest.approx(2 / 3)
    assert out["called_spiral"] == 2 and out["called_elliptical"] == 1
    assert vote_correlation(probs, p_sp) > 0.5
    assert math.isnan(vote_correlation(probs, np.full(6, np.nan)))
