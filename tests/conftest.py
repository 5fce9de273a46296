"""Shared fixtures: tiny data, an isolated MLflow store, and the path of the real Galaxy Zoo folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from galmorph.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
SHARED_GALAXYZOO = REPO.parent / "shared" / "galaxyzoo"


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


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """An isolated SQLite MLflow store per test, so tests never write to the repo's mlruns/."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
