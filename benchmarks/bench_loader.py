"""Loader speed (issue 9 item 3): `preprocess.decode: draft` and `train.loader: cache` against today's path,
measured in the same run on the same real SDSS JPEGs (../shared/galaxyzoo, 423-px GZ1 cut-outs).

1. decode + preprocess per image on one thread: load_rgb + EvalPreset, decode full vs draft.
2. end-to-end scoring (predict_logits, 2 decoding workers, ResNet-18 at 64 px): full vs draft.
3. training images/s over the same images (fit(), finetune, 64 px, crop 192 as `make real`): files + full
   decoding with glibc's malloc defaults and torch's multi-tensor AdamW (the path before issue 9) vs cache +
   draft, without and with `train.keep_freed_memory`, then with the fused AdamW `fit()` builds now, for
   ResNet-18 and ResNet-50; the cache's one-off decoding is timed apart. Each fit() runs in a fresh child
   process: the malloc thresholds, once raised, last as long as the process.

    .venv/bin/python benchmarks/bench_loader.py --images 2048 --epochs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from galmorph.config import CLASSES, load_params, replace
from galmorph.data.images import load_rgb
from galmorph.data.transforms import EvalPreset
from galmorph.models.inference import predict_logits
from galmorph.models.resnet import build_model
from galmorph.training import loop
from galmorph.training.loop import fit

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "galaxyzoo"


def real_catalogue(n: int) -> pd.DataFrame:
    """n spiral/elliptical GZ1 cut-outs (423 px), 80% train / 20% val."""
    labels = pd.read_csv(SHARED / "labels.csv", usecols=["filename", "label", "dataset"])
    rows = labels[(labels["dataset"] == "gz1_sdss") & labels["label"].isin(CLASSES)].head(n).reset_index(drop=True)
    if len(rows) < n:
        raise SystemExit(f"only {len(rows)} GZ1 images in {SHARED}")
    return pd.DataFrame(
        {
            "galaxy_id": rows["filename"],
            "image_path": [str(SHARED / f) for f in rows["filename"]],
            "label": rows["label"],
            "label_id": [CLASSES.index(c) for c in rows["label"]],
            "p_spiral": np.nan,
            "p_elliptical": np.nan,
            "split": np.where(np.arange(len(rows)) % 5 == 0, "val", "train"),
        }
    )


def fit_in_child(
    arch: str,
    *,
    loader: str,
    decode: str,
    keep: bool,
    images: int,
    epochs: int,
    fused: bool = True,
    env: dict[str, str] | None = None,
) -> dict[str, float]:
    """One fit() (finetune, batch 64, 2 workers, crop 192 at 64 px) in a fresh Python process, so that no run
    inherits another's heap or malloc settings: images/s (median of epochs 2+), the median epoch's seconds, the
    one-off cache seconds (wall time outside the epochs), and the process's system/user CPU seconds and minor page
    faults over fit(). `fused=False`: the multi-tensor AdamW fit() built before (build_optimizer's baseline). `env`
    replaces the environment (e.g. with GLIBC_TUNABLES); exits with the child's last stderr line if it fails."""
    spec = {
        "arch": arch, "loader": loader, "decode": decode, "keep": keep, "images": images, "epochs": epochs,
        "fused": fused,
    }  # fmt: skip
    cmd = [sys.executable, str(Path(__file__).resolve()), "--fit-child", json.dumps(spec)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no message"])[-1]
        sys.exit(f"{Path(sys.argv[0]).name}: error: the fit() child for {spec} failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fit_child(spec: dict) -> None:
    """fit_in_child's process: the fit, then its JSON line on stdout."""
    torch.set_num_threads(2)
    if not spec.get("fused", True):  # the optimizer of the path before issue 9
        loop.build_optimizer = functools.partial(loop.build_optimizer, fused=False)
    params = load_params(REPO / "params.yaml")
    p = dataclasses.replace(
        params,
        model=replace(params.model, arch=spec["arch"], weights="none"),
        preprocess=replace(params.preprocess, crop=192, image_size=64, decode=spec["decode"]),
        train=replace(
            params.train, mode="finetune", epochs=spec["epochs"], batch_size=64, num_workers=2,
            loader=spec["loader"], keep_freed_memory=spec["keep"], early_stopping_patience=0,
            checkpoint_dir=str(Path("/tmp") / f"bench_loader_ckpt_{os.getpid()}"),
        ),
    )  # fmt: skip
    cat = real_catalogue(spec["images"])
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    result = fit(cat, p, progress=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    later = result.history[1:]
    print(json.dumps({
        "ips": statistics.median(h["images_per_s"] for h in later),
        "epoch_s": statistics.median(h["epoch_time_s"] for h in later),
        "cache_s": wall - sum(h["epoch_time_s"] for h in result.history) if spec["loader"] == "cache" else 0.0,
        "sys_s": after.ru_stime - before.ru_stime, "user_s": after.ru_utime - before.ru_utime,
        "minflt": after.ru_minflt - before.ru_minflt,
    }))  # fmt: skip


def per_image(paths: list[str], preprocess, rounds: int) -> float:
    """Median over rounds of ms per image for decode + EvalPreset on this thread."""
    preset = EvalPreset(preprocess)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for p in paths:
            preset(load_rgb(p, draft=preset.draft))
        times.append((time.perf_counter() - start) / len(paths) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--fit-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fit_child:
        _fit_child(json.loads(args.fit_child))
        return
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (epoch 1 is left out)")
    torch.set_num_threads(2)
    params = load_params(REPO / "params.yaml")
    full = replace(params.preprocess, crop=192, image_size=64, decode="full")
    draft = replace(full, decode="draft")
    cat = real_catalogue(args.images)
    print(f"{len(cat)} real 423-px GZ1 JPEGs; torch threads 2; {time.strftime('%Y-%m-%d %H:%M')}")

    torch.set_num_threads(1)
    paths = list(cat["image_path"][:500])
    ms_full, ms_draft = per_image(paths, full, args.rounds), per_image(paths, draft, args.rounds)
    torch.set_num_threads(2)
    print("\n| decode + EvalPreset, one thread (median of rounds) | ms/image | images/s | x baseline |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| decode full (baseline) | {ms_full:.2f} | {1e3 / ms_full:.0f} | 1.00 |")
    print(f"| decode draft | {ms_draft:.2f} | {1e3 / ms_draft:.0f} | {ms_full / ms_draft:.2f} |")

    model = build_model(replace(params.model, arch="resnet18", weights="none"))
    rates = {}
    for name, pre in (("full", full), ("draft", draft)):
        runs = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            predict_logits(model, cat, pre, batch_size=64, num_workers=2, device="cpu")
            runs.append(len(cat) / (time.perf_counter() - start))
        rates[name] = statistics.median(runs)
    print("\n| end-to-end scoring, ResNet-18 64 px, 2 workers | images/s | x baseline |")
    print("| --- | ---: | ---: |")
    print(f"| decode full (baseline) | {rates['full']:.0f} | 1.00 |")
    print(f"| decode draft | {rates['draft']:.0f} | {rates['draft'] / rates['full']:.2f} |")

    print(
        f"\n| training, {args.epochs} epochs over {int((cat['split'] == 'train').sum())} images, median of "
        f"{args.rounds} alternating rounds | images/s (median of epochs 2+) | rounds' range | x baseline | "
        "one-off cache s | epoch s | system s | minor faults |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    recipes = {
        "files + full, glibc defaults, multi-tensor AdamW (before)": ("files", "full", False, False),
        "cache + draft, glibc defaults": ("cache", "draft", False, False),
        "cache + draft + keep_freed_memory": ("cache", "draft", True, False),
        "cache + draft + keep_freed_memory + fused AdamW (now)": ("cache", "draft", True, True),
    }
    for arch in args.archs:
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in recipes}
        for _ in range(args.rounds):  # alternating, so a slow spell of the machine hits every path alike
            for label, (loader, decode, keep, fused) in recipes.items():
                runs[label].append(
                    fit_in_child(
                        arch, loader=loader, decode=decode, keep=keep, images=args.images, epochs=args.epochs,
                        fused=fused,
                    )
                )  # fmt: skip
        base = None
        for label, rs in runs.items():
            med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            base = base or med["ips"]
            cache = f"{med['cache_s']:.1f}" if recipes[label][0] == "cache" else "—"
            span = f"{min(r['ips'] for r in rs):.1f}–{max(r['ips'] for r in rs):.1f}"
            print(
                f"| {arch}, {label} | {med['ips']:.1f} | {span} | {med['ips'] / base:.2f} | {cache} | "
                f"{med['epoch_s']:.1f} | {med['sys_s']:.1f} | {med['minflt']:,.0f} |"
            )


if __name__ == "__main__":
    main()
