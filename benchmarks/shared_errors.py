"""Do two trained models get the same galaxies wrong, and does averaging them help? From two evaluate folders
(real_runs.sh's runs/NAME: predictions.csv, ood/predictions.csv), scored on the same split.

    .venv/bin/python benchmarks/shared_errors.py /tmp/real-ood/runs/makereal-seed1 /tmp/real-ood/runs/prog80-seed1

Prints, per set: each model's accuracy, the mistakes they share (by source, with the median own-class vote where
there are votes), and the mean of their probabilities with its paired bootstrap difference from the first model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from galmorph.evaluation.metrics import mean_interval

CLASSES = ("spiral", "elliptical")


def _read(folder: Path, name: str) -> pd.DataFrame:
    path = folder / name
    if not path.is_file():
        sys.exit(f"{path}: not found (expected an evaluate folder with {name})")
    frame = pd.read_csv(path)
    missing = {"label", "predicted", "p_spiral"} - set(frame.columns)
    if missing:
        sys.exit(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    key = "galaxy_id" if "galaxy_id" in frame.columns else "image_path"
    return frame[frame["label"].isin(CLASSES)].drop_duplicates(key).set_index(key)


def compare(first: Path, second: Path, name: str, resamples: int = 2000, seed: int = 0) -> None:
    a, b = _read(first, name), _read(second, name)
    common = a.index.intersection(b.index)
    if len(common) == 0:
        sys.exit(f"{name}: the two folders share no galaxies (scored on different splits?)")
    a, b = a.loc[common], b.loc[common]
    wrong_a, wrong_b = a["predicted"] != a["label"], b["predicted"] != b["label"]
    mean_p = (a["p_spiral"] + b["p_spiral"]) / 2
    ensemble = np.where(mean_p >= 0.5, "spiral", "elliptical") == a["label"].to_numpy()
    right_a = ~wrong_a.to_numpy()
    gain = mean_interval(ensemble.astype(float) - right_a, np.random.default_rng(seed), n_resamples=resamples)
    shared = wrong_a & wrong_b
    print(f"## {name} ({len(a)} galaxies)")
    print(
        f"accuracy: first {right_a.mean():.3f}, second {1 - wrong_b.mean():.3f}, "
        f"mean of both {ensemble.mean():.3f} ({gain.value:+.3f} [{gain.low:+.3f}, {gain.high:+.3f}])"
    )
    print(f"mistakes: first {wrong_a.sum()}, second {wrong_b.sum()}, both {shared.sum()}")
    if "dataset" in a.columns:
        print("shared mistakes by source:", a.loc[shared, "dataset"].value_counts().to_dict())
    if "votes_own_class" in a.columns and a.loc[shared, "votes_own_class"].notna().any():
        votes = a.loc[shared, "votes_own_class"].dropna()
        print(f"shared mistakes with votes: {len(votes)}, median own-class vote {votes.median():.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    args = ap.parse_args()
    for name in ("predictions.csv", "ood/predictions.csv"):
        if (args.first / name).is_file() or name == "predictions.csv":
            compare(args.first, args.second, name)


if __name__ == "__main__":
    main()
