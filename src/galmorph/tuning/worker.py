"""One tuning worker: joins (or creates) the study and runs trials, each a fit() reporting every epoch to
the pruner inside a nested MLflow run, until the study's global budget is spent. Any number of workers on
any number of machines share one study through its storage; a trial's value is the metric of the epoch
fit() keeps (its lowest validation loss).

MLflow: one run per study (all params, Optuna's plots, the trials table) and a child run per trial with its
suggested values, per-epoch metrics, final value and state (FINISHED = complete, KILLED = pruned, FAILED =
failed; tag `optuna.state`). optuna-integration's MLflowCallback does not fit: it is deprecated (4.9, removal
in 6.0), its run for a pruned or failed trial ends FINISHED instead of KILLED or FAILED, and it opens a run
for a trial dropped over the budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from galmorph.config import Params
from galmorph.errors import UserError
from galmorph.tracking import runs
from galmorph.training.features import FeatureCache
from galmorph.training.loop import check_inputs, fit
from galmorph.tuning.results import describe_trial, log_study
from galmorph.tuning.space import SearchParam, inactive_params, parse_space, suggest, trial_params
from galmorph.tuning.study import (
    RUN_ATTR,
    StudyOutcome,
    open_storage,
    open_study,
    optuna_quiet,
    redact,
    study_name,
    trial_counts,
)

POLL_S = 2.0
PARENT_WAIT_S = 60.0
# a failed trial is replaced (its values may have been the problem: NaN at a huge lr), but this many failures in a
# row mean something every trial shares is broken: the worker stops instead of replacing them for ever
FAILS_IN_A_ROW = 5


def _silent(message: str) -> None:
    pass


def _check_tune_params(params: Params) -> None:
    cfg = params.tune
    for key in ("n_trials", "epochs"):
        if getattr(cfg, key) < 1:
            raise UserError(f"params: tune.{key}: expected at least 1, got {getattr(cfg, key)}")
    for key in ("startup_trials", "pruner_warmup_epochs"):
        if getattr(cfg, key) < 0:
            raise UserError(f"params: tune.{key}: expected 0 or more, got {getattr(cfg, key)}")


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
        with runs.start_child_run(
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
                runs.set_tags({"optuna.state": TrialState.PRUNED.name})
                raise
            except BaseException as exc:
                if isinstance(exc, UserError):
                    self.user_error = exc  # the same for every trial: stop after this one
                message = f"{type(exc).__name__}: {exc}"
                trial.set_user_attr("error", message[:500])
                runs.set_tags({"optuna.state": TrialState.FAIL.name, "optuna.error": message[:500]})
                runs.log_dict({"error": message, "traceback": traceback.format_exc()}, "error.json")
                raise
            value = float(result.best_metrics[cfg.metric])
            best = {f"best_{k}": v for k, v in result.best_metrics.items() if k != "epoch"}
            runs.log_metrics({**best, "best_epoch": result.best_epoch, "objective": value})
            runs.set_tags({"optuna.state": TrialState.COMPLETE.name})
        return value

    def _on_epoch(self, trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        runs.log_metrics(metrics, step=epoch)
        metric = self.params.tune.metric
        value = metrics.get(metric, math.nan)
        if not (math.isfinite(value) and math.isfinite(metrics.get("train_loss", 0.0))):
            raise FloatingPointError(f"epoch {epoch}: {metric} = {value}, train_loss = {metrics.get('train_loss')}")
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: {metric} {value:.4f}")


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
    plots_dir: str | os.PathLike | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = _silent,
) -> StudyOutcome:
    """Join (or create) the study and run trials until the global budget tune.n_trials of COMPLETE + PRUNED
    trials is reached, or this worker has run `worker_trials` of them.

    The budget holds exactly across workers: a worker starts a trial only while fewer than n_trials are
    done or running, and a trial that finds n_trials ahead of it (two workers asked at once) is dropped
    before it trains (state FAIL, user attribute `skipped`, no MLflow run). A worker waits while the last
    trials run elsewhere, in case one of them fails and must be replaced.
    (Optuna's MaxTrialsCallback checks only after a trial ends, so concurrent workers overshoot it.)
    `echo` receives the worker's messages: where the study stands, then one line per trial. `plots_dir`
    (the stage's tune.plots_dir) receives the comparison of the study's trials as this worker leaves it.
    """
    _check_tune_params(params)
    check_inputs(catalogue, params)  # before the study's MLflow run opens
    if worker_trials is not None and worker_trials < 1:
        raise UserError(f"--n-trials: expected at least 1, got {worker_trials}")
    space = parse_space(params)
    inactive = inactive_params(space, params)
    name = study_name(params, catalogue, features.meta if features is not None else None)
    with optuna_quiet():
        study, created = open_study(params, name, open_storage(storage))
        objective = _Objective(catalogue, params, space, features, worker_id())
        with _parent_run(study, params, created, storage, inactive, echo) as parent:
            if created and dataset_path is not None:
                runs.log_dataset(catalogue, dataset_path, name="splits", context="tuning")
            ran = _work(study, objective, params.tune.n_trials, worker_trials, progress, echo)
            skipped = log_study(study, params, plots=plots, plots_dir=plots_dir)
    return StudyOutcome(
        study=study, storage=storage, parent_run_id=parent, ran=ran, inactive=inactive, skipped_plots=skipped
    )


@contextlib.contextmanager
def _parent_run(
    study: optuna.Study, params: Params, created: bool, storage: str, inactive: list[str], echo: Callable[[str], None]
) -> Iterator[str]:
    """The study's MLflow run: made by the worker that created the study, reopened by every other."""
    cfg = params.mlflow
    run_id = study.user_attrs.get(RUN_ATTR)
    if run_id is None and not created:
        run_id = _wait_for_parent(study)
    if run_id is not None and not runs.run_exists(run_id, cfg=cfg):
        echo(f"tune: the study's MLflow run {run_id} is not in this tracking store; starting a new one")
        run_id = None
    sections = {s: getattr(params, s) for s in ("tune", "model", "train", "preprocess", "augment", "embed")}
    tags = {
        "optuna.study_name": study.study_name,
        "optuna.storage": redact(storage),
        "optuna.direction": study.direction.name.lower(),
        "optuna.inactive_params": ", ".join(inactive) or "none",
    }
    with runs.start_run(cfg, "tune", sections, run_id=run_id, tags=tags, system_metrics=True) as run:
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


def _work(
    study: optuna.Study,
    objective: _Objective,
    budget: int,
    worker_trials: int | None,
    progress: bool,
    echo: Callable[[str], None],
) -> int:
    ran = 0
    start = trial_counts(study)
    limit = "" if worker_trials is None else f"; this worker runs up to {worker_trials}"
    echo(f"tune: study {study.study_name}: {start['complete'] + start['pruned']} of {budget} trials done{limit}")
    bar = tqdm(total=budget, desc="tune", unit="trial", disable=not progress)

    fails: list[str] = []  # this worker's failed trials since its last one that did not fail

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal ran
        if "skipped" in trial.user_attrs:
            return
        ran += 1
        fails[:] = [*fails, str(trial.user_attrs.get("error", "?"))] if trial.state == TrialState.FAIL else []
        echo(describe_trial(trial, objective.params.tune.metric, objective.params.tune.epochs))

    while worker_trials is None or ran < worker_trials:
        counts = trial_counts(study)
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
        if len(fails) >= FAILS_IN_A_ROW:
            raise UserError(
                f"tune: {len(fails)} trials in a row failed, the last with {fails[-1].splitlines()[0][:300]}; "
                "stopped instead of replacing them (each trial's error is in its MLflow run, tag optuna.error)"
            )
    bar.close()
    return ran
