"""The cut-out client against local imitations of SDSS ImgCutout and the Legacy Surveys viewer (127.0.0.1 only):
the cache, retries, time-outs, blank off-footprint answers, answers that are not images, the size limit, the
concurrency bound and the rate limit, and the real services' templates (formatted, never called)."""

from __future__ import annotations

import dataclasses
import errno
import os
import time

import numpy as np
import pytest

from galmorph.config import CutoutsConfig, CutoutServiceConfig, load_params
from galmorph.data import cutouts
from galmorph.data.cutouts import (
    Position,
    RateLimiter,
    blank_error,
    cache_path,
    fetch_cutouts,
    service_of,
)
from galmorph.data.images import load_rgb
from galmorph.errors import UserError
from tests.conftest import REPO
from tests.fake_cutouts import FakeCutoutService, seed_of


@pytest.fixture
def fake():
    service = FakeCutoutService().start()
    yield service
    service.stop()


def config(fake: FakeCutoutService, tmp_path, **changes) -> CutoutsConfig:
    """The repository's cutouts section, pointed at the fake services, with fast retries and no rate limit."""
    cfg = load_params(REPO / "params.yaml", required=("cutouts",)).cutouts
    services = {
        "sdss": CutoutServiceConfig(fake.url("sdss"), 0.396, 64),
        "legacy": CutoutServiceConfig(fake.url("legacy"), 0.262, 48),
    }
    defaults = {"services": services, "cache_dir": str(tmp_path / "cache"), "rate_per_s": None, "backoff_s": 0.01}
    return dataclasses.replace(cfg, **{**defaults, **changes})


def positions(n: int, dec: float = 2.0) -> list[Position]:
    return [Position(150.0 + 0.01 * i, dec, 0.2) for i in range(n)]


def test_fetches_each_position_once_then_answers_from_the_cache(fake, tmp_path):
    cfg = config(fake, tmp_path)
    asked = [*positions(5), positions(1)[0]]  # the first position twice
    first = fetch_cutouts(asked, cfg, progress=False)
    assert len(fake.requests) == 5
    assert [c.error for c in first] == [""] * 6 and all(c.requested for c in first)
    assert first[0].path == first[5].path
    image = load_rgb(first[1].path)
    assert image.size == (64, 64)
    assert first[1].path.read_bytes() == fake.image(seed_of(150.01, 2.0), 64)  # stored exactly as served
    again = fetch_cutouts(asked, cfg, progress=False)
    assert len(fake.requests) == 5, "a cached cut-out was requested again"
    assert [c.path for c in again] == [c.path for c in first] and not any(c.requested for c in again)


def test_the_request_carries_the_position_scale_and_size(fake, tmp_path):
    cfg = config(fake, tmp_path)
    fetch_cutouts([Position(150.1234567, -1.5, 0.162), Position(10.0, 5.0)], cfg, progress=False)
    queries = sorted((q for _, _, q in fake.requests), key=lambda q: q["ra"])
    assert queries[0] == {"ra": "10.000000", "dec": "5.000000", "scale": "0.396", "width": "64", "height": "64"}
    assert queries[1] == {"ra": "150.123457", "dec": "-1.500000", "scale": "0.162", "width": "64", "height": "64"}
    fetch_cutouts([Position(10.0, 5.0)], cfg, service="legacy", progress=False)
    assert fake.requests[-1][1:] == (
        "legacy",
        {"ra": "10.000000", "dec": "5.000000", "layer": "ls-dr10", "pixscale": "0.262", "size": "48"},
    )


def test_cache_key_is_service_position_scale_and_size(fake, tmp_path):
    cfg = config(fake, tmp_path)
    sdss, legacy = service_of(cfg, "sdss"), service_of(cfg, "legacy")
    base = cache_path(tmp_path, sdss, Position(150.0, 2.0, 0.2))
    assert cache_path(tmp_path, sdss, Position(150.0 + 1e-8, 2.0, 0.2)) == base  # below the 1e-6 deg sent
    assert cache_path(tmp_path, sdss, Position(150.0, 2.0, 0.3)) != base
    assert cache_path(tmp_path, sdss, Position(150.0, 2.0001, 0.2)) != base
    assert cache_path(tmp_path, legacy, Position(150.0, 2.0, 0.2)).parent.parent.name == "legacy"
    bigger = dataclasses.replace(sdss, size=424)
    assert cache_path(tmp_path, bigger, Position(150.0, 2.0, 0.2)) != base


def test_a_500_is_retried_with_back_off_then_succeeds(fake, tmp_path):
    fake.fail[150.0] = [500, 503]
    cfg = config(fake, tmp_path, retries=3, backoff_s=0.05)
    started = time.monotonic()
    (cutout,) = fetch_cutouts(positions(1), cfg, progress=False)
    assert cutout.error == "" and cutout.path is not None
    times = [t for t, _, _ in fake.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.05 * 0.9 and times[2] - times[1] >= 0.1 * 0.9  # 0.05 s, then 0.1 s
    assert time.monotonic() - started < 2


def test_a_service_that_keeps_failing_is_a_row_error_and_not_cached(fake, tmp_path):
    fake.fail[150.0] = [500] * 10
    cfg = config(fake, tmp_path, retries=2)
    bad, good = fetch_cutouts(positions(2), cfg, progress=False)
    assert bad.path is None and "failed after 3 attempt(s): HTTP 500" in bad.error
    assert good.error == ""
    fetch_cutouts(positions(1), cfg, progress=False)
    assert len(fake.requests) == 3 + 1 + 3  # asked again: a failure is not an answer


def test_a_slow_answer_times_out_and_is_retried(fake, tmp_path):
    fake.slow[150.0] = 0.6
    cfg = config(fake, tmp_path, timeout_s=0.15, retries=1)
    started = time.monotonic()
    (cutout,) = fetch_cutouts(positions(1), cfg, progress=False)
    assert cutout.path is None and "timed out" in cutout.error and "2 attempt(s)" in cutout.error
    assert time.monotonic() - started < 1.0  # did not wait for the slow answers
    fake.slow[150.0] = 0.05  # slow, but within the time-out
    (cutout,) = fetch_cutouts(positions(1), cfg, progress=False)
    assert cutout.error == ""


def test_a_blank_off_footprint_answer_is_an_error_and_is_not_asked_again(fake, tmp_path):
    cfg = config(fake, tmp_path)
    (off,) = fetch_cutouts(positions(1, dec=-45.0), cfg, progress=False)
    assert off.path is None and off.error.startswith("outside the survey footprint or blank (pixel std 0.00")
    (again,) = fetch_cutouts(positions(1, dec=-45.0), cfg, progress=False)
    assert again.error == off.error and not again.requested and len(fake.requests) == 1


def test_blank_threshold_separates_flat_from_sky():
    flat = np.full((64, 64, 3), 40, np.uint8)
    from PIL import Image

    assert blank_error(Image.fromarray(flat), 2.0).startswith("outside the survey footprint")
    noisy = (flat + np.random.default_rng(0).integers(0, 12, flat.shape)).astype(np.uint8)  # std ~3.4
    assert blank_error(Image.fromarray(noisy), 2.0) == ""


def test_an_html_page_is_a_row_error_and_not_cached(fake, tmp_path):
    fake.html.add(150.0)
    cfg = config(fake, tmp_path)
    (cutout,) = fetch_cutouts(positions(1), cfg, progress=False)
    assert cutout.path is None and "did not send a usable image: an HTML page" in cutout.error
    fake.html.clear()
    (cutout,) = fetch_cutouts(positions(1), cfg, progress=False)
    assert cutout.error == "" and len(fake.requests) == 2


def test_an_answer_over_the_size_limit_is_refused(fake, tmp_path):
    cfg = config(fake, tmp_path, max_bytes=500)
    (cutout,) = fetch_cutouts(positions(1), cfg, progress=False)
    assert cutout.path is None and "over the 500-byte limit" in cutout.error
    assert not any((tmp_path / "cache").rglob("*.jpg"))


def test_a_damaged_cache_file_is_fetched_again(fake, tmp_path):
    cfg = config(fake, tmp_path)
    (first,) = fetch_cutouts(positions(1), cfg, progress=False)
    first.path.write_bytes(first.path.read_bytes()[:200])  # truncated on disk since
    (again,) = fetch_cutouts(positions(1), cfg, progress=False)
    assert again.requested and again.error == "" and load_rgb(again.path).size == (64, 64)


def test_a_broken_cache_folder_is_one_line_error_not_a_row_error(fake, tmp_path, monkeypatch):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    with pytest.raises(UserError, match=r"^cutouts.cache_dir \S+cache: cannot read \w+.jpg \(Not a directory\)$"):
        fetch_cutouts(positions(2), config(fake, tmp_path), progress=False)
    (tmp_path / "cache").unlink()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cutouts, "atomic_path", full_disk)
    with pytest.raises(UserError, match=r"^cutouts.cache_dir \S+cache: cannot write a cut-out there \(No space left"):
        fetch_cutouts(positions(1), config(fake, tmp_path), progress=False)


def test_requests_in_flight_never_exceed_the_workers(fake, tmp_path):
    fake.delay_s = 0.08
    cfg = config(fake, tmp_path, workers=3)
    fetch_cutouts(positions(12), cfg, progress=False)
    assert fake.max_in_flight == 3


def test_the_rate_limit_spaces_request_starts(fake, tmp_path):
    cfg = config(fake, tmp_path, workers=4, rate_per_s=20.0)
    started = time.monotonic()
    fetch_cutouts(positions(9), cfg, progress=False)
    elapsed = time.monotonic() - started
    times = np.array(sorted(t for t, _, _ in fake.requests))
    # 20/s: a start every 50 ms, whatever the 4 workers could do. The fake sees each request when it arrives, a few
    # ms after the limiter's slot (thread wake-up, HTTP), so k starts must span k slots less 40 ms of jitter,
    # not every gap be 50 ms (one late arrival followed by an on-time one made a 32 ms gap on a busy CI machine).
    span = times[None, :] - times[:, None]
    slots = np.arange(len(times))[None, :] - np.arange(len(times))[:, None]
    later = slots > 0
    assert (span[later] >= slots[later] * 0.05 - 0.04).all(), np.diff(times)
    assert elapsed >= 8 * 0.05 * 0.9


def test_rate_limiter_counts_retries_too():
    limiter = RateLimiter(50.0)
    started = time.monotonic()
    for _ in range(6):
        limiter.wait()
    assert time.monotonic() - started >= 5 * 0.02 * 0.9
    unlimited = RateLimiter(None)
    started = time.monotonic()
    for _ in range(1000):
        unlimited.wait()
    assert time.monotonic() - started < 0.1


def test_invalid_positions_are_row_errors_without_a_request(fake, tmp_path):
    cfg = config(fake, tmp_path)
    results = fetch_cutouts(
        [Position(361.0, 0.0), Position(10.0, 95.0), Position(10.0, 0.0, -1.0)], cfg, progress=False
    )
    assert [r.error.split(":")[0] for r in results] == ["ra 361.0", "dec 95.0", "scale -1.0"]
    assert fake.requests == []


def test_configuration_mistakes_are_one_line_errors(fake, tmp_path):
    with pytest.raises(UserError, match=r"cut-out service 'hst': not in params.yaml cutouts.services \(sdss, legacy\)"):
        fetch_cutouts(positions(1), config(fake, tmp_path), service="hst")
    broken = {"sdss": CutoutServiceConfig(fake.base + "/sdss/getjpeg?ra={ra}&declination={decl}", 0.4, 64)}
    with pytest.raises(UserError, match=r"cutouts.services.sdss.url: expected the placeholders \{ra\} and \{dec\}"):
        fetch_cutouts(positions(1), config(fake, tmp_path, services=broken))
    with pytest.raises(UserError, match=r"params: cutouts.workers: expected a whole number >= 1, got 0"):
        fetch_cutouts(positions(1), config(fake, tmp_path, workers=0))
    assert fake.requests == []


def test_the_real_services_templates_in_params_yaml():
    """Documented, never called: what the client would ask SDSS DR18 and the Legacy Surveys DR10 for."""
    cfg = load_params(REPO / "params.yaml", required=("cutouts",)).cutouts
    position = Position(179.689293, -0.454379, 0.02 * 8.5)
    assert service_of(cfg, "sdss").url_for(position) == (
        "https://skyserver.sdss.org/dr18/SkyServerWS/ImgCutout/getjpeg"
        "?ra=179.689293&dec=-0.454379&scale=0.17&width=424&height=424"
    )
    assert service_of(cfg, "legacy").url_for(Position(179.689293, -0.454379)) == (
        "https://www.legacysurvey.org/viewer/cutout.jpg?ra=179.689293&dec=-0.454379&layer=ls-dr10&pixscale=0.262&size=424"
    )
