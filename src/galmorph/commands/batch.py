"""`galmorph batch`: score a folder, glob, table of images or catalogue of positions with Spark; Parquet out.

On a cluster, spark-submit galmorph's own entry point with `batch` as the first argument (README).
"""

from __future__ import annotations

import argparse
import sys

from galmorph.config import Params
from galmorph.serving.catalogue import CatalogueRequest
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
        fits=params.fits.with_hdu(args.hdu),
        catalogue=CatalogueRequest(
            params.cutouts,
            path_column=args.path_column,
            ra_column=args.ra_column,
            dec_column=args.dec_column,
            size_column=args.size_column,
            service=args.service,
        ),
    )
    if result.renamed:
        shown = ", ".join(f"{k} -> {v}" for k, v in result.renamed.items())
        print(f"the input has columns named like the outputs: wrote {shown}", file=sys.stderr)
    rows = sum(result.counts.values())
    print(f"{result.ref.display}: wrote {rows} rows to {args.out}: {result.counts}", file=sys.stderr)
