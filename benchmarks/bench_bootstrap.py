"""Benchmark the evaluation's bootstrap: every KPI with a 95% interval from 1000 resamples.

galmorph's classification_metrics draws each resample as a row of counts and gets every KPI (accuracy,
macro F1, per-class precision/recall/F1, ROC-AUC, log loss, Brier, ECE, the confusion rates) from one
matrix product per block of resamples. The baseline, measured in the same run, is the usual loop:
for each resample, index the arrays and call scikit-learn's accuracy_score, f1_score,
precision_recall_fscore_support, roc_auc_score, log_loss and brier_score_loss (fewer KPIs: no ECE, no
confusion rates). Both use the same synthetic test set; the point estimates are checked to agree.

    .venv/bin/python benchmarks/bench_bootstrap.py                         # n = 2,000 and 20,000; 1000 resamples
    .venv/bin/python benchmarks/bench_bootstrap.py --sizes 500 100000 --resamples 1000 --baseline-resamples 100

The baseline's time for --resamples is extrapolated from --baseline-resamples when that is smaller (printed
as such). Target: at least 20x faster than the loop at n = 2,000 (exit status 1 when missed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from sklearn import metrics as skm

from galmorph.evaluation.metrics import classification_metrics

TARGET_SPEEDUP = 20.0


def test_set(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(np.int64)
    margin = rng.normal(0, 1.5, n) + np.where(labels == 0, 1.5, -1.5)
    p = 1 / (1 + np.exp(-margin))
    return np.stack([p, 1 - p], axis=1), labels


def sklearn_loop(probs: np.ndarray, labels: np.ndarray, resamples: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = len(labels)
    out: dict[str, list[float]] = {k: [] for k in ("accuracy", "macro_f1", "roc_auc", "log_loss", "brier")}
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        y, p = labels[idx], probs[idx]
        pred = p.argmax(axis=1)
        out["accuracy"].append(skm.accuracy_score(y, pred))
        out["macro_f1"].append(skm.f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0))
        skm.precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
        out["roc_auc"].append(skm.roc_auc_score(y == 0, p[:, 0]) if 0 < y.sum() < n else np.nan)
        out["log_loss"].append(skm.log_loss(y, p, labels=[0, 1]))
        out["brier"].append(skm.brier_score_loss(y, p[:, 1]))
    return {k: np.asarray(v) for k, v in out.items()}


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--baseline-resamples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    print(f"{'n':>8} {'galmorph s':>11} {'sklearn loop s':>15} {'speed-up':>9}  accuracy [95% CI]")
    ok = True
    for n in args.sizes:
        probs, labels = test_set(n)
        base_n = min(args.baseline_resamples, args.resamples)
        ours, kpis = timed(
            lambda p=probs, y=labels: classification_metrics(p, y, n_resamples=args.resamples), args.repeats
        )
        base, draws = timed(lambda p=probs, y=labels, b=base_n: sklearn_loop(p, y, b), 1)
        base *= args.resamples / base_n
        lo, hi = np.quantile(draws["accuracy"], [0.025, 0.975])
        assert abs(kpis["accuracy"].value - skm.accuracy_score(labels, probs.argmax(1))) < 1e-12
        note = "" if base_n == args.resamples else f" (loop timed on {base_n} resamples, scaled)"
        speedup = base / ours
        print(
            f"{n:>8,} {ours:>11.3f} {base:>15.2f} {speedup:>8.0f}x  {kpis['accuracy']} (loop: [{lo:.3f}, {hi:.3f}]){note}"
        )
        if n == 2000 and speedup < TARGET_SPEEDUP:
            ok = False
    print(f"target: >= {TARGET_SPEEDUP:.0f}x the sklearn loop at n = 2,000: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
