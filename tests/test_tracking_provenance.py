"""galmorph.tracking.provenance: the git and DVC tags that tie a run to the code and data it used."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from galmorph.config import MlflowConfig
from galmorph.tracking import provenance, runs

GIT = ["git", "-c", "user.name=galmorph-test", "-c", "user.email=test@example.org", "-c", "commit.gpgsign=false"]


def _cfg(tracking_uri: str | None = None, experiment: str = "galmorph-test") -> MlflowConfig:
    return MlflowConfig(experiment=experiment, tracking_uri=tracking_uri, registered_model="galmorph-test")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


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
    tags = provenance.dvc_dep_tags("train")
    assert tags["dvc.dep.data/splits.parquet"] == _md5(dvc_repo / "data" / "splits.parquet")
    assert tags["dvc.dep.train.py"] == _md5(dvc_repo / "train.py")
    assert tags["dvc.lock"] == "ok"


def test_dvc_lock_stale_or_missing_is_said_not_fatal(dvc_repo):
    (dvc_repo / "train.py").write_text("print('changed')\n")
    tags = provenance.dvc_dep_tags("train")
    assert tags["dvc.lock"].startswith("stale:") and "train.py" in tags["dvc.lock"]
    assert tags["dvc.dep.train.py"] == _md5(dvc_repo / "train.py")  # the hash of what actually ran
    (dvc_repo / "dvc.lock").unlink()
    tags = provenance.dvc_dep_tags("train")
    assert tags["dvc.lock"].startswith("missing:")
    assert tags["dvc.dep.data/splits.parquet"] == _md5(dvc_repo / "data" / "splits.parquet")
    assert provenance.dvc_dep_tags("predict")["dvc.lock"].startswith("unavailable: no stage")


def test_outside_git_and_dvc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert provenance.git_tags(tmp_path)["git.commit"].startswith("unavailable")
    assert provenance.dvc_dep_tags("train")["dvc.lock"].startswith("unavailable")


def test_dvc_exp_tags_read_what_dvc_exp_run_sets():
    env = {"DVC_EXP_NAME": "bally-tans", "DVC_EXP_BASELINE_REV": "a" * 40, "DVC_ROOT": "/repo", "HOME": "/root"}
    assert provenance.dvc_exp_tags(env) == {
        "dvc.exp_name": "bally-tans",
        "dvc.exp_baseline_rev": "a" * 40,
        "dvc.root": "/repo",
    }


def test_tag_keys_are_valid_for_mlflow():
    assert provenance._tag_key("dvc.dep.", "../shared/galaxyzoo/labels.csv") == "dvc.dep.__/shared/galaxyzoo/labels.csv"
    assert provenance._tag_key("dvc.dep.", "data/raw images/x$.csv") == "dvc.dep.data/raw images/x_.csv"


def test_run_records_params_metrics_and_provenance(mlflow_uri, dvc_repo, monkeypatch, params):
    monkeypatch.setenv("DVC_EXP_NAME", "bally-tans")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "b" * 40)
    cfg = _cfg()
    with runs.start_run(cfg, "train", [params.train, params.model], tags={"purpose": "test"}) as run:
        for epoch in range(3):
            runs.log_metrics({"val_loss": np.float32(1.0 / (epoch + 1)), "lr": 0.1}, step=epoch)
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
    with runs.start_run(cfg, "train", params.train) as run1:
        pass
    assert client.get_run(run1.info.run_id).data.tags["git.dirty"] == "false"  # DVC's own bookkeeping
    (dvc_repo / "train.py").write_text("print('edited')\n")
    with runs.start_run(cfg, "train", params.train) as run2:
        pass
    tags2 = client.get_run(run2.info.run_id).data.tags
    assert tags2["git.dirty"] == "true" and "train.py" in tags2["git.dirty_paths"]
    assert tags2["dvc.lock"].startswith("stale:")
    assert client.get_run(run2.info.run_id).info.experiment_id == got.info.experiment_id
