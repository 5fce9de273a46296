"""`galmorph predict`: classify image files, folders or globs; CSV/JSON/Parquet out, a summary on stderr.

Exits 1 when no file could be scored (the rows, each with its error, are still written). With --model FILE it
runs without a params.yaml (outside the repository): the model file carries its own preprocessing."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from galmorph.config import Params
from galmorph.errors import UserError
from galmorph.serving.predict import OUTPUT_SUFFIXES, expand_inputs, score_files, summary, write_predictions
from galmorph.serving.resolve import load_model, resolve_model


def main(params: Params, args: argparse.Namespace) -> None:
    if args.out and Path(args.out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--out {args.out}: expected a .csv, .json or .parquet file")
    threshold = params.evaluate.abstain_threshold if args.threshold is None else args.threshold
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: expected a probability between 0 and 1")
    paths = expand_inputs(args.paths)
    ref = resolve_model(args.model, params.mlflow)
    classifier = load_model(ref, params.mlflow)
    started = time.perf_counter()
    df = score_files(
        classifier, paths, batch_size=args.batch_size, workers=args.workers, tta=args.tta, threshold=threshold
    )
    elapsed = time.perf_counter() - started
    if args.out:
        write_predictions(df, args.out)
    else:
        df.to_csv(sys.stdout, index=False)
    print(f"{ref.display}: {summary(df, elapsed)}", file=sys.stderr)
    failed = df.loc[df["error"] != "", ["path", "error"]]
    for path, error in failed.head(20).itertuples(index=False):
        print(f"  unreadable: {path}: {error}", file=sys.stderr)
    if len(failed) == len(df):  # the rows are written, but a run that scored nothing has not done its job
        path, error = failed.iloc[0]
        raise UserError(f"none of the {len(df)} file(s) could be scored (first: {path}: {error})")
