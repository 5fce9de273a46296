"""docs/augment_context.png: what augment.context changes in the training images, on real cut-outs.

A few real 423-px SDSS cut-outs of ../shared/galaxyzoo (GZ1, an elliptical and a spiral), each drawn through the
cache loader's batched augmentation (params.yaml's augment, survey effects off) with the same seeded turns and
scales at augment.context 1 (black corners) and at a wider context (the sky around the frame), one row each
(evaluation/galleries.context_augment_grid).

    .venv/bin/python benchmarks/context_grid.py                                  # -> docs/augment_context.png
    .venv/bin/python benchmarks/context_grid.py --scale 0.7 1.4 --context 2 --out /tmp/grid.png
"""

from __future__ import annotations

import argparse

from galmorph.config import load_params, replace
from galmorph.evaluation.galleries import context_augment_grid
from survey_augment_grid import GALAXYZOO, REPO, gz1_rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=float, default=2.0, help="the wider augment.context shown beside 1")
    ap.add_argument("--scale", type=float, nargs=2, default=[0.7, 1.4], help="augment.scale (low high)")
    ap.add_argument("--crop", type=int, default=192, help="preprocess.crop (make real's)")
    ap.add_argument("--out", default=str(REPO / "docs" / "augment_context.png"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = gz1_rows(1, args.seed)
    if rows is None:
        return 2
    params = load_params(REPO / "params.yaml", required=("preprocess", "augment"))
    preprocess = replace(params.preprocess, crop=args.crop, decode="draft")
    augment = replace(params.augment, scale=list(args.scale))
    n = context_augment_grid(
        [GALAXYZOO / f for f in rows["filename"]], preprocess, augment, [1.0, args.context], args.out, seed=args.seed
    )
    print(f"{args.out}: {n} rows ({', '.join(rows['label'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
