"""Streamed, resumable, retried, checksum-verified HTTP downloads (the 3.4 GB Galaxy Zoo zip is the reason).

- Streamed in chunks to `<dest>.part`, so memory stays flat whatever the file size.
- Resumed with an HTTP Range request when a `.part` is there; a server that ignores Range answers 200 with
  the whole file, and the `.part` is then rewritten from the start rather than appended to.
- Retried with exponential backoff on connection errors, timeouts, 429 and 5xx. A failed attempt that still
  grew the `.part` does not use up a retry: a flaky link that keeps making progress finishes eventually.
- The bytes are stored exactly as served (no Content-Encoding decoding, `Accept-Encoding: identity`), so the
  MD5 is that of the published file and a `.csv.gz` stays gzipped.
- Only a complete, verified file is renamed to `dest`: `dest` existing means the download finished.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import requests
import urllib3
from tqdm import tqdm

from galmorph.errors import UserError
from galmorph.io import md5_digest

CHUNK_SIZE = 1 << 20
MAX_BACKOFF_S = 60.0
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "galmorph-fetch"}

T = TypeVar("T")


class _Retry(Exception):
    """A transient failure worth another attempt; `wait_s` is the server's Retry-After, when it sent one."""

    def __init__(self, message: str, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.wait_s = wait_s


def part_path(dest: str | os.PathLike) -> Path:
    """Where the unfinished download of `dest` lives."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


def _with_retries(
    url: str,
    attempt: Callable[[], T],
    *,
    retries: int,
    backoff_s: float,
    progress_of: Callable[[], int] = lambda: 0,
) -> T:
    """Run `attempt` until it returns; `_Retry` and network errors are retried at most `retries` times in a
    row without progress (progress_of() growing), waiting backoff_s * 2**(k-1) (or Retry-After) in between."""
    failures, best = 0, progress_of()
    while True:
        try:
            return attempt()
        except (_Retry, requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            reached = progress_of()
            if reached > best:
                best, failures = reached, 0
            failures += 1
            if failures > retries:
                raise UserError(f"{url}: download failed after {failures} attempt(s): {_one_line(exc)}") from None
            wait = backoff_s * 2 ** (failures - 1)
            if isinstance(exc, _Retry) and exc.wait_s is not None:
                wait = max(wait, exc.wait_s)
            time.sleep(min(wait, MAX_BACKOFF_S))


def _check_status(url: str, response: requests.Response) -> None:
    if response.status_code in RETRY_STATUS:
        raise _Retry(f"HTTP {response.status_code} {response.reason}", _retry_after(response))
    if response.status_code >= 400:
        raise UserError(f"{url}: HTTP {response.status_code} {response.reason} (check the URL in params.yaml)")


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
    offset = part.stat().st_size if part.exists() else 0
    headers = dict(_HEADERS, **({"Range": f"bytes={offset}-"} if offset else {}))
    with session.get(url, headers=headers, stream=True, timeout=timeout_s) as response:
        if response.status_code == 416 and offset:
            part.unlink()  # the .part is not a prefix of what the server has now: start again
            raise _Retry("the server refused to resume (HTTP 416); starting again")
        _check_status(url, response)
        total = (
            int(response.headers["Content-Length"]) if response.headers.get("Content-Length", "").isdigit() else None
        )
        if response.status_code == 206:
            span = _content_range(response.headers.get("Content-Range", ""))
            if span is None or span[0] != offset:
                part.unlink()
                raise _Retry(f"the server resumed at the wrong place ({response.headers.get('Content-Range')})")
            total, mode, digest = span[1], "ab", md5_digest(part, CHUNK_SIZE)
        else:
            offset, mode, digest = 0, "wb", hashlib.md5()  # no Range support: the body is the whole file
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
            part.unlink()
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
    part = part_path(dest)
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
        part.unlink()
        raise UserError(
            f"{dest}: checksum mismatch: expected md5 {md5.lower()}, got {actual} (downloaded from {url}; "
            "the file was deleted, run fetch again)"
        )
    os.replace(part, dest)
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
