"""The README's framing table from evaluation reports: accuracy per source with 95% intervals, and each framing's
difference from the first one on the same images (paired bootstrap), on the test split and on ood-dev.

Each argument is NAME=DIR, DIR an `evaluate.out_dir` (reports/eval) of one run: its predictions.csv (the test
split, with the manifest's `dataset` column) and ood/predictions.csv (evaluate.ood_manifest). The first run is
the baseline of the differences. The runs must share a split (same data, split.seed), so rows pair by galaxy_id.

    .venv/bin/python benchmarks/framing_table.py fixed256=runs/fixed256/eval fixed192=runs/fixed192/eval \\
        adaptive=runs/adaptive/eval
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from galmorph.evaluation.metrics import mean_interval

LABELS = ("spiral", "elliptical")


def load(directory: Path, part: str) -> pd.DataFrame:
    path = directory / ("predictions.csv" if part == "test" else "ood/predictions.csv")
    rows = pd.read_csv(path, usecols=["galaxy_id", "label", "predicted", "dataset"])
    rows = rows[rows["label"].isin(LABELS)]
    return rows.assign(correct=rows["label"] == rows["predicted"]).set_index("galaxy_id")


def table(runs: dict[str, Path], part: str, resamples: int, seed: int) -> list[str]:
    frames = {name: load(d, part) for name, d in runs.items()}
    names = list(frames)
    base = frames[names[0]]
    for name in names[1:]:
        if set(frames[name].index) != set(base.index):
            raise SystemExit(f"{name}: not the same {part} images as {names[0]} (another split?)")
    groups = [("all", base.index)] + [(str(k), g.index) for k, g in base.groupby("dataset")]
    header = "| source | n | " + " | ".join(names) + " | " + " | ".join(f"{n} − {names[0]}" for n in names[1:]) + " |"
    lines = [header, "| --- | ---: |" + " ---: |" * (2 * len(names) - 1)]
    rng = np.random.default_rng(seed)
    for label, index in groups:
        cells = []
        ok = {n: frames[n].loc[index, "correct"].to_numpy(dtype=float) for n in names}
        for n in names:
            iv = mean_interval(ok[n], rng, n_resamples=resamples)
            cells.append(f"{iv.value:.3f} [{iv.low:.3f}, {iv.high:.3f}]")
        for n in names[1:]:
            iv = mean_interval(ok[n] - ok[names[0]], rng, n_resamples=resamples)
            cells.append(f"{iv.value:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]")
        lines.append(f"| {part}: {label} | {len(index)} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="NAME=DIR (an evaluate.out_dir); the first is the baseline")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    runs = {}
    for item in args.runs:
        name, sep, directory = item.partition("=")
        if not sep or not (Path(directory) / "predictions.csv").is_file():
            print(f"{item}: expected NAME=DIR with DIR/predictions.csv", file=sys.stderr)
            return 2
        runs[name] = Path(directory)
    lines = table(runs, "test", args.resamples, args.seed)
    if all((d / "ood" / "predictions.csv").is_file() for d in runs.values()):
        lines += table(runs, "ood-dev", args.resamples, args.seed)[2:]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
