"""Do several trained models get the same galaxies wrong, and does averaging them help? From two or more evaluate
folders (real_runs.sh's runs/NAME: predictions.csv, ood/predictions.csv), scored on the same split.

    .venv/bin/python benchmarks/shared_errors.py /tmp/real-base/runs/scale-35ep-seed0 \
        /tmp/real-base/runs/makereal-camera-seed0 /tmp/real-base/runs/scale+oe-35ep-seed0 \
        --gallery /tmp/shared-mistakes.png

Prints, per set: each model's accuracy; the mean of all their probabilities with its paired bootstrap difference
from the first model; how many galaxies k of the n models get wrong (k = 0..n); the accuracy of an oracle that
picks, per galaxy, a model that is right (an upper bound on any way of combining these models); and the mistakes
all of them share, by source and by the volunteers' own-class vote. `--gallery` draws the shared mistakes of the
test split (those the models are surest of first), so a reader can judge the labels for themselves.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from galmorph.data.images import load_rgb
from galmorph.evaluation.galleries import gallery_figure
from galmorph.evaluation.metrics import mean_interval
from galmorph.evaluation.plots import CLASS_COLOURS, save_figure
from galmorph.paths import resolve_path

CLASSES = ("spiral", "elliptical")
VOTE_BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


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


def aligned(folders: Sequence[Path], name: str) -> list[pd.DataFrame]:
    """Each folder's `name` table restricted to the galaxies all of them scored, in the first one's order."""
    frames = [_read(folder, name) for folder in folders]
    common = frames[0].index
    for frame in frames[1:]:
        common = common.intersection(frame.index, sort=False)
    if len(common) == 0:
        sys.exit(f"{name}: the folders share no galaxies (scored on different splits?)")
    return [frame.loc[common] for frame in frames]


def compare(
    folders: Sequence[Path], name: str, resamples: int = 2000, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Print the table for one set; return the first model's rows, how many models got each wrong and the mean
    P(spiral) of all of them."""
    frames = aligned(folders, name)
    first = frames[0]
    wrong = np.stack([(f["predicted"] != f["label"]).to_numpy() for f in frames])  # (n models, N galaxies)
    n_wrong = wrong.sum(axis=0)
    mean_p = np.mean([f["p_spiral"].to_numpy(dtype=float) for f in frames], axis=0)
    ensemble = np.where(mean_p >= 0.5, "spiral", "elliptical") == first["label"].to_numpy()
    right_first = ~wrong[0]
    gain = mean_interval(ensemble.astype(float) - right_first, np.random.default_rng(seed), n_resamples=resamples)
    n = len(frames)
    shared = n_wrong == n
    print(f"## {name} ({len(first)} galaxies, {n} models)")
    print(
        "accuracy: " + ", ".join(f"{folder.name} {1 - w.mean():.3f}" for folder, w in zip(folders, wrong, strict=True))
    )
    print(
        f"mean of all {n}: {ensemble.mean():.3f} ({gain.value:+.3f} [{gain.low:+.3f}, {gain.high:+.3f}] "
        f"against {folders[0].name})"
    )
    counts = np.bincount(n_wrong, minlength=n + 1)
    print("galaxies wrong in k models: " + ", ".join(f"k={k} {c}" for k, c in enumerate(counts)))
    print(
        f"oracle (a right model per galaxy, if any): {(n_wrong < n).mean():.3f}; all {n} right: {(n_wrong == 0).mean():.3f}"
    )
    print("mistakes: " + ", ".join(str(int(w.sum())) for w in wrong) + f"; shared by all {n}: {int(shared.sum())}")
    if "dataset" in first.columns:
        by_source = first.assign(shared=shared).groupby("dataset")["shared"].agg(["size", "sum"])
        print(
            "shared mistakes by source: "
            + ", ".join(f"{ds} {int(r['sum'])} of {int(r['size'])}" for ds, r in by_source.iterrows())
        )
    if "votes_own_class" in first.columns and first["votes_own_class"].notna().any():
        votes = first["votes_own_class"]
        bins = pd.cut(votes, VOTE_BINS)
        table = first.assign(shared=shared).groupby(bins, observed=True)["shared"].agg(["size", "sum"])
        print(
            "shared mistakes by own-class vote: "
            + ", ".join(f"{b} {int(r['sum'])} of {int(r['size'])}" for b, r in table.iterrows())
        )
    return first, n_wrong, mean_p


def shared_gallery(
    first: pd.DataFrame,
    n_wrong: np.ndarray,
    mean_p: np.ndarray,
    n_models: int,
    path: Path,
    size: int = 24,
    root: Path = Path("."),
) -> int:
    """Draw up to `size` galaxies that every model got wrong, the ones the mean is surest of first; returns the
    number of tiles (0 writes nothing). A relative `image_path` is read from `root` (the repository the evaluate
    ran in: evaluate writes the catalogue's paths as they are)."""
    idx = np.flatnonzero(n_wrong == n_models)
    sure = np.abs(mean_p[idx] - 0.5)
    idx = idx[np.argsort(-sure, kind="stable")][:size]
    if len(idx) == 0:
        return 0
    images, captions, colours = [], [], []
    for i in idx:
        row = first.iloc[int(i)]
        try:
            images.append(load_rgb(resolve_path(str(row["image_path"]), root)).resize((128, 128)))
        except (OSError, ValueError):
            images.append(None)
        call = "spiral" if mean_p[i] >= 0.5 else "elliptical"
        vote = row.get("votes_own_class", np.nan)
        vote_text = f"votes {vote:.2f}" if pd.notna(vote) else "votes n/a"
        gid = str(first.index[int(i)])
        gid = gid if len(gid) <= 22 else "…" + gid[-21:]
        captions.append(f"{gid}\n{row['label']} · {vote_text}\nmean P({call}) {max(mean_p[i], 1 - mean_p[i]):.2f}")
        colours.append(CLASS_COLOURS.get(call, "black"))
    title = f"Wrong in all {n_models} models ({len(idx)} shown): catalogue class · votes · the models' mean call"
    save_figure(gallery_figure(images, captions, title, colours=colours, ncols=8), path, dpi=72, palette=True)
    return len(idx)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", type=Path, nargs="+", help="two or more evaluate folders scored on the same split")
    ap.add_argument("--gallery", type=Path, help="PNG: the test galaxies all the models got wrong")
    ap.add_argument("--force", action="store_true", help="replace an existing --gallery file")
    ap.add_argument(
        "--root", type=Path, default=Path("."), help="where relative image paths start (default: this folder)"
    )
    args = ap.parse_args(argv)
    if len(args.folders) < 2:
        ap.error("expected two or more evaluate folders")
    if args.gallery is not None and args.gallery.exists() and not args.force:
        ap.error(f"{args.gallery}: exists; pass --force to replace it")
    for name in ("predictions.csv", "ood/predictions.csv"):
        if (args.folders[0] / name).is_file() or name == "predictions.csv":
            first, n_wrong, mean_p = compare(args.folders, name)
            if name == "predictions.csv" and args.gallery is not None:
                shown = shared_gallery(first, n_wrong, mean_p, len(args.folders), args.gallery, root=args.root)
                print(f"gallery: {shown} shared mistakes drawn to {args.gallery}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
