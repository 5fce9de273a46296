"""One trained model served with other preprocess settings than it was trained with: accuracy on the test split
and on ../shared/ood-dev, each variant's difference from the stored preprocess on the same images (paired
bootstrap, 95%), all measured in the same run.

Why: the train/test resolution discrepancy (Touvron et al. 2019, "FixRes") says a network trained with
scale augmentation often scores better at a slightly larger test resolution, for free at training time; and a
crop a little tighter or looser than the trained one says how sensitive the model is to framing. A variant is
`field=value` of the model's stored preprocess (`image_size=72`, `crop=208`, `sky=border`, ...); every variant
goes through the one inference path (predict_logits) with only that field changed. The variant `grey` is the
stored preprocess on one-band copies of the same images (luminance in all three channels, lossless PNG): how much
the model leans on colour, and what a single-band image loses. The variant `survey:EFFECT` is the stored preprocess
on copies with one of augment.survey's camera effects applied to the whole decoded image, before the model's own
preprocess, as another telescope or camera would deliver it: `sky` (a sky level and colour), `colour` (colour
balance), `gamma` (another stretch), `saturate` (saturated cores); strengths drawn from params.yaml's
augment.survey ranges, seeded per image, so every model sees the same altered images. Only these effects, whose
strength does not depend on the pixel scale, are offered (blur, pixels, noise and stars are sized in pixels of
the network's input). The variant `copy` is the same images re-saved unchanged as PNG: the altered variants are
PNGs, which `decode: draft` cannot decode at reduced scale, so a survey effect's own cost is its difference from
`copy`, not from `stored`.

    .venv/bin/python benchmarks/bench_serve_preprocess.py --model models/model.pt \\
        --splits data/processed/splits.parquet image_size=72 image_size=80 crop=176 crop=208
    .venv/bin/python benchmarks/bench_serve_preprocess.py --model models/model.pt \\
        --splits data/processed/splits.parquet copy grey survey:sky survey:colour survey:gamma survey:saturate
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from galmorph.config import CLASSES, PreprocessConfig, SurveyConfig, load_params
from galmorph.data.dataset import label_ids, read_splits
from galmorph.data.image_errors import ImageError
from galmorph.data.images import load_rgb
from galmorph.data.survey import only, survey_images
from galmorph.errors import UserError
from galmorph.evaluation.folder import read_labelled
from galmorph.evaluation.metrics import mean_interval, paired_f1_difference
from galmorph.models.inference import predict_logits
from galmorph.models.resnet import load_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GREY = "grey"
COPY = "copy"
SURVEY = "survey:"
SCALE_FREE = ("sky", "colour", "gamma", "saturate")
"""augment.survey's effects whose strength means the same on a 424-px file as on the network's input."""


def variant(text: str, base: PreprocessConfig) -> PreprocessConfig:
    """`field=value` applied to `base`, the value cast to the field's current type."""
    field, sep, value = text.partition("=")
    if not sep or not hasattr(base, field):
        names = ", ".join(f.name for f in dataclasses.fields(base))
        raise SystemExit(f"variant {text!r}: expected field=value with a field of {names}")
    current = getattr(base, field)
    try:
        return dataclasses.replace(base, **{field: type(current)(value) if current is not None else value})
    except ValueError:
        raise SystemExit(f"variant {text!r}: {value!r} is not a {type(current).__name__} like {current!r}") from None


def altered_copies(
    rows: pd.DataFrame, folder: Path, name: str, change: Callable[[Image.Image, int], Image.Image]
) -> pd.DataFrame:
    """`rows` with each image_path replaced by `change(image, row number)` saved losslessly (PNG) in `folder`, the
    images read through the project's one loader (its size and format limits); an unreadable image is a one-line
    exit naming the variant and the file."""
    paths = []
    for i, path in enumerate(rows["image_path"]):
        out = folder / f"{i}.png"
        try:
            change(load_rgb(path), i).save(out, compress_level=1)
        except (ImageError, OSError) as exc:
            raise SystemExit(f"{name}: {path}: {exc}") from None
        paths.append(str(out))
    return rows.assign(image_path=paths)


def grey(image: Image.Image, _: int) -> Image.Image:
    """One band (luminance) in all three channels."""
    return image.convert("L").convert("RGB")


def unchanged(image: Image.Image, _: int) -> Image.Image:
    """The image as decoded (the `copy` variant: what re-saving as PNG alone does)."""
    return image


def survey_change(effect: str, survey: SurveyConfig) -> Callable[[Image.Image, int], Image.Image]:
    """The change that applies augment.survey's `effect` alone to a whole image, its strength drawn by a generator
    seeded with the row number (the same altered image for every model scored)."""
    if effect not in SCALE_FREE:
        raise SystemExit(f"variant {SURVEY}{effect}: expected one of {', '.join(SURVEY + e for e in SCALE_FREE)}")
    cfg = only(survey, effect)

    def change(image: Image.Image, i: int) -> Image.Image:
        return survey_images([image], cfg, torch.Generator().manual_seed(i))[0]

    return change


def changes(variants: list[str], survey: SurveyConfig) -> dict[str, Callable[[Image.Image, int], Image.Image]]:
    """The image-altering variants among `variants` (copy, grey, survey:EFFECT) by name."""
    found = {v: survey_change(v.removeprefix(SURVEY), survey) for v in variants if v.startswith(SURVEY)}
    return found | {name: change for name, change in ((COPY, unchanged), (GREY, grey)) if name in variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "variants",
        nargs="+",
        help="field=value of the stored preprocess (e.g. image_size=72), copy, grey or survey:EFFECT",
    )
    parser.add_argument("--model", required=True)
    parser.add_argument("--splits", required=True, help="splits.parquet; its `test` rows are scored")
    parser.add_argument("--ood", default=str(SHARED / "ood-dev" / "labels.csv"), help="a labelled CSV; '' skips")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--params", default=str(REPO / "params.yaml"), help="its augment.survey ranges: survey:*")
    args = parser.parse_args()

    loaded = load_model(args.model)
    splits = read_splits(args.splits)
    sets = {"test": splits[splits["split"] == "test"].reset_index(drop=True)}
    if args.ood:
        sets["ood-dev"] = read_labelled(args.ood)
    altered = changes(args.variants, load_params(args.params, required=("augment",)).augment.survey)
    presets = {"stored": loaded.preprocess} | {
        v: loaded.preprocess if v in altered else variant(v, loaded.preprocess) for v in args.variants
    }
    print(f"model {args.model}: stored preprocess {loaded.preprocess}")
    predicted: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="altered-") as tmp:
        for k, (name, preprocess) in enumerate(presets.items()):
            start = time.perf_counter()
            predicted[name] = {}
            for part, rows in sets.items():
                if name in altered:
                    folder = Path(tmp) / f"{k}-{part}"
                    folder.mkdir()
                    rows = altered_copies(rows, folder, name, altered[name])
                logits = predict_logits(loaded.model, rows, preprocess, num_workers=args.workers)
                predicted[name][part] = logits.argmax(axis=1)
            print(f"  {name}: scored in {time.perf_counter() - start:.0f} s", flush=True)

    header = ["variant"]
    for part in sets:
        header += [f"{part} accuracy", "difference [95%]", "macro F1 difference [95%]", "elliptical recall"]
    print("\n| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for name in presets:
        cells = [name]
        for part, rows in sets.items():
            labels = label_ids(rows)
            base, this = predicted["stored"][part], predicted[name][part]
            gain = (this == labels).astype(float) - (base == labels)
            diff = mean_interval(gain, np.random.default_rng(0), n_resamples=args.resamples)
            f1 = paired_f1_difference(labels, base, this, n_resamples=args.resamples)
            elliptical = CLASSES.index("elliptical")
            ellipticals = labels == elliptical
            cells += [
                f"{(this == labels).mean():.3f}",
                f"{diff.value:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]",
                f"{f1.diff:+.3f} [{f1.low:+.3f}, {f1.high:+.3f}]",
                f"{(this[ellipticals] == elliptical).mean():.2f}",
            ]
        print("| " + " | ".join(cells) + " |")
    print(f"\n{', '.join(f'{p}: {len(r)} images' for p, r in sets.items())}")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:  # a missing model or manifest: one line, as galmorph's own commands say it
        raise SystemExit(f"bench_serve_preprocess: {exc}") from None
