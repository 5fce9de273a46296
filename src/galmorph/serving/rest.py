"""The REST endpoint: `mlflow models serve` on a galmorph model, started the way the project needs it.

Run bare, `mlflow models serve -m models:/galmorph@champion` looks for the registry in ./mlflow.db (and leaves
an empty one there); here it gets the project's store, a model file trained elsewhere is first exported to an
MLflow model folder, and the server runs as galmorph's child so that a stop signal stops it and its workers
(tracking.ui.run_foreground).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from galmorph.config import MlflowConfig
from galmorph.serving.resolve import ModelRef
from galmorph.tracking import logged_model, store
from galmorph.tracking.ui import run_foreground


def rest_command(model_uri: str, host: str, port: int, workers: int) -> list[str]:
    """The `mlflow models serve` command line (the pyfunc in this environment: --env-manager local)."""
    return [
        *(sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"),
        *("-h", host, "-p", str(port), "-w", str(workers)),
    ]


def rest_environment(cfg: MlflowConfig, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: the project's store, and this environment's scripts (uvicorn) on PATH."""
    env = dict(os.environ if base is None else base)
    env["MLFLOW_TRACKING_URI"] = store.tracking_uri(cfg)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def serve(ref: ModelRef, cfg: MlflowConfig, *, host: str, port: int, workers: int) -> tuple[int, int | None]:
    """Serve `ref` until stopped; returns (the server's exit status, the stop signal galmorph got or None)."""
    store.use_store(cfg)  # a new SQLite store is created once, here, not by each worker
    with tempfile.TemporaryDirectory(prefix="galmorph-serve-") as tmp:
        uri = ref.uri
        if ref.version == "local" and Path(ref.uri).is_file():  # a models/model.pt: an MLflow model folder first
            uri = str(logged_model.export_classifier(ref.uri, Path(tmp) / "model"))
        return run_foreground(rest_command(uri, host, port, workers), env=rest_environment(cfg))
