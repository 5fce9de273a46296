"""Score image files in bulk, as fast as the disk and the network allow.

Files are decoded and preprocessed in DataLoader worker processes while the network scores the previous
batch, and one unreadable file gets an `error` while the batch goes on. The numbers are the shipped
classifier's (models.inference.GalaxyClassifier), so they equal what REST, the web page and Spark return.
"""

from __future__ import annotations

import glob
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from galmorph.config import FitsConfig
from galmorph.data.fits import SUFFIXES as FITS_SUFFIXES
from galmorph.data.fits import BandFiles
from galmorph.data.images import decode_image
from galmorph.errors import UserError
from galmorph.io import write_csv, write_json, write_parquet
from galmorph.models.inference import GalaxyClassifier

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", *FITS_SUFFIXES)
OUTPUT_SUFFIXES = (".csv", ".json", ".parquet")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def expand_inputs(items: Sequence[str]) -> list[str]:
    """Files, folders (searched recursively for JPEG/PNG) and glob patterns -> file paths, in order.

    A named file is kept whatever its suffix (an unreadable one gets its own error row); a folder with
    no images or a pattern that matches nothing is a mistake on the command line.
    """
    if not items:
        raise UserError("no input: give image files, folders or glob patterns, or --catalogue TABLE")
    found: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            found.append(str(path))
        elif path.is_dir():
            images = sorted(str(p) for p in path.rglob("*") if p.is_file() and _is_image(p))
            if not images:
                raise UserError(f"{item}: folder has no JPEG, PNG or FITS images")
            found.extend(images)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            files = [m for m in matches if Path(m).is_file()]
            for m in matches:
                if Path(m).is_dir():
                    files.extend(sorted(str(p) for p in Path(m).rglob("*") if p.is_file() and _is_image(p)))
            if not files:
                raise UserError(f"{item}: the pattern matches no files")
            found.extend(files)
        else:
            raise UserError(f"{item}: no such file or folder")
    return list(dict.fromkeys(found))  # the same file named twice is scored once


class ImageFiles(Dataset):
    """Decodes and preprocesses one file (or three FITS bands) in a worker; a failure becomes (None, reason)."""

    def __init__(self, paths: Sequence[str | BandFiles], transform: Any, fits: FitsConfig | None = None) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.fits = fits

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, str]:
        try:
            item = self.paths[i]
            source = item if isinstance(item, BandFiles) else Path(item)
            return self.transform(decode_image(source, fits=self.fits, draft=self.transform.draft)), ""
        except Exception as exc:  # corrupt, truncated, not an image, unreadable: reported per file
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return None, text[:200]


def collate(items: list[tuple[torch.Tensor | None, str]]) -> tuple[torch.Tensor | None, list[str]]:
    """Stack the decoded images (in order) and keep every item's error ("" when it decoded)."""
    good = [t for t, _ in items if t is not None]
    return (torch.stack(good) if good else None), [e for _, e in items]


def _batches(
    classifier: GalaxyClassifier,
    paths: Sequence[str | BandFiles],
    batch_size: int,
    workers: int,
    fits: FitsConfig | None = None,
) -> Iterator[tuple[torch.Tensor | None, list[str]]]:
    workers = min(workers, math.ceil(len(paths) / batch_size))  # no idle processes for a handful of files
    loader = DataLoader(
        ImageFiles(paths, classifier.transform, fits),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=4 if workers else None,
    )
    yield from loader


def score_files(
    classifier: GalaxyClassifier,
    paths: Sequence[str | BandFiles],
    *,
    batch_size: int = 64,
    workers: int = 2,
    tta: bool = False,
    threshold: float = 0.0,
    progress: bool = True,
    fits: FitsConfig | None = None,
) -> pd.DataFrame:
    """One row per file: path, p_<class>..., label, error (empty when the file was scored), then
    vote_fraction_<class>... when the model was trained on vote counts and ood_score when it has an
    out-of-distribution detector (classifier.output_columns). A
    BandFiles item (three FITS bands) is one row, its path written cut/obj_{g,r,i}.fits; `fits`: how FITS files
    are read (default: FitsConfig())."""
    if batch_size < 1 or workers < 0:
        raise UserError(f"--batch-size must be >= 1 and --workers >= 0 (got {batch_size}, {workers})")
    n_classes = len(classifier.classes)
    columns = classifier.output_columns
    probs = np.full((len(paths), len(columns)), np.nan)
    errors: list[str] = []
    start = 0
    with tqdm(total=len(paths), unit="img", desc="predict", disable=not progress, file=sys.stderr) as bar:
        for batch, batch_errors in _batches(classifier, paths, batch_size, workers, fits):
            if batch is not None:
                rows = [start + i for i, e in enumerate(batch_errors) if not e]
                probs[rows] = classifier.score_batch(batch, tta=tta)
            errors.extend(batch_errors)
            start += len(batch_errors)
            bar.update(len(batch_errors))
    out = pd.DataFrame({"path": [str(p) for p in paths]})
    for k, name in enumerate(columns[:n_classes]):
        out[name] = probs[:, k]
    out["label"] = classifier.labels(probs, errors, threshold)
    out["error"] = errors
    for k, name in enumerate(columns[n_classes:], start=n_classes):
        out[name] = probs[:, k]
    return out


def write_predictions(df: pd.DataFrame, out: str | Path) -> None:
    """CSV, JSON (a list of records, null for missing probabilities) or Parquet, chosen by the suffix."""
    suffix = Path(out).suffix.lower()
    if suffix == ".csv":
        write_csv(out, df)
    elif suffix == ".json":
        records = df.astype(object).where(df.notna(), None).to_dict(orient="records")
        write_json(out, records)
    elif suffix == ".parquet":
        write_parquet(out, df)
    else:
        raise UserError(f"--out {out}: expected a .csv, .json or .parquet file")


def summary(df: pd.DataFrame, seconds: float, *, what: str = "files", failed: str = "unreadable") -> str:
    counts = df.loc[df["error"] == "", "label"].value_counts()
    parts = [f"{n} {label}" for label, n in counts.items()]
    n_err = int((df["error"] != "").sum())
    if n_err:
        parts.append(f"{n_err} {failed}")
    rate = len(df) / seconds if seconds > 0 else float("inf")
    return f"scored {len(df)} {what} in {seconds:.1f} s ({rate:.1f} img/s): " + ", ".join(parts)
