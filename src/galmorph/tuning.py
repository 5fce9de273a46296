"""Hyperparameter search with Optuna, reusing the training code: every trial is one fit().

The search space lives in params.yaml (tune.space): keys are the SECTION.KEY they set (`train.lr`,
`model.hidden`), each with a type and a range, validated here against the config dataclasses before a
trial runs. Every epoch reports the validation metric to the trial so the pruner can stop unpromising
trials early; the trial's value is the metric of the epoch fit() keeps (its lowest validation loss).

Runs: one MLflow run per study (all params, Optuna's plots, the trials table), every trial a child run
with its suggested params, per-epoch metrics, final value and state (FINISHED = complete, KILLED =
pruned, FAILED = failed; tag `optuna.state`), so the MLflow UI compares trials side by side.
optuna-integration's MLflowCallback is not used: it logs after a trial ends (no live per-epoch curves),
names the MLflow experiment after the study, and cannot mark pruned trials.

Studies live in an Optuna storage: SQLite at <repo>/mlruns/optuna.db by default, or a server database
(`galmorph tune --storage postgresql://user:password@host/db`) that any number of worker processes on any
number of machines join; each runs the same command with the same params and splits. The study's name
is tune.study_name plus a hash of everything its trials depend on (space, epochs, metric, the other
params, the embedding cache and the train/val rows), so changed params start a fresh study while
re-running with the same ones resumes it: finished trials are kept and tune.n_trials is a global budget
of COMPLETE + PRUNED trials across all workers and sessions (failed trials do not use it up). Watch a
study live with optuna-dashboard on the same storage:

    pip install optuna-dashboard
    optuna-dashboard sqlite:///$PWD/mlruns/optuna.db      # or the postgresql:// URL
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import random
import socket
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import optuna
import pandas as pd
import sqlalchemy.exc
import yaml
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from galmorph import tracking
from galmorph.config import Params, with_overrides
from galmorph.errors import UserError
from galmorph.io import write_text
from galmorph.paths import repo_root
from galmorph.training.features import FeatureCache
from galmorph.training.loop import RESUME_FREE_KEYS, fit

DIRECTIONS = {"val_macro_f1": "maximize", "val_acc": "maximize", "val_loss": "minimize"}
"""tune.metric -> the study's direction."""

TUNABLE_SECTIONS = ("model", "train", "augment", "preprocess")
NOT_HYPERPARAMETERS = {
    "train.epochs": "every trial trains tune.epochs epochs (train.epochs is the final model's)",
    "train.seed": "a seed is not a hyperparameter",
    "train.deterministic": "a reproducibility switch, not a hyperparameter",
    "train.device": "a device, not a hyperparameter",
    "train.precision": "a speed setting, not a hyperparameter",
    "train.channels_last": "a speed setting, not a hyperparameter",
    "train.num_workers": "a speed setting, not a hyperparameter",
    "train.checkpoint_dir": "a path",
    "train.out": "a path",
    "train.metrics": "a path",
    "train.curves": "a path",
}
FINETUNE_ONLY = ("augment.", "train.unfreeze_blocks", "train.layer_decay")
"""Keys with no effect in frozen mode (the head trains on cached embeddings, not on augmented images)."""
CACHE_KEYS = ("model.arch", "model.weights", "preprocess.")
"""Keys the embedding cache fixes in frozen mode (it was computed once with one value of each)."""

SPEC_KEYS = {"float": {"low", "high", "log", "step", "when"}, "int": {"low", "high", "log", "step", "when"}}
SPEC_KEYS["categorical"] = {"choices", "when"}

RUN_ATTR = "mlflow_run_id"
"""User attribute of the study (the run every worker nests its trials under) and of each trial (its own run)."""
HEARTBEAT_S, GRACE_S = 20, 60
"""A trial whose worker stopped beating for GRACE_S (killed, machine lost) is marked FAIL by the others."""
POLL_S = 2.0
PARENT_WAIT_S = 60.0


# ------------------------------------------------------------------------------------------ search space


@dataclasses.dataclass(frozen=True)
class SearchParam:
    """One entry of tune.space: the SECTION.KEY it sets, its distribution, and when it is active."""

    name: str
    type: Literal["float", "int", "categorical"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, value_of: Callable[[str], Any]) -> bool:
        return all(value_of(key) in allowed for key, allowed in self.when)

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.name, list(self.choices))

    def values(self) -> tuple[Any, ...]:
        """The values this entry can take, as far as a `when` on it can tell."""
        if self.type == "categorical":
            return self.choices
        if self.type == "int" and not self.log and (self.high - self.low) // (self.step or 1) < 100:
            return tuple(range(self.low, self.high + 1, self.step or 1))
        return ()


def _current(params: Params, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(params, section), name)


def _check_target(name: str, params: Params, where: str) -> None:
    section, _, key = name.partition(".")
    if not key or "." in key:
        raise UserError(f"{where}: expected SECTION.KEY of params.yaml (e.g. train.lr, model.hidden), got {name!r}")
    if section not in TUNABLE_SECTIONS:
        raise UserError(f"{where}: section {section!r} cannot be tuned (expected one of {', '.join(TUNABLE_SECTIONS)})")
    fields = [f.name for f in dataclasses.fields(getattr(params, section))]
    if key not in fields:
        raise UserError(f"{where}: {section} has no key {key!r} (expected one of {', '.join(fields)})")
    if name in NOT_HYPERPARAMETERS:
        raise UserError(f"{where}: {name} cannot be tuned: {NOT_HYPERPARAMETERS[name]}")


def _number(spec: Mapping[str, Any], key: str, kind: str, where: str) -> float | int:
    if key not in spec:
        raise UserError(f"{where}: a {kind} needs {key}")
    value = spec[key]
    if isinstance(value, bool):
        raise UserError(f"{where}.{key}: expected a number, got {value!r}")
    if kind == "int":
        if not isinstance(value, int):
            raise UserError(f"{where}.{key}: expected an integer, got {value!r}")
        return value
    try:
        return float(value)  # YAML reads 1e-3 as a string
    except (TypeError, ValueError):
        raise UserError(f"{where}.{key}: expected a number, got {value!r}") from None


def _parse_one(name: str, spec: Any, params: Params, earlier: Mapping[str, SearchParam]) -> SearchParam:
    where = f"params: tune.space.{name}"
    _check_target(name, params, where)
    if not isinstance(spec, dict) or spec.get("type") not in SPEC_KEYS:
        raise UserError(f"{where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
    kind = spec["type"]
    unknown = sorted(set(spec) - SPEC_KEYS[kind] - {"type"})
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(unknown)} for a {kind} (expected {', '.join(sorted(SPEC_KEYS[kind]))})"
        )
    fields: dict[str, Any] = {}
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}.choices: expected a non-empty list, got {choices!r}")
        bad = [c for c in choices if not (c is None or isinstance(c, bool | int | float | str))]
        if bad:
            raise UserError(f"{where}.choices: Optuna takes numbers, strings, booleans or null, got {bad[0]!r}")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise UserError(f"{where}.choices: values repeat: {choices!r}")
        fields["choices"] = tuple(choices)
        probe = list(choices)
    else:
        low, high = _number(spec, "low", kind, where), _number(spec, "high", kind, where)
        if not low < high:
            raise UserError(f"{where}: expected low < high, got low={low} high={high}")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise UserError(f"{where}.log: expected true or false, got {log!r}")
        if log and low <= 0:
            raise UserError(f"{where}: a log scale needs low > 0, got {low}")
        step = _number(spec, "step", kind, where) if spec.get("step") is not None else None
        if step is not None and (step <= 0 or log):
            raise UserError(f"{where}.step: expected a positive step without log: true, got {step}")
        fields |= {"low": low, "high": high, "log": log, "step": step}
        probe = [low, high]
    for value in probe:  # every value must be one the param accepts (an int field gets no 0.5)
        with_overrides(params, {name: value}, where)
    fields["when"] = _parse_when(spec.get("when"), name, params, earlier, where)
    return SearchParam(name=name, type=kind, **fields)


def _parse_when(
    raw: Any, name: str, params: Params, earlier: Mapping[str, SearchParam], where: str
) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{where}.when: expected a mapping such as {{train.mode: finetune}}, got {raw!r}")
    out = []
    for key, allowed in raw.items():
        key = str(key)
        section, _, field = key.partition(".")
        if not field or not hasattr(params, section) or not hasattr(getattr(params, section), field):
            raise UserError(f"{where}.when: {key!r} is not a SECTION.KEY of params.yaml")
        if key == name:
            raise UserError(f"{where}.when: an entry cannot depend on itself")
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if key in earlier:
            possible = earlier[key].values()
            impossible = [v for v in values if possible and v not in possible]
            if impossible:
                raise UserError(f"{where}.when: {key} never takes {impossible[0]!r} (its choices: {list(possible)})")
        out.append((key, values))
    return tuple(out)


def parse_space(params: Params) -> list[SearchParam]:
    """tune.space as SearchParams, in declaration order; a clear error for anything a trial could not use."""
    space: dict[str, SearchParam] = {}
    names = list(params.tune.space)
    for name, spec in params.tune.space.items():
        param = _parse_one(name, spec, params, space)
        for key, _ in param.when:
            if key in params.tune.space and key not in space:
                raise UserError(f"params: tune.space.{name}.when: {key} must come before {name} in tune.space")
        space[name] = param
    if not names:
        raise UserError("params: tune.space: nothing to tune (expected at least one SECTION.KEY entry)")
    out = list(space.values())
    for param in out:
        if param.name == "train.mode" or "frozen" not in _modes_when_active(param, space, params):
            continue
        if param.name.startswith(FINETUNE_ONLY):
            raise UserError(
                f"params: tune.space.{param.name}: has no effect in frozen mode (the head trains on cached "
                "embeddings); add `when: {train.mode: finetune}` or remove it"
            )
        if param.name.startswith(CACHE_KEYS):
            raise UserError(
                f"params: tune.space.{param.name}: fixed by the embedding cache in frozen mode (run `galmorph embed` "
                "with another value instead); add `when: {train.mode: finetune}` or remove it"
            )
    return out


def _modes_when_active(param: SearchParam, space: Mapping[str, SearchParam], params: Params) -> set[str]:
    mode = space.get("train.mode")
    modes = set(mode.choices) if mode is not None else {params.train.mode}
    for key, allowed in param.when:
        if key == "train.mode":
            modes &= set(allowed)
    return modes


def inactive_params(space: Sequence[SearchParam], params: Params) -> list[str]:
    """Entries whose `when` can never hold with these params (e.g. finetune-only keys in a frozen study)."""
    names = {p.name for p in space}
    return [
        p.name
        for p in space
        if any(key not in names and _current(params, key) not in allowed for key, allowed in p.when)
    ]


def suggest(trial: optuna.Trial, space: Sequence[SearchParam], params: Params) -> dict[str, Any]:
    """The trial's values of the active entries (define-by-run: a `when` sees the values drawn before it)."""
    values: dict[str, Any] = {}
    for param in space:
        if param.active(lambda key: values[key] if key in values else _current(params, key)):
            values[param.name] = param.suggest(trial)
    return values


def trial_params(params: Params, overrides: Mapping[str, Any]) -> Params:
    """The params one trial trains with: the suggested values, and tune.epochs epochs."""
    return with_overrides(params, {**overrides, "train.epochs": params.tune.epochs}, "tune")


def needs_features(params: Params) -> bool:
    """Whether some trial trains in frozen mode (and so reads the embedding cache)."""
    mode = params.tune.space.get("train.mode")
    modes = set(mode.get("choices", ())) if isinstance(mode, dict) else {params.train.mode}
    return "frozen" in modes


# -------------------------------------------------------------------------------------------- the study


def study_name(params: Params, catalogue: pd.DataFrame, features_meta: Mapping[str, Any] | None) -> str:
    """tune.study_name + a hash of what the trials depend on: same params and data resume the study."""
    sections = {
        "tune": {k: getattr(params.tune, k) for k in ("space", "epochs", "metric")},
        "model": dataclasses.asdict(params.model),
        "train": {k: v for k, v in dataclasses.asdict(params.train).items() if k not in (*RESUME_FREE_KEYS, "epochs")},
        "preprocess": dataclasses.asdict(params.preprocess),
        "augment": dataclasses.asdict(params.augment),
        "embed": {"views": params.embed.views, "seed": params.embed.seed},
        "features": (features_meta or {}).get("fingerprint"),
        "data": _rows_digest(catalogue),
    }
    digest = hashlib.sha256(json.dumps(sections, sort_keys=True, default=str).encode()).hexdigest()
    return f"{params.tune.study_name}-{digest[:8]}"


def _rows_digest(catalogue: pd.DataFrame) -> str:
    cols = [c for c in ("galaxy_id", "label_id", "split") if c in catalogue.columns]
    rows = catalogue.loc[catalogue["split"].isin(["train", "val"]), cols] if "split" in cols else catalogue[cols]
    hashed = pd.util.hash_pandas_object(rows.astype(str), index=False)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()


def storage_url(cfg_storage: str | None, override: str | None = None) -> str:
    """--storage > tune.storage > sqlite:///<repo>/mlruns/optuna.db; a relative SQLite path is anchored at the
    repo root (`dvc exp run --temp` runs in a copy of the repo whose files are thrown away)."""
    url = override or cfg_storage or f"sqlite:///{repo_root() / 'mlruns' / 'optuna.db'}"
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "sqlite":
        path = url[len("sqlite:///") :]
        if not path or path == ":memory:":
            raise UserError(f"tune.storage: {url!r}: an in-memory study cannot be resumed; give a file")
        db = Path(path)
        if not db.is_absolute():
            db = repo_root() / db
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}"
    if scheme in ("postgresql", "postgres"):
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; galmorph[postgres] installs psycopg2
        driver = "postgresql+psycopg2" if importlib.util.find_spec("psycopg2") else "postgresql"
        return f"{driver}://{url.split('://', 1)[1]}"
    if scheme.split("+")[0] in ("postgresql", "mysql"):
        return url
    raise UserError(f"tune.storage: {redact(url)!r}: expected sqlite:///path/to/optuna.db or postgresql://user@host/db")


def redact(url: str) -> str:
    """The URL with its password hidden, for logs, tags and reports."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return url


def open_storage(url: str, attempts: int = 6) -> optuna.storages.RDBStorage:
    """The RDB storage with heartbeats, so a worker that dies mid-trial does not hold a RUNNING trial forever.

    Workers starting together on an empty database race to create Optuna's tables (PostgreSQL answers the
    loser with a duplicate key or an existing relation); the loser tries again and finds them made.
    """
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
                )
        except ModuleNotFoundError as exc:
            raise UserError(
                f"tune.storage {redact(url)}: the database driver {exc.name} is not installed "
                "(pip install 'galmorph[postgres]' for PostgreSQL)"
            ) from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts:
                raise
            time.sleep(0.5 * attempt + random.random())
        except sqlalchemy.exc.SQLAlchemyError as exc:
            first = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
            raise UserError(f"tune.storage {redact(url)}: cannot open the study database: {first}") from None
    raise AssertionError("unreachable")


class PerTrialSeedSampler(optuna.samplers.BaseSampler):
    """Seeds the wrapped sampler from (tune.seed, trial number) for every trial.

    One RNG per process would make every worker, and every resumed session, draw the same points; trial
    numbers are unique across workers (the storage hands them out), so this draws distinct points and a
    single-worker study is reproducible. TPE keeps no state between trials besides its RNG, so a fresh
    sampler per trial loses nothing.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._current: tuple[int, optuna.samplers.BaseSampler] | None = None

    def _for(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        if self._current is None or self._current[0] != trial.number:
            self._current = (trial.number, self._make((self._seed * 1_000_003 + trial.number) % 2**32))
        return self._current[1]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: Any) -> Any:
        return self._for(trial).sample_independent(study, trial, name, distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._for(trial).after_trial(study, trial, state, values)


def make_sampler(sampler: str, seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    def make(trial_seed: int) -> optuna.samplers.BaseSampler:
        if sampler == "random":
            return optuna.samplers.RandomSampler(seed=trial_seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # constant_liar: running trials count as bad guesses, so parallel workers spread out
            return optuna.samplers.TPESampler(seed=trial_seed, n_startup_trials=startup_trials, constant_liar=True)

    return PerTrialSeedSampler(make, seed)


def make_pruner(pruner: str, epochs: int, startup_trials: int, warmup_epochs: int) -> optuna.pruners.BasePruner:
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup_epochs), max_resource=epochs)
    return optuna.pruners.NopPruner()


def open_study(params: Params, name: str, storage: optuna.storages.BaseStorage) -> tuple[optuna.Study, bool]:
    """Create the study or join it; returns (study, created). Creation is atomic in the storage, so of
    many workers starting at once exactly one creates it (and its MLflow run)."""
    cfg = params.tune
    kwargs = {
        "study_name": name,
        "storage": storage,
        "sampler": make_sampler(cfg.sampler, cfg.seed, cfg.startup_trials),
        "pruner": make_pruner(cfg.pruner, cfg.epochs, cfg.startup_trials, cfg.pruner_warmup_epochs),
    }
    try:
        return optuna.create_study(direction=DIRECTIONS[cfg.metric], load_if_exists=False, **kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(**kwargs), False


def _check_tune_params(params: Params) -> None:
    cfg = params.tune
    for key in ("n_trials", "epochs"):
        if getattr(cfg, key) < 1:
            raise UserError(f"params: tune.{key}: expected at least 1, got {getattr(cfg, key)}")
    for key in ("startup_trials", "pruner_warmup_epochs"):
        if getattr(cfg, key) < 0:
            raise UserError(f"params: tune.{key}: expected 0 or more, got {getattr(cfg, key)}")


# ------------------------------------------------------------------------------------------- the trials


class _OverBudget(Exception):
    """A trial asked for after the global budget was taken (two workers asking at the same moment)."""


@dataclasses.dataclass
class _Objective:
    """One trial: suggest, fit with a per-epoch report to the pruner, all inside a nested MLflow run."""

    catalogue: pd.DataFrame
    params: Params
    space: Sequence[SearchParam]
    features: FeatureCache | None
    worker: str
    user_error: UserError | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self.params.tune
        ahead = [
            t
            for t in trial.study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            )
            if t.number < trial.number
        ]
        if len(ahead) >= cfg.n_trials:
            trial.set_user_attr("skipped", f"over the global budget: {len(ahead)} trials done or running before it")
            raise _OverBudget(f"trial {trial.number}: the budget of {cfg.n_trials} trials is taken")
        trial.set_user_attr("worker", self.worker)
        overrides = suggest(trial, self.space, self.params)
        tags = {
            "optuna.study_name": trial.study.study_name,
            "optuna.trial_number": trial.number,
            "optuna.worker": self.worker,
            "galmorph.stage": "tune.trial",
        }
        with tracking.start_child_run(
            f"trial-{trial.number}", overrides, tags=tags, killed_on=(optuna.TrialPruned,)
        ) as run:
            trial.set_user_attr(RUN_ATTR, run.info.run_id)
            try:
                result = fit(
                    self.catalogue,
                    trial_params(self.params, overrides),
                    on_epoch=lambda epoch, metrics: self._on_epoch(trial, epoch, metrics),
                    features=self.features,
                    progress=False,
                )
            except optuna.TrialPruned:
                tracking.set_tags({"optuna.state": TrialState.PRUNED.name})
                raise
            except BaseException as exc:
                if isinstance(exc, UserError):
                    self.user_error = exc  # the same for every trial: stop after this one
                message = f"{type(exc).__name__}: {exc}"
                trial.set_user_attr("error", message[:500])
                tracking.set_tags({"optuna.state": TrialState.FAIL.name, "optuna.error": message[:500]})
                tracking.log_dict({"error": message, "traceback": traceback.format_exc()}, "error.json")
                raise
            value = float(result.best_metrics[cfg.metric])
            best = {f"best_{k}": v for k, v in result.best_metrics.items() if k != "epoch"}
            tracking.log_metrics({**best, "best_epoch": result.best_epoch, "objective": value})
            tracking.set_tags({"optuna.state": TrialState.COMPLETE.name})
        return value

    def _on_epoch(self, trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        tracking.log_metrics(metrics, step=epoch)
        metric = self.params.tune.metric
        value = metrics.get(metric, math.nan)
        if not (math.isfinite(value) and math.isfinite(metrics.get("train_loss", 0.0))):
            raise FloatingPointError(f"epoch {epoch}: {metric} = {value}, train_loss = {metrics.get('train_loss')}")
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {metric} {value:.4f}")


# ----------------------------------------------------------------------------------------------- running


@dataclasses.dataclass
class StudyOutcome:
    """What a worker did and where the study stands."""

    study: optuna.Study
    storage: str
    parent_run_id: str
    ran: int
    inactive: list[str]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_study(
    catalogue: pd.DataFrame,
    params: Params,
    *,
    features: FeatureCache | None,
    storage: str,
    worker_trials: int | None = None,
    dataset_path: str | os.PathLike | None = None,
    plots: bool = True,
    progress: bool = True,
) -> StudyOutcome:
    """Join (or create) the study and run trials until the global budget tune.n_trials of COMPLETE + PRUNED
    trials is reached, or this worker has run `worker_trials` of them.

    The budget holds exactly across workers: a worker starts a trial only while fewer than n_trials are
    done or running, and a trial that finds n_trials ahead of it (two workers asked at once) is dropped
    before it trains (state FAIL, user attribute `skipped`, no MLflow run). A worker waits while the last
    trials run elsewhere, in case one of them fails and must be replaced.
    (Optuna's MaxTrialsCallback checks only after a trial ends, so concurrent workers overshoot it.)
    """
    _check_tune_params(params)
    if worker_trials is not None and worker_trials < 1:
        raise UserError(f"--n-trials: expected at least 1, got {worker_trials}")
    space = parse_space(params)
    inactive = inactive_params(space, params)
    name = study_name(params, catalogue, features.meta if features is not None else None)
    with _optuna_quiet():
        study, created = open_study(params, name, open_storage(storage))
        objective = _Objective(catalogue, params, space, features, worker_id())
        with _parent_run(study, params, created, storage, inactive) as parent:
            if created and dataset_path is not None:
                tracking.log_dataset(catalogue, dataset_path, name="splits", context="tuning")
            ran = _work(study, objective, params.tune.n_trials, worker_trials, progress)
            log_study(study, params, plots=plots)
    return StudyOutcome(study=study, storage=storage, parent_run_id=parent, ran=ran, inactive=inactive)


@contextlib.contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Our own one line per trial replaces Optuna's (and its tracebacks of deliberately dropped trials)."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


@contextlib.contextmanager
def _parent_run(study: optuna.Study, params: Params, created: bool, storage: str, inactive: list[str]) -> Iterator[str]:
    """The study's MLflow run: made by the worker that created the study, reopened by every other."""
    cfg = params.mlflow
    run_id = study.user_attrs.get(RUN_ATTR)
    if run_id is None and not created:
        run_id = _wait_for_parent(study)
    if run_id is not None and not tracking.run_exists(run_id, cfg=cfg):
        tqdm.write(f"tune: the study's MLflow run {run_id} is not in this tracking store; starting a new one")
        run_id = None
    sections = {s: getattr(params, s) for s in ("tune", "model", "train", "preprocess", "augment", "embed")}
    tags = {
        "optuna.study_name": study.study_name,
        "optuna.storage": redact(storage),
        "optuna.direction": study.direction.name.lower(),
        "optuna.inactive_params": ", ".join(inactive) or "none",
    }
    with tracking.start_run(
        cfg, "tune", sections, run_name=study.study_name if run_id is None else None, run_id=run_id, tags=tags
    ) as run:
        if run_id is None:
            study.set_user_attr(RUN_ATTR, run.info.run_id)
        yield run.info.run_id


def _wait_for_parent(study: optuna.Study) -> str | None:
    """Another worker has just created the study and is about to record its MLflow run: wait for it.
    A study with trials but no run (its creator died, or another tool made it) gets one from us."""
    deadline = time.monotonic() + PARENT_WAIT_S
    while time.monotonic() < deadline:
        run_id = study.user_attrs.get(RUN_ATTR)
        if run_id is not None:
            return run_id
        if study.get_trials(deepcopy=False):
            return None
        time.sleep(0.5)
    return None


def _counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state; failed trials that were only dropped over budget are `skipped`, not `fail`."""
    counts = {"complete": 0, "pruned": 0, "fail": 0, "running": 0, "skipped": 0, "waiting": 0}
    for t in study.get_trials(deepcopy=False):
        key = "skipped" if t.state == TrialState.FAIL and "skipped" in t.user_attrs else t.state.name.lower()
        counts[key] += 1
    return counts


def _work(study: optuna.Study, objective: _Objective, budget: int, worker_trials: int | None, progress: bool) -> int:
    ran = 0
    start = _counts(study)
    limit = "" if worker_trials is None else f"; this worker runs up to {worker_trials}"
    tqdm.write(f"tune: study {study.study_name}: {start['complete'] + start['pruned']} of {budget} trials done{limit}")
    bar = tqdm(total=budget, desc="tune", unit="trial", disable=not progress)

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal ran
        if "skipped" in trial.user_attrs:
            return
        ran += 1
        tqdm.write(describe_trial(trial, objective.params.tune.metric, objective.params.tune.epochs))

    while worker_trials is None or ran < worker_trials:
        counts = _counts(study)
        bar.n = min(counts["complete"] + counts["pruned"], budget)
        bar.refresh()
        if counts["complete"] + counts["pruned"] >= budget:
            break
        if counts["complete"] + counts["pruned"] + counts["running"] >= budget:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            time.sleep(POLL_S)
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[report])
        if objective.user_error is not None:
            raise objective.user_error
    bar.close()
    return ran


def describe_trial(trial: FrozenTrial, metric: str, epochs: int) -> str:
    """The one line a worker prints per trial."""
    ran = len(trial.intermediate_values)
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    value = f"{metric} {trial.value:.4f}" if trial.value is not None else ""
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        value = f"{metric} {trial.intermediate_values[max(trial.intermediate_values)]:.4f}"
    shown = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    error = f" ({trial.user_attrs['error']})" if "error" in trial.user_attrs else ""
    return f"trial {trial.number:>3} {trial.state.name:<8} {value} after {ran}/{epochs} epochs, {seconds:.1f} s | {shown}{error}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------ the results


def epochs_summary(study: optuna.Study, epochs: int) -> dict[str, float]:
    """Epochs the finished trials ran against tune.epochs each: the pruner's (and early stopping's) saving."""
    finished = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    ran = sum(len(t.intermediate_values) for t in finished)
    budget = epochs * len(finished)
    return {
        "epochs_run": float(ran),
        "epochs_budget": float(budget),
        "epochs_saved": 1 - ran / budget if budget else 0.0,
    }


def log_study(study: optuna.Study, params: Params, *, plots: bool = True) -> None:
    """Into the active (parent) run: Optuna's plots (unless `plots` is false, for a quick check), the trials
    table, the counts and the best value."""
    counts = _counts(study)
    metrics: dict[str, float] = {f"trials_{k}": float(v) for k, v in counts.items()}
    metrics |= epochs_summary(study, params.tune.epochs)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        metrics[f"best_{params.tune.metric}"] = float(best.value)
        tracking.set_tags({"optuna.best_trial": best.number, "optuna.best_run_id": best.user_attrs.get(RUN_ATTR)})
    tracking.log_metrics(metrics)
    figures, skipped = study_figures(study, params.tune.seed) if plots else ({}, {})
    for name, fig in figures.items():
        tracking.log_figure(fig, f"optuna/{name}.png")
    _close(figures)
    if skipped:
        tracking.log_dict(skipped, "optuna/skipped_plots.json")
        tqdm.write("tune: plots skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    with tempfile.TemporaryDirectory(prefix="galmorph-tune-") as tmp:
        path = Path(tmp) / "trials.csv"
        study.trials_dataframe().to_csv(path, index=False)
        tracking.log_artifact(path, "optuna")


def study_figures(study: optuna.Study, seed: int = 0) -> tuple[dict[str, Any], dict[str, str]]:
    """Optuna's matplotlib plots of the study by name, and the reasons for those it could not draw."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as vis

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    plots: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: vis.plot_optimization_history(study),
        "intermediate_values": lambda: vis.plot_intermediate_values(study),
        "param_importances": lambda: vis.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)
        ),
        "parallel_coordinate": lambda: vis.plot_parallel_coordinate(study),
        "slice": lambda: vis.plot_slice(study),
        "timeline": lambda: vis.plot_timeline(study),
    }
    needs = {"optimization_history": 1, "param_importances": 2, "parallel_coordinate": 2, "slice": 1}
    figures: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, draw in plots.items():
        if len(complete) < needs.get(name, 0):
            skipped[name] = f"needs {needs[name]} complete trial(s), the study has {len(complete)}"
            continue
        if name == "intermediate_values" and not any(t.intermediate_values for t in finished):
            skipped[name] = "no trial reported an epoch"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning of the matplotlib backend
                axes = draw()
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            skipped[name] = f"{type(exc).__name__}: {exc}"
            continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        fig = first.figure
        n = len(axes.flat) if hasattr(axes, "flat") else 1
        fig.set_size_inches(max(8.0, 3.2 * n), 5.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # colour bars are not tight_layout's: harmless
            fig.tight_layout()
        figures[name] = fig
    return figures, skipped


def _close(figures: Mapping[str, Any]) -> None:
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)


def best_params_document(outcome: StudyOutcome, metric: str) -> dict[str, Any]:
    """tune.out's content: the best trial's values under `params` (what `galmorph train` applies), and
    where they came from."""
    study = outcome.study
    counts = _counts(study)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UserError(
            f"study {study.study_name}: no trial completed ({', '.join(f'{v} {k}' for k, v in counts.items() if v)}); "
            "see the failed trials' error tags in MLflow"
        )
    best = study.best_trial
    return {
        "params": dict(best.params),
        "study": study.study_name,
        "storage": redact(outcome.storage),
        "metric": metric,
        "direction": study.direction.name.lower(),
        "value": float(best.value),
        "trial": best.number,
        "mlflow_run_id": best.user_attrs.get(RUN_ATTR),
        "mlflow_study_run_id": outcome.parent_run_id,
        "trials": {k: v for k, v in counts.items() if k in ("complete", "pruned", "fail", "skipped")},
    }


def write_best_params(path: str | os.PathLike, document: Mapping[str, Any]) -> None:
    header = (
        "# Written by `galmorph tune`: the best trial's values, applied by `galmorph train` (params.yaml is\n"
        "# never rewritten). Re-running tune with the same params resumes the study named below.\n"
    )
    write_text(path, header + yaml.safe_dump(dict(document), sort_keys=False))


# ---------------------------------------------------------------------------------------------- --show


def show_study(study: optuna.Study, metric: str, *, top: int = 10, console: Any = None) -> None:
    """The best trials as a table in the terminal (rich), then the counts by state."""
    from rich.table import Table

    console = console or _console()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(complete, key=lambda t: t.value, reverse=reverse)[:top]
    names: list[str] = []
    for t in ranked:
        names += [k for k in t.params if k not in names]
    table = Table(title=f"{study.study_name}: best {len(ranked)} of {len(complete)} complete trials ({metric})")
    for col in ("rank", "trial", metric, "epochs", "seconds", *names):
        table.add_column(col, justify="right" if col not in names else "left", overflow="fold")
    for rank, t in enumerate(ranked, 1):
        seconds = t.duration.total_seconds() if t.duration else float("nan")
        cells = [str(rank), str(t.number), f"{t.value:.4f}", str(len(t.intermediate_values)), f"{seconds:.1f}"]
        table.add_row(*cells, *(_fmt(t.params[n]) if n in t.params else "-" for n in names))
    console.print(table)
    counts = _counts(study)
    console.print(", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no trials yet")


def _console() -> Any:
    """A rich console; piped or captured output is not cut at 80 columns."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


def show(params: Params, catalogue: pd.DataFrame, storage: str, features_meta: Mapping[str, Any] | None) -> None:
    """`galmorph tune --show`: the current params' study, or the studies in the storage when it has none."""
    console = _console()
    name = study_name(params, catalogue, features_meta)
    store = open_storage(storage)
    summaries = optuna.get_all_study_summaries(store, include_best_trial=False)
    if name in {s.study_name for s in summaries}:
        with _optuna_quiet():
            study = optuna.load_study(study_name=name, storage=store)
        show_study(study, params.tune.metric, console=console)
        return
    console.print(f"no study {name} (the one these params and splits would use) in {redact(storage)}")
    for s in summaries:
        console.print(f"  {s.study_name}: {s.n_trials} trials, started {s.datetime_start:%Y-%m-%d %H:%M}")
