"""Train/val/test splits of a catalogue: stratified by label, seeded, and never splitting a galaxy.

Galaxies, not images, are what gets split: when a galaxy has several images (several surveys, several
cut-outs), all of them go to the same part, or the test score would measure memory instead of morphology.
The unique galaxies are sorted by id before splitting, so the result depends on the set of galaxies and the
seed, never on the catalogue's row order. `split_1..split_K` repeat the split with seeds seed+1..seed+K for
the stability KPI (mean ± std over re-trainings).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from galmorph.config import CLASSES, SplitConfig
from galmorph.errors import UserError

PARTS: tuple[str, ...] = ("train", "val", "test")
MANIFEST_COLUMNS: tuple[str, ...] = ("galaxy_id", "label")
"""What a split needs of select's manifest."""
MIN_PER_CLASS = len(PARTS)  # one galaxy of each class in each part, at the very least


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("split.val_fraction", val_fraction), ("split.test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise UserError(f"{name}: expected a fraction strictly between 0 and 1, got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise UserError(
            f"split.val_fraction + split.test_fraction = {val_fraction + test_fraction:g}: "
            "must be under 1 so that something is left to train on"
        )


def galaxy_labels(df: pd.DataFrame) -> pd.Series:
    """One label per galaxy_id (sorted index): its images' most common label, ties to CLASSES order."""
    unknown = sorted(set(df["label"].dropna().astype(str)) - set(CLASSES))
    if unknown or df["label"].isna().any():
        shown = ", ".join(repr(u) for u in unknown[:5]) or "null"
        raise UserError(f"column label: unexpected value(s) {shown} (expected one of {', '.join(CLASSES)})")
    if df["galaxy_id"].isna().any():
        raise UserError(f"column galaxy_id: {int(df['galaxy_id'].isna().sum())} row(s) without an id")
    ids = df["galaxy_id"].astype(str)
    if ids.is_unique:
        return pd.Series(df["label"].astype(str).to_numpy(), index=ids.to_numpy()).sort_index()
    counts = pd.crosstab(ids, df["label"].astype(str)).reindex(columns=list(CLASSES), fill_value=0)
    return counts.idxmax(axis=1).sort_index()


def _part_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Galaxies in val and test: rounded to the nearest, so 0.15 of 200 is 30, not 31 through 0.15/0.85."""
    return round(val_fraction * n), round(test_fraction * n)


def _check_sizes(labels: pd.Series, val_fraction: float, test_fraction: float) -> None:
    counts = labels.value_counts()
    for cls in CLASSES:
        n = int(counts.get(cls, 0))
        if n < MIN_PER_CLASS:
            raise UserError(
                f"class {cls!r} has {n} galaxies: a stratified train/val/test split needs at least "
                f"{MIN_PER_CLASS} of each class"
            )
    n = len(labels)
    n_val, n_test = _part_sizes(n, val_fraction, test_fraction)
    for name, size, fraction in (("test", n_test, test_fraction), ("val", n_val, val_fraction)):
        if size < len(CLASSES):
            raise UserError(
                f"split.{name}_fraction {fraction:g} of {n} galaxies gives {size} {name} galaxies: "
                f"at least {len(CLASSES)} (one per class) are needed"
            )
    if n - n_test - n_val < len(CLASSES):
        raise UserError(f"{n} galaxies leave {n - n_test - n_val} for training: too few for both classes")


def stratified_split(df: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> pd.Series:
    """ "train"/"val"/"test" per row of `df` (same index), stratified by label and grouped by galaxy_id.

    The fractions are of galaxies; a galaxy's images all land in its part. Raises a UserError when a class
    has too few galaxies for every part to get one.
    """
    check_fractions(val_fraction, test_fraction)
    labels = galaxy_labels(df)
    _check_sizes(labels, val_fraction, test_fraction)
    ids, y = labels.index.to_numpy(), labels.to_numpy()
    n_val, n_test = _part_sizes(len(ids), val_fraction, test_fraction)
    try:
        rest, test = train_test_split(ids, test_size=n_test, stratify=y, random_state=seed)
        train, val = train_test_split(rest, test_size=n_val, stratify=labels.loc[rest].to_numpy(), random_state=seed)
    except ValueError as exc:
        raise UserError(f"split: {exc} ({len(ids)} galaxies)") from None
    part = pd.Series(
        np.repeat(np.array(PARTS, dtype=object), [len(train), len(val), len(test)]),
        index=np.concatenate([train, val, test]),
    )
    by_galaxy = part.reindex(labels.index)
    for cls in CLASSES:
        missing = [p for p in PARTS if not ((labels == cls) & (by_galaxy == p)).any()]
        if missing:
            n = int((labels == cls).sum())
            raise UserError(
                f"class {cls!r} has only {n} galaxies: none landed in {', '.join(missing)} with "
                f"val_fraction {val_fraction:g} and test_fraction {test_fraction:g}; add galaxies or raise the fractions"
            )
    return pd.Series(df["galaxy_id"].astype(str).map(part).to_numpy(), index=df.index, name="split")


def repeat_columns(repeats: int) -> list[str]:
    return [f"split_{k}" for k in range(1, repeats + 1)]


def make_splits(df: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """The catalogue plus `split` (seed cfg.seed) and `split_1..split_K` (seeds cfg.seed + k), K = cfg.repeats."""
    if cfg.repeats < 0:
        raise UserError(f"split.repeats: expected 0 or more extra splits, got {cfg.repeats}")
    previous = [c for c in df.columns if c == "split" or re.fullmatch(r"split_\d+", str(c))]
    out = df.reset_index(drop=True).drop(columns=previous)
    out["split"] = stratified_split(out, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    for k, column in enumerate(repeat_columns(cfg.repeats), start=1):
        out[column] = stratified_split(out, cfg.val_fraction, cfg.test_fraction, cfg.seed + k)
    return out


def split_report(splits: pd.DataFrame, cfg: SplitConfig) -> dict[str, Any]:
    """Counts per part and class of the main split, the fractions reached, and how much each repeated
    split's test set overlaps the main one (a check that the repeats really differ)."""
    galaxies = splits.drop_duplicates("galaxy_id")
    n_galaxies = len(galaxies)
    labels = splits["label"].astype(str)
    report: dict[str, Any] = {
        "seed": cfg.seed,
        "repeats": cfg.repeats,
        "requested": {
            "train": round(1.0 - cfg.val_fraction - cfg.test_fraction, 6),
            "val": cfg.val_fraction,
            "test": cfg.test_fraction,
        },
        "galaxies": {p: int((galaxies["split"] == p).sum()) for p in PARTS},
        "images": {p: int((splits["split"] == p).sum()) for p in PARTS},
        "fractions": {p: round(float((galaxies["split"] == p).sum() / n_galaxies), 6) for p in PARTS},
        "classes": {p: {c: int(((splits["split"] == p) & (labels == c)).sum()) for c in CLASSES} for p in PARTS},
    }
    report["class_share"] = {
        p: {c: round(n / max(sum(counts.values()), 1), 6) for c, n in counts.items()}
        for p, counts in report["classes"].items()
    }
    main_test = set(galaxies.loc[galaxies["split"] == "test", "galaxy_id"].astype(str))
    report["test_overlap_with_main"] = {
        column: round(
            len(main_test & set(galaxies.loc[galaxies[column] == "test", "galaxy_id"].astype(str)))
            / max(len(main_test), 1),
            6,
        )
        for column in repeat_columns(cfg.repeats)
    }
    return report
