"""Streamed, resumable, retried, checksum-verified HTTP downloads (the 3.4 GB Galaxy Zoo zip is the reason).

- Streamed in chunks to `<dest>.part`, so memory stays flat whatever the file size.
- Resumed with an HTTP Range request when a `.part` is there, but only a `.part` of the same URL: beside it,
  `<dest>.part.json` records the URL and the validators the server sent (ETag, Last-Modified, size). The
  resume asks `If-Range` with them, so a file that changed on the server comes back whole (200) and the
  `.part` is rewritten from the start rather than appended to; a `.part` without its record, of another URL,
  or answered with another ETag or size is started again. A server that ignores Range answers 200 too.
- Retried with exponential backoff on connection errors, timeouts, 429 and 5xx (data.http: the policy the
  cut-out client shares). A failed attempt that still grew the `.part` does not use up a retry: a flaky link
  that keeps making progress finishes eventually.
- The bytes are stored exactly as served (no Content-Encoding decoding, `Accept-Encoding: identity`), so the
  MD5 is that of the published file and a `.csv.gz` stays gzipped.
- Only a complete, verified file is renamed to `dest`: `dest` existing means the download finished.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from galmorph.data.http import Retry as _Retry
from galmorph.data.http import check_status as _check_status
from galmorph.data.http import with_retries as _with_retries
from galmorph.errors import UserError
from galmorph.io import md5_digest, write_json

CHUNK_SIZE = 1 << 20
_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "galmorph-fetch"}


def part_path(dest: str | os.PathLike) -> Path:
    """Where the unfinished download of `dest` lives."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def part_record_path(dest: str | os.PathLike) -> Path:
    """Beside the `.part`: which URL it is a prefix of, and the server's validators for it (JSON)."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part.json")


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _validators(response: requests.Response) -> dict[str, str | None]:
    return {"etag": response.headers.get("ETag"), "last_modified": response.headers.get("Last-Modified")}


def _if_range(record: dict[str, Any]) -> str | None:
    """The If-Range value for a resume: the ETag when it is a strong one (RFC 9110 allows no weak ETag
    there), else the Last-Modified date; None when the server gave neither."""
    etag = record.get("etag")
    if isinstance(etag, str) and etag and not etag.startswith("W/"):
        return etag
    modified = record.get("last_modified")
    return modified if isinstance(modified, str) and modified else None


def _restart(part: Path, record: Path) -> None:
    part.unlink(missing_ok=True)
    record.unlink(missing_ok=True)


def _content_range(value: str) -> tuple[int, int | None] | None:
    """(first byte, total size or None) of a `Content-Range: bytes a-b/total` header."""
    unit, _, spec = value.partition(" ")
    span, _, total = spec.partition("/")
    first = span.partition("-")[0]
    if unit != "bytes" or not first.isdigit():
        return None
    return int(first), int(total) if total.isdigit() else None


def _transfer(
    url: str, part: Path, session: requests.Session, timeout_s: float, progress: bool, label: str
) -> hashlib._Hash:
    """One attempt: (resume and) stream the body into `part`; returns the MD5 of the whole `part`."""
    record_path = part.with_name(part.name + ".json")
    offset = part.stat().st_size if part.exists() else 0
    record = (_read_record(record_path) or {}) if offset else {}
    if offset and record.get("url") != url:
        _restart(part, record_path)  # no record of where these bytes came from, or another URL's: not a prefix
        offset, record = 0, {}
    headers = dict(_HEADERS)
    if offset:
        headers["Range"] = f"bytes={offset}-"
        validator = _if_range(record)
        if validator is not None:
            headers["If-Range"] = validator  # changed on the server since: it answers 200 with the whole file
    with session.get(url, headers=headers, stream=True, timeout=timeout_s) as response:
        if response.status_code == 416 and offset:
            _restart(part, record_path)  # the .part is not a prefix of what the server has now: start again
            raise _Retry("the server refused to resume (HTTP 416); starting again")
        _check_status(url, response)
        total = (
            int(response.headers["Content-Length"]) if response.headers.get("Content-Length", "").isdigit() else None
        )
        if response.status_code == 206 and offset:
            span = _content_range(response.headers.get("Content-Range", ""))
            if span is None or span[0] != offset:
                _restart(part, record_path)
                raise _Retry(f"the server resumed at the wrong place ({response.headers.get('Content-Range')})")
            etag = response.headers.get("ETag")
            if (etag and record.get("etag") and etag != record["etag"]) or (
                span[1] is not None and record.get("bytes") is not None and span[1] != record["bytes"]
            ):
                _restart(part, record_path)  # a server that ignored If-Range sent a part of another file
                raise _Retry("the file changed on the server since the interrupted download; starting again")
            total, mode, digest = span[1], "ab", md5_digest(part, CHUNK_SIZE)
        else:
            offset, mode, digest = 0, "wb", hashlib.md5()  # the body is the whole file (new, changed, no Range)
            # recorded before the first byte is written: a .part never exists without the URL it is a prefix of
            write_json(record_path, {"url": url, **_validators(response), "bytes": total})
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=label, disable=not progress)
        try:
            # MD5 runs at a few hundred MB/s, as fast as a local link: hashing chunk k in a thread (hashlib
            # releases the GIL) while chunk k+1 arrives keeps it off the critical path.
            with bar, part.open(mode) as fh, ThreadPoolExecutor(1) as hasher:
                hashing = None
                for chunk in response.raw.stream(CHUNK_SIZE, decode_content=False):
                    fh.write(chunk)
                    if hashing is not None:
                        hashing.result()
                    hashing = hasher.submit(digest.update, chunk)
                    bar.update(len(chunk))
                if hashing is not None:
                    hashing.result()
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise UserError(f"{part}: no space left on the device while downloading {url}") from None
            raise
    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            _restart(part, record_path)
        raise _Retry(f"got {size} of {total} bytes")
    return digest


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    md5: str | None = None,
    retries: int = 5,
    timeout_s: float = 60.0,
    backoff_s: float = 2.0,
    progress: bool = True,
    session: requests.Session | None = None,
) -> str:
    """Download `url` to `dest` (resuming `<dest>.part` if present); returns the file's MD5 hex digest.

    A known `md5` that does not match deletes the download and raises UserError naming the file, the
    expected and the actual checksum. `dest` is replaced only by a complete, verified file.
    """
    dest = Path(dest)
    part, record = part_path(dest), part_record_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    own = session is None
    session = session or requests.Session()
    try:
        digest = _with_retries(
            url,
            lambda: _transfer(url, part, session, timeout_s, progress, dest.name),
            retries=retries,
            backoff_s=backoff_s,
            progress_of=lambda: part.stat().st_size if part.exists() else 0,
        )
    finally:
        if own:
            session.close()
    actual = digest.hexdigest()
    if md5 is not None and actual != md5.lower():
        _restart(part, record)
        raise UserError(
            f"{dest}: checksum mismatch: expected md5 {md5.lower()}, got {actual} (downloaded from {url}; "
            "the file was deleted, run fetch again)"
        )
    os.replace(part, dest)
    record.unlink(missing_ok=True)
    return actual


def get_json(
    url: str,
    *,
    retries: int = 5,
    timeout_s: float = 60.0,
    backoff_s: float = 2.0,
    session: requests.Session | None = None,
) -> Any:
    """A small JSON document (an API answer), with the same retry policy as `download`."""

    def attempt() -> Any:
        response = (session or requests).get(url, headers={"Accept": "application/json"}, timeout=timeout_s)
        _check_status(url, response)
        try:
            return response.json()
        except ValueError:
            raise UserError(f"{url}: the answer is not JSON (starts {response.text[:60]!r})") from None

    return _with_retries(url, attempt, retries=retries, backoff_s=backoff_s)
