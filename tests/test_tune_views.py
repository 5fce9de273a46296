"""Where a person compares the trials, in a real headless chromium (marker browser): optuna-dashboard on the
study's storage, and MLflow's compare view of the trial runs and its Models view, on a small real study.

The screenshots go to GALMORPH_SCREENSHOT_DIR (default: the git-ignored reports/web/); with
GALMORPH_UPDATE_DOCS=1 they also replace the README's images in docs/, so those show what the current code
and UIs do: `GALMORPH_UPDATE_DOCS=1 .venv/bin/pytest -m browser tests/test_tune_views.py`."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import mlflow
import pytest
import requests

from galmorph.config import Params, replace
from galmorph.tracking import logged_model, provenance, runs, ui
from galmorph.training.features import build_feature_cache
from galmorph.tuning.study import StudyOutcome
from galmorph.tuning.worker import run_study
from tests.conftest import REPO
from tests.http_utils import free_port
from tests.serving_utils import TINY_MODEL, TINY_PREPROCESS, tiny_network, wait_until_answers
from tests.training_utils import make_catalogue, tiny_params

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 1280, "height": 800}
TRIALS = 6
#: What MLflow's UI remembers once a person has closed its assistant panel and chosen "Model training"
#: (its Models view, not GenAI's agent versions): set before the page loads, so screenshots show the runs.
MLFLOW_UI_CHOICES = {
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.workflowType_v1": json.dumps("machine_learning"),
}
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}  # nothing leaves the machine


def _start(spawn, cmd: list[str], log: Path) -> subprocess.Popen:
    """A server, stopped with everything it started when the test ends (`spawn`)."""
    with log.open("w") as out:  # a file, not a pipe: a server that outlived the test would hold a pipe open
        return spawn(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **QUIET})


def _tune_params(params: Params, tmp_path: Path) -> Params:
    """Tiny training params and a study whose trials all complete (random sampling, no pruning), on val_loss:
    the tiny galaxies are too easy for F1 to differ between trials."""
    p = tiny_params(params, tmp_path)
    tune = replace(
        p.tune,
        n_trials=TRIALS,
        epochs=3,
        startup_trials=TRIALS,
        metric="val_loss",
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        out=str(tmp_path / "best_params.yaml"),
        plots_dir=str(tmp_path / "tune"),
    )
    return dataclasses.replace(p, tune=tune, mlflow=replace(p.mlflow, experiment="galmorph"))


def _study_and_models(p: Params, tmp_path: Path) -> StudyOutcome:
    """A real study of tiny frozen-mode heads, then two logged models with test metrics of their own (as train
    and evaluate leave them) in the same experiment."""
    catalogue = make_catalogue(tmp_path / "data", n=40, size=48)
    features = build_feature_cache(catalogue, p.model, p.preprocess, p.embed, device="cpu", progress=False)
    outcome = run_study(catalogue, p, features=features, storage=p.tune.storage, plots=False, progress=False)
    for seed, (f1, ece) in enumerate([(0.91, 0.031), (0.94, 0.022)]):
        with runs.start_run(p.mlflow, "train", {"train": p.train}):
            uri = logged_model.log_classifier(tiny_network(seed), TINY_MODEL, TINY_PREPROCESS, temperature=1.5)
            runs.log_metrics({"test_macro_f1": f1, "test_ece_calibrated": ece}, model_id=uri.removeprefix("models:/"))
    return outcome


def _shoot(page, name: str, **kwargs) -> Path:
    """Screenshot into the screenshot folder; with GALMORPH_UPDATE_DOCS=1 also over the README's docs/<name>."""
    shots = Path(os.environ.get("GALMORPH_SCREENSHOT_DIR") or REPO / "reports" / "web")  # git-ignored
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / name), **kwargs)
    if os.environ.get("GALMORPH_UPDATE_DOCS") == "1":
        shutil.copyfile(shots / name, REPO / "docs" / name)
    return shots / name


def _choose(page, select_id: str, titles: list[str]) -> None:
    """Toggle options of one of the compare page's multi-selects (a click on a chosen one drops it)."""
    page.locator(".du-bois-light-select", has=page.locator(f"#{select_id}")).click()
    for title in titles:
        page.locator(f'.du-bois-light-select-dropdown [title="{title}"]').click()
    page.keyboard.press("Escape")


def test_optuna_dashboard_and_mlflow_show_the_trials_side_by_side(
    params, mlflow_uri, tmp_path, spawn, browser, monkeypatch
):
    from playwright.sync_api import expect

    mlflow_port, dashboard_port = free_port(), free_port()
    monkeypatch.setattr(provenance, "provenance_tags", lambda stage: {"galmorph.stage": stage})  # no git/DVC
    p = _tune_params(params, tmp_path)
    # the MLflow server boots while the study runs; optuna-dashboard (quick) once the study is there
    mlflow_server = _start(spawn, ui.ui_command(p.mlflow, "127.0.0.1", mlflow_port), tmp_path / "mlflow.log")
    outcome = _study_and_models(p, tmp_path)
    dashboard_cmd = [str(Path(sys.executable).with_name("optuna-dashboard")), p.tune.storage]
    dashboard_cmd += ["--host", "127.0.0.1", "--port", str(dashboard_port)]
    dashboard = _start(spawn, dashboard_cmd, tmp_path / "dash.log")
    dashboard_url, mlflow_url = f"http://127.0.0.1:{dashboard_port}", f"http://127.0.0.1:{mlflow_port}"
    wait_until_answers(dashboard, f"{dashboard_url}/api/studies", tmp_path / "dash.log", timeout_s=120)
    wait_until_answers(mlflow_server, f"{mlflow_url}/health", tmp_path / "mlflow.log", timeout_s=180)

    study = outcome.study
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * TRIALS
    names = list(study.best_params)
    context = browser.new_context(viewport=VIEWPORT)
    context.add_init_script(
        "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in MLFLOW_UI_CHOICES.items())
    )
    page = context.new_page()
    try:
        # optuna-dashboard: the study's page, its history, parameter importances and best trial
        (summary,) = requests.get(f"{dashboard_url}/api/studies", timeout=10).json()["study_summaries"]
        assert summary["study_name"] == study.study_name
        page.goto(f"{dashboard_url}/dashboard/studies/{summary['study_id']}")
        expect(page.get_by_text(f"Best Trial (number={study.best_trial.number})")).to_be_visible(timeout=60_000)
        importance = page.locator(".js-plotly-plot", has_text="Hyperparameter Importance")
        for name in names:  # drawn once the dashboard has computed the importances
            expect(importance).to_contain_text(name, timeout=60_000)
        expect(page.get_by_text(study.study_name).first).to_be_visible()
        _shoot(page, "optuna_dashboard.png", full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": 1100})

        # MLflow: the trial runs compared, parallel coordinates of the tuned values against the validation loss
        experiment = mlflow.MlflowClient(mlflow_uri).get_experiment_by_name("galmorph").experiment_id
        trial_runs = [t.user_attrs["mlflow_run_id"] for t in study.trials]
        query = f"runs={quote(json.dumps(trial_runs))}&experiments={quote(json.dumps([experiment]))}"
        page.goto(f"{mlflow_url}/#/compare-runs?{query}")
        expect(page.get_by_text(f"Comparing {TRIALS} Runs from 1 Experiment")).to_be_visible(timeout=60_000)
        _choose(page, "dubois-select-2", ["val_loss", "epoch"])  # metrics: val_loss instead of the first one
        _choose(page, "dubois-select-1", ["train.lr", "train.weight_decay", "train.batch_size"])
        plot = page.locator(".js-plotly-plot").first
        for axis in ("val_loss", "train.lr", "train.weight_decay", "model.dropout"):
            expect(plot).to_contain_text(axis)
        expect(plot).not_to_contain_text("epoch")
        for number in range(TRIALS):
            expect(page.get_by_text(f"trial-{number}", exact=True)).to_be_visible()
        _shoot(page, "mlflow_compare.png")

        # MLflow: the experiment's logged models with their own test metrics, one row per model
        page.goto(f"{mlflow_url}/#/experiments/{experiment}/models")
        expect(page.get_by_text("Ready")).to_have_count(2, timeout=60_000)
        page.get_by_role("button", name="Columns").click()
        for column in ("Status", "Logged from", "Registered models", "Dataset", "Parameters"):  # room for metrics
            page.locator(f'[title="{column}"]').click()
        page.keyboard.press("Escape")
        for text in ("test_macro_f1", "test_ece_calibrated", "0.94", "0.91"):
            expect(page.get_by_text(text, exact=True)).to_be_visible()
        _shoot(page, "mlflow_models.png", clip={"x": 0, "y": 0, "width": 1280, "height": 340})
    finally:
        context.close()
