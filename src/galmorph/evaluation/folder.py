"""The model on labelled images from anywhere (other telescopes, a class's own set), not only SDSS cut-outs.

A folder with spirals/ and ellipticals/ subfolders or a manifest-like CSV becomes a catalogue that goes
through the model's own eval preset, exactly as in serving; unreadable images are counted, listed and left
out rather than failing the run.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pandas as pd

from galmorph.config import CLASSES, EvaluateConfig, FitsConfig
from galmorph.data.gzcsv import read_header
from galmorph.data.sources.manifest import read_manifest_catalogue
from galmorph.errors import UserError
from galmorph.evaluation.html_report import jsonable, write_report
from galmorph.evaluation.scoring import check_readable, flat_kpis, score, write_set
from galmorph.io import write_json
from galmorph.models.resnet import load_model
from galmorph.paths import repo_root

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".fits", ".fit", ".fts", ".fz")
CLASS_FOLDERS = {"spiral": ("spirals", "spiral"), "elliptical": ("ellipticals", "elliptical")}
PATH_COLUMNS = ("image_path", "filename", "path", "file", "image")
LABEL_WORDS = {"spiral": ("spiral", "spirals", "s"), "elliptical": ("elliptical", "ellipticals", "e")}


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_labelled_folder(folder: str | os.PathLike) -> pd.DataFrame:
    """A catalogue of the images under folder/spirals/ and folder/ellipticals/ (names case-insensitive)."""
    root = Path(folder)
    subdirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    rows = []
    for label_id, cls in enumerate(CLASSES):
        for name in CLASS_FOLDERS[cls]:
            if name in subdirs:
                for path in _image_files(subdirs[name]):
                    rows.append((str(path.relative_to(root)), str(path.resolve()), cls, label_id))
    if not rows:
        loose = len(_image_files(root))
        has_class_dir = any(n in subdirs for names in CLASS_FOLDERS.values() for n in names)
        if has_class_dir:
            raise UserError(
                f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its spirals/ or ellipticals/ subfolders"
            )
        found = f"found {loose} image(s) without labels" if loose else "it is empty"
        raise UserError(
            f"{root}: expected subfolders spirals/ and ellipticals/ holding the labelled images ({found}); "
            "or pass a manifest CSV with image-path and label columns"
        )
    df = pd.DataFrame(rows, columns=["galaxy_id", "image_path", "label", "label_id"])
    df["p_spiral"] = np.nan
    df["p_elliptical"] = np.nan
    return df


def read_labelled_csv(
    path: str | os.PathLike, path_column: str | None = None, label_column: str = "label"
) -> pd.DataFrame:
    """A catalogue from a manifest CSV: image paths relative to the CSV's folder (or absolute), labels
    spiral/elliptical (also S/E and plurals, any case; other values are dropped), votes when present."""
    csv = Path(path)
    header = read_header(csv)
    if path_column is None:
        path_column = next((c for c in PATH_COLUMNS if c in header), None)
        if path_column is None:
            raise UserError(f"{csv}: no image-path column (looked for {', '.join(PATH_COLUMNS)}); pass --path-column")
    for col in (path_column, label_column):
        if col not in header:
            raise UserError(f"{csv}: no column {col!r} (columns: {', '.join(header[:20])})")
    values = pd.read_csv(csv, usecols=[label_column], dtype=str, keep_default_na=False)[label_column].str.strip()
    label_map = {}
    for v in values.unique():
        for cls, words in LABEL_WORDS.items():
            if v.lower() in words:
                label_map[v] = cls
    if not label_map:
        raise UserError(
            f"{csv}: column {label_column} has no spiral/elliptical labels (found {', '.join(sorted(values.unique())[:10])})"
        )
    votes = {c: f"p_{c}" for c in CLASSES} if all(f"p_{c}" in header for c in CLASSES) else None
    source = {
        "path": str(csv.resolve()),
        "image_root": str(csv.resolve().parent),
        "path_column": path_column,
        "id_column": None,
        "label_column": label_column,
        "label_map": label_map,
        "vote_columns": votes,
        "vote_threshold": 0.5,
        "keep_columns": "all",  # the CSV's own columns (dataset, label_detail, ...) stay in the predictions
    }
    # image paths as the catalogue contract has them: relative to the repo root when inside it, else absolute
    result = read_manifest_catalogue(source, root=repo_root())
    catalogue = result.joined
    catalogue.attrs["dropped_labels"] = result.report.get("dropped_labels", {})
    return catalogue


def read_labelled(path: str | os.PathLike, path_column: str | None = None, label_column: str = "label") -> pd.DataFrame:
    p = Path(path)
    if p.is_dir():
        return read_labelled_folder(p)
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise UserError(f"{p}: expected a folder (with spirals/ and ellipticals/) or a .csv manifest")
        return read_labelled_csv(p, path_column, label_column)
    raise UserError(f"{p}: no such folder or file")


def evaluate_labelled(
    catalogue: pd.DataFrame,
    loaded,
    cfg,
    out_dir: Path,
    *,
    name: str,
    root: Path | None = None,
    fits: FitsConfig | None = None,
) -> tuple[dict, dict[str, float]]:
    """Check the images, score the readable ones and write the set's outputs; returns (section, flat KPIs).
    `fits`: how FITS images are read (default: FitsConfig())."""
    ok, skipped = check_readable(catalogue, root=root, workers=max(1, cfg.num_workers * 2), fits=fits)
    if ok.empty:
        reasons = ", ".join(sorted(skipped["reason"].unique())[:3])
        raise UserError(f"{name}: none of the {len(catalogue)} images could be read ({reasons})")
    missing = [c for i, c in enumerate(CLASSES) if not (ok["label_id"] == i).any()]
    scored = score(loaded.model, ok, loaded.preprocess, cfg, loaded.temperature, name=name, fits=fits, ood=loaded.ood)
    section = write_set(scored, loaded.model, loaded.preprocess, cfg, out_dir, root=root, plot_tables=False)
    section["skipped"] = skipped.to_dict(orient="records")
    section["missing_classes"] = missing
    section["dropped_labels"] = dict(catalogue.attrs.get("dropped_labels", {}))
    flat = flat_kpis("", section)
    flat = {k.lstrip("_"): v for k, v in flat.items()}
    flat["n_skipped"] = float(len(skipped))
    return section, flat


def evaluate_folder(
    path: str | os.PathLike,
    model_file: str,
    cfg: EvaluateConfig,
    out: Path,
    *,
    path_column: str | None = None,
    label_column: str = "label",
    model_name: str | None = None,
    fits: FitsConfig | None = None,
) -> tuple[dict, Path]:
    """Score a labelled folder or CSV and write metrics.json, summary.json and report.html under `out`;
    returns (the set's section, the report's path). `model_name` is what the report calls the model (e.g.
    "galmorph v3 (@champion)"; default: the file); `fits` how FITS images are read."""
    src = Path(path)
    catalogue = read_labelled(src, path_column, label_column)
    loaded = load_model(model_file)
    section, flat = evaluate_labelled(catalogue, loaded, cfg, out, name=f"{src.name} ({src})", fits=fits)
    summary = {
        "title": f"galmorph evaluation of {src.name}",
        "subtitle": f"model {model_name or model_file}",
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "notes": _notes(section),
        "sets": [section],
        "model": {"file": model_name or model_file, "arch": loaded.model_cfg.arch, "temperature": loaded.temperature},
    }
    write_json(out / "metrics.json", jsonable(flat))
    write_json(out / "summary.json", jsonable(summary))
    return section, write_report(summary, out / "report.html")


def _notes(section: dict) -> list[str]:
    notes = [
        "Images from other telescopes are framed, scaled and coloured differently from SDSS cut-outs: the "
        "model sees the eval preset's centre crop of each image, as in serving."
    ]
    if section["skipped"]:
        notes.append(f"{len(section['skipped'])} image(s) could not be read and were left out (listed below).")
    dropped = section.get("dropped_labels") or {}
    if dropped:
        listed = ", ".join(f"{k!r} ({v})" for k, v in list(dropped.items())[:5])
        notes.append(f"Rows whose label is neither spiral nor elliptical were left out: {listed}.")
    if section["missing_classes"]:
        notes.append(f"No {' or '.join(section['missing_classes'])} images: per-class KPIs and ROC-AUC are undefined.")
    return notes
