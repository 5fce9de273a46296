"""`galmorph web`: serve the upload page with the built-in threaded server (a lab, a class)."""

from __future__ import annotations

import argparse
import sys

from werkzeug.serving import make_server

from galmorph.config import Params
from galmorph.io import check_port
from galmorph.serving.web import build


def main(params: Params, args: argparse.Namespace) -> None:
    threshold = params.evaluate.abstain_threshold if args.threshold is None else args.threshold
    check_port(args.host, args.port)  # before loading the model; werkzeug would sys.exit() instead
    app, ref = build(
        args.model,
        params.mlflow,
        threshold=threshold,
        max_upload_mb=args.max_upload_mb,
        serve=params.serve,
        fits=params.fits,
    )
    server = make_server(args.host, args.port, app, threaded=True)
    print(f"{ref.display} on http://{args.host}:{server.server_port} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
