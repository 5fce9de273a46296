"""What `fetch` keeps in `data.raw_dir`, and how it describes it in `source.json`.

raw_dir is the fetch stage's DVC output: what is in it is what DVC versions, and DVC clears it before the
stage runs. So fetch keeps it to the current source's files (another source's leftovers are removed), never
keeps a user's own data in it (local and manifest inputs must live elsewhere), and writes source.json last,
atomically: a source.json means the files it names are complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from galmorph.data.gzcsv import IMAGES_SUBDIR, MAPPING_NAME, TABLE2_NAME
from galmorph.errors import UserError
from galmorph.io import write_json
from galmorph.paths import portable_path

SOURCE_JSON = "source.json"
DOWNLOADS_JSON = ".downloads.json"
"""The galaxyzoo source's ledger: URL and MD5 of each finished download, so a re-run knows what it has."""
IMAGES_ROOT = IMAGES_SUBDIR.parts[0]
ZIP_NAME = f"{IMAGES_ROOT}.zip"
#: Every top-level name a source may create in raw_dir; nothing else there is ever touched.
MANAGED = frozenset(
    {SOURCE_JSON, DOWNLOADS_JSON, TABLE2_NAME, f"{TABLE2_NAME}.gz", MAPPING_NAME, IMAGES_ROOT, ZIP_NAME}
)
UNPACKING = f".{IMAGES_ROOT}.unpacking"
_SOURCE_KEYS = {
    "catalogue": ("table2", "mapping", "images_dir"),
    "manifest": ("path", "path_column", "label_column", "label_map", "vote_columns", "vote_threshold"),
}


def check_outside(path: str | os.PathLike, raw_dir: str | os.PathLike, what: str) -> None:
    """A user's own input must not live in raw_dir: DVC clears that folder before every fetch."""
    p, raw = os.path.abspath(path), os.path.abspath(raw_dir)
    if os.path.commonpath([p, raw]) == raw:
        raise UserError(
            f"{what} {path} is inside data.raw_dir ({raw_dir}), which fetch owns and DVC clears before each run; "
            "keep your files in another folder"
        )


def read_previous(raw_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The source.json of the last fetch, or None (missing or unreadable: then nothing is trusted)."""
    try:
        data = json.loads((Path(raw_dir) / SOURCE_JSON).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def owner(raw_dir: str | os.PathLike) -> str | None:
    """Which source filled raw_dir: source.json says so; an unfinished galaxyzoo fetch leaves its ledger."""
    previous = read_previous(raw_dir)
    if previous is not None:
        return str(previous.get("source"))
    return "galaxyzoo" if (Path(raw_dir) / DOWNLOADS_JSON).is_file() else None


def _is_managed(name: str) -> bool:
    if name in MANAGED or name == UNPACKING:
        return True
    if name.endswith(".part"):
        return name[: -len(".part")] in MANAGED
    # io.atomic_path's temporary files (".<name>.<random>.tmp") left by a killed run
    return name.endswith(".tmp") and any(name.startswith(f".{m}.") for m in MANAGED)


def clean(raw_dir: str | os.PathLike, keep: Iterable[str] = ()) -> list[str]:
    """Remove fetch's files in raw_dir except `keep` (and their `.part`); returns the names removed."""
    raw, keep = Path(raw_dir), set(keep)
    if not raw.is_dir():
        return []
    removed = []
    for entry in sorted(raw.iterdir()):
        name = entry.name
        if not _is_managed(name) or name in keep or (name.endswith(".part") and name[: -len(".part")] in keep):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(name)
    return removed


def read_source(raw_dir: str | os.PathLike) -> dict[str, Any]:
    """`<raw_dir>/source.json`, written by `fetch`: where the raw inputs are and how to read them."""
    path = Path(raw_dir) / SOURCE_JSON
    if not path.is_file():
        raise UserError(f"{path}: not found (run `galmorph fetch` first)")
    try:
        source = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(source, dict) or source.get("kind") not in _SOURCE_KEYS:
        raise UserError(f"{path}: expected an object with kind 'catalogue' or 'manifest'")
    missing = [k for k in _SOURCE_KEYS[source["kind"]] if k not in source]
    if missing:
        raise UserError(f"{path}: missing key(s) {', '.join(missing)} for kind {source['kind']!r}")
    return source


def write_source(raw_dir: str | os.PathLike, source: dict[str, Any]) -> Path:
    """Write `<raw_dir>/source.json` atomically."""
    target = Path(raw_dir) / SOURCE_JSON
    write_json(target, source)
    return target


def catalogue_source(
    name: str, table2: Path, mapping: Path, images_dir: Path, md5: dict[str, str], **extra: Any
) -> dict[str, Any]:
    """source.json of the catalogue kind (GZ1 table 2 + GZ2 mapping + a folder of <asset_id>.jpg)."""
    return {
        "source": name,
        "kind": "catalogue",
        "table2": portable_path(table2),
        "mapping": portable_path(mapping),
        "images_dir": portable_path(images_dir),
        "md5": md5,
        **extra,
    }
