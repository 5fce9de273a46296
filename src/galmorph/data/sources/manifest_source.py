"""Any labelled image set described by a CSV (data.manifest): checked and described, images not copied.

fetch only checks what can be wrong before anything runs (the file, its columns, the image folder) and
records the settings resolved; reading and labelling the rows is the join stage's work."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from galmorph.config import ManifestConfig
from galmorph.data.catalog import check_columns, check_threshold, read_header
from galmorph.data.sources.download import md5_file
from galmorph.data.sources.rawdir import check_outside, portable_path
from galmorph.errors import UserError


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
    named = (cfg.path_column, cfg.id_column, cfg.label_column, *(cfg.vote_columns or {}).values())
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
        "md5": {"manifest": md5_file(path)},
    }
