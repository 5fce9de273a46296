"""Which model answers: a registered alias or version, a logged model, a folder or a model file.

Every surface (predict, web, REST, Spark, evaluate-folder) resolves its --model through here, so a typo
is the same one clear line everywhere and the provenance people see is the same.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from galmorph.config import MlflowConfig
from galmorph.errors import UserError
from galmorph.models.inference import GalaxyClassifier
from galmorph.serving.promotion import CHAMPION, list_versions, version_by_alias
from galmorph.tracking import logged_model, registry

log = logging.getLogger(__name__)
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?/?$")


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """Which model answers: what people see on the web page and in predictions' provenance."""

    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None

    @property
    def display(self) -> str:
        if self.name and self.version:
            return f"{self.name} v{self.version}" + (f" (@{self.alias})" if self.alias else "")
        return self.uri


def default_model_uri(cfg: MlflowConfig) -> str:
    return f"models:/{cfg.registered_model}@{CHAMPION}"


def resolve_model(spec: str | None, cfg: MlflowConfig) -> ModelRef:
    """Check a --model value up front (model, alias, version, file) so a typo is one clear line."""
    uri = spec or default_model_uri(cfg)
    match = _MODELS_URI.match(uri)
    if match and not match["name"].startswith("m-"):  # m-<id> is a logged model, not a registered one
        name, alias, version = match["name"], match["alias"], match["version"]
        if alias:
            info = version_by_alias(name, alias, cfg)
            if info is None:
                known = registry.registered_model_aliases(name, cfg=cfg) or {}
                shown = ", ".join(f"@{a}" for a in sorted(known)) or "none"
                raise UserError(f"--model {uri}: registered model {name!r} has no alias @{alias} (aliases: {shown})")
            return ModelRef(uri, name, info.version, alias)
        if version:
            version_by_alias(name, CHAMPION, cfg)  # UserError when the model is absent
            if registry.model_version(name, version, cfg=cfg) is None:
                raise UserError(f"--model {uri}: registered model {name!r} has no version {version}")
            return ModelRef(uri, name, version)
        latest = list_versions(name, cfg)
        return ModelRef(uri, name, latest[0].version if latest else None)
    if "://" in uri or uri.startswith(("models:/", "runs:/")):
        return ModelRef(uri)
    path = Path(uri)
    if not path.exists():
        raise UserError(
            f"--model {uri}: no such file or folder (expected models:/NAME@ALIAS, a .pt or a pyfunc folder)"
        )
    return ModelRef(str(path), name=path.name, version="local")


def load_model(ref: ModelRef, cfg: MlflowConfig) -> GalaxyClassifier:
    """The classifier behind a reference: a checkpoint file, or the pyfunc at a URI or folder."""
    if ref.version == "local" and Path(ref.uri).is_file():
        classifier = GalaxyClassifier.from_artifacts(ref.uri, device="cpu")
    else:
        try:
            pyfunc = logged_model.load_classifier(ref.uri, cfg=cfg)
        except UserError:
            raise
        except Exception as exc:  # a URI a person typed: say which and why, not a traceback
            raise UserError(f"--model {ref.uri}: cannot load ({str(exc).splitlines()[0]})") from None
        classifier = getattr(pyfunc.unwrap_python_model(), "classifier", None)
        if not isinstance(classifier, GalaxyClassifier):
            raise UserError(f"--model {ref.uri}: not a galmorph classifier (it was not logged by `galmorph train`)")
    return classifier


def local_checkpoint(ref: ModelRef, cfg: MlflowConfig, dest: str | os.PathLike) -> Path:
    """A models/model.pt for `ref`: the file itself, or the one inside a logged model, downloaded into `dest`
    (a temporary folder the caller removes)."""
    if ref.version == "local" and Path(ref.uri).is_file():
        return Path(ref.uri)
    try:
        return logged_model.checkpoint_file(ref.uri, dest, cfg)
    except UserError:
        raise
    except Exception as exc:  # a URI a person typed: say which and why, not a traceback
        raise UserError(f"--model {ref.uri}: cannot load ({str(exc).splitlines()[0]})") from None


class LiveModel:
    """The classifier a long-running server answers with. For a registry alias (models:/NAME@ALIAS) it asks
    the registry at most every `follow_s` seconds where the alias points, and when it moved (a promote, a
    rollback) loads the new version and answers with it from then on; no restart needed. Requests in the
    meantime keep the old one; a registry that cannot be reached leaves the current model in place."""

    def __init__(
        self,
        classifier: GalaxyClassifier,
        ref: ModelRef,
        cfg: MlflowConfig | None,
        *,
        follow_s: float | None = 30.0,
        prepare: Callable[[GalaxyClassifier], None] | None = None,
    ) -> None:
        self._classifier, self._ref, self._cfg = classifier, ref, cfg
        self._follow_s = follow_s if ref.alias and ref.name and cfg is not None else None
        self._prepare = prepare or (lambda _c: None)
        self._checked = time.monotonic()
        self._lock = threading.Lock()
        self._prepare(classifier)

    def current(self) -> tuple[GalaxyClassifier, ModelRef]:
        """(classifier, its reference) to answer this request with."""
        due = self._follow_s is not None and time.monotonic() - self._checked >= self._follow_s
        # one request checks; the others go on with the current model meanwhile
        if due and self._lock.acquire(blocking=False):
            try:
                self._checked = time.monotonic()
                self._follow()
            finally:
                self._lock.release()
        return self._classifier, self._ref

    def _follow(self) -> None:
        assert self._ref.name and self._ref.alias and self._cfg is not None
        try:
            info = version_by_alias(self._ref.name, self._ref.alias, self._cfg)
            if info is None or info.version == self._ref.version:
                return
            ref = ModelRef(self._ref.uri, self._ref.name, info.version, self._ref.alias)
            classifier = load_model(ModelRef(info.uri, ref.name, ref.version), self._cfg)
        except Exception:  # noqa: BLE001 - the registry or the new model is unavailable: keep serving
            log.warning(
                "could not follow %s; still serving version %s", self._ref.uri, self._ref.version, exc_info=True
            )
            return
        self._prepare(classifier)
        log.warning("%s moved: now serving version %s (was %s)", ref.uri, ref.version, self._ref.version)
        self._classifier, self._ref = classifier, ref
