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
    "ood_accuracy",
    "ood_macro_f1",
)
TRAINING_KEYS = ("train_time_s", "images_per_s")


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
