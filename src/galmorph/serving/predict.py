"""`galmorph predict`: score image files with the registered model (or a local one), fast.

The model is the same GalaxyClassifier the logged pyfunc wraps (EvalPreset, stored temperature, TTA
views, BatchNorm folded, channels-last), so a CLI prediction equals what REST, the web page and the Spark
job return. What this module adds for survey-sized folders: files are decoded and preprocessed in
DataLoader worker processes while the network scores the previous batch, and one unreadable file gets
an `error` while the batch goes on.

    galmorph predict images/ more/*.png --out predictions.csv            # models:/galmorph@champion
    galmorph predict cutout.jpg --model models:/galmorph@challenger --tta --threshold 0.8
    galmorph predict survey/ --model models/model.pt --out scores.json --batch-size 128 --workers 4
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import math
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from galmorph import tracking
from galmorph.config import MlflowConfig, Params
from galmorph.errors import UserError
from galmorph.io import write_csv, write_json, write_parquet
from galmorph.models import resnet
from galmorph.serving import registry
from galmorph.serving.pyfunc import UNCERTAIN, GalaxyClassifier, decode_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
OUTPUT_SUFFIXES = (".csv", ".json", ".parquet")
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?/?$")


# ------------------------------------------------------------------------------------------------ model


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """Which model answers: what people see on the web page and in predictions' provenance."""

    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None

    @property
    def display(self) -> str:
        if self.name and self.version:
            return f"{self.name} v{self.version}" + (f" (@{self.alias})" if self.alias else "")
        return self.uri


def default_model_uri(cfg: MlflowConfig) -> str:
    return f"models:/{cfg.registered_model}@{registry.CHAMPION}"


def resolve_model(spec: str | None, cfg: MlflowConfig) -> ModelRef:
    """Check a --model value up front (model, alias, version, file) so a typo is one clear line."""
    uri = spec or default_model_uri(cfg)
    match = _MODELS_URI.match(uri)
    if match and not match["name"].startswith("m-"):  # m-<id> is a logged model, not a registered one
        name, alias, version = match["name"], match["alias"], match["version"]
        if alias:
            info = registry.version_by_alias(name, alias, cfg)
            if info is None:
                known = tracking.registered_model_aliases(name, cfg=cfg) or {}
                shown = ", ".join(f"@{a}" for a in sorted(known)) or "none"
                raise UserError(f"--model {uri}: registered model {name!r} has no alias @{alias} (aliases: {shown})")
            return ModelRef(uri, name, info.version, alias)
        if version:
            registry.version_by_alias(name, registry.CHAMPION, cfg)  # UserError when the model is absent
            if tracking.model_version(name, version, cfg=cfg) is None:
                raise UserError(f"--model {uri}: registered model {name!r} has no version {version}")
            return ModelRef(uri, name, version)
        latest = registry.list_versions(name, cfg)
        return ModelRef(uri, name, latest[0].version if latest else None)
    if "://" in uri or uri.startswith(("models:/", "runs:/")):
        return ModelRef(uri)
    path = Path(uri)
    if not path.exists():
        raise UserError(
            f"--model {uri}: no such file or folder (expected models:/NAME@ALIAS, a .pt or a pyfunc folder)"
        )
    return ModelRef(str(path), name=path.name, version="local")


def load_checkpoint(path: str | Path) -> GalaxyClassifier:
    """models/model.pt as the train stage saves it (weights, configs, classes, temperature)."""
    loaded = resnet.load_model(path)
    return GalaxyClassifier(
        loaded.model, loaded.preprocess, temperature=loaded.temperature, classes=loaded.classes, device="cpu"
    )


def load_model(ref: ModelRef, cfg: MlflowConfig) -> GalaxyClassifier:
    """The classifier behind a reference: a checkpoint file, or the pyfunc at a URI or folder."""
    if ref.version == "local" and Path(ref.uri).is_file():
        classifier = load_checkpoint(ref.uri)
    else:
        try:
            pyfunc = tracking.load_classifier(ref.uri, cfg=cfg)
        except UserError:
            raise
        except Exception as exc:  # a URI a person typed: say which and why, not a traceback
            raise UserError(f"--model {ref.uri}: cannot load ({str(exc).splitlines()[0]})") from None
        classifier = getattr(pyfunc.unwrap_python_model(), "classifier", None)
        if not isinstance(classifier, GalaxyClassifier):
            raise UserError(f"--model {ref.uri}: not a galmorph classifier (it was not logged by `galmorph train`)")
    return classifier


# ------------------------------------------------------------------------------------------------ inputs


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def expand_inputs(items: Sequence[str]) -> list[str]:
    """Files, folders (searched recursively for JPEG/PNG) and glob patterns -> file paths, in order.

    A named file is kept whatever its suffix (an unreadable one gets its own error row); a folder with
    no images or a pattern that matches nothing is a mistake on the command line.
    """
    if not items:
        raise UserError("no input: give image files, folders or glob patterns")
    found: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            found.append(str(path))
        elif path.is_dir():
            images = sorted(str(p) for p in path.rglob("*") if p.is_file() and _is_image(p))
            if not images:
                raise UserError(f"{item}: folder has no JPEG or PNG images")
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
    """Decodes and preprocesses one file in a worker; a failure becomes (None, reason)."""

    def __init__(self, paths: Sequence[str], transform: Any) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, str]:
        try:
            return self.transform(decode_image(Path(self.paths[i]))), ""
        except Exception as exc:  # corrupt, truncated, not an image, unreadable: reported per file
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return None, text[:200]


def collate(items: list[tuple[torch.Tensor | None, str]]) -> tuple[torch.Tensor | None, list[str]]:
    """Stack the decoded images (in order) and keep every item's error ("" when it decoded)."""
    good = [t for t, _ in items if t is not None]
    return (torch.stack(good) if good else None), [e for _, e in items]


def labels_of(probs: np.ndarray, errors: Sequence[str | None], classes: Sequence[str], threshold: float) -> list[str]:
    """The top class, "uncertain" when its probability is under `threshold`, "" for an error row."""
    out = []
    for row, error in zip(probs, errors, strict=True):
        if error:
            out.append("")
        elif row.max() < threshold:
            out.append(UNCERTAIN)
        else:
            out.append(classes[int(row.argmax())])
    return out


def _batches(
    classifier: GalaxyClassifier, paths: Sequence[str], batch_size: int, workers: int
) -> Iterator[tuple[torch.Tensor | None, list[str]]]:
    workers = min(workers, math.ceil(len(paths) / batch_size))  # no idle processes for a handful of files
    loader = DataLoader(
        ImageFiles(paths, classifier.transform),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=4 if workers else None,
    )
    yield from loader


def score_files(
    classifier: GalaxyClassifier,
    paths: Sequence[str],
    *,
    batch_size: int = 64,
    workers: int = 2,
    tta: bool = False,
    threshold: float = 0.0,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per file: path, p_<class>..., label, error (empty when the file was scored)."""
    if batch_size < 1 or workers < 0:
        raise UserError(f"--batch-size must be >= 1 and --workers >= 0 (got {batch_size}, {workers})")
    n_classes = len(classifier.classes)
    probs = np.full((len(paths), n_classes), np.nan)
    errors: list[str] = []
    start = 0
    with tqdm(total=len(paths), unit="img", desc="predict", disable=not progress, file=sys.stderr) as bar:
        for batch, batch_errors in _batches(classifier, paths, batch_size, workers):
            if batch is not None:
                rows = [start + i for i, e in enumerate(batch_errors) if not e]
                probs[rows] = classifier._forward(batch, tta)
            errors.extend(batch_errors)
            start += len(batch_errors)
            bar.update(len(batch_errors))
    out = pd.DataFrame({"path": list(paths)})
    for k, name in enumerate(classifier.classes):
        out[f"p_{name}"] = probs[:, k]
    out["label"] = labels_of(probs, errors, classifier.classes, threshold)
    out["error"] = errors
    return out


# ------------------------------------------------------------------------------------------------ output


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


def summary(df: pd.DataFrame, seconds: float) -> str:
    counts = df.loc[df["error"] == "", "label"].value_counts()
    parts = [f"{n} {label}" for label, n in counts.items()]
    n_err = int((df["error"] != "").sum())
    if n_err:
        parts.append(f"{n_err} unreadable")
    rate = len(df) / seconds if seconds > 0 else float("inf")
    return f"scored {len(df)} files in {seconds:.1f} s ({rate:.1f} img/s): " + ", ".join(parts)


def main(params: Params, args: argparse.Namespace) -> None:
    if args.out and Path(args.out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--out {args.out}: expected a .csv, .json or .parquet file")
    threshold = params.evaluate.abstain_threshold if args.threshold is None else args.threshold
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: expected a probability between 0 and 1")
    paths = expand_inputs(args.paths)
    ref = resolve_model(args.model, params.mlflow)
    classifier = load_model(ref, params.mlflow)
    started = time.perf_counter()
    df = score_files(
        classifier, paths, batch_size=args.batch_size, workers=args.workers, tta=args.tta, threshold=threshold
    )
    elapsed = time.perf_counter() - started
    if args.out:
        write_predictions(df, args.out)
    else:
        df.to_csv(sys.stdout, index=False)
    print(f"{ref.display}: {summary(df, elapsed)}", file=sys.stderr)
    for path, error in df.loc[df["error"] != "", ["path", "error"]].head(20).itertuples(index=False):
        print(f"  unreadable: {path}: {error}", file=sys.stderr)
