"""`galmorph batch`: score a folder, glob or table of images with Spark and write Parquet.

On a cluster, spark-submit galmorph's own entry point with `batch` as the first argument (README).
"""

from __future__ import annotations

import argparse
import sys

from galmorph.config import Params
from galmorph.serving.spark import run_batch


def main(params: Params, args: argparse.Namespace) -> None:
    threshold = params.evaluate.abstain_threshold if args.threshold is None else args.threshold
    result = run_batch(
        args.input,
        args.out,
        args.model,
        params.mlflow,
        master=args.master,
        path_column=args.path_column,
        tta=args.tta,
        threshold=threshold,
        partitions=args.partitions,
        overwrite=args.overwrite,
    )
    if result.renamed:
        shown = ", ".join(f"{k} -> {v}" for k, v in result.renamed.items())
        print(f"the input has columns named like the outputs: wrote {shown}", file=sys.stderr)
    rows = sum(result.counts.values())
    print(f"{result.ref.display}: wrote {rows} rows to {args.out}: {result.counts}", file=sys.stderr)
