"""`galmorph synth OUT`: a synthetic Galaxy Zoo data set in any folder, outside the pipeline's raw_dir."""

from __future__ import annotations

import argparse

from galmorph.config import Params, replace
from galmorph.data.sources.synthetic import generate
from galmorph.data.sources.synthetic.examples import example_grid


def main(params: Params, args: argparse.Namespace) -> None:
    cfg = params.data.synthetic
    if getattr(args, "n_galaxies", None) is not None:
        cfg = replace(cfg, n_galaxies=args.n_galaxies)
    counts = generate(cfg, args.out, images=not getattr(args, "no_images", False))
    classes = ", ".join(f"{k} {v}" for k, v in counts["classes"].items())
    print(
        f"{args.out}: table 2 {counts['rows']} rows ({classes}); mapping {counts['mapping_rows']} rows "
        f"({counts['mapping_duplicate_rows']} repeated objids, {counts['mapping_rows_not_in_table2']} not in "
        f"table 2); images {counts['images_written']} written, {counts['images_missing']} deliberately missing"
    )
    if getattr(args, "examples", None):
        print(f"examples: {example_grid(cfg, args.examples)}")
