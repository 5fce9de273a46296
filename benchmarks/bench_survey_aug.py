"""Cost of the survey augmentations (data/survey.py) per training batch, and of the sky normalisation
(data/photometry.py) per image, each against a baseline measured in the same run.

Real 423/424-px SDSS JPEGs (../shared/galaxyzoo/images: GZ1 and Kaggle GZ2 cut-outs) are decoded once into
memory. Batches of --batch images at 128 and 64 px, torch on --threads threads, alternating rounds (best and median):

  * baseline: the per-image torchvision TrainPreset (params.yaml's augment: rotation, flips, scale/translate,
    colour jitter; fixed crop 256) over the batch's images, stacked: what the loader spends per batch today;
  * SurveyAugment on the batch of [0, 1] tensors: params.yaml's per-effect probabilities with p = 1 and 0.8,
    every effect at once, and each effect alone (on every image); and survey_batches' normalised wrapper;
  * per 424-px image on one thread: normalise_sky (PIL and numpy) against EvalPreset (fixed crop) and the
    JPEG decode, for scale.

    .venv/bin/python benchmarks/bench_survey_aug.py                 # batch 128, 7 rounds, 2 threads
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from galmorph.config import PreprocessConfig, load_params
from galmorph.data.images import load_rgb
from galmorph.data.photometry import normalise_sky
from galmorph.data.survey import EFFECTS, SurveyAugment, augment_normalised, only
from galmorph.data.transforms import MEAN, STD, EvalPreset, TrainPreset

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO.parent / "shared" / "galaxyzoo" / "images"


def clock(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def rounds(methods: dict, n: int, per: int = 1) -> dict[str, tuple[float, float]]:
    """(best, median) of n alternating rounds, in ms per call / per: the best is the least disturbed by the
    other jobs on a shared machine, the median shows how much they disturbed."""
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(n):
        for name, fn in methods.items():
            times[name].append(clock(fn) / per)
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def table(res: dict[str, tuple[float, float]], base: str, unit: str) -> None:
    print(f"| method | {unit}, best | {unit}, median | x baseline (best) |")
    print("| --- | ---: | ---: | ---: |")
    for name, (best, med) in res.items():
        print(f"| {name} | {best:.2f} | {med:.2f} | {best / res[base][0]:.3f} |")


def batch_methods(x: torch.Tensor, norm: torch.Tensor, survey, train: TrainPreset, images: list) -> dict:
    """The timed calls on one batch: the per-image baseline, then SurveyAugment's variants (one generator)."""
    g = torch.Generator().manual_seed(0)
    every = dataclasses.replace(survey, **{f"{e}_p": 1.0 for e in EFFECTS})
    methods = {
        "baseline: TrainPreset per image, stacked": lambda: torch.stack([train(i) for i in images]),
        "SurveyAugment p=1 (params.yaml effect probabilities)": lambda: SurveyAugment(survey, g)(x),
        "SurveyAugment p=0.8": lambda: SurveyAugment(dataclasses.replace(survey, p=0.8), g)(x),
        "SurveyAugment, every effect on every image": lambda: SurveyAugment(every, g)(x),
        "augment_normalised (p=1, un/re-normalised batch)": lambda: augment_normalised(
            SurveyAugment(survey, g), norm, MEAN, STD
        ),
    }
    for effect in EFFECTS:
        methods[f"{effect} alone, every image"] = lambda e=effect: SurveyAugment(only(survey, e), g)(x)
    return methods


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    paths = sorted((IMAGES / "gz1").glob("*.jp*g"))[: args.batch // 2]
    paths += sorted((IMAGES / "kaggle_gz2").glob("*.jp*g"))[: args.batch - len(paths)]
    if len(paths) < args.batch:
        print(f"needs {args.batch} real JPEGs under {IMAGES}", file=sys.stderr)
        return 2
    params = load_params(REPO / "params.yaml", required=("preprocess", "augment"))
    survey = dataclasses.replace(params.augment.survey, p=1.0)
    images = [load_rgb(p) for p in paths]
    print(f"{len(images)} real SDSS JPEGs; survey: params.yaml's effect probabilities; torch threads {args.threads}")

    torch.set_num_threads(args.threads)
    for size in (128, 64):
        cfg = PreprocessConfig(resize=424, crop=256, image_size=size)
        train = TrainPreset(cfg, params.augment)
        ev = EvalPreset(cfg)
        m, s = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
        x = torch.stack([ev(img) for img in images]) * s + m  # [0, 1] batch
        methods = batch_methods(x, (x - m) / s, survey, train, images)
        for fn in methods.values():
            fn()  # warm-up
        print(f"\nbatch {len(images)} x 3 x {size} x {size}, {args.rounds} rounds, ms per batch")
        table(rounds(methods, args.rounds), "baseline: TrainPreset per image, stacked", "ms/batch")

    torch.set_num_threads(1)
    cfg = PreprocessConfig(resize=424, crop=256, image_size=64)
    ev = EvalPreset(cfg)
    arrays = [np.asarray(img) for img in images]
    per_image = {
        "baseline: EvalPreset (fixed crop, 64 px)": lambda: [ev(i) for i in images],
        "normalise_sky, PIL": lambda: [normalise_sky(i) for i in images],
        "normalise_sky, numpy uint8": lambda: [normalise_sky(a) for a in arrays],
        "JPEG decode (load_rgb), for scale": lambda: [load_rgb(p) for p in paths],
    }
    res = rounds(per_image, args.rounds, per=len(images))
    print(f"\nper {images[0].size[0]}-px image, one thread, {args.rounds} rounds")
    table(res, "baseline: EvalPreset (fixed crop, 64 px)", "ms/image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
