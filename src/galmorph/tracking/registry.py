"""The Model Registry as plain data: register versions, move aliases, read versions and tags.

The promotion policy lives in galmorph.serving.promotion; these helpers only talk to MLflow. Each takes the
project's MlflowConfig so it reaches the right store even outside a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from filelock import FileLock, Timeout
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from galmorph.config import MlflowConfig
from galmorph.errors import UserError
from galmorph.tracking import store

LOCK_TIMEOUT_S = 600.0
"""How long a registry change waits for another process's (a promotion is seconds; a hung one is not)."""


def lock_path(cfg: MlflowConfig) -> Path:
    """The file that serialises alias changes on the project's store.

    SQLite (the default): beside the database, so every process on the store's file system shares it. A
    tracking server: a file in the temp folder named after the server's URI, which serialises processes on
    this machine only; MLflow has no compare-and-set for aliases, so two machines can still interleave
    (promote re-reads @champion right before moving it, which narrows but does not close that window).
    """
    uri = store.tracking_uri(cfg)
    db = store.sqlite_path(uri) if uri.startswith("sqlite:") else None
    if db is not None:
        return db.with_name(db.name + ".lock")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"galmorph-registry-{digest}.lock"


@contextlib.contextmanager
def alias_lock(cfg: MlflowConfig, timeout: float | None = None) -> Iterator[None]:
    """Hold the registry lock: one registration or alias change at a time across processes."""
    timeout = LOCK_TIMEOUT_S if timeout is None else timeout
    path = lock_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(
            f"{path}: another galmorph process has held the registry lock for over {timeout:.0f} s "
            "(a register, promote or rollback still running?); try again when it has finished"
        ) from None
    try:
        yield
    finally:
        lock.release()


def register_model(
    model_uri: str, name: str, tags: Mapping[str, Any] | None = None, *, cfg: MlflowConfig | None = None
) -> str:
    """Register a logged model under `name` and return the new version as a string (as VersionInfo has it)."""
    store.client(cfg)
    version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()})
    return str(version.version)


def set_alias(name: str, alias: str, version: str | int, *, cfg: MlflowConfig | None = None) -> None:
    """Point `models:/<name>@<alias>` at a version (aliases, never the deprecated stages)."""
    store.client(cfg).set_registered_model_alias(name, alias, str(version))


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    """A registered model version as plain data, so callers never handle mlflow entities."""

    name: str
    version: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    run_id: str | None
    source: str
    created_ms: int

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _version_info(mv: ModelVersion, aliases: Mapping[str, str]) -> VersionInfo:
    return VersionInfo(
        name=mv.name,
        version=str(mv.version),
        aliases=tuple(sorted(a for a, v in aliases.items() if str(v) == str(mv.version))),
        tags=dict(mv.tags or {}),
        run_id=mv.run_id or None,
        source=mv.source or "",
        created_ms=int(mv.creation_timestamp or 0),
    )


def registered_model_aliases(name: str, *, cfg: MlflowConfig | None = None) -> dict[str, str] | None:
    """alias -> version of a registered model; None when no model of that name exists."""
    try:
        model = store.client(cfg).get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def model_versions(name: str, *, cfg: MlflowConfig | None = None) -> list[VersionInfo]:
    """Every version of a registered model, newest first ([] when the model does not exist)."""
    aliases = registered_model_aliases(name, cfg=cfg)
    if aliases is None:
        return []
    quoted = name.replace("'", "\\'")
    found = store.client(cfg).search_model_versions(f"name = '{quoted}'", max_results=10_000)
    return sorted((_version_info(mv, aliases) for mv in found), key=lambda v: int(v.version), reverse=True)


def model_version(name: str, version: str | int, *, cfg: MlflowConfig | None = None) -> VersionInfo | None:
    """One version with its aliases and tags; None when the model or the version does not exist."""
    aliases = registered_model_aliases(name, cfg=cfg)
    if aliases is None:
        return None
    try:
        mv = store.client(cfg).get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return _version_info(mv, aliases)


def set_version_tags(
    name: str, version: str | int, tags: Mapping[str, Any], *, cfg: MlflowConfig | None = None
) -> None:
    """Tags of one version (its test metrics, promotion and rollback stamps); values become strings."""
    mlflow_client = store.client(cfg)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, str(version), key, str(value))


def set_version_description(name: str, version: str | int, text: str, *, cfg: MlflowConfig | None = None) -> None:
    """A version's description (Markdown in the UI): its model card."""
    store.client(cfg).update_model_version(name, str(version), description=text)


def registered_model_tags(name: str, *, cfg: MlflowConfig | None = None) -> dict[str, str]:
    """Tags of the registered model itself (where the champion history lives); {} when it does not exist."""
    try:
        return dict(store.client(cfg).get_registered_model(name).tags or {})
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise


def set_registered_model_tags(name: str, tags: Mapping[str, Any], *, cfg: MlflowConfig | None = None) -> None:
    """Tags of the registered model itself; values become strings."""
    mlflow_client = store.client(cfg)
    for key, value in tags.items():
        mlflow_client.set_registered_model_tag(name, key, str(value))
