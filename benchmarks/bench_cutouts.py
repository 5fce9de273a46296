"""Cut-out fetch throughput against the local fake services (tests/fake_cutouts.py, in its own process on
127.0.0.1), with the cache cold and warm, beside the one-liner way, measured in the same run.

For N positions at 424x424 px (the SDSS/Galaxy Zoo size):

  * baseline: one request after another, `requests.get(url).content` written to a file (no cache, no
    check of what came back, no retries): what a script around the service's URL does;
  * galmorph, cache cold: data.cutouts.fetch_cutouts with `--workers` requests in flight and no rate limit
    (each answer decoded to check it is a usable, non-blank image, then written atomically to the cache);
  * galmorph, cache warm: the same positions again: no request, each cached file decoded and checked.

Twice: with the server answering at once (the client's own cost on this machine), and with `--delay` seconds
before every answer (a remote service's latency; SkyServer's is of that order), where concurrency is what
counts. The real services are never called; their rate limits (`cutouts.rate_per_s`) cap the cold figures there.

    .venv/bin/python benchmarks/bench_cutouts.py                      # 200 positions, 4 workers, delay 0.05 s, 3 rounds
    .venv/bin/python benchmarks/bench_cutouts.py --n 400 --workers 8 --delay 0.1
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from galmorph.config import CutoutServiceConfig, load_params
from galmorph.data.cutouts import Position, fetch_cutouts, service_of

REPO = Path(__file__).resolve().parents[1]
SIZE = 424


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, delay: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_cutouts", "--port", str(port), "--delay", str(delay)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the fake cut-out service did not start")


def baseline(urls: list[str], folder: Path) -> float:
    folder.mkdir(parents=True)
    started = time.perf_counter()
    with requests.Session() as session:
        for i, url in enumerate(urls):
            (folder / f"{i}.jpg").write_bytes(session.get(url, timeout=30).content)
    return time.perf_counter() - started


def timed_fetch(positions: list[Position], cfg) -> tuple[float, int]:
    started = time.perf_counter()
    results = fetch_cutouts(positions, cfg, progress=False)
    elapsed = time.perf_counter() - started
    bad = [r.error for r in results if r.error]
    if bad:
        raise SystemExit(f"{len(bad)} cut-outs failed: {bad[0]}")
    return elapsed, sum(r.requested for r in results)


def one_setting(n: int, workers: int, delay: float, repeats: int, scratch: Path) -> dict[str, float]:
    """Median rates (cut-outs/s) over `repeats` rounds, each with a fresh cache; the methods alternate."""
    port = free_port()
    proc = start_server(port, delay)
    rates: dict[str, list[float]] = {"baseline": [], "cold": [], "warm": []}
    try:
        url = (
            f"http://127.0.0.1:{port}/sdss/getjpeg?ra={{ra}}&dec={{dec}}&scale={{scale}}&width={{size}}&height={{size}}"
        )
        cfg = load_params(REPO / "params.yaml", required=("cutouts",)).cutouts
        cfg = dataclasses.replace(
            cfg, services={"sdss": CutoutServiceConfig(url, 0.396, SIZE)}, workers=workers, rate_per_s=None
        )
        positions = [Position(150.0 + 0.01 * i, 2.0 + 0.001 * i, 0.2) for i in range(n)]
        svc = service_of(cfg)
        urls = [svc.url_for(p) for p in positions]
        # the server encodes each image once: warm it (and the connection) so neither method pays for that
        with requests.Session() as session:
            for u in urls:
                session.get(u, timeout=30)
        for k in range(repeats):
            rates["baseline"].append(n / baseline(urls, scratch / f"baseline-{delay}-{k}"))
            cfg_k = dataclasses.replace(cfg, cache_dir=str(scratch / f"cache-{delay}-{k}"))
            cold_s, cold_requests = timed_fetch(positions, cfg_k)
            warm_s, warm_requests = timed_fetch(positions, cfg_k)
            assert cold_requests == n and warm_requests == 0, (cold_requests, warm_requests)
            rates["cold"].append(n / cold_s)
            rates["warm"].append(n / warm_s)
    finally:
        proc.terminate()
        proc.wait(10)
    return {k: statistics.median(v) for k, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="positions (default: 200)")
    parser.add_argument("--workers", type=int, default=4, help="cutouts.workers (default: 4)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per setting, medians reported (default: 3)")
    parser.add_argument(
        "--delay", type=float, default=0.05, help="the slow server's delay per answer (default: 0.05 s)"
    )
    args = parser.parse_args()
    print(
        f"{args.n} cut-outs of {SIZE}x{SIZE} px, {args.workers} workers, {os.cpu_count()} CPUs, "
        f"medians of {args.repeats} rounds",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for delay in (0.0, args.delay):
            r = one_setting(args.n, args.workers, delay, args.repeats, Path(tmp))
            print(
                f"server delay {delay * 1000:4.0f} ms: baseline {r['baseline']:7.1f}/s | galmorph cold "
                f"{r['cold']:7.1f}/s ({r['cold'] / r['baseline']:.2f}x) | warm {r['warm']:7.1f}/s "
                f"({r['warm'] / r['baseline']:.2f}x the baseline, {r['warm'] / r['cold']:.1f}x cold)",
                flush=True,
            )


if __name__ == "__main__":
    main()
