"""The `evaluate` stage's work: the test split, the UNCERTAIN galaxies, the repeated splits and an optional
set from another telescope, into one summary, one flat metrics dict and one report.

Answers, in order: how good is the model on held-out galaxies (KPIs with 95% bootstrap intervals), can its
probabilities be trusted (ECE before/after temperature scaling, reliability), what does abstaining buy
(coverage vs accuracy), does it agree with the volunteers where the catalogue could not decide, how much
does the split alone move the numbers, and does it still work on images from elsewhere.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from galmorph.config import CLASSES, Params, PreprocessConfig, with_tuned
from galmorph.data.dataset import read_splits
from galmorph.errors import UserError
from galmorph.evaluation import plots
from galmorph.evaluation.calibration import fit_temperature
from galmorph.evaluation.folder import evaluate_labelled, read_labelled
from galmorph.evaluation.galleries import GallerySpec, render_gallery
from galmorph.evaluation.metrics import vote_agreement, vote_correlation
from galmorph.evaluation.scoring import ScoredSet, flat_kpis, score, uncertain_rows, write_set
from galmorph.evaluation.stability import repeated_split_columns, run_stability, summarize
from galmorph.models.inference import predict_logits
from galmorph.models.resnet import load_model
from galmorph.tracking import runs, store
from galmorph.training.features import load_feature_cache, read_meta

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Evaluation:
    summary: dict[str, Any]
    metrics: dict[str, float]


def mlflow_run_id(train_metrics: str | Path, key: str = "mlflow_run_id") -> str | None:
    """The training run's id from train.metrics (evaluate logs into that run), or `key`'s value; None when
    absent."""
    p = Path(train_metrics)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text()).get(key) or None
    except (json.JSONDecodeError, AttributeError):
        raise UserError(f"{p}: not a JSON object (expected the train stage's metrics)") from None


def logged_model_id(train_metrics: str | Path) -> str | None:
    """The LoggedModel the train stage logged (model_uri models:/m-...), or None."""
    uri = mlflow_run_id(train_metrics, "model_uri") or ""
    model_id = uri.removeprefix("models:/")
    return model_id if model_id.startswith("m-") and "/" not in model_id else None


def resolve_temperature(loaded: Any, splits: pd.DataFrame, params: Params) -> tuple[float, str]:
    """The train stage's temperature from the model file; a model file without a fitted one (T exactly 1,
    the default of an uncalibrated save) is calibrated here on the validation split."""
    if loaded.temperature != 1.0:
        return float(loaded.temperature), "fitted on the validation split by train (models/model.pt)"
    val = splits[splits["split"] == "val"]
    if val.empty:
        return 1.0, "none: the model file has T = 1 and there is no validation split to fit one"

    cfg = params.evaluate
    logits = predict_logits(
        loaded.model, val, loaded.preprocess, batch_size=cfg.batch_size, num_workers=cfg.num_workers, device=cfg.device
    )
    t = fit_temperature(logits, val["label_id"].to_numpy(dtype=np.int64))
    return t, f"fitted here on the validation split ({len(val):,} galaxies): the model file had T = 1"


def check_preprocess(loaded: Any, params: Params, model_path: str) -> None:
    if dataclasses.asdict(loaded.preprocess) != dataclasses.asdict(params.preprocess):
        raise UserError(
            f"{model_path}: trained with preprocess {dataclasses.asdict(loaded.preprocess)} but params.yaml says "
            f"{dataclasses.asdict(params.preprocess)}; retrain (`galmorph train` or `dvc repro`)"
        )


def evaluate_uncertain(
    uncertain: pd.DataFrame, loaded: Any, params: Params, temperature: float, out: Path
) -> tuple[dict[str, Any], dict[str, float]]:
    """Score the galaxies the catalogue flagged UNCERTAIN against their vote majority."""
    cfg = params.evaluate
    n_catalogue = len(uncertain)
    if cfg.uncertain_limit is not None and n_catalogue > cfg.uncertain_limit:
        # at survey scale there are hundreds of thousands: a seeded sample answers the question as well
        uncertain = uncertain.sample(n=cfg.uncertain_limit, random_state=cfg.seed).sort_index()
    rows, n_missing = uncertain_rows(uncertain)
    if rows.empty:
        reason = (
            f"none of the {len(uncertain):,} UNCERTAIN galaxies has an image file"
            if len(uncertain)
            else ("the catalogue has no UNCERTAIN galaxies")
        )
        return {"skipped_reason": reason}, {"uncertain_n_scored": 0.0}
    no_tta = dataclasses.replace(cfg, tta=False)
    scored = score(loaded.model, rows, loaded.preprocess, no_tta, temperature, name="UNCERTAIN galaxies")
    probs = scored.probs
    p_sp = rows["p_spiral"].to_numpy(dtype=np.float64)
    agreement = vote_agreement(probs, p_sp, rows["p_elliptical"].to_numpy(dtype=np.float64), cfg.abstain_threshold)
    rho = vote_correlation(probs, p_sp)
    section: dict[str, Any] = {
        "agreement": agreement,
        "n_missing_image": n_missing,
        "vote_spearman": rho,
        "n_catalogue": n_catalogue,
        "n_sampled": len(uncertain),
    }
    fig = plots.vote_fraction_figure(probs[:, 0], p_sp, None, "Model vs volunteers: UNCERTAIN galaxies", rho)
    section["figure"] = str(out / "figures" / "uncertain_votes.png")
    plots.save_figure(fig, section["figure"])
    section["galleries"] = _confident_call_galleries(
        scored, loaded.preprocess, cfg.gallery_size, cfg.abstain_threshold, out / "galleries"
    )
    flat = {f"uncertain_{k}": float(v) for k, v in agreement.items() if isinstance(v, int | float)}
    flat["uncertain_vote_spearman"] = rho
    flat["uncertain_n_missing_image"] = float(n_missing)
    flat["uncertain_n_catalogue"] = float(n_catalogue)
    return section, flat


def _confident_call_galleries(
    scored: ScoredSet, preprocess: PreprocessConfig, size: int, threshold: float, out: Path
) -> list[dict[str, Any]]:
    probs = scored.probs
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    entries = []
    for k, cls in enumerate(CLASSES):
        sel = np.flatnonzero((pred == k) & (conf >= threshold))
        spec = GallerySpec(
            f"uncertain_called_{cls}",
            f"UNCERTAIN in the catalogue, confidently called {cls} by the model",
            sel[np.argsort(-conf[sel], kind="stable")][:size],
        )
        path = out / f"{spec.name}.png"
        tiles = render_gallery(scored.catalogue, probs, spec, path, preprocess)
        entries.append({"name": spec.name, "title": spec.title, "file": str(path) if tiles else None, "tiles": tiles})
    return entries


def evaluate_stability(splits: pd.DataFrame, params: Params, out: Path) -> tuple[dict[str, Any], dict[str, float]]:
    if not params.evaluate.stability:
        return {"skipped_reason": "evaluate.stability is false"}, {}
    if not repeated_split_columns(splits):
        return {"skipped_reason": "no repeated splits (split.repeats is 0)"}, {}
    params, _ = with_tuned(params)  # the recipe the train stage used: params.yaml plus the tuned values of tune.out
    features = None
    if params.train.mode == "frozen" and read_meta(params.embed.out) is not None:
        features = load_feature_cache(params.embed.out, model_cfg=params.model, preprocess=params.preprocess)
    per_split = run_stability(splits, params, features=features)
    section = summarize(per_split)
    section["figure"] = str(out / "figures" / "stability.png")
    plots.save_figure(plots.stability_figure(per_split), section["figure"])
    flat = {f"stability_{k}": float(v) for k, v in section.items() if isinstance(v, int | float)}
    return section, flat


def evaluate_ood(loaded: Any, params: Params, out: Path) -> tuple[dict[str, Any] | None, dict[str, float]]:
    path = params.evaluate.ood_manifest
    if not path:
        return None, {}
    catalogue = read_labelled(path)
    section, flat = evaluate_labelled(catalogue, loaded, params.evaluate, out / "ood", name=f"Other images: {path}")
    return section, {f"ood_{k}": v for k, v in flat.items()}


def run(params: Params) -> Evaluation:
    """Everything the stage computes and writes under evaluate.out_dir (except metrics.json and MLflow)."""

    cfg = params.evaluate
    out = Path(cfg.out_dir)
    splits = read_splits(params.split.out)
    test = splits[splits["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise UserError(f"{params.split.out}: no rows with split == 'test'")
    loaded = load_model(params.train.out)
    check_preprocess(loaded, params, params.train.out)
    temperature, t_source = resolve_temperature(loaded, splits, params)

    scored = score(loaded.model, test, loaded.preprocess, cfg, temperature, name="Test split", ood=loaded.ood)
    test_section = write_set(scored, loaded.model, loaded.preprocess, cfg, out)
    metrics = {**flat_kpis("test", test_section), "temperature": temperature}

    uncertain_path = Path(params.join.uncertain_out)
    if uncertain_path.is_file():
        uncertain = pd.read_parquet(uncertain_path)
        u_section, u_flat = evaluate_uncertain(uncertain, loaded, params, temperature, out)
    else:
        u_section, u_flat = {"skipped_reason": f"{uncertain_path} not found (run `galmorph join`)"}, {}
    s_section, s_flat = evaluate_stability(splits, params, out)
    ood_section, ood_flat = evaluate_ood(loaded, params, out)
    metrics.update(u_flat | s_flat | ood_flat)

    summary = {
        "title": "galmorph evaluation",
        "subtitle": f"{params.train.out} on {params.split.out} (test split)",
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "notes": [] if math.isfinite(temperature) and temperature != 1.0 else [f"Temperature: {t_source}."],
        "sets": [test_section] + ([ood_section] if ood_section else []),
        "uncertain": u_section,
        "stability": s_section,
        "model": {
            "file": params.train.out,
            "arch": loaded.model_cfg.arch,
            "head": loaded.model_cfg.head,
            "temperature": round(temperature, 4),
            "temperature source": t_source,
            "preprocess": dataclasses.asdict(loaded.preprocess),
            "bootstrap resamples": cfg.bootstrap,
            "TTA views": ", ".join(cfg.tta_views) if cfg.tta else "off",
        },
    }
    return Evaluation(summary, metrics)


def log_to_mlflow(params: Params, metrics: dict[str, float], out_dir: str | Path) -> str:
    """Metrics and the whole evaluation folder into the training run (train.metrics' mlflow_run_id), or into a
    run of its own when train recorded none; returns the run id."""

    run_id = mlflow_run_id(params.train.metrics)
    finite = {k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
    try:
        store.use_store(params.mlflow)
        runs.run_metrics(run_id) if run_id else None
    except Exception:  # noqa: BLE001 - a deleted or foreign run: record the evaluation in a run of its own
        log.warning(
            "evaluate: MLflow run %s (from %s) is not in the store; logging to a new run", run_id, params.train.metrics
        )
        run_id = None
    model_id = logged_model_id(params.train.metrics)
    if model_id is not None and not runs.logged_model_exists(model_id, cfg=params.mlflow):
        model_id = None
    with runs.start_run(params.mlflow, "evaluate", [params.evaluate, params.preprocess], run_id=run_id) as run:
        splits = read_splits(params.split.out)
        test = runs.log_dataset(splits[splits["split"] == "test"], params.split.out, name="test", context="testing")
        # on the LoggedModel too, against the test split: the Models view ranks models (not only runs) by test
        # macro F1 and says what it was measured on
        runs.log_metrics(finite, model_id=model_id, dataset=test)
        runs.log_artifact(out_dir, "evaluation")
        return run.info.run_id
