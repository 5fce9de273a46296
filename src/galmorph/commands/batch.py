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
    ref, counts = run_batch(
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
    print(f"{ref.display}: wrote {sum(counts.values())} rows to {args.out}: {counts}", file=sys.stderr)
