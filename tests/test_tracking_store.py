"""galmorph.tracking.store: which store the project logs to, wherever DVC runs the stage."""

from __future__ import annotations

import pytest

from galmorph.config import MlflowConfig
from galmorph.errors import UserError
from galmorph.tracking import store


def _cfg(tracking_uri: str | None = None, experiment: str = "galmorph-test") -> MlflowConfig:
    return MlflowConfig(experiment=experiment, tracking_uri=tracking_uri, registered_model="galmorph-test")


def test_env_overrides_param(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team:5000")
    assert store.tracking_uri(_cfg("sqlite:////elsewhere/mlflow.db")) == "http://mlflow.team:5000"


def test_param_then_default_absolute_under_repo(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store.tracking_uri(_cfg("sqlite:////abs/store.db")) == "sqlite:////abs/store.db"
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    assert store.tracking_uri(_cfg()) == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    # a relative SQLite path is anchored at the repo, not at the (temporary) working folder
    assert store.tracking_uri(_cfg("sqlite:///team/x.db")) == f"sqlite:///{tmp_path.resolve()}/team/x.db"


def test_dvc_exp_temp_folder_resolves_to_the_repo(monkeypatch, tmp_path):
    """`dvc exp run --temp/--queue` runs in <repo>/.dvc/tmp/exps/<run>: the runs must still land in <repo>."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workdir = tmp_path / ".dvc" / "tmp" / "exps" / "tmpk2x9" / "src"
    workdir.mkdir(parents=True)
    (workdir.parent / "dvc.yaml").write_text("stages: {}\n")  # the copy of the repo has its own dvc.yaml
    monkeypatch.chdir(workdir)
    assert store.tracking_uri(_cfg()) == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert store.artifact_root(store.tracking_uri(_cfg())) == (tmp_path.resolve() / "mlruns/artifacts").as_uri()


@pytest.mark.parametrize("uri", ["./mlruns", "file:///tmp/mlruns", "mlruns"])
def test_file_store_is_refused(monkeypatch, uri):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UserError, match="mlflow.tracking_uri.*file store"):
        store.tracking_uri(_cfg(uri))


def test_server_has_no_local_artifact_root():
    assert store.artifact_root("http://mlflow.team:5000") is None
    assert store.artifact_root("postgresql://u@h/db") is None


RACE = """
import sys, time
from galmorph.config import MlflowConfig
from galmorph.tracking import store
cfg = MlflowConfig(experiment="galmorph-test", tracking_uri=sys.argv[1], registered_model="galmorph-test")
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start together
print(store.experiment_id(cfg))
"""


def test_processes_starting_on_a_new_store_at_once_all_succeed(spawn, tmp_path):
    """Gunicorn workers or queued `dvc exp run`s on a fresh machine create mlruns/mlflow.db together: MLflow
    migrates a new SQLite store without a lock, so without tracking.store's one the loser died on the winner's
    half-made schema ("Online migration expected to match one row ...")."""
    import subprocess
    import sys
    import time

    uri = f"sqlite:///{tmp_path}/new/mlflow.db"
    start = str(time.time() + 8)
    procs = [
        spawn([sys.executable, "-c", RACE, uri, start], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-2000:]
        answers.append(out.strip())
    assert len(set(answers)) == 1 and answers[0]  # one experiment, created once


def test_the_experiment_is_marked_as_model_training(mlflow_uri):
    """MLflow 3's UI opens an experiment without a kind on its GenAI traces view; ours is model training,
    whether galmorph created it or found it made by older code."""
    import mlflow

    cfg = _cfg(mlflow_uri)
    exp_id = store.experiment_id(cfg)
    assert mlflow.MlflowClient().get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    older = mlflow.MlflowClient().create_experiment("made-elsewhere")
    assert "mlflow.experimentKind" not in mlflow.MlflowClient().get_experiment(older).tags
    assert store.experiment_id(_cfg(mlflow_uri, experiment="made-elsewhere")) == older
    assert mlflow.MlflowClient().get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
