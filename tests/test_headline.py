"""The headline metrics: what `dvc metrics show` / `dvc exp show` print, and the only DVC metric declared."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import yaml

from galmorph.evaluation.headline import COLUMNS, dvc_metrics, headline_metrics

from .conftest import REPO


def test_headline_picks_the_dozen_and_skips_what_is_absent():
    evaluation = {f"test_{k}": 0.9 for k in ("accuracy", "macro_f1", "ece_calibrated", "brier", "f1_spiral")}
    evaluation |= {"test_accuracy_ci_low": 0.85, "test_accuracy_ci_high": 0.95, "tta_test_accuracy": 0.91}
    evaluation |= {"ood_accuracy": 0.8, "test_macro_f1_ci_low": math.nan, "stability_n_splits": 3}
    training = {"train_time_s": 12.5, "images_per_s": 800.0, "val_loss": 0.3, "model_uri": "models:/m-1"}
    tuning = {"trials": {"complete": 7, "pruned": 3}}
    registry = {"version": 4, "promoted": False, "champion_version": 2, "reasons": ["..."]}
    got = headline_metrics(training, evaluation, tuning, registry)
    assert got == {
        "test_accuracy": 0.9, "test_accuracy_ci_low": 0.85, "test_accuracy_ci_high": 0.95, "test_macro_f1": 0.9,
        "test_ece_calibrated": 0.9, "ood_accuracy": 0.8, "train_time_s": 12.5, "images_per_s": 800.0,
        "tune_trials": 7, "registered_version": 4, "promoted": False, "champion_version": 2,
    }  # fmt: skip
    assert "tune_trials" not in headline_metrics(training, evaluation, None, registry)


def test_the_dvc_metric_has_short_names_and_rounded_values():
    """`dvc exp show` prints one column per key: short names and 4 decimals keep a dozen of them in a terminal."""
    headline = {"test_accuracy": 0.903478, "train_time_s": 1734.2, "images_per_s": 133.37, "promoted": True}
    headline |= {"registered_version": 3, "test_macro_f1_ci_low": 0.88912345}
    got = dvc_metrics(headline)
    assert got == {"acc": 0.9035, "train_min": 28.9, "img_s": 133, "promoted": True, "version": 3, "f1_lo": 0.8891}
    assert max(len(c) for c in COLUMNS.values()) <= 9 and len(set(COLUMNS.values())) == len(COLUMNS)


def test_dvc_metrics_show_prints_the_headline_only():
    """Declared as DVC metrics, every stage's report made `dvc metrics show` one row per file and ~300 columns."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = [name for name, stage in stages.items() if "metrics" in stage]
    assert declared == ["register"] and len(stages["register"]["metrics"]) == 1
    dvc = str(Path(sys.executable).with_name("dvc"))
    out = subprocess.run([dvc, "metrics", "show", "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    files = next(iter(json.loads(out.stdout).values()))["data"]  # the workspace
    assert list(files) == ["reports/metrics.json"], list(files)
    shown = files["reports/metrics.json"]["data"]
    assert 8 <= len(shown) <= 15 and "f1" in shown and "acc_lo" in shown, shown
