"""Which MLflow store the project talks to, and its one experiment.

The default store is SQLite at <repo>/mlruns/mlflow.db with artifacts under <repo>/mlruns/artifacts, both
absolute, so `dvc exp run --temp/--queue` (which runs in <repo>/.dvc/tmp/exps/...) still logs to the
repo's store; `mlflow.tracking_uri` in params.yaml or MLFLOW_TRACKING_URI (a team server) override it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from filelock import FileLock, Timeout
from mlflow.exceptions import MlflowException

from galmorph.config import MlflowConfig
from galmorph.errors import UserError
from galmorph.paths import repo_root

STORE_DIR = "mlruns"
"""The local store's folder under the repo root: mlflow.db plus artifacts/."""
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
"""Marks the experiment as model training, so the MLflow 3 UI opens on runs and models, not GenAI traces."""
INIT_LOCK_TIMEOUT_S = 300.0
"""How long a process waits for another that is creating a new SQLite store's tables."""


def tracking_uri(cfg: MlflowConfig) -> str:
    """MLFLOW_TRACKING_URI > mlflow.tracking_uri > sqlite:///<repo>/mlruns/mlflow.db (always absolute)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return _check_uri(env, "MLFLOW_TRACKING_URI")
    if cfg.tracking_uri:
        return _check_uri(cfg.tracking_uri, "params: mlflow.tracking_uri")
    return f"sqlite:///{repo_root() / STORE_DIR / 'mlflow.db'}"


def _check_uri(uri: str, where: str) -> str:
    """Refuse file stores (MLflow 3 does) and anchor a relative SQLite path at the repo root."""
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        raise UserError(
            f"{where}: {uri!r} is a file store, which MLflow 3 refuses; use sqlite:///path/to/mlflow.db "
            "or a tracking server URL such as http://host:5000"
        )
    if scheme == "sqlite":
        db = sqlite_path(uri)
        if db is not None and not db.is_absolute():
            # `dvc exp run --temp` runs in .dvc/tmp/exps/...: a cwd-relative database would be lost there
            return f"sqlite:///{repo_root() / db}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for an in-memory database)."""
    rest = uri[len("sqlite://") :]
    if rest in ("", "/", "/:memory:"):
        return None
    return Path(rest[1:]) if rest.startswith("/") else Path(rest)


def artifact_root(uri: str) -> str | None:
    """Where experiments created on a SQLite store keep artifacts: <db folder>/artifacts (a file URI).

    None for a tracking server, whose own artifact settings apply.
    """
    db = sqlite_path(uri) if uri.startswith("sqlite:") else None
    if db is None:
        return None
    return (db.parent / "artifacts").as_uri()


def use_store(cfg: MlflowConfig) -> str:
    """Point the mlflow client (runs and registry) at the project's store; returns the URI."""
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:") and (db := sqlite_path(uri)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        _create_sqlite_store(uri, db)
    mlflow.set_tracking_uri(uri)
    return uri


def _create_sqlite_store(uri: str, db: Path) -> None:
    """Create a new SQLite store's tables one process at a time: MLflow creates and migrates them on first
    use without a lock, so two processes starting on a new store (gunicorn workers, `dvc queue start -j2`)
    can both run the migrations and one dies on the other's half-made schema. Every process takes the lock
    (a flock, microseconds) so that none can see a store that another is still creating."""
    try:
        lock = FileLock(db.with_name(db.name + ".init.lock"), timeout=INIT_LOCK_TIMEOUT_S)
        lock.acquire()
    except Timeout:
        raise UserError(
            f"{db}: another process has been creating this MLflow store for over {INIT_LOCK_TIMEOUT_S:.0f} s"
        ) from None
    except OSError:  # a read-only folder: nobody creates a store there
        return
    try:
        if not db.exists() or db.stat().st_size == 0:
            mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates the tables
    finally:
        lock.release()


def client(cfg: MlflowConfig | None) -> mlflow.MlflowClient:
    """A client on the project's store (or on whatever store is current when cfg is None)."""
    if cfg is not None:
        use_store(cfg)
    return mlflow.MlflowClient()


def experiment_id(cfg: MlflowConfig) -> str:
    """The project's one experiment (mlflow.experiment), created on first use with its artifact location."""
    uri = use_store(cfg)
    mlflow_client = mlflow.MlflowClient(tracking_uri=uri)
    exp = mlflow_client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise UserError(
                f"mlflow.experiment {cfg.experiment!r} is deleted in {uri}; restore it in the UI "
                "(or `mlflow experiments restore`) or choose another name"
            )
        _mark_kind(mlflow_client, exp.experiment_id, exp.tags)
        return exp.experiment_id
    root = artifact_root(uri)
    folder = re.sub(r"[^\w.-]", "_", cfg.experiment)
    location = f"{root}/{folder}" if root else None
    try:
        return mlflow_client.create_experiment(cfg.experiment, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException:
        # another process (a queued `dvc exp`, a parallel tuning worker) created it first
        exp = mlflow_client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def _mark_kind(mlflow_client: mlflow.MlflowClient, exp_id: str, tags: dict[str, str]) -> None:
    """Tag an experiment made before galmorph marked its kind (or by someone else's code)."""
    for key, value in EXPERIMENT_KIND.items():
        if key not in tags:
            mlflow_client.set_experiment_tag(exp_id, key, value)
