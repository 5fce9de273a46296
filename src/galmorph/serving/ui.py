"""`galmorph ui`: the MLflow UI on the project's tracking store (what `make ui` runs).

Open the printed address, pick the experiment (mlflow.experiment), tick runs and press "Compare" to see
their params (dotted params.yaml keys), per-epoch curves and metrics side by side; see galmorph.tracking
for useful searches. With MLFLOW_TRACKING_URI pointing at a team server there is nothing to start.
"""

from __future__ import annotations

import argparse

from galmorph import tracking
from galmorph.config import Params


def main(params: Params, args: argparse.Namespace) -> None:
    tracking.run_ui(params.mlflow, host=args.host, port=args.port)
