"""register: the trained model becomes a new version of the registered model (@challenger), then the
promotion gate decides whether it becomes @champion. A refused promotion is recorded, not an error: the
pipeline still succeeds and the report (a DVC metric) says why; `galmorph promote --force` overrides.

`galmorph register --model FILE` (not the stage) registers a model file trained elsewhere instead: a new
version with @challenger, not promoted and no stage files written (serving.model_file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from galmorph.config import Params, with_tuned
from galmorph.errors import UserError
from galmorph.evaluation.headline import dvc_metrics, headline_metrics
from galmorph.io import write_json
from galmorph.models import resnet
from galmorph.serving import promotion
from galmorph.tracking import registry as mlflow_registry
from galmorph.tracking import runs


def _read_json(path: str, what: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: {what} not found (run the stage that writes it first: `dvc repro`)")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def run_links(run_id: str | None) -> dict[str, str | None]:
    """Where an experiment's results live in MLflow: its training run (which names its LoggedModel and, in the tag
    registry.version, the version). One id: three made `dvc exp show --only-changed` too wide for a terminal."""
    return {"mlflow_run_id": run_id}


def register_file(params: Params, model_file: str) -> None:
    """`galmorph register --model FILE`: print the version and the command that evaluates and gates it."""
    from galmorph.serving.model_file import register_model_file

    name = params.mlflow.registered_model
    registered = register_model_file(name, model_file, params.mlflow)
    version = registered.version.version
    what = "registered version" if registered.new else "this model is already version"
    print(f"{name}: {what} {version} (@{promotion.CHALLENGER}) from {model_file}; not promoted")
    print(
        f"to score it (and @{promotion.CHAMPION}) on the test split ({params.split.out}) and gate it: "
        f"galmorph promote --version {version} --rescore"
    )


def main(params: Params, args: argparse.Namespace) -> None:
    if getattr(args, "model", None):
        register_file(params, args.model)
        return
    trained = _read_json(params.train.metrics, "train.metrics")
    if not trained.get("model_uri"):
        raise UserError(f"{params.train.metrics}: no 'model_uri' (the train stage logs the model and writes it)")
    metrics = _read_json(params.evaluate.metrics, "evaluate.metrics")
    if not Path(params.split.out).is_file():
        raise UserError(f"{params.split.out}: splits table not found (run `dvc repro split`)")
    run_id = trained.get("mlflow_run_id")
    tags = promotion.version_tags(
        metrics,
        pd.read_parquet(params.split.out),
        run_id=run_id,
        model_uri=trained["model_uri"],
        data_source=params.data.source,
    )
    name = params.mlflow.registered_model
    # a rerun after Ctrl-C (or a retrain to the same weights) registers nothing new
    registered = promotion.register_version(
        name, trained["model_uri"], tags, params.mlflow, digest=resnet.model_digest(params.train.out)
    )
    version = registered.version
    # this version, by number: @challenger may already be another run's (parallel `dvc exp run`s share mlruns/)
    result = promotion.promote(name, params.register, params.mlflow, version=version.version)
    report = {**promotion.promotion_report(result), "new_version": registered.new}
    write_json(params.register.report, report)
    tuning = yaml.safe_load(Path(params.tune.out).read_text()) if Path(params.tune.out).is_file() else None
    headline = headline_metrics(trained, metrics, tuning, report)
    write_json(params.register.headline, dvc_metrics(headline))
    # DVC metrics are numbers only: the run id goes in a file dvc.yaml declares as top-level params, so
    # `dvc exp show` lists each experiment's MLflow run beside its metrics
    write_json(params.register.links, run_links(run_id))
    if registered.new:  # the version's model card, in the registry UI
        effective, tuned = with_tuned(params)
        recipe = {
            "arch": effective.model.arch,
            "head": effective.model.head,
            "mode": effective.train.mode,
            "image px": effective.preprocess.image_size,
            "epochs run": trained.get("epochs_run", "?"),
        }
        card = promotion.model_card(version, headline, recipe, tuned)
        mlflow_registry.set_version_description(name, version.version, card, cfg=params.mlflow)
    if run_id:
        # the training run says which registry version it became
        with runs.start_run(params.mlflow, "register", params.register, run_id=run_id):
            runs.set_tags({"registry.name": name, "registry.version": version.version})
    what = "registered version" if registered.new else "this model is already version"
    print(f"{name}: {what} {version.version} (@{promotion.CHALLENGER}); {result.note}")
    for warning in result.decision.warnings:
        print(f"warning: {warning}")
