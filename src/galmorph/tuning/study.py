"""Where a study lives and how it is opened: the storage (SQLite by default, or a server database that
workers on many machines join), the seeded sampler, the pruner, and the study's name, a hash of what its
trials depend on, so changed params start a fresh study while the same ones resume it."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from galmorph.config import Params
from galmorph.errors import UserError
from galmorph.paths import repo_root
from galmorph.training.checkpoint import RESUME_FREE_KEYS

DIRECTIONS = {"val_macro_f1": "maximize", "val_acc": "maximize", "val_loss": "minimize"}
"""tune.metric -> the study's direction."""

RUN_ATTR = "mlflow_run_id"
"""User attribute of the study (the run every worker nests its trials under) and of each trial (its own run)."""
HEARTBEAT_S, GRACE_S = 20, 60
"""A trial whose worker stopped beating for GRACE_S (killed, machine lost) is marked FAIL by the others."""


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


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state; failed trials that were only dropped over budget are `skipped`, not `fail`."""
    counts = {"complete": 0, "pruned": 0, "fail": 0, "running": 0, "skipped": 0, "waiting": 0}
    for t in study.get_trials(deepcopy=False):
        key = "skipped" if t.state == TrialState.FAIL and "skipped" in t.user_attrs else t.state.name.lower()
        counts[key] += 1
    return counts


def find_study(name: str, storage: str) -> tuple[optuna.Study | None, list[optuna.study.StudySummary]]:
    """The study called `name` in the storage if it is there, and the summaries of all the storage's studies."""
    store = open_storage(storage)
    summaries = optuna.get_all_study_summaries(store, include_best_trial=False)
    if name not in {s.study_name for s in summaries}:
        return None, summaries
    with optuna_quiet():
        return optuna.load_study(study_name=name, storage=store), summaries


@contextlib.contextmanager
def optuna_quiet() -> Iterator[None]:
    """Our own one line per trial replaces Optuna's (and its tracebacks of deliberately dropped trials)."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


@dataclasses.dataclass
class StudyOutcome:
    """What a worker did and where the study stands."""

    study: optuna.Study
    storage: str
    parent_run_id: str
    ran: int
    inactive: list[str]
    skipped_plots: dict[str, str] = dataclasses.field(default_factory=dict)  # plot name -> why it was not drawn
