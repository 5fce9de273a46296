"""The MLflow UI on the project's store: `mlflow server` with the store's own artifact folder."""

from __future__ import annotations

import subprocess
import sys
from urllib.parse import urlparse

from galmorph.config import MlflowConfig
from galmorph.errors import UserError
from galmorph.tracking import store


def ui_command(cfg: MlflowConfig, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow server` command line that shows the project's store (artifacts served from mlruns/)."""
    uri = store.tracking_uri(cfg)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    root = store.artifact_root(uri)
    if root:
        cmd += ["--artifacts-destination", root]
    return cmd + ["--workers", "1"]


def is_server(uri: str) -> bool:
    """Whether the runs live on a tracking server, which already serves its own UI."""
    return urlparse(uri).scheme in ("http", "https")


def serve(cfg: MlflowConfig, host: str = "127.0.0.1", port: int = 5000) -> None:
    """Run the UI in the foreground until Ctrl-C."""
    uri = store.tracking_uri(cfg)
    if uri.startswith("sqlite:") and (db := store.sqlite_path(uri)) is not None:
        (db.parent / "artifacts").mkdir(parents=True, exist_ok=True)
    rc = subprocess.call(ui_command(cfg, host, port))
    if rc not in (0, -2, 130):
        raise UserError(f"mlflow server exited with status {rc} (see its messages above)")
