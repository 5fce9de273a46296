"""MLflow, in one place: no other package imports mlflow, so the store, run and registry conventions
cannot drift between stages. store: which store and experiment; runs: one run per stage execution;
provenance: git and DVC tags; logged_model: the classifier as a pyfunc; registry: versions and aliases;
ui: the MLflow UI on the store.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Every logged model's galmorph_model.py runs `from galmorph.tracking import GalaxyPyfunc` at load time,
    # so the name stays here for the models already in registries; resolved lazily so that importing a
    # light submodule (provenance, params) does not import mlflow.
    if name == "GalaxyPyfunc":
        from galmorph.tracking.logged_model import GalaxyPyfunc

        return GalaxyPyfunc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
