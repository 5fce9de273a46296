"""Score registered versions on the current test split, so the gate compares like with like.

A champion evaluated on an older split (before new data arrived) cannot be compared with a challenger
evaluated on today's: both are run over the same images here, through the shipped pyfunc (temperature
included, so the ECE is the calibrated one), and the results replace their test tags.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from galmorph.config import MlflowConfig
from galmorph.errors import UserError
from galmorph.evaluation.metrics import classification_metrics, flat_metrics
from galmorph.serving.predict import score_files
from galmorph.serving.promotion import (
    ECE_KEY,
    F1_KEY,
    SPLIT_KEY,
    now,
    rescored_predictions_artifact,
    test_split_digest,
)
from galmorph.serving.resolve import ModelRef, load_model
from galmorph.tracking import registry as mlflow_registry
from galmorph.tracking import runs
from galmorph.tracking.registry import VersionInfo


def rescore(
    name: str,
    versions: list[VersionInfo],
    splits: pd.DataFrame,
    mlflow_cfg: MlflowConfig,
    *,
    n_bins: int = 15,
    batch_size: int = 64,
    workers: int = 2,
) -> dict[str, dict[str, float]]:
    """Score versions on the current test split and store the results as their test tags.

    For comparing a challenger with a champion that was evaluated on an older split (new data arrived):
    both are run over the same images here, so the gate compares like with like. The probabilities come
    from the pyfunc, temperature included, so the ECE is the calibrated one.
    """
    digest = test_split_digest(splits)
    test = splits[splits["split"] == "test"]
    labels = test["label_id"].to_numpy()
    results = {}
    for version in versions:
        classifier = load_model(ModelRef(version.uri, name, version.version), mlflow_cfg)
        scored = score_files(classifier, test["image_path"].tolist(), batch_size=batch_size, workers=workers)
        ok = (scored["error"] == "").to_numpy()
        if not ok.any():
            raise UserError(
                f"rescoring version {version.version}: no test image could be read (first: {scored['error'].iloc[0]})"
            )
        probs = scored[[f"p_{c}" for c in classifier.classes]].to_numpy()[ok]
        flat = flat_metrics("test", classification_metrics(probs, labels[ok], n_bins=n_bins, n_resamples=0))
        metrics = {F1_KEY: flat["test_macro_f1"], ECE_KEY: flat["test_ece"], "test_accuracy": flat["test_accuracy"]}
        tags = {k: repr(v) for k, v in metrics.items()}
        tags.update({SPLIT_KEY: digest, "rescored_at": now(), "rescored_unreadable": str(int((~ok).sum()))})
        if version.tags.get(SPLIT_KEY) not in (None, digest):
            tags["previous_test_split_digest"] = version.tags[SPLIT_KEY]
        mlflow_registry.set_version_tags(name, version.version, tags, cfg=mlflow_cfg)
        _keep_predictions(version, test[ok], probs, classifier.classes, digest, mlflow_cfg)
        results[version.version] = metrics
    return results


def _keep_predictions(
    version: VersionInfo,
    test: pd.DataFrame,
    probs: np.ndarray,
    classes: Sequence[str],
    digest: str,
    mlflow_cfg: MlflowConfig,
) -> None:
    """The rescored per-galaxy predictions, in the version's training run: the gate's paired test reads them
    (only every test galaxy scored makes them match the split digest)."""
    run_id = version.run_id or version.tags.get("training_run_id")
    if not run_id or run_id == "unknown":
        return
    frame = pd.DataFrame({"galaxy_id": test["galaxy_id"].astype(str).to_numpy(), "label": test["label"].to_numpy()})
    for i, c in enumerate(classes):
        frame[f"p_{c}"] = probs[:, i]
    with tempfile.TemporaryDirectory(prefix="galmorph-rescore-") as tmp:
        path = Path(tmp) / "predictions.csv"
        frame.to_csv(path, index=False)
        runs.log_file_to_run(run_id, path, str(Path(rescored_predictions_artifact(digest)).parent), cfg=mlflow_cfg)
