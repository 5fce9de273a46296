"""Runs: one per stage execution (tuning trials as its children), and what a stage logs into the active one.

Every helper refuses to work without an active run, because MLflow's fluent API would otherwise open
one silently in the Default experiment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from galmorph.config import MlflowConfig
from galmorph.errors import UserError
from galmorph.io import file_md5
from galmorph.paths import repo_root
from galmorph.tracking import provenance, store
from galmorph.tracking.params import flatten_params

_SCHEMA_SAMPLE = 10_000


@contextlib.contextmanager
def start_run(
    cfg: MlflowConfig,
    stage: str,
    params: Any = None,
    *,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    system_metrics: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run per stage execution, with the stage's params and the provenance tags.

    Named after the stage and, under `dvc exp run`, the DVC experiment (`train@bally-tans`), which the run
    also carries as the tag dvc.exp_name. `system_metrics` (training and tuning runs) samples CPU, memory,
    disk and network (GPU with nvidia-ml-py) every cfg.system_metrics_s seconds into `system/...` metrics.

    `params`: see flatten_params. `run_id` reopens an existing run (evaluate and register attach to the
    training run): params already there with the same value are skipped, a different value is logged as
    `<stage>/<key>` (MLflow params are immutable), and the provenance tags go under `<stage>.` so the
    training run's own stay intact. An exception inside the block marks the run FAILED.
    """
    exp_id = store.experiment_id(cfg)
    flat = flatten_params(params) if params is not None else {}
    run_tags = provenance.provenance_tags(stage)
    if run_id is None:
        run_name = with_exp_name(run_name or stage)
    if run_id is not None:
        client = mlflow.MlflowClient()
        try:
            existing = client.get_run(run_id)
        except MlflowException:
            raise UserError(f"MLflow run {run_id} not found in {mlflow.get_tracking_uri()}") from None
        old_params = existing.data.params
        flat = {(k if k not in old_params else f"{stage}/{k}"): v for k, v in flat.items() if old_params.get(k) != v}
        if existing.data.tags.get("galmorph.stage") != stage:
            attached = existing.data.tags.get("galmorph.attached_stages", "")
            run_tags = {f"{stage}.{k}": v for k, v in run_tags.items() if not k.startswith("mlflow.")}
            run_tags["galmorph.attached_stages"] = ",".join(filter(None, [*attached.split(","), stage]))
    run_tags.update({k: str(v) for k, v in (tags or {}).items()})
    sample = system_metrics and cfg.system_metrics_s is not None
    if sample:
        mlflow.set_system_metrics_sampling_interval(cfg.system_metrics_s)
    with mlflow.start_run(
        run_id=run_id,
        experiment_id=exp_id if run_id is None else None,
        run_name=run_name,
        log_system_metrics=sample or None,
    ) as run:
        mlflow.set_tags(run_tags)
        if flat:
            mlflow.log_params(flat)
        yield run


def with_exp_name(name: str) -> str:
    """`name@<DVC experiment>` under `dvc exp run`, so the runs list says which experiment ran what."""
    exp_name = os.environ.get("DVC_EXP_NAME")
    return f"{name}@{exp_name}" if exp_name else name


def active_run() -> mlflow.ActiveRun:
    """The active run, or RuntimeError: the fluent API would silently open one in the Default experiment."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run: call this inside `with galmorph.tracking.runs.start_run(...)`")
    return run


def log_metrics(
    metrics: Mapping[str, Any],
    step: int | None = None,
    *,
    model_id: str | None = None,
    dataset: mlflow.data.dataset.Dataset | None = None,
) -> None:
    """Numbers of the active run; the trainer passes step=epoch so the UI draws curves per epoch. With
    `model_id` (a LoggedModel, m-...) they are also the model's own, so the UI's Models view and
    search_logged_models(order_by=...) rank models by them; `dataset` says which data they were measured on."""
    active_run()
    values = {}
    for key, value in metrics.items():
        try:
            if isinstance(value, str | bytes):
                raise TypeError
            values[key] = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"metric {key!r}: expected a number, got {value!r}") from None
    mlflow.log_metrics(values, step=step, model_id=model_id, dataset=dataset)


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """A file or a whole folder (reports, plots) into the active run's artifacts."""
    active_run()
    p = Path(path)
    if p.is_dir():
        mlflow.log_artifacts(str(p), artifact_path=artifact_path)
    elif p.is_file():
        mlflow.log_artifact(str(p), artifact_path=artifact_path)
    else:
        raise FileNotFoundError(f"{p}: no such file or folder to log")


def log_figure(fig: Any, artifact_file: str) -> None:
    """A matplotlib figure as an image artifact (the caller still owns and closes the figure)."""
    active_run()
    mlflow.log_figure(fig, artifact_file)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def log_dict(obj: Any, artifact_file: str) -> None:
    """A JSON (or .yaml) artifact; numpy values, paths and dataclasses are converted first."""
    active_run()
    mlflow.log_dict(json.loads(json.dumps(obj, default=_plain)), artifact_file)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Tags of the active run; values become strings, as MLflow stores them."""
    active_run()
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_dataset(
    df: pd.DataFrame, source_path: str | os.PathLike, *, name: str, context: str
) -> mlflow.data.dataset.Dataset:
    """Record the catalogue a run read (mlflow.log_input); the digest is the file's md5, the same hash
    dvc.lock records, so the UI's dataset and DVC's point at the same bytes. Returns the dataset, for metrics
    logged against it (log_metrics(dataset=...))."""
    active_run()
    digest = file_md5(source_path)
    path = Path(source_path).resolve()
    root = repo_root()
    source = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)  # as catalogues spell paths
    targets = "label" if "label" in df.columns else None
    with warnings.catch_warnings():
        # MLflow registers two equivalent local-file source classes and warns that it picked one; its
        # integer-column hint is about model signatures, not a record of which rows a run read
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted", UserWarning)
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer column", UserWarning)
        dataset = mlflow.data.from_pandas(df, source=source, name=name, digest=digest, targets=targets)
        if len(df) > _SCHEMA_SAMPLE:
            # MLflow infers the schema value by value in Python (~20 s for 600k rows); a sample says the same.
            # PandasDataset.schema is a cached_property, so the instance's dict answers first.
            sample = df.sample(n=_SCHEMA_SAMPLE, random_state=0)
            dataset.__dict__["schema"] = mlflow.data.from_pandas(sample, source=source, digest=digest).schema
    mlflow.log_input(dataset, context=context)
    return dataset


@contextlib.contextmanager
def start_child_run(
    run_name: str,
    params: Any = None,
    *,
    tags: Mapping[str, Any] | None = None,
    killed_on: tuple[type[BaseException], ...] = (),
) -> Iterator[mlflow.ActiveRun]:
    """A run nested under the active run (an Optuna trial under its study's run).

    No provenance tags: the parent holds them, and recomputing git status and DVC hashes would cost
    seconds per trial. The run ends FINISHED, KILLED when one of `killed_on` escapes (a pruned trial),
    FAILED on any other exception.
    """
    parent = active_run()
    run = mlflow.start_run(
        experiment_id=parent.info.experiment_id,  # else MLflow files the child under the Default experiment
        run_name=with_exp_name(run_name),
        nested=True,
        tags={k: str(v) for k, v in (tags or {}).items()},
    )
    try:
        if params is not None and (flat := flatten_params(params)):
            mlflow.log_params(flat)
        yield run
    except killed_on:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def run_exists(run_id: str, *, cfg: MlflowConfig | None = None) -> bool:
    """Whether the store has this run (a resumed study's parent may live in another tracking store)."""
    try:
        run = store.client(cfg).get_run(run_id)
    except MlflowException:
        return False
    return run.info.lifecycle_stage != "deleted"


def run_metrics(run_id: str, *, cfg: MlflowConfig | None = None) -> dict[str, float]:
    """The latest value of every metric of a run (e.g. to compare a challenger with the champion)."""
    return dict(store.client(cfg).get_run(run_id).data.metrics)


@contextlib.contextmanager
def quiet_artifact_copies() -> Iterator[None]:
    """No MLflow progress bar meanwhile (MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR): for copies of small local
    files, where a bar per file is noise in a command's output. For CLI commands, not threaded servers."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def download_run_file(
    run_id: str, artifact_path: str, dest: str | os.PathLike, *, cfg: MlflowConfig | None = None
) -> Path | None:
    """A file logged to a run, downloaded into `dest`; None when the run or the file is not there. Quietly:
    MLflow's progress bar for a file of a few kB (the promotion gate fetches four) is noise in a command's
    output."""
    import mlflow.artifacts

    store.client(cfg)
    try:
        with quiet_artifact_copies():
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dest))
    except (MlflowException, OSError):
        return None
    path = Path(local)
    return path if path.is_file() else None


def log_file_to_run(
    run_id: str, path: str | os.PathLike, artifact_path: str, *, cfg: MlflowConfig | None = None
) -> None:
    """Attach a file to an existing, finished run (e.g. a registered version's training run)."""
    store.client(cfg).log_artifact(run_id, str(path), artifact_path)


def logged_model_exists(model_id: str, *, cfg: MlflowConfig | None = None) -> bool:
    """Whether the store has this LoggedModel (a model logged in another store is not)."""
    store.client(cfg)
    try:
        mlflow.get_logged_model(model_id)
    except MlflowException:
        return False
    return True
