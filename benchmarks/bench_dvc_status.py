"""What watching the images costs: `dvc status` with the real 15k-image set as a DVC dependency, cold and warm.

Images under data/external/ are a dependency of the fetch stage (dvc.yaml), so DVC hashes them: on the first
`dvc status` of a clone (cold: DVC's state database is empty and it must md5 every file) and then from its
state database (warm: a stat per file, a hash only for a file whose size or mtime changed). The baseline,
measured in the same run, is the same project with data/external/ empty (what the default synthetic source
sees). Also timed: fetch's own images.md5 of the same files (`write_image_hashes`), which pins the pixels of
a manifest kept outside the repository, and a warm status after one image was replaced.

    .venv/bin/python benchmarks/bench_dvc_status.py                    # ../shared/galaxyzoo (about 15k JPEGs)
    .venv/bin/python benchmarks/bench_dvc_status.py --images DIR --repeats 3

The images are copied once into a temporary project (DVC cannot depend on a folder through a symlink); the
copy's page cache is warm for every measurement, so "cold" is DVC's cold, not the disk's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from galmorph.data.sources.rawdir import write_image_hashes

REPO = Path(__file__).resolve().parents[1]
STAGE = """stages:
  fetch:
    cmd: python -c "print('fetch')"
    deps:
      - data/external
"""


def _dvc(project: Path, *args: str) -> float:
    dvc = str(Path(sys.executable).with_name("dvc"))
    start = time.perf_counter()
    subprocess.run([dvc, *args], cwd=project, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def make_project(root: Path, images: Path | None) -> Path:
    root.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / "data" / "external").mkdir(parents=True)
    (root / "data" / "external" / "README.md").write_text("images you bring\n")
    if images is not None:
        shutil.copytree(images, root / "data" / "external" / images.name)
    (root / "dvc.yaml").write_text(STAGE)
    _dvc(root, "init", "-q")
    _dvc(root, "config", "--local", "core.site_cache_dir", str(root / ".site"))
    _dvc(root, "commit", "-f", "-q")  # records the dependency's hash, as a `dvc repro` would
    return root


def cold_and_warm(project: Path, repeats: int) -> tuple[list[float], list[float]]:
    cold, warm = [], []
    for _ in range(repeats):
        shutil.rmtree(project / ".site", ignore_errors=True)  # DVC's state database: every file hashed again
        cold.append(_dvc(project, "status"))
        warm.append(_dvc(project, "status"))
    return cold, warm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared" / "galaxyzoo" / "images")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.images.is_dir():
        print(f"{args.images}: no such folder (the real images are in ../shared/galaxyzoo/images)", file=sys.stderr)
        return 1
    files = [p for p in args.images.rglob("*") if p.is_file()]
    size_mb = sum(p.stat().st_size for p in files) / 2**20
    print(f"{len(files):,} files, {size_mb:.0f} MiB, {os.cpu_count()} CPUs; {args.repeats} repeats, medians")
    with tempfile.TemporaryDirectory(prefix="bench-dvc-status-") as tmp:
        base = make_project(Path(tmp) / "empty", None)
        full = make_project(Path(tmp) / "full", args.images)
        b_cold, b_warm = cold_and_warm(base, args.repeats)
        f_cold, f_warm = cold_and_warm(full, args.repeats)
        victim = next(p for p in sorted((full / "data" / "external").rglob("*.jpg")))
        victim.write_bytes(victim.read_bytes() + b"\0")  # one image replaced
        changed = _dvc(full, "status")
        start = time.perf_counter()
        names = [p.relative_to(args.images).as_posix() for p in files]
        summary = write_image_hashes(Path(tmp), args.images, names, progress=False)
        hashing = time.perf_counter() - start
    med = statistics.median
    print("| measurement | seconds | vs empty data/external |")
    print("| --- | ---: | ---: |")
    print(f"| `dvc status`, data/external empty, cold | {med(b_cold):.2f} | 1.0 |")
    print(f"| `dvc status`, data/external empty, warm | {med(b_warm):.2f} | 1.0 |")
    print(f"| `dvc status`, {len(files):,} images, cold | {med(f_cold):.2f} | {med(f_cold) / med(b_cold):.1f}x |")
    print(f"| `dvc status`, {len(files):,} images, warm | {med(f_warm):.2f} | {med(f_warm) / med(b_warm):.1f}x |")
    print(f"| `dvc status` after one image was replaced (warm) | {changed:.2f} | {changed / med(b_warm):.1f}x |")
    print(f"| fetch's images.md5 of the {summary['images_hashed']:,} images | {hashing:.2f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
