"""What `fetch` keeps in `data.raw_dir`, and how it describes it in `source.json`.

raw_dir is the fetch stage's DVC output: what is in it is what DVC versions. So fetch keeps it to the current
source's files (another source's leftovers are removed), never keeps a user's own data in it (local and
manifest inputs must live elsewhere), and writes source.json last, atomically: a source.json means the files
it names are complete.

Fetch removes or replaces only what it wrote itself: `.owned.json` (the ownership record) lists the names it
wrote, and is written before each run writes anything. A file of one of fetch's names that the record does
not list (a user's own download in a folder that data.raw_dir now points at) stops fetch with an error
instead; `fetch --force` takes it over.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from galmorph.data.gzcsv import IMAGES_SUBDIR, MAPPING_NAME, TABLE2_NAME
from galmorph.errors import UserError
from galmorph.io import file_md5, write_json, write_text
from galmorph.paths import portable_path

SOURCE_JSON = "source.json"
IMAGE_HASHES = "images.md5"
"""local and manifest: the md5 of every image the source names (md5sum format), so the commit pins the pixels."""
OWNED_JSON = ".owned.json"
"""The ownership record: the names in raw_dir that fetch wrote (and so may remove or replace)."""
DOWNLOADS_JSON = ".downloads.json"
"""The galaxyzoo source's ledger: URL and MD5 of each finished download, so a re-run knows what it has."""
IMAGES_ROOT = IMAGES_SUBDIR.parts[0]
ZIP_NAME = f"{IMAGES_ROOT}.zip"
COORDS_CSV = "coords.csv"
"""coords: the catalogue's rows that have a cut-out, as a manifest (image file, id, labels or votes)."""
CUTOUTS_ROOT = "cutouts"
"""coords: the fetched cut-outs (links to, or copies of, the cut-out cache's files), versioned by DVC."""
CUTOUTS_FAILED = "cutouts_failed.csv"
"""coords: the catalogue's rows without a usable cut-out, and why (off the footprint, a failed request)."""
#: Every top-level name a source may create in raw_dir; nothing else there is ever touched.
MANAGED = frozenset(
    {SOURCE_JSON, IMAGE_HASHES, DOWNLOADS_JSON, TABLE2_NAME, f"{TABLE2_NAME}.gz", MAPPING_NAME, IMAGES_ROOT, ZIP_NAME}
    | {COORDS_CSV, CUTOUTS_ROOT, CUTOUTS_FAILED}
)
UNPACKING = f".{IMAGES_ROOT}.unpacking"
_PART_SUFFIXES = (".part", ".part.json")
"""download.py's unfinished download and its record (URL, ETag) beside it."""
_LEGACY = {
    "synthetic": {TABLE2_NAME, MAPPING_NAME, IMAGES_ROOT},
    "galaxyzoo": {DOWNLOADS_JSON, TABLE2_NAME, f"{TABLE2_NAME}.gz", MAPPING_NAME, IMAGES_ROOT, ZIP_NAME},
}
"""What each source wrote in raw_dir before the ownership record existed (see read_owned)."""
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


def owning_name(name: str) -> tuple[str | None, bool]:
    """Which of fetch's names (MANAGED) an entry of raw_dir belongs to, or None; and whether the entry is one
    of fetch's own temporary ones that no user would name so (an atomic_path file, the unpacking folder)."""
    if name in MANAGED:
        return name, False
    for suffix in _PART_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in MANAGED:
            return name[: -len(suffix)], False
    if name == UNPACKING:
        return IMAGES_ROOT, True
    if name.endswith(".tmp"):  # io.atomic_path's ".<name>.<random>.tmp" left by a killed run
        for managed in sorted(MANAGED, key=len, reverse=True):
            if name.startswith(f".{managed}."):
                return managed, True
    return None, False


def _entries(raw_dir: str | os.PathLike) -> list[tuple[Path, str, bool]]:
    """(entry, the name it belongs to, temporary?) for every entry of raw_dir that belongs to one of fetch's names."""
    raw = Path(raw_dir)
    if not raw.is_dir():
        return []
    found = []
    for entry in sorted(raw.iterdir()):
        name, temporary = owning_name(entry.name)
        if name is not None:
            found.append((entry, name, temporary))
    return found


def read_owned(raw_dir: str | os.PathLike) -> set[str]:
    """The names in raw_dir that fetch wrote: its ownership record. A raw_dir filled before the record
    existed has none; there the source.json (or galaxyzoo's download ledger) of that fetch shows what it wrote.
    Only fetch's own names count, whatever the record says: nothing else is ever removed."""
    raw = Path(raw_dir)
    try:
        record = json.loads((raw / OWNED_JSON).read_text())
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and isinstance(record.get("names"), list):
        return {str(n) for n in record["names"]} & MANAGED
    previous = read_previous(raw)
    source = owner(raw)
    names = {SOURCE_JSON} if previous is not None else set()
    return names | _LEGACY.get(str(source), set())


def write_owned(raw_dir: str | os.PathLike, names: Iterable[str]) -> None:
    raw = Path(raw_dir)
    record = {
        "about": "the files galmorph fetch wrote in this folder: the only ones it removes or replaces",
        "names": sorted(set(names) & MANAGED),
    }
    write_json(raw / OWNED_JSON, record)


def present(raw_dir: str | os.PathLike, names: Iterable[str]) -> set[str]:
    """Those of `names` with something in raw_dir: the file or folder itself, or its unfinished download."""
    names = set(names)
    return {name for _, name, temporary in _entries(raw_dir) if name in names and not temporary}


def foreign(raw_dir: str | os.PathLike, names: Iterable[str], owned: Iterable[str]) -> list[str]:
    """The entries of raw_dir that a fetch writing `names` would replace but that fetch did not write."""
    names, owned = set(names), set(owned)
    return [e.name for e, name, temporary in _entries(raw_dir) if name in names - owned and not temporary]


def clean(raw_dir: str | os.PathLike, names: Iterable[str]) -> list[str]:
    """Remove `names` from raw_dir (what fetch owns, see read_owned), with their unfinished downloads and
    temporary files; returns the entry names removed."""
    names, removed = set(names) & MANAGED, []
    for entry, name, _ in _entries(raw_dir):
        if name not in names:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
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


def write_image_hashes(
    raw_dir: str | os.PathLike, root: str | os.PathLike, names: Iterable[str], *, progress: bool = True
) -> dict[str, Any]:
    """The md5 of every image a local or manifest source names, as `<raw_dir>/images.md5` (`md5sum -c` reads it
    from `root`). Those images live outside raw_dir, so without it a commit pinned the catalogue but not the
    pixels: now a replaced image changes raw_dir's hash in dvc.lock and reruns what depends on it. Returns the
    counts and the file's own md5 for source.json; names that are not a file are counted, not fatal (select
    reports them per row)."""
    root = Path(root)
    lines, missing = [], 0
    unique = sorted(set(names))
    for name in tqdm(unique, desc="hashing images", unit="img", disable=not progress, leave=False):
        path = root / name
        if not path.is_file():
            missing += 1
            continue
        lines.append(f"{file_md5(path)}  {name}")
    target = Path(raw_dir) / IMAGE_HASHES
    write_text(target, "".join(f"{line}\n" for line in lines))
    return {"images_hashed": len(lines), "images_not_found": missing, "images_md5": file_md5(target)}
