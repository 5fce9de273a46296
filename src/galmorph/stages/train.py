"""`galmorph train`: fit the final model (tuned params from tune.out when present), calibrate it on the
validation split, write models/model.pt, the metrics and curves, and log everything to one MLflow run.

Under torchrun every process trains; rank 0 alone talks to MLflow and writes files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from galmorph import tracking
from galmorph.config import Params, with_overrides
from galmorph.data.dataset import read_splits, resolve_image_path
from galmorph.errors import UserError
from galmorph.evaluation.calibration import fit_temperature, nll
from galmorph.evaluation.plots import confusion_figure
from galmorph.io import write_csv, write_json
from galmorph.models.resnet import save_model
from galmorph.paths import repo_root
from galmorph.training import report
from galmorph.training.distributed import is_main_process
from galmorph.training.features import load_feature_cache
from galmorph.training.loop import fit


def main(params: Params, args: argparse.Namespace) -> None:
    params = tuned(params)
    cfg = params.train
    catalogue = read_splits(params.split.out)
    features = None
    if cfg.mode == "frozen":
        features = load_feature_cache(params.embed.out, model_cfg=params.model, preprocess=params.preprocess)
    kwargs = {"checkpoint_dir": cfg.checkpoint_dir, "resume": args.resume, "features": features}
    if not is_main_process():
        fit(catalogue, params, **kwargs)
        return
    sections = {s: getattr(params, s) for s in ("model", "train", "preprocess", "augment", "embed")}
    with tracking.start_run(params.mlflow, "train", sections) as run:
        tracking.log_dataset(catalogue, params.split.out, name="splits", context="training")
        logged: set[int] = set()

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            tracking.log_metrics(metrics, step=epoch)
            logged.add(epoch)

        result = fit(catalogue, params, on_epoch=on_epoch, **kwargs)
        for row in result.history:  # epochs that ran before a --resume
            if int(row["epoch"]) not in logged:
                tracking.log_metrics(row, step=int(row["epoch"]))
        temperature = fit_temperature(result.val_logits, result.val_labels)
        metrics = report.summary(result, temperature, nll(result.val_logits, result.val_labels, temperature))
        save_model(cfg.out, result.model, params.model, params.preprocess, temperature=temperature, metrics=metrics)
        curves = report.curves_frame(result.history)
        write_csv(cfg.curves, curves)
        tracking.log_artifact(cfg.curves, "train")
        tracking.log_figure(report.curves_figure(curves, result.best_epoch), "train/curves.png")
        counts = report.confusion_counts(result.val_logits, result.val_labels)
        tracking.log_figure(confusion_figure(counts, title="Validation, best epoch"), "train/confusion_val.png")
        tracking.log_metrics({f"final_{k}": v for k, v in metrics.items() if isinstance(v, float | int)})
        val = catalogue[catalogue["split"] == "val"]
        example = resolve_image_path(str(val["image_path"].iloc[0]), repo_root())
        uri = tracking.log_classifier(
            result.model, params.model, params.preprocess, temperature=temperature, input_example=example
        )
        write_json(cfg.metrics, {**metrics, "mlflow_run_id": run.info.run_id, "model_uri": uri})
    print(
        f"train: best epoch {result.best_epoch} val acc {metrics['val_acc']:.4f} T={temperature:.3f}; wrote "
        f"{cfg.out}, {cfg.metrics}, {cfg.curves}; MLflow run {run.info.run_id}"
    )


def tuned(params: Params) -> Params:
    """params with the tuned values of tune.out (flat keys such as train.lr) when that file exists."""
    path = Path(params.tune.out)
    if not path.is_file():
        return params
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    flat = raw.get("params", raw) if isinstance(raw, dict) else None
    if not isinstance(flat, dict):
        raise UserError(f"{path}: expected a mapping of SECTION.KEY: value (e.g. train.lr: 0.001)")
    if not flat:
        return params
    print(f"train: using tuned params from {path}: {', '.join(f'{k}={v}' for k, v in flat.items())}")
    return with_overrides(params, flat, str(path))
