"""The DVC pipeline as a user runs it: `dvc repro`, a no-op second run, targeted reruns, `dvc exp run -S`,
metrics, and `dvc push`/`dvc pull` against a local directory remote — in a throwaway copy of the project."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

DATA_STAGES = ["fetch", "join", "select", "split"]

TINY = {
    "data": {"synthetic": {"n_galaxies": 160, "image_size": 64}},
    "split": {"repeats": 2},
}


def _deep_update(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def _run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **(env or {}))
    env.pop("DVC_EXP_NAME", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def make_project(root: Path, overrides: dict) -> Path:
    """A git+DVC project with this repo's pipeline and code, and params made tiny."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = _deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("/mlruns/\n")
    shutil.copytree(REPO / "data" / "external", root / "data" / "external")  # a dependency of fetch
    _run(["git", "init", "-q", "-b", "main"], root)
    _run(["git", "config", "user.email", "ci@example.invalid"], root)
    _run(["git", "config", "user.name", "ci"], root)
    _run(["dvc", "init", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "project"], root)
    return root


def ran_stages(output: str) -> set[str]:
    return {stage for stage in DATA_STAGES if f"Running stage '{stage}'" in output}


@pytest.mark.slow
def test_data_pipeline_repro_is_incremental_and_versioned(tmp_path):
    proj = make_project(tmp_path / "proj", TINY)

    first = _run(["dvc", "repro", *DATA_STAGES], proj)
    assert ran_stages(first.stdout) == set(DATA_STAGES)
    for out in [
        "data/raw/source.json",
        "data/interim/joined.parquet",
        "data/processed/manifest.parquet",
        "data/processed/splits.parquet",
        "reports/data/join.json",
        "reports/data/select.json",
    ]:
        assert (proj / out).exists(), out

    second = _run(["dvc", "repro", *DATA_STAGES], proj)
    assert ran_stages(second.stdout) == set(), second.stdout

    # a split parameter reruns only split
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["split"]["seed"] = 7
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run(["dvc", "repro", *DATA_STAGES], proj)
    assert ran_stages(third.stdout) == {"split"}, third.stdout

    # the data stages' counts stay in their reports (the DVC metric is the headline, written by register)
    select_report = json.loads((proj / "reports" / "data" / "select.json").read_text())
    assert select_report["dropped_by_reason"]["missing"] >= 0

    # generated data is DVC-tracked, never committed to git
    _run(["git", "add", "-A"], proj)
    tracked = _run(["git", "ls-files"], proj).stdout.split()
    assert "dvc.lock" in tracked
    # (data/external/ is where users put their own images: only its README is committed)
    assert not [p for p in tracked if p.startswith("data/") and not p.endswith((".gitignore", "external/README.md"))]
    _run(["git", "commit", "-qm", "data"], proj)

    # dvc exp run -S works and leaves the workspace's split.seed as an experiment
    exp = _run(["dvc", "exp", "run", "-S", "split.seed=11", *DATA_STAGES], proj)
    assert "Running stage 'split'" in exp.stdout and "Running stage 'fetch'" not in exp.stdout
    shown = _run(["dvc", "exp", "show", "--json"], proj).stdout
    assert '"seed": 11' in shown

    # push to a local directory remote, wipe the cache and the outputs, pull them back
    remote = tmp_path / "remote"
    _run(["dvc", "remote", "add", "-d", "local", str(remote)], proj)
    _run(["dvc", "push"], proj)
    before = (proj / "data/processed/splits.parquet").read_bytes()
    shutil.rmtree(proj / ".dvc" / "cache")
    shutil.rmtree(proj / "data")
    _run(["git", "checkout", "--", "data"], proj)  # what a fresh clone has: the .gitignores, data/external/README.md
    _run(["dvc", "pull", *DATA_STAGES], proj)
    assert (proj / "data/processed/splits.parquet").read_bytes() == before
    status = _run(["dvc", "status", *DATA_STAGES], proj)
    assert "up to date" in status.stdout.lower()


def test_each_plot_is_drawn_once(tmp_path):
    """`dvc plots show/diff` drew every plot twice when its data file was declared both as a stage's plot and
    in the top-level `plots:`: the stages declare plot data as plain outputs, the top level draws it."""
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert not [name for name, stage in dvc_yaml["stages"].items() if "plots" in stage]
    dvc = str(Path(sys.executable).with_name("dvc"))
    cmd = [dvc, "plots", "show", "--json", "-o", str(tmp_path / "plots")]  # images are copied there, not into REPO
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    drawn = list(json.loads(out.stdout)["data"])
    params = yaml.safe_load((REPO / "params.yaml").read_text())

    def resolved(path: str) -> str:  # an image plot is named by its path, ${section.key} filled in as DVC does
        return re.sub(r"\$\{([\w.]+)\}", lambda m: str(functools.reduce(dict.get, m[1].split("."), params)), path)

    titles = [resolved(entry) if isinstance(entry, str) else next(iter(entry)) for entry in dvc_yaml["plots"]]
    assert drawn == titles, drawn


#: The whole pipeline in about a minute: tiny images, ResNet-18, one view, no tuning (so train.lr is what trains).
TINY_FULL = {
    "data": {"synthetic": {"n_galaxies": 400, "image_size": 64}},
    "split": {"repeats": 1},
    "preprocess": {"resize": 64, "crop": 64, "image_size": 32},
    "model": {"arch": "resnet18", "hidden": 64},
    "embed": {"views": ["identity"], "num_workers": 0},
    "train": {"epochs": 3, "num_workers": 0, "early_stopping_patience": 0},
    "tune": {"n_trials": 0},
    "evaluate": {
        "bootstrap": 50,
        "tta": False,
        "stability": False,
        "saliency": False,
        "uncertain_limit": 40,
        "num_workers": 0,
        "gallery_size": 2,
    },
    "mlflow": {"system_metrics_s": 0.5},
}


def _update_readme_block(marker: str, text: str) -> None:
    """Replace the fenced block between `<!-- marker -->` and `<!-- /marker -->` in README.md."""
    readme = REPO / "README.md"
    start, end = f"<!-- {marker} -->\n", f"<!-- /{marker} -->"
    body = readme.read_text()
    head, rest = body.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}```text\n{text.rstrip()}\n```\n{end}{tail}")


@pytest.mark.slow
def test_two_experiments_compare_by_their_headline_and_rank_as_models(tmp_path):
    """Two `dvc exp run -S train.lr=...` on the synthetic default: `dvc exp show` lists the headline (not the
    ~130 evaluation keys with their intervals and TTA copies), fits 200 columns with --only-changed and links
    each experiment to its MLflow run; MLflow ranks both models by test macro F1, each registered version
    points at its LoggedModel, and the training runs carry system metrics."""
    import mlflow

    proj = make_project(tmp_path / "proj", TINY_FULL)
    _run(["dvc", "repro"], proj)
    _run(["git", "add", "-A"], proj)
    _run(["git", "commit", "-qm", "baseline"], proj)
    for name, lr in (("lr-high", "0.01"), ("lr-low", "0.0003")):
        _run(["dvc", "exp", "run", "-n", name, "-S", f"train.lr={lr}"], proj)

    headline = set(json.loads((proj / "reports" / "metrics.json").read_text()))
    shown = json.loads(_run(["dvc", "exp", "show", "--json"], proj).stdout)
    experiments = {e["name"]: e["data"] for row in shown for e in (row.get("experiments") or []) for e in e["revs"]}
    assert {"lr-high", "lr-low"} <= set(experiments), list(experiments)
    run_ids = {}
    for name in ("lr-high", "lr-low"):
        data = experiments[name]
        assert list(data["metrics"]) == ["reports/metrics.json"], data["metrics"].keys()
        keys = set(data["metrics"]["reports/metrics.json"]["data"])
        assert keys == headline and "f1_lo" in keys and not [k for k in keys if "tta" in k or "ci" in k]
        assert len(keys) <= 14
        links = data["params"]["reports/mlflow.json"]["data"]
        run_ids[name] = links["mlflow_run_id"]
    assert experiments["lr-high"]["params"]["params.yaml"]["data"]["train"]["lr"] == 0.01

    # --drop '.*/': the changed dependencies' md5s (models/model.pt, reports/...) are 32 characters each
    show = ["dvc", "exp", "show", "--only-changed", "--drop", ".*/", "--no-pager"]
    table = _run(show, proj, env={"COLUMNS": "200"}).stdout
    widths = [len(line) for line in table.splitlines()]
    assert max(widths) <= 200, table
    assert " f1 " in table and "train.lr" in table and "lr-high" in table and "…" not in table, table
    assert "mlflow_run_id" in table and run_ids["lr-high"] in table
    if os.environ.get("GALMORPH_UPDATE_DOCS") == "1":
        _update_readme_block("exp-show", table)

    client = mlflow.MlflowClient(f"sqlite:///{proj / 'mlruns' / 'mlflow.db'}")
    for name, run_id in run_ids.items():
        run = client.get_run(run_id)
        assert run.data.tags["dvc.exp_name"] == name and run.info.run_name == f"train@{name}"
        assert "system/cpu_utilization_percentage" in run.data.metrics
    experiment = client.get_experiment_by_name(TINY_FULL.get("mlflow", {}).get("experiment", "galmorph"))
    ranked = client.search_logged_models(
        experiment_ids=[experiment.experiment_id],
        order_by=[{"field_name": "metrics.test_macro_f1", "ascending": False}],
    )
    scored = [(m.model_id, {x.key: x.value for x in m.metrics or []}.get("test_macro_f1")) for m in ranked]
    scored = [s for s in scored if s[1] is not None]
    assert len(scored) >= 2 and [f for _, f in scored] == sorted((f for _, f in scored), reverse=True)
    # each registered version points at its LoggedModel (source), and the model lists the version (MLflow's link)
    for version in client.search_model_versions("name='galmorph'"):
        model_id = version.source.removeprefix("models:/")
        assert model_id in {m for m, _ in scored}, version
        linked = json.loads(client.get_logged_model(model_id).tags["mlflow.modelVersions"])
        assert {"name": "galmorph", "version": int(version.version)} in linked, linked
