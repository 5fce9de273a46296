"""The project's HTTP retry policy, shared by the downloader (data.sources.download) and the cut-out client
(data.cutouts): retry connection errors, timeouts, 429 and 5xx with exponential back-off (or the server's
Retry-After), and fail on any other 4xx at once with one line that says to check the URL in params.yaml.

It lives beside the sources rather than in them so that a data source may use the cut-out client (the coords
source) without an import cycle between data.sources and data.cutouts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import requests
import urllib3

from galmorph.errors import UserError

MAX_BACKOFF_S = 60.0
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

T = TypeVar("T")


class Retry(Exception):
    """A transient failure worth another attempt; `wait_s` is the server's Retry-After, when it sent one."""

    def __init__(self, message: str, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.wait_s = wait_s


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.strip().isdigit() else None


def with_retries(
    url: str,
    attempt: Callable[[], T],
    *,
    retries: int,
    backoff_s: float,
    progress_of: Callable[[], int] = lambda: 0,
) -> T:
    """Run `attempt` until it returns; `Retry` and network errors are retried at most `retries` times in a
    row without progress (progress_of() growing), waiting backoff_s * 2**(k-1) (or Retry-After) in between."""
    failures, best = 0, progress_of()
    while True:
        try:
            return attempt()
        except (Retry, requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            reached = progress_of()
            if reached > best:
                best, failures = reached, 0
            failures += 1
            if failures > retries:
                raise UserError(f"{url}: download failed after {failures} attempt(s): {one_line(exc)}") from None
            wait = backoff_s * 2 ** (failures - 1)
            if isinstance(exc, Retry) and exc.wait_s is not None:
                wait = max(wait, exc.wait_s)
            time.sleep(min(wait, MAX_BACKOFF_S))


def check_status(url: str, response: requests.Response) -> None:
    if response.status_code in RETRY_STATUS:
        raise Retry(f"HTTP {response.status_code} {response.reason}", retry_after(response))
    if response.status_code >= 400:
        raise UserError(f"{url}: HTTP {response.status_code} {response.reason} (check the URL in params.yaml)")


def get_bytes(
    url: str,
    *,
    max_bytes: int,
    retries: int = 5,
    timeout_s: float = 60.0,
    backoff_s: float = 2.0,
    session: requests.Session | None = None,
    before_attempt: Callable[[], None] | None = None,
) -> bytes:
    """A small binary answer (a cut-out image) held in memory, with the retry policy above.

    An answer over `max_bytes` (declared or streamed) is refused without being read further: a service
    that sends a 2 GB page instead of a 100 KB JPEG costs 1 MB of memory, not 2 GB. `before_attempt` runs
    before every attempt, retries included (a rate limiter counts each request the server sees).
    """

    def attempt() -> bytes:
        if before_attempt is not None:
            before_attempt()
        with (session or requests).get(url, stream=True, timeout=timeout_s) as response:
            check_status(url, response)
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise UserError(f"{url}: the answer is {int(declared)} bytes, over the {max_bytes}-byte limit")
            data = bytearray()
            for chunk in response.iter_content(1 << 16):
                data += chunk
                if len(data) > max_bytes:
                    raise UserError(f"{url}: the answer is over the {max_bytes}-byte limit")
            return bytes(data)

    return with_retries(url, attempt, retries=retries, backoff_s=backoff_s)
