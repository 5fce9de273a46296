"""Adaptive framing's cost per image against the fixed centre crop, measured in the same run, and what it measures.

Real 424-px SDSS JPEGs (../shared/galaxyzoo/images: the Kaggle GZ2 and GZ1 cut-outs) are decoded once into
memory, then timed per image on one thread, in alternating rounds so a busy neighbour slows every method alike:

  * baseline: EvalPreset with preprocess.framing: fixed (resize 424, centre crop 256, resize 64, to tensor);
  * EvalPreset with preprocess.framing: adaptive (measure the central source, crop and resize in one resample);
  * the measurement alone (data/framing.measure), and the JPEG decode (galmorph's loader) for scale.

Then, per source of ../shared/galaxyzoo and ../shared/ood-dev (DECaLS), what the measurement finds: the share of
images with no central source (fixed-crop fallback), the median Petrosian radius in 424-px units, the median
adaptive crop side at preprocess.frame_scale, and the frame_scale at which the Petrosian-scaled Kaggle GZ2
images would get the best fixed crop (192 px) at the median.

    .venv/bin/python benchmarks/bench_framing.py                 # 300 images, 3 rounds, 200 per source
    .venv/bin/python benchmarks/bench_framing.py --images 600 --rounds 5 --per-source 400
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from galmorph.config import PreprocessConfig
from galmorph.data import framing
from galmorph.data.images import load_rgb
from galmorph.data.transforms import EvalPreset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GALAXYZOO = SHARED / "galaxyzoo"
OOD = SHARED / "ood-dev"
BEST_FIXED_CROP = 192


def timed(fn, items) -> float:
    """Milliseconds per item of fn over items."""
    start = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - start) / len(items) * 1e3


def speed(paths: list[Path], rounds: int, cfg: PreprocessConfig) -> dict[str, float]:
    images = [load_rgb(p) for p in paths]
    fixed = EvalPreset(dataclasses.replace(cfg, framing="fixed"))
    adaptive = EvalPreset(dataclasses.replace(cfg, framing="adaptive"))
    methods = {
        "decode (load_rgb), for scale": (load_rgb, paths),
        "baseline: EvalPreset, fixed crop": (fixed, images),
        "EvalPreset, adaptive framing": (adaptive, images),
        "framing.measure alone": (framing.measure, images),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(rounds):
        for name, (fn, items) in methods.items():
            times[name].append(timed(fn, items))
        print(f"round {r + 1}: " + ", ".join(f"{k.split(',')[0]} {v[-1]:.2f} ms" for k, v in times.items()))
    return {k: statistics.median(v) for k, v in times.items()}


def survey(per_source: int, cfg: PreprocessConfig, seed: int) -> pd.DataFrame:
    """One row per sampled image: source, label, found, Petrosian radius and crop side (424-px units)."""
    frames = []
    labels = pd.read_csv(GALAXYZOO / "labels.csv", usecols=["filename", "label", "dataset"])
    labels["root"] = str(GALAXYZOO)
    frames.append(labels[labels["label"].isin(["spiral", "elliptical"])])
    if (OOD / "labels.csv").is_file():
        ood = pd.read_csv(OOD / "labels.csv", usecols=["filename", "label"])
        frames.append(ood.assign(dataset="ood-dev (DECaLS)", root=str(OOD)))
    rows = pd.concat(frames, ignore_index=True)
    rows = pd.concat([g.sample(n=min(per_source, len(g)), random_state=seed) for _, g in rows.groupby("dataset")])
    out = []
    for r in rows.itertuples():
        img = load_rgb(Path(r.root) / r.filename)
        unit = cfg.resize / min(img.size)
        src = framing.measure(img)
        box = framing.frame_box(img, unit=cfg.resize, fallback=cfg.crop, scale=cfg.frame_scale, min_side=cfg.frame_min)
        out.append(
            {
                "dataset": r.dataset,
                "label": r.label,
                "found": src is not None,
                "radius": src.radius * unit if src else np.nan,
                "crop": (box[2] - box[0]) * unit,
            }
        )
    return pd.DataFrame(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300, help="424-px JPEGs timed (half Kaggle GZ2, half GZ1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-source", type=int, default=200, help="images per source in the survey (0: none)")
    ap.add_argument("--frame-scale", type=float, default=PreprocessConfig(424, 256, 64).frame_scale)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (GALAXYZOO / "labels.csv").is_file():
        print(f"needs the real images: {GALAXYZOO}/labels.csv not found", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    cfg = PreprocessConfig(resize=424, crop=256, image_size=64, frame_scale=args.frame_scale)
    half = args.images // 2
    paths = sorted((GALAXYZOO / "images" / "kaggle_gz2").glob("*.jp*g"))[:half]
    paths += sorted((GALAXYZOO / "images" / "gz1").glob("*.jp*g"))[: args.images - len(paths)]
    print(f"{len(paths)} real 424-px SDSS JPEGs, {args.rounds} rounds, one thread")
    med = speed(paths, args.rounds, cfg)
    base = med["baseline: EvalPreset, fixed crop"]
    print(f"\n| method (median of {args.rounds}) | ms/image | images/s | x baseline time |")
    print("| --- | ---: | ---: | ---: |")
    for name, ms in med.items():
        print(f"| {name} | {ms:.2f} | {1e3 / ms:.0f} | {ms / base:.2f} |")
    if args.per_source:
        df = survey(args.per_source, cfg, args.seed)
        print(f"\n| source | images | no central source | median radius (424 px) | median crop at {args.frame_scale} |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, g in df.groupby("dataset"):
            print(
                f"| {name} | {len(g)} | {1 - g['found'].mean():.1%} | {g['radius'].median():.1f} "
                f"| {g['crop'].median():.0f} |"
            )
        kaggle = df.loc[df["dataset"] == "kaggle_gz2_challenge", "radius"].median()
        if np.isfinite(kaggle):
            print(
                f"\nframe_scale giving the Petrosian-scaled Kaggle GZ2 images the best fixed crop "
                f"({BEST_FIXED_CROP} px) at the median: {BEST_FIXED_CROP / kaggle:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
