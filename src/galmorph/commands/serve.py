"""`galmorph serve`: the REST endpoint (`mlflow models serve`) on the project's store, and `galmorph export`."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path

from galmorph.config import Params
from galmorph.errors import UserError
from galmorph.io import check_port
from galmorph.serving import rest
from galmorph.serving.resolve import resolve_model
from galmorph.tracking import logged_model


def main(params: Params, args: argparse.Namespace) -> None:
    """`galmorph serve` and `galmorph export` (dispatched on the subcommand)."""
    if args.command == "export":
        export(args)
        return
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: expected at least 1")
    ref = resolve_model(args.model, params.mlflow)
    check_port(args.host, args.port)
    print(
        f"{ref.display}: REST on http://{args.host}:{args.port}/invocations (Ctrl-C stops it)",
        file=sys.stderr,
        flush=True,
    )
    rc, stopped_by = rest.serve(ref, params.mlflow, host=args.host, port=args.port, workers=args.workers)
    if stopped_by is None and rc != 0:
        raise UserError(f"mlflow models serve exited with status {rc} (see its messages above)")
    if stopped_by is not None:
        print(f"REST server stopped ({signal.Signals(stopped_by).name})", file=sys.stderr)


def export(args: argparse.Namespace) -> None:
    """A models/model.pt as an MLflow model folder; an existing OUT is replaced only with --force, and only
    when it is an MLflow model folder (it has an MLmodel file)."""
    out = Path(args.out)
    if out.exists():
        if not args.force:
            raise UserError(f"{out}: already exists (pass --force to replace an exported model there)")
        if not (out / "MLmodel").is_file():
            raise UserError(f"{out}: exists and is not an MLflow model folder (no MLmodel file); choose another OUT")
    tmp = out.with_name(f".{out.name}.export.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        logged_model.export_classifier(args.model_file, tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(f"{args.model_file} -> {out} (mlflow models serve -m {out}; galmorph batch --model {out})", file=sys.stderr)
