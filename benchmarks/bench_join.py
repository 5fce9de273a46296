"""Benchmark the `join` stage on full-size synthetic catalogues (667,944 GZ1 rows, 355,990 mapping rows).

Each run is a fresh subprocess (so peak RSS is that run's own, as `dvc repro` would see it) doing exactly the
stage's work: read and validate both CSVs, de-duplicate, join, label, write the two parquet files and the
report. Beside it, in the same session, a naive baseline: pandas' default `read_csv` + `merge` + the flag
label + the same parquet writes, with no validation at all.

    .venv/bin/python benchmarks/bench_join.py                # 5 runs of each, temporary folder
    .venv/bin/python benchmarks/bench_join.py --repeats 7 --workdir /tmp/joinbench   # keeps the CSVs
    .venv/bin/python benchmarks/bench_join.py --gzip         # table 2 as .csv.gz, as downloaded

Targets: median ≤ 5 s and peak RSS ≤ 2 GB for the stage (exit status 1 when missed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GZ1_ROWS = 667_944
MAPPING_ROWS = 355_990
TARGET_SECONDS = 5.0
TARGET_RSS_MB = 2048.0
REPO = Path(__file__).resolve().parents[1]


def prepare(workdir: Path, seed: int, gzipped: bool) -> Path:
    """Write the synthetic catalogues and a source.json once; reused when already there. `gzipped` writes
    table 2 as .csv.gz, the form the Galaxy Zoo site serves it in."""
    raw = workdir / ("raw_gz" if gzipped else "raw")
    source = raw / "source.json"
    if source.is_file():
        return raw
    from galmorph.data.gzcsv import MAPPING_NAME, TABLE2_NAME
    from galmorph.data.sources.synthetic.population import generate_catalogues
    from galmorph.io import write_json

    raw.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    table2, mapping = generate_catalogues(GZ1_ROWS, MAPPING_ROWS / GZ1_ROWS, seed)
    table2_path = raw / (TABLE2_NAME + (".gz" if gzipped else ""))
    table2.to_csv(table2_path, index=False)
    mapping.to_csv(raw / MAPPING_NAME, index=False)
    print(f"generated {len(table2):,} + {len(mapping):,} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    write_json(
        source,
        {
            "source": "synthetic",
            "kind": "catalogue",
            "table2": str(table2_path),
            "mapping": str(raw / MAPPING_NAME),
            "images_dir": str(raw / "images_gz2" / "images"),
            "md5": {},
        },
    )
    return raw


def run_ours(raw: Path, out: Path) -> None:
    """The stage's own main(), with params.yaml's paths pointed at the benchmark folder."""
    import argparse as ap

    from galmorph.config import load_params, replace
    from galmorph.stages import join

    params = load_params(REPO / "params.yaml")
    params = dataclasses.replace(
        params,
        data=replace(params.data, raw_dir=str(raw)),
        join=replace(
            params.join,
            out=str(out / "joined.parquet"),
            uncertain_out=str(out / "uncertain.parquet"),
            report=str(out / "join.json"),
        ),
    )
    join.main(params, ap.Namespace())


def run_naive(raw: Path, out: Path) -> None:
    """What one writes first: default read_csv, merge, flags; no validation, duplicates or error lines."""
    import numpy as np
    import pandas as pd

    source = json.loads((raw / "source.json").read_text())
    table2 = pd.read_csv(source["table2"])
    mapping = pd.read_csv(source["mapping"])
    joined = table2.merge(mapping, left_on="OBJID", right_on="objid", how="inner")
    joined["label"] = np.select(
        [joined["SPIRAL"] == 1, joined["ELLIPTICAL"] == 1], ["spiral", "elliptical"], "uncertain"
    )
    joined["galaxy_id"] = joined["OBJID"].astype(str)
    joined["image_path"] = source["images_dir"] + "/" + joined["asset_id"].astype(str) + ".jpg"
    out.mkdir(parents=True, exist_ok=True)
    joined[joined["label"] != "uncertain"].to_parquet(out / "joined.parquet", index=False)
    joined[joined["label"] == "uncertain"].to_parquet(out / "uncertain.parquet", index=False)


def child(kind: str, raw: Path, out: Path) -> None:
    import pandas  # noqa: F401  (imports are outside the timed work; `process s` includes them)

    if kind == "ours":
        import galmorph.stages.join  # noqa: F401
    t0 = time.perf_counter()
    (run_ours if kind == "ours" else run_naive)(raw, out)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over
    from the parent through fork + exec, so a child of a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB on Linux, bytes on macOS


def measure(kind: str, raw: Path, out: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--raw", str(raw), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{kind} run failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "wall": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the generated catalogues here (default: a temp folder)")
    parser.add_argument("--gzip", action="store_true", help="read table 2 from .csv.gz (as downloaded)")
    parser.add_argument("--child", choices=("ours", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.raw, args.out)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_join_") as tmp:
        workdir = args.workdir or Path(tmp)
        raw = prepare(workdir, args.seed, args.gzip)
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "naive": []}
        for i in range(args.repeats):
            for kind in runs:  # interleaved, so load from other processes hits both alike
                runs[kind].append(measure(kind, raw, workdir / f"out_{kind}"))
                print(f"run {i + 1}/{args.repeats} {kind}: {runs[kind][-1]['seconds']:.2f} s", file=sys.stderr)
        report = json.loads((workdir / "out_ours" / "join.json").read_text())

    form = " (table 2 gzipped)" if args.gzip else ""
    print(f"join benchmark: {GZ1_ROWS:,} GZ1 rows x {MAPPING_ROWS:,} mapping rows{form}, {args.repeats} runs each")
    print(f"{'':<28}{'median s':>10}{'min s':>8}{'max s':>8}{'process s':>11}{'peak RSS MB':>13}")
    names = {"ours": "galmorph join (validated)", "naive": "naive pandas baseline"}
    summary = {}
    for kind, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        summary[kind] = (statistics.median(secs), max(r["peak_rss_mb"] for r in rs))
        print(
            f"{names[kind]:<28}{summary[kind][0]:>10.2f}{min(secs):>8.2f}{max(secs):>8.2f}"
            f"{statistics.median(r['wall'] for r in rs):>11.2f}{summary[kind][1]:>13.0f}"
        )
    print("(seconds: the work after imports; process s: the whole subprocess including interpreter and imports)")
    print(f"rows out {report['rows_out']:,}, uncertain {report['uncertain']:,}, matched {report['matched']:,}")
    ok = summary["ours"][0] <= TARGET_SECONDS and summary["ours"][1] <= TARGET_RSS_MB
    print(f"targets: median <= {TARGET_SECONDS} s and peak RSS <= {TARGET_RSS_MB:.0f} MB: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
