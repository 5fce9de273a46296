"""Shared fixtures: tiny data, an isolated MLflow store, and the path of the real Galaxy Zoo folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from galmorph.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
SHARED_GALAXYZOO = REPO.parent / "shared" / "galaxyzoo"


#: Markers whose tests may skip on a developer's machine (no PostgreSQL, chromium, Java or ../shared) but
#: must run where .ci/run could install what they need (it sets GALMORPH_STRICT_SKIPS=1 when it ran
#: .ci/system-deps as root): there a skip is a failure, not a green run.
REQUIRED_WHEN_STRICT = ("realdata", "postgres", "browser", "spark")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    strict = os.environ.get("GALMORPH_STRICT_SKIPS") == "1"
    if report.skipped and strict and any(item.get_closest_marker(m) for m in REQUIRED_WHEN_STRICT):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped although GALMORPH_STRICT_SKIPS=1 (CI installed its dependencies): {reason}"


@pytest.fixture
def params() -> Params:
    """The repository's params.yaml, validated."""
    return load_params(REPO / "params.yaml")


@pytest.fixture
def real_galaxyzoo() -> Path:
    """../shared/galaxyzoo (real SDSS images); tests that need it skip when it is absent."""
    if not (SHARED_GALAXYZOO / "labels.csv").is_file():
        pytest.skip("../shared/galaxyzoo is not here")
    return SHARED_GALAXYZOO


@pytest.fixture(scope="session")
def _mlflow_empty_db(tmp_path_factory) -> Path:
    """A migrated, empty MLflow SQLite database, built once per session: a new one costs ~7 s of
    migrations, a copy ~0.1 s. Built inside its own folder so the Default experiment's artifacts
    would land there, never in the repo's mlruns/."""
    import contextlib

    import mlflow

    folder = tmp_path_factory.mktemp("mlflow-template")
    db = folder / "mlflow.db"
    with contextlib.chdir(folder):
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch, _mlflow_empty_db) -> str:
    """An isolated SQLite MLflow store per test, so tests never write to the repo's mlruns/."""
    import shutil

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(_mlflow_empty_db, tmp_path / "mlruns" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, _mlflow_empty_db):
    """A randomly initialised resnet18 logged once per session as the galmorph pyfunc, in its own store.

    Serving tests register its artifact folder (`.source`, a file URI) as a version in their own store,
    which is cheap, instead of logging a model each. See tests/serving_utils.py.
    """
    import shutil

    from tests.serving_utils import log_tiny_model_once

    root = tmp_path_factory.mktemp("tiny-model")
    (root / "mlruns").mkdir()
    shutil.copyfile(_mlflow_empty_db, root / "mlruns" / "mlflow.db")
    return log_tiny_model_once(root)
