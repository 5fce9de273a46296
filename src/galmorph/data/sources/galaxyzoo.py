"""The official Galaxy Zoo files, downloaded into raw_dir.

- GZ1 table 2 (Lintott et al. 2011), kept gzipped as served: every reader here (pyarrow, pandas) reads .gz.
- From Zenodo record 3565489 (Hart et al. 2016 images): gz2_filename_mapping.csv and images_gz2.zip
  (243,434 JPEGs, about 3.4 GB), verified against the MD5s the record's API publishes.

The zip is unpacked once into images_gz2/ (a temporary folder renamed into place, with a marker file inside
recording which zip it came from) and then deleted: it would double the disk use (and what DVC caches) for
nothing the pipeline reads. The price is that unpacking again needs a new download (`fetch --force`).
A re-run with the same URLs makes no request at all: the ledger `.downloads.json` remembers what finished.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import requests
from tqdm import tqdm

from galmorph.config import GalaxyZooConfig
from galmorph.data.gzcsv import MAPPING_NAME, TABLE2_NAME
from galmorph.data.sources.download import CHUNK_SIZE, download, get_json
from galmorph.data.sources.rawdir import DOWNLOADS_JSON, IMAGES_ROOT, ZIP_NAME, catalogue_source
from galmorph.errors import UserError
from galmorph.io import write_json

MARKER_NAME = ".unpacked.json"
"""Inside images_gz2/: which zip (URL, MD5) it was unpacked from and how many files it holds."""
_JUNK = re.compile(r"(^|/)(__MACOSX/|\.DS_Store$|Thumbs\.db$)")


def table2_name(url: str) -> str:
    """GalaxyZoo1_DR_table2.csv, with .gz when the URL serves the gzipped file."""
    return TABLE2_NAME + (".gz" if urlsplit(url).path.endswith(".gz") else "")


def zenodo_md5s(
    api_url: str, *, retries: int, timeout_s: float, backoff_s: float, session: requests.Session | None = None
) -> dict[str, str]:
    """{file name: md5} from a Zenodo record's API answer (`files` as a list, or InvenioRDM's `entries`)."""
    record = get_json(api_url, retries=retries, timeout_s=timeout_s, backoff_s=backoff_s, session=session)
    files = record.get("files") if isinstance(record, dict) else None
    if isinstance(files, dict):
        files = list((files.get("entries") or {}).values())
    if not isinstance(files, list):
        raise UserError(f"{api_url}: expected a Zenodo record with a `files` list")
    md5s = {}
    for entry in files:
        if not isinstance(entry, dict):
            continue
        name, checksum = entry.get("key") or entry.get("filename"), str(entry.get("checksum") or "")
        algo, _, digest = checksum.partition(":")
        if name and algo == "md5" and digest:
            md5s[str(name)] = digest.lower()
    return md5s


def _members(zf: zipfile.ZipFile, zip_path: Path) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The zip's files and where each goes below the destination; refuses the whole zip if one entry could
    land outside it (zip-slip: an absolute path, `..`, or a symlink)."""
    files = []
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        if info.is_dir() or _JUNK.search(name):
            continue
        parts = PurePosixPath(name).parts
        if (
            name.startswith("/")
            or re.match(r"^[A-Za-z]:", name)
            or ".." in parts
            or stat.S_ISLNK(info.external_attr >> 16)
        ):
            raise UserError(
                f"{zip_path}: unsafe entry {info.filename!r} would be written outside the folder; not unpacking"
            )
        files.append((info, PurePosixPath(*[p for p in parts if p != "."])))
    if not files:
        raise UserError(f"{zip_path}: holds no files")
    # The archive is images/<asset_id>.jpg; accept it with or without the images_gz2/ folder around it.
    if all(rel.parts[0] == IMAGES_ROOT and len(rel.parts) > 1 for _, rel in files):
        files = [(info, PurePosixPath(*rel.parts[1:])) for info, rel in files]
    if not all(rel.parts[0] == "images" and len(rel.parts) > 1 for _, rel in files):
        files = [(info, "images" / rel) for info, rel in files]
    return files


def unpack_images(
    zip_path: str | os.PathLike, dest: str | os.PathLike, *, marker: Mapping[str, Any], progress: bool = True
) -> int:
    """Unpack the images zip into `dest` (so dest/images/<asset_id>.jpg); returns the number of files.

    Unpacks into a temporary folder beside `dest`, writes `marker` (plus the file count) into it, then
    renames it to `dest`: a `dest` with its marker is complete, a killed run leaves only the temporary folder.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    tmp = dest.with_name(f".{dest.name}.unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = _members(zf, zip_path)
            made: set[Path] = set()
            for info, rel in tqdm(members, desc=f"unpack {zip_path.name}", unit="file", disable=not progress):
                target = tmp / rel
                if target.parent not in made:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    made.add(target.parent)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK_SIZE)
    except zipfile.BadZipFile as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        zip_path.unlink()
        raise UserError(f"{zip_path}: not a valid zip ({exc}); it was deleted, run fetch again") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json(tmp / MARKER_NAME, {**marker, "files": len(members)})
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return len(members)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def fetch_galaxyzoo(cfg: GalaxyZooConfig, raw_dir: str | os.PathLike, *, progress: bool = True) -> dict[str, Any]:
    """Download (or resume, or keep) the official files in raw_dir; returns the source.json description."""
    raw = Path(raw_dir)
    raw.mkdir(parents=True, exist_ok=True)
    ledger_path = raw / DOWNLOADS_JSON
    ledger = _read_json(ledger_path)
    write_json(ledger_path, ledger)  # from now on raw_dir is known to hold galaxyzoo's (partial) files
    t2 = table2_name(cfg.table2_url)
    net = {"retries": cfg.retries, "timeout_s": cfg.timeout_s, "backoff_s": cfg.backoff_s}
    session = requests.Session()
    zenodo: dict[str, str] | None = None

    def expected_md5(name: str) -> str | None:
        nonlocal zenodo
        if name == t2:
            return cfg.table2_md5
        if cfg.zenodo_api_url is None:
            return None
        if zenodo is None:  # asked only when a Zenodo file must be downloaded
            zenodo = zenodo_md5s(cfg.zenodo_api_url, session=session, **net)
        if name not in zenodo:
            raise UserError(
                f"{cfg.zenodo_api_url}: the record lists no file {name} (it has {', '.join(sorted(zenodo)) or 'none'}); "
                "set data.galaxyzoo.zenodo_api_url: null to download without checksums"
            )
        return zenodo[name]

    def ensure(name: str, url: str) -> str:
        """The file's MD5, downloading it unless the ledger says this URL already finished."""
        entry = ledger.get(name) or {}
        pinned = cfg.table2_md5.lower() if name == t2 and cfg.table2_md5 else None
        if (raw / name).is_file() and entry.get("url") == url and pinned in (None, entry.get("md5")):
            return entry["md5"]
        md5 = download(url, raw / name, md5=expected_md5(name), progress=progress, session=session, **net)
        ledger[name] = {"url": url, "md5": md5, "bytes": (raw / name).stat().st_size}
        write_json(ledger_path, ledger)
        return md5

    try:
        md5 = {"table2": ensure(t2, cfg.table2_url), "mapping": ensure(MAPPING_NAME, cfg.mapping_url)}
        images = raw / IMAGES_ROOT
        unpacked = _read_json(images / MARKER_NAME)
        if unpacked.get("url") != cfg.images_url:
            zip_md5 = ensure(ZIP_NAME, cfg.images_url)
            marker = {"url": cfg.images_url, "md5": zip_md5}
            unpacked = {**marker, "files": unpack_images(raw / ZIP_NAME, images, marker=marker, progress=progress)}
            (raw / ZIP_NAME).unlink()
    finally:
        session.close()
    md5["images_zip"] = unpacked["md5"]
    urls = {"table2": cfg.table2_url, "mapping": cfg.mapping_url, "images": cfg.images_url}
    return catalogue_source(
        "galaxyzoo", raw / t2, raw / MAPPING_NAME, images / "images", md5, urls=urls, image_files=unpacked["files"]
    )
