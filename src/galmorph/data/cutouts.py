"""Cut-outs fetched by sky position from a cut-out service, kept in a content-addressed disk cache.

Survey catalogues hold positions, not image files. This client turns (RA, Dec, pixel scale) into an image
file the one loader (data.images) reads, for `galmorph predict --catalogue` and for data sources that build
a training set from positions:

    cfg = params.cutouts                                   # config.CutoutsConfig (params.yaml `cutouts:`)
    results = fetch_cutouts([Position(150.1, 2.2), Position(10.68, 41.27, scale=0.16)], cfg)
    for r in results:                                      # one Cutout per position, in order
        r.path   # the cached image file (None when the row has an error)
        r.error  # "" or why there is no usable image: a failed request, not an image, blank/off-footprint

- A service is a URL template (params.yaml `cutouts.services`) with {ra} {dec} in degrees, {scale} in
  arcsec/px and {size} in px: SDSS SkyServer's ImgCutout (how the Galaxy Zoo JPEGs were made) and the Legacy
  Surveys viewer. `Position.scale` None means the service's own `pixscale`; `scale_for_size` is the Galaxy
  Zoo 2 rule (0.02 x petroR90_r arcsec/px at 424 px).
- The cache key is the hash of the service name and the full request URL (so of the position to 1e-6 deg,
  the scale, the size and the template): the same request is never sent twice, across runs and callers.
  Each file is written atomically (io.atomic_path, unsynced): a killed run leaves no half image, and a
  cached file is decoded and checked whenever it is read, so one damaged since is fetched again.
- `workers` requests in flight, never more than `rate_per_s` started per second (retries included), each
  retried with exponential back-off on timeouts, 429 and 5xx (data.http, the downloader's policy), answers
  over `max_bytes` refused unread. A tqdm bar shows the progress.
- Both services answer with an image even off their footprint (a black or flat square): an answer whose
  pixel standard deviation is under `blank_std` is an error "outside the survey footprint or blank". It is
  cached like any answer (the service would answer the same), so it is not requested again either; an answer
  that is not an image (an HTML error page) is not cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import string
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import requests
from PIL import Image
from requests.adapters import HTTPAdapter
from tqdm import tqdm

from galmorph.config import CutoutsConfig
from galmorph.data.http import get_bytes
from galmorph.data.images import ImageError, load_rgb
from galmorph.errors import UserError
from galmorph.io import atomic_path

PLACEHOLDERS = ("ra", "dec", "scale", "size")
"""What a service's URL template may contain (ra and dec it must)."""
SUFFIX = ".jpg"
"""Cached files are named <key>.jpg whatever the service sends: the loader reads the bytes, not the name."""
USER_AGENT = "galmorph-cutouts"


@dataclasses.dataclass(frozen=True)
class Position:
    """A sky position (ICRS degrees) and the pixel scale to fetch it at (arcsec/px; None: the service's)."""

    ra: float
    dec: float
    scale: float | None = None


@dataclasses.dataclass(frozen=True)
class Service:
    """A cut-out service by name: its URL template, default pixel scale (arcsec/px) and image size (px)."""

    name: str
    url: str
    pixscale: float
    size: int

    def url_for(self, position: Position) -> str:
        """The request URL: RA/Dec to 1e-6 deg (3.6 mas, far below a pixel), the scale to 6 digits."""
        scale = self.pixscale if position.scale is None else position.scale
        return self.url.format(ra=f"{position.ra:.6f}", dec=f"{position.dec:.6f}", scale=f"{scale:.6g}", size=self.size)


@dataclasses.dataclass(frozen=True)
class Cutout:
    """What fetching one position gave: the cached image file, or why there is none (`error`); `requested`
    is False when the cache answered."""

    path: Path | None
    error: str = ""
    requested: bool = False


def service_of(cfg: CutoutsConfig, name: str | None = None) -> Service:
    """The service `name` (default cfg.service) of params.yaml `cutouts.services`, its template checked."""
    check_config(cfg)
    name = name or cfg.service
    if name not in cfg.services:
        raise UserError(f"cut-out service {name!r}: not in params.yaml cutouts.services ({', '.join(cfg.services)})")
    svc = cfg.services[name]
    where = f"params: cutouts.services.{name}"
    if not svc.url.startswith(("http://", "https://")):
        raise UserError(f"{where}.url: expected an http(s) URL template, got {svc.url!r}")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(svc.url) if f is not None}
    except ValueError as exc:
        raise UserError(f"{where}.url: not a valid template ({exc})") from None
    unknown = sorted(fields - set(PLACEHOLDERS))
    if unknown or not {"ra", "dec"} <= fields:
        raise UserError(
            f"{where}.url: expected the placeholders {{ra}} and {{dec}} (and {{scale}}, {{size}}), "
            f"got {', '.join('{' + f + '}' for f in sorted(fields)) or 'none'}"
        )
    if not (math.isfinite(svc.pixscale) and svc.pixscale > 0) or svc.size < 1:
        raise UserError(f"{where}: expected pixscale > 0 arcsec/px and size >= 1 px")
    return Service(name, svc.url, svc.pixscale, svc.size)


def check_config(cfg: CutoutsConfig) -> None:
    """The values the type alone does not check, each a one-line error naming its key."""
    checks = [
        ("workers", cfg.workers >= 1, "a whole number >= 1"),
        ("rate_per_s", cfg.rate_per_s is None or cfg.rate_per_s > 0, "a number > 0, or blank for no limit"),
        ("retries", cfg.retries >= 0, "a whole number >= 0"),
        ("timeout_s", cfg.timeout_s > 0, "a number > 0"),
        ("backoff_s", cfg.backoff_s >= 0, "a number >= 0"),
        ("max_bytes", cfg.max_bytes >= 1, "a whole number >= 1"),
        ("blank_std", cfg.blank_std >= 0, "a number >= 0"),
        ("scale_per_arcsec", cfg.scale_per_arcsec > 0, "a number > 0"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise UserError(f"params: cutouts.{key}: expected {expected}, got {getattr(cfg, key)!r}")


def scale_for_size(size_arcsec: float, cfg: CutoutsConfig) -> float:
    """The pixel scale (arcsec/px) that frames a galaxy of this size (e.g. petroR90_r) as Galaxy Zoo 2 did."""
    return cfg.scale_per_arcsec * size_arcsec


def cache_path(cache_dir: str | Path, service: Service, position: Position) -> Path:
    """Where the answer to this request is (or will be) cached: <cache_dir>/<service>/<2 hex>/<sha256>.jpg."""
    key = hashlib.sha256(f"{service.name}\n{service.url_for(position)}".encode()).hexdigest()
    return Path(cache_dir) / service.name / key[:2] / f"{key}{SUFFIX}"


def blank_error(image: Image.Image, blank_std: float) -> str:
    """'' for an image with structure; the error for a flat one (what both services send off their footprint).

    Real SDSS cut-outs are never that flat: over the 5,365 Galaxy Zoo 1 JPEGs in ../shared the smallest
    pixel standard deviation is 6.05 (0-255 scale), three times the default threshold of 2."""
    hist = np.asarray(image.histogram(), dtype=np.float64).reshape(-1, 256).sum(axis=0)  # all bands, in C
    levels = np.arange(256.0)
    n = hist.sum()
    mean = (hist * levels).sum() / n
    std = math.sqrt(max((hist * (levels - mean) ** 2).sum() / n, 0.0))
    if std < blank_std:
        return f"outside the survey footprint or blank (pixel std {std:.2f} < cutouts.blank_std {blank_std:g})"
    return ""


class RateLimiter:
    """At most `per_s` starts per second across threads: each caller waits for the next free slot."""

    def __init__(self, per_s: float | None) -> None:
        self.interval = 1.0 / per_s if per_s else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


def _position_error(position: Position) -> str:
    if not (math.isfinite(position.ra) and 0.0 <= position.ra < 360.0):
        return f"ra {position.ra!r}: expected degrees in [0, 360)"
    if not (math.isfinite(position.dec) and -90.0 <= position.dec <= 90.0):
        return f"dec {position.dec!r}: expected degrees in [-90, 90]"
    if position.scale is not None and not (math.isfinite(position.scale) and position.scale > 0):
        return f"scale {position.scale!r}: expected arcsec/px > 0"
    return ""


class _Fetcher:
    """One fetch_cutouts call: the service, the cache, the rate limit and one HTTP session for all threads."""

    def __init__(self, cfg: CutoutsConfig, service: Service, cache_dir: Path, session: requests.Session) -> None:
        self.cfg, self.service, self.cache_dir, self.session = cfg, service, cache_dir, session
        self.limiter = RateLimiter(cfg.rate_per_s)

    def _check(self, data: bytes) -> str:
        """'' for a usable image, else the row's error; ImageError when the bytes are not an image."""
        return blank_error(load_rgb(data), self.cfg.blank_std)

    def one(self, position: Position) -> Cutout:
        path = cache_path(self.cache_dir, self.service, position)
        try:
            cached = path.read_bytes()
        except FileNotFoundError:
            pass
        except OSError as exc:  # the cache itself is broken (permissions, a folder there): not one row's problem
            raise UserError(f"cutouts.cache_dir {self.cache_dir}: cannot read {path.name} ({exc.strerror})") from None
        else:
            try:
                error = self._check(cached)
            except ImageError:
                path.unlink(missing_ok=True)  # damaged since it was written: fetch it again
            else:
                return Cutout(None if error else path, error, requested=False)
        url = self.service.url_for(position)
        try:
            data = get_bytes(
                url,
                max_bytes=self.cfg.max_bytes,
                retries=self.cfg.retries,
                timeout_s=self.cfg.timeout_s,
                backoff_s=self.cfg.backoff_s,
                session=self.session,
                before_attempt=self.limiter.wait,
            )
        except UserError as exc:
            return Cutout(None, f"cut-out request failed: {exc}", requested=True)
        try:
            error = self._check(data)
        except ImageError as exc:
            return Cutout(None, f"the {self.service.name} service did not send a usable image: {exc}", requested=True)
        try:
            with atomic_path(path, durable=False) as tmp:  # checked when read: a damaged file is fetched again
                tmp.write_bytes(data)
        except OSError as exc:  # read-only, full: every row would fail the same way
            raise UserError(
                f"cutouts.cache_dir {self.cache_dir}: cannot write a cut-out there ({exc.strerror})"
            ) from None
        return Cutout(None if error else path, error, requested=True)


def fetch_cutouts(
    positions: Sequence[Position],
    cfg: CutoutsConfig,
    *,
    service: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    session: requests.Session | None = None,
) -> list[Cutout]:
    """One Cutout per position, in order: from the cache, else from the service (cfg.service, or `service`).

    A position asked for twice is fetched once. Failures are per position (Cutout.error), never raised; a
    bad configuration (unknown service, broken template) is a UserError before any request.
    """
    svc = service_of(cfg, service)
    root = Path(cache_dir if cache_dir is not None else cfg.cache_dir)
    results: list[Cutout | None] = [None] * len(positions)
    unique: dict[Path, list[int]] = {}
    for i, position in enumerate(positions):
        error = _position_error(position)
        if error:
            results[i] = Cutout(None, error)
        else:
            unique.setdefault(cache_path(root, svc, position), []).append(i)
    own = session is None
    if session is None:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=cfg.workers)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    fetcher = _Fetcher(cfg, svc, root, session)
    requested = 0
    try:
        with (
            tqdm(
                total=len(unique), unit="cut-out", desc=f"cut-outs ({svc.name})", disable=not progress, file=sys.stderr
            ) as bar,
            ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="cutout") as pool,
        ):
            jobs = {pool.submit(fetcher.one, positions[rows[0]]): rows for rows in unique.values()}
            for job in as_completed(jobs):
                cutout = job.result()
                requested += cutout.requested
                for i in jobs[job]:
                    results[i] = cutout
                bar.update(1)
                bar.set_postfix(requested=requested, refresh=False)
    finally:
        if own:
            session.close()
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]
