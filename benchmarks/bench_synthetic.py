"""Speed of the synthetic Galaxy Zoo source.

Rendering: JPEG cut-outs per second in one process (the baseline) and in the process pool `generate` uses, on
the same galaxies in the same run. Catalogue: the full-size table 2 + mapping (667,944 + 355,990 rows) beside
the time pandas needs to write and read that same table back (what handling the real file costs anyway).
End to end: `generate` with params.yaml's data.synthetic (the `fetch` stage's work), unless --quick.

    .venv/bin/python benchmarks/bench_synthetic.py [--images 120] [--size 424] [--workers N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

from galmorph.config import load_params
from galmorph.data.sources import synthetic
from galmorph.data.sources.synthetic import population

REPO = Path(__file__).resolve().parents[1]
FULL_ROWS, FULL_MAPPING_ROWS = 667_944, 355_990


def _render_tasks(n: int, size: int, out: Path) -> list[tuple]:
    pop = population.sample_population(n, seed=0)
    rows = pd.DataFrame({"galaxy_row": range(n), "asset_id": range(1, n + 1), "depth": 1.0})
    return synthetic.image_tasks(pop, rows, out, size=size, seed=0)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_render(n: int, size: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tasks = _render_tasks(n, size, Path(tmp))
        t0, c0 = time.perf_counter(), _cpu_seconds()
        synthetic.render_many(tasks, workers=1, progress=False)
        single, single_cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        t0, c0 = time.perf_counter(), _cpu_seconds()
        synthetic.render_many(tasks, workers=workers, progress=False)
        pooled, pooled_cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    # CPU time shows what the machine's other load hides: wall time / CPU time well above 1 means waiting.
    print(f"render + write {n} JPEG cut-outs of {size}x{size} px")
    print(
        f"  1 process (baseline)  {n / single:7.1f} images/s  wall {1000 * single / n:6.1f} ms/image, "
        f"CPU {1000 * single_cpu / n:6.1f} ms/image"
    )
    print(
        f"  pool of {workers} processes  {n / pooled:7.1f} images/s  wall {1000 * pooled / n:6.1f} ms/image, "
        f"CPU {1000 * pooled_cpu / n:6.1f} ms/image  (x{single / pooled:.2f} faster, pool start-up included)"
    )


def bench_catalogue() -> None:
    fraction = FULL_MAPPING_ROWS / FULL_ROWS
    best = best_cpu = float("inf")
    for _ in range(2):
        t0, c0 = time.perf_counter(), _cpu_seconds()
        table2, mapping = population.generate_catalogues(FULL_ROWS, fraction, seed=0)
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, _cpu_seconds() - c0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "GalaxyZoo1_DR_table2.csv"
        t0 = time.perf_counter()
        table2.to_csv(path, index=False)
        write = time.perf_counter() - t0
        t0 = time.perf_counter()
        pd.read_csv(path)
        read = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6
    print(f"catalogue: table 2 {len(table2):,} rows + mapping {len(mapping):,} rows")
    print(f"  generate_catalogues     wall {best:6.2f} s, CPU {best_cpu:6.2f} s (best of 2)")
    print(f"  baseline: pandas to_csv wall {write:6.2f} s, read_csv {read:.2f} s of that table 2 ({size_mb:.0f} MB)")


def bench_generate(workers: int) -> None:
    cfg = load_params(REPO / "params.yaml").data.synthetic
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), _cpu_seconds()
        counts = synthetic.generate(cfg, tmp, workers=workers, progress=False)
        took, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    print(
        f"generate (params.yaml: {cfg.n_galaxies} galaxies, {cfg.image_size} px, {workers} processes): "
        f"wall {took:.1f} s, CPU {cpu:.1f} s for {counts['images_written']} images + both CSVs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="cut-outs rendered in each mode")
    parser.add_argument("--size", type=int, default=424, help="cut-out size in pixels")
    parser.add_argument("--workers", type=int, default=synthetic.default_workers(), help="pool size")
    parser.add_argument("--quick", action="store_true", help="skip the end-to-end generate run")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f} before the run")
    bench_render(args.images, args.size, args.workers)
    bench_catalogue()
    if not args.quick:
        bench_generate(args.workers)
    print(f"load average {os.getloadavg()[0]:.1f} after the run")


if __name__ == "__main__":
    main()
