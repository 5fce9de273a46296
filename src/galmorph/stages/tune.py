"""`galmorph tune`: an Optuna study over tune.space, every trial a fit() and a nested MLflow run; writes the
best trial's values to tune.out for `galmorph train`. Re-running resumes the study; more workers join it
with `galmorph tune --storage postgresql://...` on any machine (same params and splits).
`galmorph tune --show` prints the study's best trials."""

from __future__ import annotations

import argparse

from galmorph import tuning
from galmorph.config import Params
from galmorph.data.dataset import read_splits
from galmorph.training.features import load_feature_cache, read_meta


def main(params: Params, args: argparse.Namespace) -> None:
    cfg = params.tune
    catalogue = read_splits(params.split.out)
    storage = tuning.storage_url(cfg.storage, args.storage)
    frozen = tuning.needs_features(params)
    if cfg.n_trials == 0 and not args.show:
        # tuning switched off: train then uses params.yaml as it is (tune.out must still exist for DVC)
        tuning.write_best_params(cfg.out, {"params": {}, "note": "tune.n_trials is 0: no study was run"})
        print(f"tune: skipped (tune.n_trials is 0); wrote {cfg.out} with no tuned values")
        return
    if args.show:
        tuning.show(params, catalogue, storage, read_meta(params.embed.out) if frozen else None)
        return
    features = None
    if frozen:
        features = load_feature_cache(params.embed.out, model_cfg=params.model, preprocess=params.preprocess)
    outcome = tuning.run_study(
        catalogue,
        params,
        features=features,
        storage=storage,
        worker_trials=args.n_trials,
        dataset_path=params.split.out,
    )
    document = tuning.best_params_document(outcome, cfg.metric)
    tuning.write_best_params(cfg.out, document)
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in document["params"].items())
    print(
        f"tune: best trial {document['trial']} {cfg.metric} {document['value']:.4f} ({shown}); this worker ran "
        f"{outcome.ran} trial(s); wrote {cfg.out}; MLflow run {outcome.parent_run_id}; "
        f"optuna-dashboard {tuning.redact(storage)}"
    )
