"""docs/survey_augment.png: what augment.survey (and preprocess.sky: border) show the network, on real images.

A few real 423-px SDSS cut-outs of ../shared/galaxyzoo (GZ1 ellipticals and spirals by their label), framed as
params.yaml's preprocess frames them, one row each: original, sky-normalised, each survey effect alone and all
together (evaluation/galleries.survey_augment_grid, seeded).

    .venv/bin/python benchmarks/survey_augment_grid.py                      # 4 images -> docs/survey_augment.png
    .venv/bin/python benchmarks/survey_augment_grid.py --per-class 2 --out /tmp/grid.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from galmorph.config import SurveyConfig, load_params
from galmorph.evaluation.galleries import survey_augment_grid

REPO = Path(__file__).resolve().parents[1]
GALAXYZOO = REPO.parent / "shared" / "galaxyzoo"


def gz1_rows(per_class: int, seed: int) -> pd.DataFrame | None:
    """`per_class` real GZ1 cut-outs of each class (elliptical first), seeded; None (said on stderr) without
    ../shared/galaxyzoo. The docs' image grids (this script, context_grid.py) show these."""
    if not (GALAXYZOO / "labels.csv").is_file():
        print(f"needs the real images: {GALAXYZOO}/labels.csv not found", file=sys.stderr)
        return None
    labels = pd.read_csv(GALAXYZOO / "labels.csv", usecols=["filename", "label", "dataset"])
    gz1 = labels[labels["dataset"] == "gz1_sdss"]
    return pd.concat([gz1[gz1["label"] == c].sample(n=per_class, random_state=seed) for c in ("elliptical", "spiral")])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=2, help="images per class (spiral, elliptical)")
    ap.add_argument("--out", default=str(REPO / "docs" / "survey_augment.png"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = gz1_rows(args.per_class, args.seed)
    if rows is None:
        return 2
    params = load_params(REPO / "params.yaml", required=("preprocess", "augment"))
    survey = params.augment.survey if params.augment.survey.p > 0 else SurveyConfig(p=1.0)
    n = survey_augment_grid(
        [GALAXYZOO / f for f in rows["filename"]], params.preprocess, survey, args.out, seed=args.seed
    )
    print(f"{args.out}: {n} images ({', '.join(rows['label'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
