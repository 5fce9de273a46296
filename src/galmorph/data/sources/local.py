"""The official Galaxy Zoo files already on disk (a shared data disk, an earlier download): checked and
pointed at, never copied, so 243,434 JPEGs are not duplicated into raw_dir and DVC's cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from galmorph.config import LocalConfig
from galmorph.data.gzcsv import IMAGES_SUBDIR, MAPPING_NAME, TABLE2_NAME
from galmorph.data.sources.rawdir import catalogue_source, check_outside
from galmorph.errors import UserError
from galmorph.io import file_md5

LAYOUT = f"data.local.dir must hold {TABLE2_NAME} (or .csv.gz), {MAPPING_NAME} and {IMAGES_SUBDIR.as_posix()}/"


def _has_jpeg(folder: Path) -> bool:
    with os.scandir(folder) as entries:  # stops at the first hit: the real folder has 243,434 files
        return any(e.name.lower().endswith((".jpg", ".jpeg")) for e in entries)


def describe_local(cfg: LocalConfig, raw_dir: str | os.PathLike) -> dict[str, Any]:
    """Check the files in `cfg.dir` and return the source.json description (with the catalogues' MD5s)."""
    root = Path(cfg.dir)
    if not root.is_dir():
        raise UserError(f"{root}: data.local.dir is not a folder ({LAYOUT})")
    check_outside(root, raw_dir, "data.local.dir")
    present = [p for p in (root / TABLE2_NAME, root / f"{TABLE2_NAME}.gz") if p.is_file()]
    if not present:
        raise UserError(f"{root / TABLE2_NAME}: not found, nor {TABLE2_NAME}.gz ({LAYOUT})")
    if len(present) > 1:
        raise UserError(f"{root}: holds both {TABLE2_NAME} and {TABLE2_NAME}.gz; keep one so it is clear which is used")
    table2, mapping, images = present[0], root / MAPPING_NAME, root / IMAGES_SUBDIR
    if not mapping.is_file():
        raise UserError(f"{mapping}: not found ({LAYOUT})")
    if not images.is_dir():
        raise UserError(f"{images}: image folder not found ({LAYOUT})")
    if not _has_jpeg(images):
        raise UserError(f"{images}: holds no .jpg files ({LAYOUT})")
    md5 = {"table2": file_md5(table2), "mapping": file_md5(mapping)}
    return catalogue_source("local", table2, mapping, images, md5)


def listed_images(source: dict[str, Any]) -> tuple[Path, list[str]]:
    """The image folder and every file under it (relative): what fetch hashes into images.md5."""
    root = Path(source["images_dir"])
    return root, [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
