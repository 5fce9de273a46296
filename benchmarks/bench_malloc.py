"""Does keeping freed memory in the heap speed up training? (issue 9: training throughput ≥ 2x at 64 px).

glibc returns large freed blocks to the kernel (mmap/munmap and heap trimming), so every training step maps its
activations afresh and pays a page fault per 4 KiB touched. GLIBC_TUNABLES can raise the mmap and trim thresholds
so that freed memory is reused instead. This script runs the same short `fit()` (cache loader + draft decoding,
finetune, batch 64, the bench_loader.py setting) in fresh child processes, alternating glibc's defaults with the
raised thresholds, and prints each round's training images/s (median of epochs 2+), CPU system time and minor
page faults, then the ratio of the medians.

    .venv/bin/python benchmarks/bench_malloc.py --arch resnet18 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from bench_loader import REPO, real_catalogue
from galmorph.config import load_params, replace
from galmorph.training.loop import fit

TUNED = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"


def child(arch: str, images: int, epochs: int) -> None:
    """One fit() in this process; prints a JSON line with images/s, system seconds and minor faults."""
    torch.set_num_threads(2)
    params = load_params(REPO / "params.yaml")
    p = dataclasses.replace(
        params,
        model=replace(params.model, arch=arch, weights="none"),
        preprocess=replace(params.preprocess, crop=192, image_size=64, decode="draft"),
        train=replace(
            params.train, mode="finetune", epochs=epochs, batch_size=64, num_workers=2, loader="cache",
            early_stopping_patience=0, checkpoint_dir="/tmp/bench_malloc_ckpt",
        ),
    )  # fmt: skip
    cat = real_catalogue(images)
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = fit(cat, p, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "ips": statistics.median(h["images_per_s"] for h in result.history[1:]),
        "sys_s": after.ru_stime - before.ru_stime, "user_s": after.ru_utime - before.ru_utime,
        "minflt": after.ru_minflt - before.ru_minflt,
    }))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.arch, args.images, args.epochs)
        return
    if args.epochs < 2 or args.rounds < 1:
        ap.error("--epochs must be at least 2 (epoch 1 is left out) and --rounds at least 1")
    runs: dict[str, list[dict]] = {"glibc defaults": [], "raised thresholds": []}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--arch", args.arch, "--images", str(args.images),
           "--epochs", str(args.epochs)]  # fmt: skip
    print(f"{args.arch}, 64 px, cache + draft, {args.images} images x {args.epochs} epochs, {args.rounds} rounds")
    print("| round | malloc | images/s | system s | user s | minor faults |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for i in range(args.rounds):
        for name in runs:
            env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
            if name == "raised thresholds":
                env["GLIBC_TUNABLES"] = TUNED
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                last = (out.stderr.strip().splitlines() or ["no message"])[-1]
                sys.exit(f"bench_malloc.py: error: the {name} child failed: {last}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs[name].append(r)
            print(f"| {i + 1} | {name} | {r['ips']:.1f} | {r['sys_s']:.1f} | {r['user_s']:.1f} | {r['minflt']:,} |")
    base, tuned = (statistics.median(r["ips"] for r in runs[n]) for n in runs)
    print(f"\nmedian images/s: defaults {base:.1f}, raised thresholds {tuned:.1f} ({tuned / base:.2f}x)")


if __name__ == "__main__":
    main()
