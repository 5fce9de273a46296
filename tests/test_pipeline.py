"""The DVC pipeline as a user runs it: `dvc repro`, a no-op second run, targeted reruns, `dvc exp run -S`,
metrics, and `dvc push`/`dvc pull` against a local directory remote — in a throwaway copy of the project."""

from __future__ import annotations

import json
import os
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


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
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
    assert not [p for p in tracked if p.startswith("data/") and not p.endswith(".gitignore")]
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
    out = subprocess.run([dvc, "plots", "show", "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    drawn = list(json.loads(out.stdout)["data"])
    titles = [next(iter(entry)) for entry in dvc_yaml["plots"]]
    assert drawn == titles, drawn
