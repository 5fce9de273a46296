"""The dozen numbers people compare runs by: what `dvc metrics show` and `dvc exp show` print.

Every stage keeps its full JSON report (about 130 evaluation keys with intervals, TTA copies, data counts) for
the HTML report and MLflow; declared as DVC metrics they made `dvc exp show` a wall of `…`. This picks the
headline: test accuracy and macro F1 with their 95% intervals, calibrated ECE, accuracy on images from other
telescopes when evaluate.ood_manifest is set, training time and throughput, tuned trials, and the registry's
decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: evaluate's keys shown as they are (the ood_ ones only when an ood_manifest was evaluated).
EVALUATION_KEYS = (
    "test_accuracy",
    "test_accuracy_ci_low",
    "test_accuracy_ci_high",
    "test_macro_f1",
    "test_macro_f1_ci_low",
    "test_macro_f1_ci_high",
    "test_ece_calibrated",
    "test_confident_accuracy",
    "ood_accuracy",
    "ood_macro_f1",
)
TRAINING_KEYS = ("train_time_s", "images_per_s")

#: The headline's names in `reports/metrics.json`, short enough that `dvc exp show --only-changed` fits a 200-column
#: terminal (the long names made ~240 columns of headers alone). README "Comparing runs" has the legend.
COLUMNS = {
    "test_accuracy": "acc",
    "test_accuracy_ci_low": "acc_lo",
    "test_accuracy_ci_high": "acc_hi",
    "test_macro_f1": "f1",
    "test_macro_f1_ci_low": "f1_lo",
    "test_macro_f1_ci_high": "f1_hi",
    "test_ece_calibrated": "ece",
    "test_confident_accuracy": "acc_conf",
    "ood_accuracy": "ood_acc",
    "ood_macro_f1": "ood_f1",
    "train_time_s": "train_min",
    "images_per_s": "img_s",
    "tune_trials": "trials",
    "registered_version": "version",
    "promoted": "promoted",
    "champion_version": "champion",
}


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def headline_metrics(
    training: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    tuning: Mapping[str, Any] | None,
    registry: Mapping[str, Any],
) -> dict[str, Any]:
    """The headline from the train, evaluate, tune and register reports (keys absent from them are left out)."""
    out: dict[str, Any] = {}
    for key in EVALUATION_KEYS:
        if (value := _number(evaluation.get(key))) is not None:
            out[key] = value
    for key in TRAINING_KEYS:
        if (value := _number(training.get(key))) is not None:
            out[key] = value
    trials = (tuning or {}).get("trials") or {}
    if isinstance(trials, Mapping) and (complete := _number(trials.get("complete"))) is not None:
        out["tune_trials"] = int(complete)
    out["registered_version"] = registry.get("version")
    out["promoted"] = bool(registry.get("promoted"))
    out["champion_version"] = registry.get("champion_version")
    return out


def dvc_metrics(headline: Mapping[str, Any]) -> dict[str, Any]:
    """The headline as `reports/metrics.json` holds it: short column names, minutes of training, images/s as an
    integer and fractions to 4 decimals (what a terminal table needs; the reports keep every digit)."""
    out: dict[str, Any] = {}
    for key, value in headline.items():
        if key == "train_time_s" and value is not None:
            value = round(value / 60, 1)
        elif key == "images_per_s" and value is not None:
            value = round(value)
        elif isinstance(value, float):
            value = round(value, 4)
        out[COLUMNS[key]] = value
    return out
