"""galmorph.tracking.runs: a run per stage execution, its params, and what a stage logs into it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from galmorph.config import MlflowConfig
from galmorph.errors import UserError
from galmorph.io import file_md5
from galmorph.tracking import runs
from galmorph.tracking.params import flatten_params


def _cfg(tracking_uri: str | None = None, experiment: str = "galmorph-test") -> MlflowConfig:
    return MlflowConfig(experiment=experiment, tracking_uri=tracking_uri, registered_model="galmorph-test")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_flatten_params_uses_params_yaml_keys_and_spelling(params):
    flat = flatten_params(params)
    assert flat["train.lr"] == str(params.train.lr)
    assert flat["model.arch"] == params.model.arch
    assert flat["tune.space.train.lr.low"] == str(params.tune.space["train.lr"]["low"])
    assert flat["embed.views"] == json.dumps(params.embed.views)
    assert flat["mlflow.tracking_uri"] == "null"
    assert flat["train.channels_last"] in ("true", "false")
    # one section is named after its field in Params; a list of sections merges
    assert flatten_params(params.train)["train.epochs"] == str(params.train.epochs)
    merged = flatten_params([params.train, params.model])
    assert {"train.epochs", "model.hidden"} <= set(merged)
    assert flatten_params({"extra": {"a": 1}})["extra.a"] == "1"


def test_resume_attaches_a_stage_to_the_training_run(mlflow_uri, tmp_path, monkeypatch, params):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg()
    with runs.start_run(cfg, "train", {"train": params.train, "shared": {"bins": 10}}) as run:
        runs.log_metrics({"val_acc": 0.5})
    run_id = run.info.run_id
    with runs.start_run(cfg, "evaluate", {"evaluate": params.evaluate, "shared": {"bins": 15}}, run_id=run_id):
        runs.log_metrics({"test_accuracy": 0.75})
    got = mlflow.MlflowClient(mlflow_uri).get_run(run_id)
    assert got.data.metrics == {"val_acc": 0.5, "test_accuracy": 0.75}
    assert got.data.params["shared.bins"] == "10"  # params are immutable: the first value stays
    assert got.data.params["evaluate/shared.bins"] == "15"
    assert got.data.params["evaluate.ece_bins"] == str(params.evaluate.ece_bins)
    assert got.data.tags["galmorph.stage"] == "train"
    assert got.data.tags["galmorph.attached_stages"] == "evaluate"
    assert "evaluate.dvc.lock" in got.data.tags
    with pytest.raises(UserError, match="not found"), runs.start_run(cfg, "evaluate", None, run_id="0" * 32):
        pass


class _Pruned(Exception):
    pass


def test_child_runs_for_tuning_trials(mlflow_uri, tmp_path, monkeypatch):
    """Trials as tuning opens them: nested under the study's run, in its experiment, ended by their outcome."""
    monkeypatch.chdir(tmp_path)
    cfg = _cfg()
    with pytest.raises(RuntimeError, match="no active MLflow run"), runs.start_child_run("trial-x"):
        pass
    with runs.start_run(cfg, "tune", {"tune": {"n_trials": 3}}) as parent:
        with runs.start_child_run("trial-0", {"train": {"lr": 0.01}}, tags={"optuna.trial": 0}) as done:
            runs.log_metrics({"val_macro_f1": 0.8}, step=0)
        with pytest.raises(_Pruned), runs.start_child_run("trial-1", killed_on=(_Pruned,)) as pruned:
            raise _Pruned
        with pytest.raises(ZeroDivisionError), runs.start_child_run("trial-2", killed_on=(_Pruned,)) as failed:
            1 / 0  # noqa: B018
        assert mlflow.active_run().info.run_id == parent.info.run_id  # each trial hands the parent back
    client = mlflow.MlflowClient(mlflow_uri)
    got = client.get_run(done.info.run_id)
    assert got.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert got.info.experiment_id == parent.info.experiment_id
    assert got.info.run_name == "trial-0"
    assert got.data.params == {"train.lr": "0.01"}
    assert got.data.tags["optuna.trial"] == "0"
    assert "git.commit" not in got.data.tags  # the parent holds the provenance
    assert got.data.metrics == {"val_macro_f1": 0.8}
    status = {r: client.get_run(r.info.run_id).info.status for r in (done, pruned, failed)}
    assert list(status.values()) == ["FINISHED", "KILLED", "FAILED"]


def test_run_names_say_what_ran_and_in_which_dvc_experiment(mlflow_uri, tmp_path, monkeypatch):
    """`train`, `tune`, `trial-7` as they are, and `train@<exp>` under `dvc exp run`, whose name the run also
    carries as a tag: the runs list and a DVC experiment point at each other."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    with runs.start_run(_cfg(), "train") as plain:
        pass
    monkeypatch.setenv("DVC_EXP_NAME", "bally-tans")
    with runs.start_run(_cfg(), "tune") as tune, runs.start_child_run("trial-7") as trial:
        pass
    client = mlflow.MlflowClient(mlflow_uri)
    assert client.get_run(plain.info.run_id).info.run_name == "train"
    assert client.get_run(tune.info.run_id).info.run_name == "tune@bally-tans"
    assert client.get_run(trial.info.run_id).info.run_name == "trial-7@bally-tans"
    assert client.get_run(tune.info.run_id).data.tags["dvc.exp_name"] == "bally-tans"
    found = client.search_runs([plain.info.experiment_id], "tags.`dvc.exp_name` = 'bally-tans'")
    assert {r.info.run_id for r in found} == {tune.info.run_id}


def test_training_and_tuning_runs_record_system_metrics(mlflow_uri, tmp_path, monkeypatch):
    """CPU and memory over the run (MLflow's system metrics, sampled every mlflow.system_metrics_s seconds);
    null switches them off."""
    import time

    monkeypatch.chdir(tmp_path)
    cfg = MlflowConfig(experiment="galmorph-test", tracking_uri=None, registered_model="m", system_metrics_s=0.2)
    with runs.start_run(cfg, "train", system_metrics=True) as sampled:
        time.sleep(1.5)
    off = MlflowConfig(experiment="galmorph-test", tracking_uri=None, registered_model="m", system_metrics_s=None)
    with runs.start_run(off, "train", system_metrics=True) as quiet:
        time.sleep(0.5)
    client = mlflow.MlflowClient(mlflow_uri)
    metrics = client.get_run(sampled.info.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics), metrics
    assert len(client.get_metric_history(sampled.info.run_id, "system/cpu_utilization_percentage")) >= 2
    assert not [k for k in client.get_run(quiet.info.run_id).data.metrics if k.startswith("system/")]


def test_run_exists_and_run_metrics(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with runs.start_run(_cfg(), "train", None) as run:
        runs.log_metrics({"val_acc": 0.5})
    assert runs.run_exists(run.info.run_id, cfg=_cfg())
    assert runs.run_metrics(run.info.run_id, cfg=_cfg()) == {"val_acc": 0.5}
    assert not runs.run_exists("0" * 32, cfg=_cfg())
    mlflow.MlflowClient(mlflow_uri).delete_run(run.info.run_id)
    assert not runs.run_exists(run.info.run_id, cfg=_cfg())


def test_failure_inside_the_block_marks_the_run_failed(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ZeroDivisionError), runs.start_run(_cfg(), "train", None) as run:
        1 / 0  # noqa: B018
    assert mlflow.MlflowClient(mlflow_uri).get_run(run.info.run_id).info.status == "FAILED"


def test_logging_needs_a_run_and_numbers(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        runs.log_metrics({"a": 1.0})
    with runs.start_run(_cfg(), "train", None), pytest.raises(TypeError, match="'a'"):
        runs.log_metrics({"a": "high"})


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
    with runs.start_run(_cfg(), "evaluate", None) as run:
        runs.log_artifact(tmp_path / "plots", "plots")
        runs.log_artifact(tmp_path / "report.html")
        runs.log_dict({"ece": np.float64(0.05), "counts": np.array([1, 2]), "path": tmp_path}, "metrics.json")
        runs.log_figure(fig, "plots/curve.png")
        runs.set_tags({"gate": True})
        with pytest.raises(FileNotFoundError):
            runs.log_artifact(tmp_path / "nope.txt")
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
    with runs.start_run(_cfg(), "train", None) as run:
        runs.log_dataset(df, path, name="splits", context="training")
    inputs = mlflow.MlflowClient(mlflow_uri).get_run(run.info.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.digest == _md5(path) == file_md5(path)
    assert dataset.name == "splits"
    assert json.loads(dataset.source)["uri"] == "data/splits.parquet"  # relative to the repo, as in catalogues
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"


def test_log_dataset_of_a_survey_infers_the_schema_on_a_sample(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runs, "_SCHEMA_SAMPLE", 10)
    df = pd.DataFrame({"galaxy_id": [f"g{i}" for i in range(50)], "label_id": range(50), "p_spiral": 0.5})
    path = tmp_path / "manifest.parquet"
    df.to_parquet(path, index=False)
    with runs.start_run(_cfg(), "train", None) as run:
        runs.log_dataset(df, path, name="manifest", context="training")
    dataset = mlflow.MlflowClient(mlflow_uri).get_run(run.info.run_id).inputs.dataset_inputs[0].dataset
    assert json.loads(dataset.profile)["num_rows"] == 50  # the whole table, though the schema saw 10 rows
    columns = {c["name"]: c["type"] for c in json.loads(dataset.schema)["mlflow_colspec"]}
    assert columns == {"galaxy_id": "string", "label_id": "long", "p_spiral": "double"}
