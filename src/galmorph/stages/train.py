"""`galmorph train`: fit the final model (tuned params from tune.out when present), calibrate it on the
validation split, write models/model.pt, the metrics and curves, and log everything to one MLflow run.

Under torchrun every process trains; rank 0 alone talks to MLflow and writes files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from galmorph.config import Params, with_tuned
from galmorph.data.dataset import read_splits
from galmorph.evaluation.calibration import fit_temperature, nll
from galmorph.evaluation.plots import confusion_figure
from galmorph.io import write_csv, write_json
from galmorph.models.ood import check_quantile
from galmorph.models.resnet import save_model
from galmorph.paths import repo_root, resolve_path
from galmorph.tracking import logged_model, runs
from galmorph.training import curves
from galmorph.training.distributed import is_main_process
from galmorph.training.features import load_feature_cache
from galmorph.training.loop import check_inputs, fit
from galmorph.training.ood import fit_ood


def main(params: Params, args: argparse.Namespace) -> None:
    tuned, flat = with_tuned(params)
    if flat:
        shown = ", ".join(f"{k}={v}" for k, v in flat.items())
        print(f"train: using tuned params from {Path(params.tune.out)}: {shown}")
    params = tuned
    cfg = params.train
    check_quantile(cfg.ood_quantile)  # before the hours of training, not after
    catalogue = read_splits(params.split.out)
    check_inputs(catalogue, params)  # a bad setting or table row: before the MLflow run, not a second into it
    features = None
    if cfg.mode == "frozen":
        features = load_feature_cache(params.embed.out, model_cfg=params.model, preprocess=params.preprocess)
    kwargs = {"checkpoint_dir": cfg.checkpoint_dir, "resume": args.resume, "features": features}
    if not is_main_process():
        fit(catalogue, params, **kwargs)
        return
    sections = {s: getattr(params, s) for s in ("model", "train", "preprocess", "augment", "embed")}
    with runs.start_run(params.mlflow, "train", sections, system_metrics=True) as run:
        runs.log_dataset(catalogue, params.split.out, name="splits", context="training")
        logged: set[int] = set()

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            runs.log_metrics(metrics, step=epoch)
            logged.add(epoch)

        result = fit(catalogue, params, on_epoch=on_epoch, **kwargs)
        for row in result.history:  # epochs that ran before a --resume
            if int(row["epoch"]) not in logged:
                runs.log_metrics(row, step=int(row["epoch"]))
        temperature = fit_temperature(result.val_logits, result.val_labels)
        metrics = curves.summary(result, temperature, nll(result.val_logits, result.val_labels, temperature))
        if cfg.pseudo:
            metrics["pseudo_images"] = result.pseudo_images
        ood = fit_ood(result.model, catalogue, params)
        if ood is not None:
            metrics["ood_shrinkage"] = ood.shrinkage
            print(f"train: out-of-distribution detector fitted (Ledoit-Wolf shrinkage {ood.shrinkage:.3f})")
        save_model(
            cfg.out, result.model, params.model, params.preprocess, temperature=temperature, metrics=metrics, ood=ood
        )
        curves_df = curves.curves_frame(result.history)
        write_csv(cfg.curves, curves_df)
        runs.log_artifact(cfg.curves, "train")
        runs.log_figure(curves.curves_figure(curves_df, result.best_epoch), "train/curves.png")
        counts = curves.confusion_counts(result.val_logits, result.val_labels)
        runs.log_figure(confusion_figure(counts, title="Validation, best epoch"), "train/confusion_val.png")
        runs.log_metrics({f"final_{k}": v for k, v in metrics.items() if isinstance(v, float | int)})
        val = catalogue[catalogue["split"] == "val"]
        example = resolve_path(str(val["image_path"].iloc[0]), repo_root())
        uri = logged_model.log_classifier(
            result.model, params.model, params.preprocess, temperature=temperature, input_example=example, ood=ood
        )
        write_json(cfg.metrics, {**metrics, "mlflow_run_id": run.info.run_id, "model_uri": uri})
    print(
        f"train: best epoch {result.best_epoch} val acc {metrics['val_acc']:.4f} T={temperature:.3f}; wrote "
        f"{cfg.out}, {cfg.metrics}, {cfg.curves}; MLflow run {run.info.run_id}"
    )
