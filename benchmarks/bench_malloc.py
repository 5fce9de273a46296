"""Does keeping freed memory in the heap speed up training? (issue 9: training throughput ≥ 2x at 64 px).

glibc returns large freed blocks to the kernel (mmap/munmap and heap trimming), so every training step maps its
activations afresh and pays a page fault per 4 KiB touched. `train.keep_freed_memory` (training/memory.py) raises
the mmap and trim thresholds with mallopt(3) at the start of fit(); GLIBC_TUNABLES does the same from the
environment before Python starts. This script runs the same short `fit()` (cache loader + draft decoding,
finetune, batch 64: bench_loader.py's setting) in fresh child processes, alternating glibc's defaults, the
built-in mallopt and the environment variable, and prints each round's training images/s (median of epochs 2+),
CPU system time and minor page faults, then the ratios of the medians.

    .venv/bin/python benchmarks/bench_malloc.py --arch resnet18 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics

from bench_loader import fit_in_child

TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
ARMS = {  # name: (train.keep_freed_memory, GLIBC_TUNABLES or None)
    "glibc defaults": (False, None),
    "keep_freed_memory (mallopt)": (True, None),
    "GLIBC_TUNABLES": (False, TUNABLES),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.epochs < 2 or args.rounds < 1:
        ap.error("--epochs must be at least 2 (epoch 1 is left out) and --rounds at least 1")
    runs: dict[str, list[dict]] = {name: [] for name in ARMS}
    print(f"{args.arch}, 64 px, cache + draft, {args.images} images x {args.epochs} epochs, {args.rounds} rounds")
    print("| round | malloc | images/s | system s | user s | minor faults |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for i in range(args.rounds):
        for name, (keep, tunables) in ARMS.items():
            env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
            if tunables:
                env["GLIBC_TUNABLES"] = tunables
            r = fit_in_child(
                args.arch, loader="cache", decode="draft", keep=keep, images=args.images, epochs=args.epochs, env=env
            )
            runs[name].append(r)
            print(f"| {i + 1} | {name} | {r['ips']:.1f} | {r['sys_s']:.1f} | {r['user_s']:.1f} | {r['minflt']:,} |")
    medians = {name: statistics.median(r["ips"] for r in rs) for name, rs in runs.items()}
    base = medians["glibc defaults"]
    print("\nmedian images/s: " + ", ".join(f"{n} {m:.1f} ({m / base:.2f}x)" for n, m in medians.items()))


if __name__ == "__main__":
    main()
