"""`galmorph ui`: the MLflow UI on the project's tracking store (what `make ui` runs)."""

from __future__ import annotations

import argparse
import signal
import sys

from galmorph.config import Params
from galmorph.io import check_port
from galmorph.tracking import store, ui


def main(params: Params, args: argparse.Namespace) -> None:
    uri = store.tracking_uri(params.mlflow)
    if ui.is_server(uri):
        print(f"runs are on the tracking server {uri}: open it in a browser", file=sys.stderr)
        return
    check_port(args.host, args.port)
    store.experiment_id(params.mlflow)  # the experiment exists and is marked as model training: runs come first
    print(f"MLflow UI on http://{args.host}:{args.port} for {uri} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    stopped_by = ui.serve(params.mlflow, args.host, args.port)
    if stopped_by is not None:
        print(f"MLflow UI stopped ({signal.Signals(stopped_by).name})", file=sys.stderr)
