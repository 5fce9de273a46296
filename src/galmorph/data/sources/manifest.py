"""Any labelled image set described by a CSV (data.manifest), images not copied.

fetch only checks what can be wrong before anything runs (the file, its columns, the image folder) and
records the settings resolved in source.json; join reads and labels the rows (read_manifest_catalogue).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from galmorph.config import CLASSES, ManifestConfig
from galmorph.data.gzcsv import EXPECTED, check_columns, check_file, fail_at, read_header, read_typed_csv
from galmorph.data.labels import (
    UNCERTAIN,
    UNCERTAIN_ID,
    JoinResult,
    check_threshold,
    code_names,
    dedupe_images,
    dedupe_rows,
    disagreement,
    labelled_tables,
    path_prefix,
    require_rows,
    threshold_codes,
)
from galmorph.data.sources.rawdir import check_outside
from galmorph.errors import UserError
from galmorph.io import file_md5
from galmorph.paths import portable_path, resolve_path

KEPT_MANIFEST_COLUMNS: tuple[str, ...] = ("dataset", "survey")
"""Carried along for per-dataset breakdowns downstream (labels.csv mixes four image sets)."""


def describe_manifest(cfg: ManifestConfig, raw_dir: str | os.PathLike) -> dict[str, Any]:
    """The source.json description of the manifest: paths resolved (image_root defaults to the CSV's
    folder), the column settings as given, and the CSV's MD5."""
    path = Path(cfg.path)
    if not path.is_file():
        raise UserError(f"{path}: data.manifest.path not found (expected a CSV with a {cfg.path_column} column)")
    check_outside(path, raw_dir, "data.manifest.path")
    if cfg.label_column is None and not cfg.vote_columns:
        raise UserError("data.manifest: set label_column or vote_columns (both are null)")
    check_threshold(cfg.vote_threshold, "data.manifest.vote_threshold")
    check_count_settings(cfg.count_columns, cfg.total_votes_column, cfg.vote_columns)
    named = (
        cfg.path_column,
        cfg.id_column,
        cfg.label_column,
        *(cfg.vote_columns or {}).values(),
        *(cfg.count_columns or {}).values(),
        cfg.total_votes_column,
    )
    check_columns(path, read_header(path), dict.fromkeys(c for c in named if c is not None))
    image_root = Path(cfg.image_root) if cfg.image_root is not None else path.parent
    if not image_root.is_dir():
        raise UserError(f"{image_root}: data.manifest.image_root is not a folder")
    check_outside(image_root, raw_dir, "data.manifest.image_root")
    return {
        "source": "manifest",
        "kind": "manifest",
        "path": portable_path(path),
        "image_root": portable_path(image_root),
        "path_column": cfg.path_column,
        "id_column": cfg.id_column,
        "label_column": cfg.label_column,
        "label_map": dict(cfg.label_map),
        "vote_columns": dict(cfg.vote_columns) if cfg.vote_columns else None,
        "vote_threshold": cfg.vote_threshold,
        "md5": {"manifest": file_md5(path)},
        # only when set: a source.json without counts stays byte-identical (no rerun of join)
        **({"count_columns": dict(cfg.count_columns)} if cfg.count_columns else {}),
        **({"total_votes_column": cfg.total_votes_column} if cfg.total_votes_column is not None else {}),
    }


def listed_images(source: Mapping[str, Any]) -> tuple[Path, list[str]]:
    """The image root and every path the manifest's path column names (as written, relative to the root or
    absolute): what fetch hashes into images.md5."""
    path = Path(source["path"])
    column = source["path_column"]
    values = pd.read_csv(path, usecols=[column], dtype=str, keep_default_na=False)[column]
    return Path(source["image_root"]), [v.strip() for v in values if v.strip()]


def _manifest_schema(source: Mapping[str, Any]) -> dict[str, str]:
    """Check the manifest settings and return the columns to read (all as text: checked per column below)."""
    label_col, votes = source.get("label_column"), source.get("vote_columns") or None
    check_threshold(float(source.get("vote_threshold", 0.8)), "data.manifest.vote_threshold")
    if label_col is None and votes is None:
        raise UserError("data.manifest: set label_column or vote_columns (both are null)")
    if votes is not None and set(votes) != set(CLASSES):
        raise UserError(f"data.manifest.vote_columns: expected keys {', '.join(CLASSES)}, got {', '.join(votes)}")
    if label_col is not None:
        allowed = (*CLASSES, UNCERTAIN)
        for key, value in (source.get("label_map") or {}).items():
            if value not in allowed:
                raise UserError(
                    f"data.manifest.label_map: {key!r} maps to {value!r}; expected one of {', '.join(allowed)}"
                )
    counts, total = source.get("count_columns") or None, source.get("total_votes_column")
    check_count_settings(counts, total, votes)
    columns = [
        source["path_column"],
        source.get("id_column"),
        label_col,
        *(votes or {}).values(),
        *(counts or {}).values(),
        total,
    ]
    return dict.fromkeys((c for c in columns if c is not None), "text")


def _manifest_ids(path: Path, df: pd.DataFrame, path_col: str, id_col: str | None) -> pd.Series:
    """Galaxy ids: the id column, or the image path itself (labels.csv's objid lost digits to float)."""
    ids = df[id_col].str.strip() if id_col is not None else None
    if ids is not None:
        # before the empty-cell check: a float-mangled column is the likelier mistake and needs a different fix
        mangled = ids.str.fullmatch(r"[+-]?\d(\.\d+)?[eE][+-]?\d+").to_numpy()
        if mangled.any():
            i = int(np.argmax(mangled))
            raise fail_at(
                path, i, id_col, f"ID {ids.iat[i]!r} was written as a float and lost digits; set id_column: null"
            )
    for col in (path_col, id_col):
        if col is not None:
            empty = (df[col].str.strip() == "").to_numpy()
            if empty.any():
                raise fail_at(path, int(np.argmax(empty)), col, "missing value (expected an image path or ID)")
    return ids if ids is not None else df[path_col].str.strip()


def _vote_fractions(path: Path, df: pd.DataFrame, column: str) -> np.ndarray:
    """A vote column as floats; empty cells are NaN (unknown), anything else must be a fraction."""
    text = df[column].str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)  # "" -> NaN
    bad = (np.isnan(values) & (text != "").to_numpy()) | (values < 0) | (values > 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise fail_at(path, i, column, f"expected {EXPECTED['fraction']}, got {text.iat[i]!r}")
    return values


def check_count_settings(counts: Mapping[str, str] | None, total: str | None, votes: Mapping[str, str] | None) -> None:
    """Vote counts come from count columns or from vote fractions x a total-votes column, not both."""
    if counts and total is not None:
        raise UserError("data.manifest: set count_columns or total_votes_column, not both")
    if counts and set(counts) != set(CLASSES):
        raise UserError(f"data.manifest.count_columns: expected keys {', '.join(CLASSES)}, got {', '.join(counts)}")
    if total is not None and not votes:
        raise UserError("data.manifest.total_votes_column: needs vote_columns (the fractions it multiplies)")


def _count_values(path: Path, df: pd.DataFrame, column: str) -> np.ndarray:
    """A count column as floats; empty cells are NaN (no votes recorded), anything else must be >= 0."""
    text = df[column].str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
    bad = (np.isnan(values) & (text != "").to_numpy()) | ~(np.isnan(values) | (np.isfinite(values) & (values >= 0)))
    if bad.any():
        i = int(np.argmax(bad))
        raise fail_at(path, i, column, f"expected a vote count (a number >= 0), got {text.iat[i]!r}")
    return values


def _vote_counts(
    path: Path, df: pd.DataFrame, source: Mapping[str, Any], p_sp: np.ndarray, p_el: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(spiral, elliptical) vote counts per row, NaN where unknown: what train.loss dirichlet learns from."""
    counts, total = source.get("count_columns") or None, source.get("total_votes_column")
    if counts:
        return _count_values(path, df, counts["spiral"]), _count_values(path, df, counts["elliptical"])
    if total is not None:
        n = _count_values(path, df, total)
        return p_sp * n, p_el * n
    nan = np.full(len(df), np.nan)
    return nan, nan.copy()


def read_manifest_catalogue(source: Mapping[str, Any], *, root: str | os.PathLike | None = None) -> JoinResult:
    """Any labelled image set as a catalogue: a CSV with an image-path column and either a label column
    (mapped through label_map; values it does not name are dropped and counted) or vote-fraction columns
    (spiral / elliptical when the vote reaches vote_threshold, else uncertain).

    `source` is source.json's manifest entry; its paths are relative to `root` (default: working directory).
    """
    root = Path(root or os.getcwd())
    path = resolve_path(source["path"], root)
    path_col, id_col, label_col = source["path_column"], source.get("id_column"), source.get("label_column")
    votes: dict[str, str] = source.get("vote_columns") or {}
    threshold = float(source.get("vote_threshold", 0.8))
    schema = _manifest_schema(source)
    check_file(path, "manifest")
    # evaluate-folder keeps every column of the user's CSV in its predictions (keep_columns: "all")
    wanted = read_header(path) if source.get("keep_columns") == "all" else KEPT_MANIFEST_COLUMNS
    taken = {"galaxy_id", "image_path", "label", "label_id", "label_raw", "source_path", "p_spiral", "p_elliptical"}
    taken |= {"count_spiral", "count_elliptical"}
    kept = [c for c in wanted if c in read_header(path) and c not in schema and c not in taken]
    df = read_typed_csv(path, {**schema, **dict.fromkeys(kept, "text")}, "manifest")
    report: dict[str, Any] = {
        "kind": "manifest",
        "label_rule": "label_column" if label_col is not None else "vote_columns",
        "threshold": threshold,
        "rows_read": {"manifest": len(df)},
        "extra_columns": {"manifest": [c for c in df.attrs["extra_columns"] if c not in kept]},
        "dropped_labels": {},
        "missing_votes": 0,
        "disagreement": None,
    }
    rel = df[path_col].str.strip()
    ids = _manifest_ids(path, df, path_col, id_col)
    nan = np.full(len(df), np.nan)
    p_sp = _vote_fractions(path, df, votes["spiral"]) if votes else nan
    p_el = _vote_fractions(path, df, votes["elliptical"]) if votes else nan
    has_votes = ~(np.isnan(p_sp) | np.isnan(p_el))
    n_sp, n_el = _vote_counts(path, df, source, p_sp, p_el)
    report["rows_with_counts"] = int((np.isfinite(n_sp) & np.isfinite(n_el)).sum())
    by_votes = threshold_codes(p_sp, p_el, threshold, strict=False)

    if label_col is not None:
        raw = df[label_col].str.strip()
        code_of = {name: code for code, name in code_names().items()}
        mapped = raw.map({k: code_of[v] for k, v in (source.get("label_map") or {}).items()})
        keep = mapped.notna().to_numpy()
        counts = raw[~keep].value_counts().sort_index()
        report["dropped_labels"] = {(k or "(empty)"): int(v) for k, v in counts.items()}
        found = ", ".join(repr(v) for v in sorted(raw.unique())[:10])
        require_rows(
            int(keep.sum()),
            f"{path}: no value of column {label_col} is in label_map ({', '.join(source.get('label_map') or {})}); "
            f"found {found}",
        )
        codes = mapped.fillna(UNCERTAIN_ID).to_numpy(np.int64)
        if votes:
            both = keep & has_votes
            report["disagreement"] = disagreement(codes[both], by_votes[both], "label", "votes")
    else:
        keep = has_votes
        report["missing_votes"] = int((~has_votes).sum())
        require_rows(int(keep.sum()), f"{path}: every row misses a value in {', '.join(votes.values())}")
        codes = by_votes

    prefix = path_prefix(source.get("image_root") or path.parent, root)
    image_path = (prefix + rel).to_numpy(dtype=object)
    absolute = rel.map(os.path.isabs).to_numpy()
    if absolute.any():
        image_path[absolute] = [portable_path(p, root) for p in rel[absolute]]
    frame = pd.DataFrame(
        {
            "galaxy_id": ids.to_numpy(dtype=object),
            "image_path": image_path,
            "label_id": codes,
            "p_spiral": p_sp,
            "p_elliptical": p_el,
            "count_spiral": n_sp,
            "count_elliptical": n_el,
            "source_path": rel.to_numpy(dtype=object),
            **({"label_raw": df[label_col].to_numpy(dtype=object)} if label_col is not None else {}),
            **{c: df[c].to_numpy(dtype=object) for c in kept},
        }
    )[keep]
    frame, report["duplicates"] = dedupe_rows(frame, "galaxy_id", "manifest")
    # the same file under two ids (two spellings of its path, a symlink): one image, not two galaxies
    resolved = [os.path.realpath(os.path.join(root, p)) for p in frame["image_path"]]
    frame, same_image = dedupe_images(frame, resolved, "label_id", "manifest")
    report["duplicates"].update(same_image)
    codes = frame.pop("label_id").to_numpy()
    rule = "label_map" if label_col is not None else f"vote_columns >= {threshold}"
    return labelled_tables(
        lambda rows: {c: frame[c].to_numpy()[rows] for c in frame.columns},
        codes,
        report,
        f"all {{n}} kept rows of {path} are uncertain under {rule}",
    )
