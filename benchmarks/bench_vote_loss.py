"""Vote-aware training against cross-entropy on the same test split: the README "Vote-aware training" table.

    .venv/bin/python benchmarks/bench_vote_loss.py --splits DIR/data/processed/splits.parquet \\
        ce=DIR/reports/ce/eval dirichlet=DIR/reports/dm/eval ...

Each NAME=FOLDER is an `evaluate.out_dir` written by `galmorph evaluate` (predictions.csv, summary.json) for
one model; the first is the baseline. Printed per model, with 95% bootstrap intervals (1000 resamples, seed 0,
the evaluate stage's own classification_metrics for the first three): test accuracy, macro F1, ECE after
temperature scaling, and the Spearman correlation of P(spiral) with the volunteers' vote fraction, raw
(count_spiral / (count_spiral + count_elliptical)) and as the catalogue's p_spiral (debiased where the manifest
says so), on the test galaxies that have votes; then each model's difference from the baseline with a paired
bootstrap interval (the same resampled galaxies for both models: what they agree on cancels).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from galmorph.config import CLASSES  # noqa: E402
from galmorph.evaluation.metrics import (  # noqa: E402
    Interval,
    bootstrap_counts,
    classification_metrics,
    paired_f1_difference,
)

RESAMPLES, SEED = 1000, 0


def _resamples(n: int) -> list[np.ndarray]:
    """The bootstrap resamples as index arrays, the same for every model (seeded)."""
    counts = bootstrap_counts(np.random.default_rng(SEED), n, RESAMPLES).astype(int)
    return [np.repeat(np.arange(n), c) for c in counts]


def spearman_interval(x: np.ndarray, y: np.ndarray, x0: np.ndarray | None = None) -> Interval:
    """Spearman's rho of x and y with a percentile bootstrap interval over galaxies; with x0, of
    rho(x, y) - rho(x0, y) on paired resamples."""

    def rho(a: np.ndarray, idx: np.ndarray | slice) -> float:
        return float(spearmanr(a[idx], y[idx]).statistic)

    def stat(idx: np.ndarray | slice) -> float:
        return rho(x, idx) - (rho(x0, idx) if x0 is not None else 0.0)

    draws = [stat(idx) for idx in _resamples(len(x))]
    low, high = np.nanquantile(draws, [0.025, 0.975])
    return Interval(stat(slice(None)), float(low), float(high))


def measure(folder: Path, splits: pd.DataFrame) -> dict[str, Interval | int]:
    table = pd.read_csv(folder / "predictions.csv", dtype={"galaxy_id": str})
    rows = splits.set_index("galaxy_id").loc[table["galaxy_id"]]
    probs = table[[f"p_{c}" for c in CLASSES]].to_numpy(np.float64)
    labels = np.array([CLASSES.index(v) for v in table["label"]])
    kpis = classification_metrics(probs, labels, n_resamples=RESAMPLES, seed=SEED)
    counts = rows[["count_spiral", "count_elliptical"]].to_numpy(np.float64)
    voted = np.isfinite(counts).all(axis=1) & (counts.sum(axis=1) > 0)
    raw = counts[voted, 0] / counts[voted].sum(axis=1)
    debiased = rows["p_spiral"].to_numpy(np.float64)[voted]
    return {
        "probs": probs,
        "labels": labels,
        "voted": voted,
        "raw": raw,
        "debiased": debiased,
        "accuracy": kpis["accuracy"],
        "macro_f1": kpis["macro_f1"],
        "ece_calibrated": kpis["ece"],
        "spearman_raw": spearman_interval(probs[voted, 0], raw),
        "spearman_catalogue": spearman_interval(probs[voted, 0], debiased),
        "n": len(table),
        "n_voted": int(voted.sum()),
        "temperature": json.loads((folder / "summary.json").read_text())["sets"][0]["temperature"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", required=True, type=Path, help="the split stage's splits.parquet")
    parser.add_argument("runs", nargs="+", help="NAME=EVAL_FOLDER; the first is the baseline")
    args = parser.parse_args()
    splits = pd.read_parquet(args.splits).astype({"galaxy_id": str})
    results = {}
    for item in args.runs:
        name, _, folder = item.partition("=")
        results[name] = measure(Path(folder), splits)
    keys = ("accuracy", "macro_f1", "ece_calibrated", "spearman_raw", "spearman_catalogue")
    first = next(iter(results.values()))
    print(f"test split: {first['n']} galaxies, {first['n_voted']} with vote counts (the Spearman columns)")
    print("| loss | " + " | ".join(keys) + " | T |")
    print("| --- |" + " ---: |" * (len(keys) + 1))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(format(r[k], ".3f") for k in keys) + f" | {r['temperature']:.2f} |")
    base, base_name = first, next(iter(results))
    for name, r in list(results.items())[1:]:
        if not np.array_equal(r["labels"], base["labels"]):
            raise SystemExit(f"{name}: not the same test galaxies as {base_name}")
        f1 = paired_f1_difference(
            base["labels"], base["probs"].argmax(1), r["probs"].argmax(1), n_resamples=RESAMPLES, seed=SEED
        )
        x, x0 = r["probs"][r["voted"], 0], base["probs"][base["voted"], 0]
        sp_raw = spearman_interval(x, r["raw"], x0)
        sp_cat = spearman_interval(x, r["debiased"], x0)
        print(
            f"{name} - {base_name} (paired 95% intervals): macro_f1 {f1.diff:+.3f} [{f1.low:+.3f}, {f1.high:+.3f}], "
            f"spearman_raw {sp_raw:+.3f}, spearman_catalogue {sp_cat:+.3f}"
        )


if __name__ == "__main__":
    main()
