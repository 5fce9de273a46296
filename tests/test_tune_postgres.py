"""Many tuning workers on one study: a real PostgreSQL cluster for Optuna and a real MLflow server on it.

Two `galmorph tune --storage postgresql://...` processes share a study with a global budget of 5 trials,
each allowed at most 3 of its own (so both must work); then a third run, with the budget spent, only
writes the best params. Started and stopped by the test; skipped when PostgreSQL is not installed.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from galmorph import cli
from galmorph.config import replace
from galmorph.io import write_parquet
from galmorph.training.features import build_feature_cache, save_feature_cache
from galmorph.tuning.study import redact, storage_url
from tests.postgres_utils import missing_requirements, mlflow_server, postgres_cluster
from tests.training_utils import make_catalogue, tiny_params

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BUDGET, PER_WORKER = 5, 3


@pytest.fixture
def params_file(params, tmp_path: Path) -> Path:
    """A params.yaml for tiny data under tmp_path: splits, embedding cache, a 5-trial study of 3 epochs."""
    catalogue = make_catalogue(tmp_path / "data", n=40, size=48)
    p = tiny_params(params, tmp_path)
    p = dataclasses.replace(
        p,
        split=replace(p.split, out=str(tmp_path / "splits.parquet")),
        tune=replace(
            p.tune,
            n_trials=BUDGET,
            epochs=3,
            startup_trials=1,
            pruner_warmup_epochs=1,
            out=str(tmp_path / "best_params.yaml"),
            plots_dir=str(tmp_path / "tune"),
        ),
        mlflow=replace(p.mlflow, experiment="tune-postgres"),
    )
    write_parquet(p.split.out, catalogue)
    features = build_feature_cache(catalogue, p.model, p.preprocess, p.embed, device="cpu", progress=False)
    save_feature_cache(features, p.embed.out)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(p), sort_keys=False))
    return path


def test_workers_share_one_study_budget_and_mlflow_run(params_file, tmp_path, monkeypatch, spawn):
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    with (
        postgres_cluster(["optuna", "mlflow"]) as base,
        mlflow_server(storage_url(None, f"{base}/mlflow"), tmp_path / "artifacts") as tracking_url,
    ):
        storage = f"{base}/optuna"  # as a user writes it; galmorph picks the installed driver
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_url, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "galmorph.cli", "--params", str(params_file), "tune"]
        cmd += ["--storage", storage, "--n-trials", str(PER_WORKER)]
        workers = [  # spawn: stopped at the end even when this test fails or times out
            spawn(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)
        ]
        outputs = [w.communicate(timeout=540)[0] for w in workers]
        for w, out in zip(workers, outputs, strict=True):
            assert w.returncode == 0, out[-3000:]

        # with the budget spent, one more run trains nothing and writes the best of every worker's trials
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_url)
        assert cli.main(["--params", str(params_file), "tune", "--storage", storage]) == 0
        best = yaml.safe_load(Path(tmp_path / "best_params.yaml").read_text())
        study = optuna.load_study(study_name=best["study"], storage=storage_url(None, storage))
        trials = study.get_trials()

        counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(counted) == BUDGET, [(t.number, t.state.name) for t in trials]  # exactly the global budget
        trained = [t for t in trials if "skipped" not in t.user_attrs]
        assert all(t.state != TrialState.RUNNING for t in trials)
        by_worker: dict[str, int] = {}
        for t in trained:
            by_worker[t.user_attrs["worker"]] = by_worker.get(t.user_attrs["worker"], 0) + 1
        assert len(by_worker) == 2 and max(by_worker.values()) <= PER_WORKER, by_worker

        client = mlflow.MlflowClient(tracking_url)
        exp = client.get_experiment_by_name("tune-postgres")
        runs = client.search_runs([exp.experiment_id], max_results=1000)
        parents = [r for r in runs if r.data.tags.get("galmorph.stage") == "tune"]
        assert len(parents) == 1  # one study, one run, however many workers
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
        numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in children)
        assert numbers == sorted(t.number for t in trained)  # every trial once: none lost, none twice
        for t in trained:
            run = client.get_run(t.user_attrs["mlflow_run_id"])
            assert run.data.tags["optuna.state"] == t.state.name
            assert run.data.tags["optuna.worker"] == t.user_attrs["worker"]

        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        winner = max(complete, key=lambda t: t.value)
        assert best["value"] == pytest.approx(winner.value)
        assert best["params"] == winner.params == study.best_params
        assert best["trials"]["complete"] + best["trials"]["pruned"] == BUDGET
        assert best["storage"] == redact(storage_url(None, storage))
