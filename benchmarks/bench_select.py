"""Benchmark the `select` stage's two costs: finding 250,000 catalogue rows' files, and decoding images.

1. Existence check. 250,000 catalogue rows (2% pointing to files that are not there) against one folder of
   hard links to a single 1-byte file (no disk used; the real GZ2 cut-outs also share one folder). Ours:
   `check_images(paths, "exists")` (one os.scandir listing per folder plus a stat per found file for the
   zero-byte check) and `find_files` alone (the listing decode mode uses). Baseline in the same run: a stat
   per row (`os.path.isfile` + `os.path.getsize`). Target: ≤ 10 s for ours.
2. Decode throughput on a few thousand 424x424 JPEGs (synthetic galaxies, or a folder of real ones with
   --image-dir): a plain single-process PIL loop (`Image.open(p).load()`) as the baseline, then our checker
   in one process (the same decode plus the checks) and in --workers processes; images/s and the ratio.

    .venv/bin/python benchmarks/bench_select.py                       # 250k rows, 2000 JPEGs, all cores
    .venv/bin/python benchmarks/bench_select.py --workers 2 --images 3000 --repeats 5
    .venv/bin/python benchmarks/bench_select.py --image-dir ../shared/galaxyzoo/images/gz1 --images 3000

Exit status 1 when the existence check misses its target.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from galmorph.data.verify import absolute_paths, check_images, decode_images, find_files

TARGET_EXISTS_S = 10.0
MISSING_FRACTION = 0.02
LINKS_PER_INODE = 60_000  # ext4 allows 65,000 hard links to one file


def timed(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, object]]:
    """Median wall time of each contender over `repeats` rounds, and its last result. Contenders take turns
    within each round, so a change in the shared machine's load hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    results: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(times[name]), results[name]) for name in contenders}


def make_file_tree(folder: Path, rows: int, seed: int) -> list[str]:
    """`rows` catalogue paths into `folder`; all but MISSING_FRACTION of them exist as hard links."""
    folder.mkdir(parents=True)
    sources = []
    for k in range(rows // LINKS_PER_INODE + 1):
        sources.append(folder.parent / f"one_byte_{k}.jpg")
        sources[-1].write_bytes(b"\xff")
    rng = np.random.default_rng(seed)
    missing = rng.random(rows) < MISSING_FRACTION
    paths = [str(folder / f"{587722981741363294 + i}.jpg") for i in range(rows)]
    t0 = time.perf_counter()
    for i, (path, absent) in enumerate(zip(paths, missing, strict=True)):
        if not absent:
            os.link(sources[i // LINKS_PER_INODE], path)
    print(f"made {int((~missing).sum()):,} hard links in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return paths


def stat_per_row(paths: list[str]) -> int:
    """The naive check: one stat (or two) per catalogue row."""
    return sum(1 for p in paths if os.path.isfile(p) and os.path.getsize(p) > 0)


def galaxy_jpegs(folder: Path, n: int, size: int, seed: int) -> list[str]:
    """n JPEGs of a smooth elliptical profile plus sky noise, about the size of an SDSS cut-out: 32 profiles,
    each image with its own noise (so no two files are alike)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2
    profiles = []
    for _ in range(32):
        q, angle, scale = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi), rng.uniform(10, 40)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = (-xx * np.sin(angle) + yy * np.cos(angle)) / q
        profile = np.exp(-np.sqrt(u**2 + v**2) / scale)[..., None] * rng.uniform(150, 230, 3)
        profiles.append(profile.astype(np.uint8))
    paths = []
    for i in range(n):
        img = profiles[i % len(profiles)] + rng.integers(0, 24, (size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        path = folder / f"{i}.jpg"
        path.write_bytes(buf.getvalue())
        paths.append(str(path))
    return paths


def plain_pil_loop(paths: list[str]) -> int:
    for p in paths:
        with Image.open(p) as im:
            im.load()
    return len(paths)


def bench_exists(workdir: Path, rows: int, repeats: int, seed: int) -> bool:
    paths = make_file_tree(workdir / "images", rows, seed)
    relative = [os.path.relpath(p, workdir) for p in paths]  # as join writes them inside the repo
    got = timed(
        {
            "baseline": lambda: stat_per_row(paths),
            "listing": lambda: find_files(paths),
            "decode_step": lambda: find_files(absolute_paths(relative, workdir)),
            "exists": lambda: check_images(paths, "exists", progress=False),
        },
        repeats,
    )
    (baseline_s, n_ok), (listing_s, (reasons, _)), (step_s, _), (exists_s, frame) = got.values()
    assert int((reasons == None).sum()) == n_ok == int(frame["reason"].isna().sum())  # noqa: E711
    print(f"\nexistence check, {rows:,} rows in one folder ({n_ok:,} present), median of {repeats}:")
    rows_out = [
        ("baseline  stat per row (isfile + getsize)", baseline_s),
        ("ours      find_files: one scandir per folder", listing_s),
        ("ours      + relative paths resolved (decode mode)", step_s),
        ("ours      check_images('exists'): + a stat per file", exists_s),
    ]
    for label, seconds in rows_out:
        print(f"  {label:<52} {seconds:6.2f} s   {baseline_s / seconds:4.1f}x")
    ok = exists_s <= TARGET_EXISTS_S
    print(f"  target    ≤ {TARGET_EXISTS_S:.0f} s: {'met' if ok else 'MISSED'}")
    shutil.rmtree(workdir / "images")
    return ok


def bench_decode(paths: list[str], workers: int, repeats: int) -> None:
    n = len(paths)
    plain_pil_loop(paths)  # warm the page cache for every contender
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    decode_images(paths[:130], workers, chunk_size=64, progress=False)  # starts the fork server: once per run
    cold_s = time.perf_counter() - t0
    got = timed(
        {
            "baseline": lambda: plain_pil_loop(paths),
            "one": lambda: decode_images(paths, 1, progress=False),
            "parallel": lambda: decode_images(paths, workers, progress=False),
            # the pool's fixed cost once the fork server runs: fork the workers, hand out chunks
            "startup": lambda: decode_images(paths[:130], workers, chunk_size=64, progress=False),
        },
        repeats,
    )
    (base_s, _), (one_s, _), (par_s, results), (startup_s, _) = got.values()
    bad = sum(r[0] is not None for r in results)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\ndecode, {n:,} JPEGs of {Image.open(paths[0]).size}, median of {repeats} ({bad} unusable):")
    for label, seconds in [
        ("baseline  plain PIL loop, 1 process", base_s),
        ("ours      check_image_file, 1 process", one_s),
        (f"ours      check_image_file, {workers} processes", par_s),
    ]:
        print(f"  {label:<52} {n / seconds:6.0f} img/s   {base_s / seconds:4.2f}x")
    print(
        f"  130 images, {workers:2d} processes: first call {cold_s:.2f} s (starts the fork server), later {startup_s:.2f} s"
    )
    print(f"  {cores} cores; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=250_000, help="catalogue rows for the existence check")
    parser.add_argument("--images", type=int, default=2000, help="JPEGs to decode")
    parser.add_argument("--image-dir", type=Path, help="decode these JPEGs (*.jpg, *.jpeg) instead of synthetic ones")
    parser.add_argument("--size", type=int, default=424, help="side of the synthetic JPEGs (SDSS: 424)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-exists", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one, removed at the end)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench_select.", dir=args.workdir))
    try:
        ok = True
        if not args.skip_exists:
            ok = bench_exists(workdir, args.rows, args.repeats, args.seed)
        if not args.skip_decode:
            if args.image_dir:
                found = sorted(p for p in args.image_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
                paths = [str(p) for p in found[: args.images]]
            else:
                t0 = time.perf_counter()
                paths = galaxy_jpegs(workdir / "jpegs", args.images, args.size, args.seed)
                print(f"wrote {len(paths):,} JPEGs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            bench_decode(paths, args.workers, args.repeats)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
