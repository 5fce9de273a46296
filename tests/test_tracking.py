"""galmorph.tracking: the store's URI, runs with params and provenance tags, datasets, artifacts, the UI."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from galmorph import tracking
from galmorph.config import MlflowConfig
from galmorph.errors import UserError

REPO = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=galmorph-test", "-c", "user.email=test@example.org", "-c", "commit.gpgsign=false"]


def _cfg(tracking_uri: str | None = None, experiment: str = "galmorph-test") -> MlflowConfig:
    return MlflowConfig(experiment=experiment, tracking_uri=tracking_uri, registered_model="galmorph-test")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ URIs


def test_env_overrides_param(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team:5000")
    assert tracking.tracking_uri(_cfg("sqlite:////elsewhere/mlflow.db")) == "http://mlflow.team:5000"


def test_param_then_default_absolute_under_repo(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(_cfg("sqlite:////abs/store.db")) == "sqlite:////abs/store.db"
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri(_cfg()) == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    # a relative SQLite path is anchored at the repo, not at the (temporary) working folder
    assert tracking.tracking_uri(_cfg("sqlite:///team/x.db")) == f"sqlite:///{tmp_path.resolve()}/team/x.db"


def test_dvc_exp_temp_folder_resolves_to_the_repo(monkeypatch, tmp_path):
    """`dvc exp run --temp/--queue` runs in <repo>/.dvc/tmp/exps/<run>: the runs must still land in <repo>."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    workdir = tmp_path / ".dvc" / "tmp" / "exps" / "tmpk2x9" / "src"
    workdir.mkdir(parents=True)
    (workdir.parent / "dvc.yaml").write_text("stages: {}\n")  # the copy of the repo has its own dvc.yaml
    monkeypatch.chdir(workdir)
    assert tracking.tracking_uri(_cfg()) == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert tracking.artifact_root(tracking.tracking_uri(_cfg())) == (tmp_path.resolve() / "mlruns/artifacts").as_uri()


@pytest.mark.parametrize("uri", ["./mlruns", "file:///tmp/mlruns", "mlruns"])
def test_file_store_is_refused(monkeypatch, uri):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UserError, match="mlflow.tracking_uri.*file store"):
        tracking.tracking_uri(_cfg(uri))


def test_server_has_no_local_artifact_root():
    assert tracking.artifact_root("http://mlflow.team:5000") is None
    assert tracking.artifact_root("postgresql://u@h/db") is None


# ---------------------------------------------------------------------------------------------- params


def test_flatten_params_uses_params_yaml_keys_and_spelling(params):
    flat = tracking.flatten_params(params)
    assert flat["train.lr"] == str(params.train.lr)
    assert flat["model.arch"] == params.model.arch
    assert flat["tune.space.train.lr.low"] == str(params.tune.space["train.lr"]["low"])
    assert flat["embed.views"] == json.dumps(params.embed.views)
    assert flat["mlflow.tracking_uri"] == "null"
    assert flat["train.channels_last"] in ("true", "false")
    # one section is named after its field in Params; a list of sections merges
    assert tracking.flatten_params(params.train)["train.epochs"] == str(params.train.epochs)
    merged = tracking.flatten_params([params.train, params.model])
    assert {"train.epochs", "model.hidden"} <= set(merged)
    assert tracking.flatten_params({"extra": {"a": 1}})["extra.a"] == "1"


# ------------------------------------------------------------------------------------ a DVC + git repo


@pytest.fixture
def dvc_repo(tmp_path, monkeypatch) -> Path:
    """A committed git + DVC repo where stage `train` reads split's output, the way `dvc repro` leaves it
    while `train` runs: dvc.lock has split's fresh outs and train's entry from the previous execution."""
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    (repo / ".dvc" / "config").write_text("")
    (repo / "data").mkdir()
    (repo / "data" / "splits.parquet").write_bytes(b"new splits")
    (repo / "train.py").write_text("print('train')\n")
    (repo / ".gitignore").write_text("/data\n")
    (repo / "params.yaml").write_text("train: {lr: 0.1}\n")
    (repo / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "split": {"cmd": "true", "outs": ["data/splits.parquet"]},
                    "train": {"cmd": "true", "deps": ["data/splits.parquet", "train.py"], "params": ["train"]},
                }
            }
        )
    )
    lock = {
        "schema": "2.0",
        "stages": {
            "split": {
                "cmd": "true",
                "outs": [
                    {
                        "path": "data/splits.parquet",
                        "hash": "md5",
                        "md5": _md5(repo / "data" / "splits.parquet"),
                        "size": 10,
                    }
                ],
            },  # fmt: skip
            "train": {
                "cmd": "true",
                "deps": [
                    {"path": "data/splits.parquet", "hash": "md5", "md5": hashlib.md5(b"old splits").hexdigest()},
                    {"path": "train.py", "hash": "md5", "md5": _md5(repo / "train.py")},
                ],
                "params": {"params.yaml": {"train": {"lr": 0.1}}},
            },
        },
    }
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "init"], cwd=repo, check=True)
    monkeypatch.chdir(repo)
    for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE", "DVC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    return repo


def test_dvc_dep_hashes_prefer_the_upstream_out(dvc_repo):
    tags = tracking.dvc_dep_tags("train")
    assert tags["dvc.dep.data/splits.parquet"] == _md5(dvc_repo / "data" / "splits.parquet")
    assert tags["dvc.dep.train.py"] == _md5(dvc_repo / "train.py")
    assert tags["dvc.lock"] == "ok"


def test_dvc_lock_stale_or_missing_is_said_not_fatal(dvc_repo):
    (dvc_repo / "train.py").write_text("print('changed')\n")
    tags = tracking.dvc_dep_tags("train")
    assert tags["dvc.lock"].startswith("stale:") and "train.py" in tags["dvc.lock"]
    assert tags["dvc.dep.train.py"] == _md5(dvc_repo / "train.py")  # the hash of what actually ran
    (dvc_repo / "dvc.lock").unlink()
    tags = tracking.dvc_dep_tags("train")
    assert tags["dvc.lock"].startswith("missing:")
    assert tags["dvc.dep.data/splits.parquet"] == _md5(dvc_repo / "data" / "splits.parquet")
    assert tracking.dvc_dep_tags("predict")["dvc.lock"].startswith("unavailable: no stage")


def test_outside_git_and_dvc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.git_tags(tmp_path)["git.commit"].startswith("unavailable")
    assert tracking.dvc_dep_tags("train")["dvc.lock"].startswith("unavailable")


def test_dvc_exp_tags_read_what_dvc_exp_run_sets():
    env = {"DVC_EXP_NAME": "bally-tans", "DVC_EXP_BASELINE_REV": "a" * 40, "DVC_ROOT": "/repo", "HOME": "/root"}
    assert tracking.dvc_exp_tags(env) == {
        "dvc.exp_name": "bally-tans",
        "dvc.exp_baseline_rev": "a" * 40,
        "dvc.root": "/repo",
    }


def test_tag_keys_are_valid_for_mlflow():
    assert tracking._tag_key("dvc.dep.", "../shared/galaxyzoo/labels.csv") == "dvc.dep.__/shared/galaxyzoo/labels.csv"
    assert tracking._tag_key("dvc.dep.", "data/raw images/x$.csv") == "dvc.dep.data/raw images/x_.csv"


# ------------------------------------------------------------------------------------------------- runs


def test_run_records_params_metrics_and_provenance(mlflow_uri, dvc_repo, monkeypatch, params):
    monkeypatch.setenv("DVC_EXP_NAME", "bally-tans")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "b" * 40)
    cfg = _cfg()
    with tracking.start_run(cfg, "train", [params.train, params.model], tags={"purpose": "test"}) as run:
        for epoch in range(3):
            tracking.log_metrics({"val_loss": np.float32(1.0 / (epoch + 1)), "lr": 0.1}, step=epoch)
    client = mlflow.MlflowClient(mlflow_uri)
    got = client.get_run(run.info.run_id)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dvc_repo, capture_output=True, text=True).stdout.strip()
    assert got.info.run_name == "train@bally-tans"
    assert got.info.status == "FINISHED"
    assert got.data.params["train.lr"] == str(params.train.lr)
    assert got.data.params["model.arch"] == params.model.arch
    tags = got.data.tags
    assert tags["git.commit"] == commit
    assert tags["git.dirty"] == "false"
    assert tags["galmorph.stage"] == "train"
    assert tags["dvc.exp_name"] == "bally-tans"
    assert tags["dvc.exp_baseline_rev"] == "b" * 40
    assert tags["dvc.dep.data/splits.parquet"] == _md5(dvc_repo / "data" / "splits.parquet")
    assert tags["dvc.lock"] == "ok"
    assert tags["purpose"] == "test"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [0, 1, 2]
    assert history[-1].value == pytest.approx(1 / 3)
    # one experiment per project, its artifacts beside the store
    exp = client.get_experiment(got.info.experiment_id)
    assert exp.name == cfg.experiment
    assert exp.artifact_location == (Path(mlflow_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri() + (
        f"/{cfg.experiment}"
    )

    (dvc_repo / "dvc.lock").write_text((dvc_repo / "dvc.lock").read_text() + "# rewritten by dvc repro\n")
    with tracking.start_run(cfg, "train", params.train) as run1:
        pass
    assert client.get_run(run1.info.run_id).data.tags["git.dirty"] == "false"  # DVC's own bookkeeping
    (dvc_repo / "train.py").write_text("print('edited')\n")
    with tracking.start_run(cfg, "train", params.train) as run2:
        pass
    tags2 = client.get_run(run2.info.run_id).data.tags
    assert tags2["git.dirty"] == "true" and "train.py" in tags2["git.dirty_paths"]
    assert tags2["dvc.lock"].startswith("stale:")
    assert client.get_run(run2.info.run_id).info.experiment_id == got.info.experiment_id


def test_resume_attaches_a_stage_to_the_training_run(mlflow_uri, tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg()
    with tracking.start_run(cfg, "train", {"train": params.train, "shared": {"bins": 10}}) as run:
        tracking.log_metrics({"val_acc": 0.5})
    run_id = run.info.run_id
    with tracking.start_run(cfg, "evaluate", {"evaluate": params.evaluate, "shared": {"bins": 15}}, run_id=run_id):
        tracking.log_metrics({"test_accuracy": 0.75})
    got = mlflow.MlflowClient(mlflow_uri).get_run(run_id)
    assert got.data.metrics == {"val_acc": 0.5, "test_accuracy": 0.75}
    assert got.data.params["shared.bins"] == "10"  # params are immutable: the first value stays
    assert got.data.params["evaluate/shared.bins"] == "15"
    assert got.data.params["evaluate.ece_bins"] == str(params.evaluate.ece_bins)
    assert got.data.tags["galmorph.stage"] == "train"
    assert got.data.tags["galmorph.attached_stages"] == "evaluate"
    assert "evaluate.dvc.lock" in got.data.tags
    with pytest.raises(UserError, match="not found"), tracking.start_run(cfg, "evaluate", None, run_id="0" * 32):
        pass


def test_nested_runs_for_tuning_trials(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg()
    with (
        tracking.start_run(cfg, "tune", {"tune": {"n_trials": 2}}) as parent,
        tracking.start_run(cfg, "tune", {"train": {"lr": 0.01}}, nested=True, run_name="trial-0") as child,
    ):
        tracking.log_metrics({"val_macro_f1": 0.8}, step=0)
    got = mlflow.MlflowClient(mlflow_uri).get_run(child.info.run_id)
    assert got.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert got.info.run_name == "trial-0"


def test_failure_inside_the_block_marks_the_run_failed(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ZeroDivisionError), tracking.start_run(_cfg(), "train", None) as run:
        1 / 0  # noqa: B018
    assert mlflow.MlflowClient(mlflow_uri).get_run(run.info.run_id).info.status == "FAILED"


def test_logging_needs_a_run_and_numbers(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        tracking.log_metrics({"a": 1.0})
    with tracking.start_run(_cfg(), "train", None), pytest.raises(TypeError, match="'a'"):
        tracking.log_metrics({"a": "high"})


def test_artifacts_dicts_figures_and_tags(mlflow_uri, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.txt").write_text("a")
    (tmp_path / "report.html").write_text("<p>hi</p>")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with tracking.start_run(_cfg(), "evaluate", None) as run:
        tracking.log_artifact(tmp_path / "plots", "plots")
        tracking.log_artifact(tmp_path / "report.html")
        tracking.log_dict({"ece": np.float64(0.05), "counts": np.array([1, 2]), "path": tmp_path}, "metrics.json")
        tracking.log_figure(fig, "plots/curve.png")
        tracking.set_tags({"gate": True})
        with pytest.raises(FileNotFoundError):
            tracking.log_artifact(tmp_path / "nope.txt")
    plt.close(fig)
    client = mlflow.MlflowClient(mlflow_uri)
    names = {f.path for f in client.list_artifacts(run.info.run_id)} | {
        f.path for f in client.list_artifacts(run.info.run_id, "plots")
    }
    assert {"plots/a.txt", "plots/curve.png", "report.html", "metrics.json"} <= names
    local = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == {"ece": 0.05, "counts": [1, 2], "path": str(tmp_path)}
    assert client.get_run(run.info.run_id).data.tags["gate"] == "True"


def test_log_dataset_uses_the_files_md5_as_digest(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    df = pd.DataFrame({"galaxy_id": ["a", "b"], "label": ["spiral", "elliptical"], "split": ["train", "test"]})
    path = tmp_path / "data" / "splits.parquet"
    path.parent.mkdir()
    df.to_parquet(path, index=False)
    with tracking.start_run(_cfg(), "train", None) as run:
        tracking.log_dataset(df, path, name="splits", context="training")
    inputs = mlflow.MlflowClient(mlflow_uri).get_run(run.info.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.digest == _md5(path) == tracking.file_md5(path)
    assert dataset.name == "splits"
    assert json.loads(dataset.source)["uri"] == "data/splits.parquet"  # relative to the repo, as in catalogues
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"


def test_log_dataset_of_a_survey_infers_the_schema_on_a_sample(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tracking, "_SCHEMA_SAMPLE", 10)
    df = pd.DataFrame({"galaxy_id": [f"g{i}" for i in range(50)], "label_id": range(50), "p_spiral": 0.5})
    path = tmp_path / "manifest.parquet"
    df.to_parquet(path, index=False)
    with tracking.start_run(_cfg(), "train", None) as run:
        tracking.log_dataset(df, path, name="manifest", context="training")
    dataset = mlflow.MlflowClient(mlflow_uri).get_run(run.info.run_id).inputs.dataset_inputs[0].dataset
    assert json.loads(dataset.profile)["num_rows"] == 50  # the whole table, though the schema saw 10 rows
    columns = {c["name"]: c["type"] for c in json.loads(dataset.schema)["mlflow_colspec"]}
    assert columns == {"galaxy_id": "string", "label_id": "long", "p_spiral": "double"}


# --------------------------------------------------------------------------------------------------- UI


def test_ui_help_and_command(monkeypatch, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "galmorph.cli", "ui", "--help"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert "--port" in out and "--host" in out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    cmd = tracking.ui_command(_cfg(), "127.0.0.1", 5123)
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow.db"
    assert cmd[cmd.index("--artifacts-destination") + 1] == (tmp_path / "artifacts").as_uri()
    assert cmd[cmd.index("--port") + 1] == "5123"


def test_ui_port_in_use_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"127.0.0.1:{port}"):
            tracking.run_ui(_cfg(), "127.0.0.1", port)


def test_ui_for_a_tracking_server_starts_nothing(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team:5000")
    tracking.run_ui(_cfg())
    assert "http://mlflow.team:5000" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ui_serves_the_store(mlflow_uri, tmp_path):
    """`galmorph ui` really starts a server on the store; stopped right after its /health answers."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "galmorph.cli", "--params", str(REPO / "params.yaml"), "ui", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    assert resp.read() == b"OK"
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.5)
        else:
            pytest.fail("the MLflow UI did not answer within 120 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
