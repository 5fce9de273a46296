"""A catalogue as a torch Dataset: (image tensor, label_id, soft target, row index).

The row index comes back with every sample so predictions can be put back in catalogue order however
the loader shuffled or sharded them. Soft targets are the vote fractions (p_spiral, p_elliptical),
renormalised; rows without votes fall back to their hard label, unlabelled rows get label -1. Under the
Dirichlet-multinomial loss the same slot carries vote counts instead (vote_counts).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from galmorph.config import CLASSES, FitsConfig
from galmorph.data.images import load_rgb
from galmorph.data.tables import find_column, read_table
from galmorph.errors import UserError
from galmorph.io import read_stage_table
from galmorph.paths import repo_root, resolve_path

ImageSource = str | os.PathLike | bytes
SPLITS_COLUMNS: tuple[str, ...] = ("galaxy_id", "image_path", "label_id", "split")


def soft_targets(catalogue: pd.DataFrame) -> np.ndarray:
    """(N, 2) vote fractions in CLASSES order, each row summing to 1; one-hot of label_id where votes are missing."""
    n = len(catalogue)
    labels = label_ids(catalogue)
    cols = [f"p_{c}" for c in CLASSES]
    if all(c in catalogue.columns for c in cols):
        votes = catalogue[cols].to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        votes = np.full((n, len(CLASSES)), np.nan)
    total = votes.sum(axis=1)
    ok = np.isfinite(total) & (total > 0) & (votes >= 0).all(axis=1)
    out = np.full((n, len(CLASSES)), np.nan)
    out[ok] = votes[ok] / total[ok, None]
    hard = ~ok & (labels >= 0)
    out[hard] = np.eye(len(CLASSES))[labels[hard]]
    return out.astype(np.float32)


COUNT_COLUMNS: tuple[str, ...] = tuple(f"count_{c}" for c in CLASSES)
"""Vote counts per class in the catalogue (join: GZ1 NVOTE x fractions; manifest: count_columns), NaN if unknown."""


def has_vote_counts(catalogue: pd.DataFrame) -> np.ndarray:
    """(N,) bool: the row has usable vote counts (finite, >= 0, at least one vote)."""
    if not all(c in catalogue.columns for c in COUNT_COLUMNS):
        return np.zeros(len(catalogue), dtype=bool)
    counts = catalogue[list(COUNT_COLUMNS)].to_numpy(dtype=np.float64, na_value=np.nan)
    return np.isfinite(counts).all(axis=1) & (counts >= 0).all(axis=1) & (counts.sum(axis=1) > 0)


def vote_counts(catalogue: pd.DataFrame, label_votes: float = 1.0) -> np.ndarray:
    """(N, 2) vote counts in CLASSES order for the Dirichlet-multinomial loss.

    A labelled row without counts stands for `label_votes` votes all for its label: with 1 its loss is exactly
    the cross-entropy of the predicted vote fraction, so such rows weigh like a one-vote galaxy. Unlabelled rows
    without counts are NaN (never trained on)."""
    n = len(catalogue)
    labels = label_ids(catalogue)
    out = np.full((n, len(CLASSES)), np.nan)
    ok = has_vote_counts(catalogue)
    if ok.any():
        out[ok] = catalogue.loc[ok, list(COUNT_COLUMNS)].to_numpy(dtype=np.float64)
    hard = ~ok & (labels >= 0)
    out[hard] = np.eye(len(CLASSES))[labels[hard]] * float(label_votes)
    return out.astype(np.float32)


def label_ids(catalogue: pd.DataFrame) -> np.ndarray:
    """label_id as int64, -1 where the catalogue has no label (prediction on new images)."""
    if "label_id" not in catalogue.columns:
        return np.full(len(catalogue), -1, dtype=np.int64)
    return catalogue["label_id"].fillna(-1).to_numpy(dtype=np.int64)


def outlier_paths(path: str | os.PathLike) -> list[Path]:
    """train.outliers: the images in the table's image_path column (a relative path is from the table's folder,
    as in a manifest), each an existing file; a one-line UserError naming the table and row otherwise."""
    table = read_table(path, "train.outliers table")
    column = find_column(table, "image_path", path)
    paths: list[Path] = []
    for row, value in enumerate(table[column]):
        text = str(value).strip() if not np.ma.is_masked(value) else ""
        p = resolve_path(text, Path(path).parent) if text else None
        if p is None or not p.is_file():
            raise UserError(
                f"{path}: row {row + 1}, column {column}: expected an image file, got {text or '(blank)'!r}"
            )
        paths.append(p)
    return paths


PSEUDO_DATASET = "pseudo-labelled"
"""The dataset column of the training rows train.pseudo adds."""


@dataclasses.dataclass(frozen=True)
class PseudoLabels:
    """train.pseudo's table read: the training rows it adds and how many of its rows were left out, by verdict."""

    rows: pd.DataFrame
    left_out: dict[str, int]

    def describe(self) -> str:
        counts = self.rows["label"].value_counts()
        kept = ", ".join(f"{int(counts.get(c, 0)):,} {c}" for c in CLASSES)
        out = ", ".join(f"{n:,} {verdict}" for verdict, n in sorted(self.left_out.items()))
        return f"{len(self.rows):,} pseudo-labelled images ({kept})" + (f"; left out {out}" if out else "")


def pseudo_rows(path: str | os.PathLike, catalogue: pd.DataFrame) -> PseudoLabels:
    """train.pseudo: `galmorph predict`'s table of a teacher model's verdicts on unlabelled images, as training rows.

    A row whose verdict (`label`) is a class becomes a training row with that label and the teacher's p_<class>
    as its soft target; the others (uncertain, unlike training data, unreadable) are counted, not used. Paths
    are absolute or relative to the table's folder. An image the catalogue already holds (any split) is refused:
    a test galaxy trained on, even with the teacher's label, would flatter the test KPIs."""
    table = read_table(path, "train.pseudo table")
    columns = {name: find_column(table, name, path) for name in ("path", "label", *(f"p_{c}" for c in CLASSES))}
    error_column = next((c for c in table.colnames if c.lower() == "error"), None)
    known = {
        resolve_path(str(p), repo_root()).resolve(): str(split)
        for p, split in zip(catalogue["image_path"], catalogue.get("split", ["?"] * len(catalogue)), strict=True)
    }
    seen: dict[Path, int] = {}
    left_out: dict[str, int] = {}
    kept: list[dict] = []
    for row in range(len(table)):

        def cell(column: str, row: int = row) -> str:
            value = table[column][row]
            return "" if np.ma.is_masked(value) else str(value).strip()

        verdict = cell(columns["label"])
        if error_column and cell(error_column):
            verdict = "unreadable"
        if verdict not in CLASSES:
            left_out[verdict or "(blank)"] = left_out.get(verdict or "(blank)", 0) + 1
            continue
        text = cell(columns["path"])
        p = resolve_path(text, Path(path).parent) if text else None
        if p is None or not p.is_file():
            raise UserError(f"{path}: row {row + 1}, column {columns['path']}: expected an image file, got {text!r}")
        key = p.resolve()
        if key in known:
            raise UserError(
                f"{path}: row {row + 1}: {text} is already in the splits ({known[key]}); pseudo-labels are for "
                "images without a label"
            )
        if key in seen:
            raise UserError(f"{path}: row {row + 1}: {text} repeats row {seen[key] + 1}")
        seen[key] = row
        probs = {}
        for c in CLASSES:
            try:
                probs[f"p_{c}"] = float(cell(columns[f"p_{c}"]))
            except ValueError:
                probs[f"p_{c}"] = float("nan")
            if not 0.0 <= probs[f"p_{c}"] <= 1.0:
                raise UserError(
                    f"{path}: row {row + 1}, column {columns[f'p_{c}']}: expected a probability in [0, 1], "
                    f"got {cell(columns[f'p_{c}'])!r}"
                )
        kept.append(
            {
                "galaxy_id": f"pseudo:{key}",
                "image_path": str(key),
                "label": verdict,
                "label_id": CLASSES.index(verdict),
                **probs,
                "dataset": PSEUDO_DATASET,
            }
        )
    if not kept:
        out = ", ".join(f"{n:,} {verdict}" for verdict, n in sorted(left_out.items()))
        raise UserError(f"{path}: train.pseudo table: no row's label is {' or '.join(CLASSES)} ({out})")
    columns_out = ["galaxy_id", "image_path", "label", "label_id", *(f"p_{c}" for c in CLASSES), "dataset"]
    return PseudoLabels(pd.DataFrame(kept, columns=columns_out), left_out)


def read_splits(path: str | os.PathLike) -> pd.DataFrame:
    """The split stage's catalogue, with the columns training needs checked up front."""
    return read_stage_table(path, SPLITS_COLUMNS, "split")


class ImageDataset(Dataset):
    """Images of a catalogue (DataFrame with image_path) or of a plain list of paths/bytes."""

    def __init__(
        self,
        catalogue: pd.DataFrame | Sequence[ImageSource],
        transform: Callable,
        *,
        root: str | os.PathLike | None = None,
        targets: np.ndarray | None = None,
        fits: FitsConfig | None = None,
    ) -> None:
        """`targets` replaces the soft targets of a catalogue (the vote counts of the dirichlet loss); `fits`
        says how FITS images are read (default: FitsConfig())."""
        root = Path(root) if root is not None else repo_root()
        if isinstance(catalogue, pd.DataFrame):
            if "image_path" not in catalogue.columns:
                raise UserError("catalogue: missing column image_path")
            self.sources: list[ImageSource] = [resolve_path(str(p), root) for p in catalogue["image_path"]]
            self.labels = label_ids(catalogue)
            self.soft = soft_targets(catalogue) if targets is None else np.asarray(targets, dtype=np.float32)
        else:
            self.sources = [s if isinstance(s, bytes | bytearray) else resolve_path(str(s), root) for s in catalogue]
            self.labels = np.full(len(self.sources), -1, dtype=np.int64)
            self.soft = np.full((len(self.sources), len(CLASSES)), np.nan, dtype=np.float32)
        self.transform = transform
        self.fits = fits
        self.draft = getattr(transform, "draft", None)  # a preset says how small its JPEGs may be decoded

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor, int]:
        src = self.sources[index]
        try:
            img = load_rgb(src, fits=self.fits, draft=self.draft)
        except (OSError, ValueError) as exc:
            where = "image bytes" if isinstance(src, bytes | bytearray) else str(src)
            raise UserError(f"{where}: cannot read image (row {index}): {exc}") from None
        return self.transform(img), int(self.labels[index]), torch.from_numpy(self.soft[index]), index
