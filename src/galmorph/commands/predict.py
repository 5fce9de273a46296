"""`galmorph predict`: classify image files, folders or globs (CSV/JSON/Parquet out), or the rows of a catalogue
(--catalogue: image paths or RA/Dec; CSV/ECSV/Parquet/FITS/VOTable out with every input column); a summary on
stderr.

Exits 1 when no file could be scored (the rows, each with its error, are still written). With --model FILE it
runs without a params.yaml (outside the repository): the model file carries its own preprocessing."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from galmorph.config import Params
from galmorph.data.catalogue import row_label, write_catalogue
from galmorph.data.fits import expand_band_sets
from galmorph.data.tables import check_new
from galmorph.errors import UserError
from galmorph.serving.catalogue import CatalogueRequest, open_catalogue, provenance, score_catalogue
from galmorph.serving.predict import OUTPUT_SUFFIXES, expand_inputs, score_files, summary, write_predictions
from galmorph.serving.resolve import load_model, resolve_model


def main(params: Params, args: argparse.Namespace) -> None:
    if getattr(args, "catalogue", None):
        if args.paths or args.bands:
            raise UserError("give image paths or --catalogue, not both")
        _catalogue(params, args)
        return
    if args.out and Path(args.out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"--out {args.out}: expected a .csv, .json or .parquet file")
    threshold = _threshold(params, args)
    fits = params.fits.with_hdu(args.hdu)
    paths = [*(expand_inputs(args.paths) if args.paths or not args.bands else []), *expand_band_sets(args.bands)]
    ref = resolve_model(args.model, params.mlflow)
    classifier = load_model(ref, params.mlflow)
    started = time.perf_counter()
    df = score_files(
        classifier,
        paths,
        batch_size=args.batch_size,
        workers=args.workers,
        tta=args.tta,
        threshold=threshold,
        fits=fits,
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


def _threshold(params: Params, args: argparse.Namespace) -> float:
    """--threshold, else evaluate.abstain_threshold: under it a galaxy is called `uncertain`."""
    threshold = params.evaluate.abstain_threshold if args.threshold is None else args.threshold
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: expected a probability between 0 and 1")
    return threshold


def _catalogue(params: Params, args: argparse.Namespace) -> None:
    """--catalogue: every row back with p_<class>..., label and error; cut-outs fetched for rows with a
    position and no image path (serving.catalogue)."""
    source = args.catalogue
    threshold = _threshold(params, args)
    if args.out:
        check_new(args.out, force=args.force)  # before any work: a known format, nothing replaced by surprise
    names = ("path_column", "ra_column", "dec_column", "size_column", "id_column", "service")
    request = CatalogueRequest(params.cutouts, **{name: getattr(args, name) for name in names})
    table, columns, cutouts = open_catalogue(source, request)
    ref = resolve_model(args.model, params.mlflow)
    classifier = load_model(ref, params.mlflow)
    started = time.perf_counter()
    result = score_catalogue(
        classifier,
        table,
        columns,
        source,
        cutouts=cutouts,
        service=request.service,
        batch_size=args.batch_size,
        workers=args.workers,
        tta=args.tta,
        threshold=threshold,
        fits=params.fits.with_hdu(args.hdu),
    )
    elapsed = time.perf_counter() - started
    meta = provenance(
        ref.display,
        ref.uri,
        ref.version,
        threshold=threshold,
        tta=args.tta,
        result=result,
        cutouts=cutouts,
        size_column=columns.size,
    )
    if args.out:
        write_catalogue(result.table, args.out, meta, force=args.force)
    else:
        result.table.write(sys.stdout, format="ascii.csv")
    renamed = {k: v for k, v in result.names.items() if k != v}
    if renamed:
        shown = ", ".join(f"{k} -> {v}" for k, v in renamed.items())
        print(f"the catalogue has columns named like the outputs: wrote {shown}", file=sys.stderr)
    if result.service is not None:
        print(
            f"cut-outs: {result.cutouts} from {result.service.name} ({result.cutouts_requested} requested, "
            f"{result.cutouts - result.cutouts_requested} from the cache in {cutouts.cache_dir})",
            file=sys.stderr,
        )
    frame = result.frame()
    print(f"{ref.display}: {summary(frame, elapsed, what='rows', failed='failed')}", file=sys.stderr)
    failed = [i for i, e in enumerate(result.errors) if e]
    for i in failed[:20]:
        print(f"  {row_label(table, columns, i)}: {result.errors[i]}", file=sys.stderr)
    if failed and len(failed) == len(table):
        i = failed[0]
        raise UserError(
            f"none of the {len(table)} row(s) could be scored (first: {row_label(table, columns, i)}: "
            f"{result.errors[i]})"
        )
