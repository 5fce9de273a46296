"""galmorph.tuning and `galmorph tune`: the search space, trials as nested MLflow runs, states, resume, --show."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import itertools
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import mlflow
import optuna
import optuna_dashboard
import pytest
import yaml

from galmorph import cli
from galmorph.config import Params, load_params, replace, with_overrides, with_tuned
from galmorph.errors import UserError
from galmorph.io import write_parquet
from galmorph.paths import repo_root
from galmorph.stages import tune as tune_stage
from galmorph.tracking import provenance
from galmorph.training.features import build_feature_cache, save_feature_cache
from galmorph.tuning import results, worker
from galmorph.tuning.results import best_params_document, write_best_params
from galmorph.tuning.space import inactive_params, needs_features, parse_space, suggest, trial_params
from galmorph.tuning.study import open_storage, open_study, redact, storage_url, study_name
from galmorph.tuning.worker import run_study
from tests.training_utils import make_catalogue, tiny_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """40 tiny galaxies and their embedding cache (resnet18 at 32 px), built once for the module."""
    folder = tmp_path_factory.mktemp("tune-data")
    catalogue = make_catalogue(folder, n=40, size=48)
    base = tiny_params(load_params(REPO / "params.yaml"), folder)
    features = build_feature_cache(catalogue, base.model, base.preprocess, base.embed, device="cpu", progress=False)
    return catalogue, features


@pytest.fixture
def tune_params(params: Params, tmp_path: Path) -> Params:
    """Tiny training params, a 3-trial study of 2 epochs, everything written under tmp_path."""
    p = tiny_params(params, tmp_path)
    tune = replace(
        p.tune,
        n_trials=3,
        epochs=2,
        startup_trials=1,
        pruner_warmup_epochs=0,
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        out=str(tmp_path / "best_params.yaml"),
        plots_dir=str(tmp_path / "tune"),
    )
    split = replace(p.split, out=str(tmp_path / "splits.parquet"))
    return dataclasses.replace(p, tune=tune, split=split, mlflow=replace(p.mlflow, experiment="tune-test"))


@pytest.fixture
def quick_runs(monkeypatch):
    """Parent runs without git/DVC provenance (test_tracking_provenance.py covers it): a second saved per session."""
    monkeypatch.setattr(provenance, "provenance_tags", lambda stage: {"galmorph.stage": stage})


def _with_space(p: Params, space: dict) -> Params:
    return dataclasses.replace(p, tune=replace(p.tune, space=space))


def _runs(uri: str, experiment: str = "tune-test") -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("galmorph.stage") == "tune"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, sorted(children, key=lambda r: int(r.data.tags["optuna.trial_number"]))


class FakeFit:
    """Stands in for fit(): scripted per-epoch metrics by call number (= trial number for one worker)."""

    def __init__(self, script: dict[int, object] | None = None, default: float = 0.8) -> None:
        self.script = script or {}
        self.default = default
        self.calls = itertools.count()
        self.seen: list[Params] = []

    def __call__(self, catalogue, params, *, on_epoch, features, progress):
        n = next(self.calls)
        self.seen.append(params)
        what = self.script.get(n, self.default)
        if isinstance(what, BaseException):
            raise what
        for epoch in range(1, params.train.epochs + 1):
            on_epoch(epoch, {"epoch": float(epoch), "train_loss": 0.5, "val_loss": 1 - what, "val_macro_f1": what})
        best = {"epoch": float(params.train.epochs), "val_loss": 1 - what, "val_macro_f1": what}
        return SimpleNamespace(best_metrics=best, best_epoch=params.train.epochs)

    @property
    def n_calls(self) -> int:
        return len(self.seen)


# --------------------------------------------------------------------------------------------- the space


def test_default_space_parses_and_finetune_keys_wait(params):
    space = parse_space(params)
    assert [p.name for p in space][:3] == ["train.lr", "train.weight_decay", "model.hidden"]
    lr = space[0]
    assert (lr.type, lr.low, lr.high, lr.log) == ("float", 0.0001, 0.01, True)
    # the default study is frozen: the finetune-only keys are declared but never sampled
    assert set(inactive_params(space, params)) == {
        "train.unfreeze_blocks",
        "augment.rotation",
        "augment.color_jitter",
    }
    # finetuned from scratch, a frozen stage would keep its random weights: unfreeze_blocks waits for weights
    scratch = with_overrides(params, {"train.mode": "finetune", "model.weights": "none"}, "test")
    assert inactive_params(space, scratch) == ["train.unfreeze_blocks"]
    drawn = {"train.lr": 1e-3, "train.weight_decay": 1e-4, "model.hidden": 256, "model.dropout": 0.1}
    drawn |= {"train.label_smoothing": 0.0, "train.batch_size": 64, "augment.rotation": 90.0}
    drawn |= {"augment.color_jitter": 0.1, "train.unfreeze_blocks": 2}
    assert "train.unfreeze_blocks" not in suggest(optuna.trial.FixedTrial(drawn), space, scratch)
    pretrained = with_overrides(params, {"train.mode": "finetune", "model.weights": "imagenet"}, "test")
    assert inactive_params(space, pretrained) == []
    assert suggest(optuna.trial.FixedTrial(drawn), space, pretrained)["train.unfreeze_blocks"] == 2


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"lr": {"type": "float", "low": 0.1, "high": 1}}, "expected SECTION.KEY"),
        ({"trian.lr": {"type": "float", "low": 0.1, "high": 1}}, "section 'trian' cannot be tuned"),
        ({"train.lrr": {"type": "float", "low": 0.1, "high": 1}}, "train has no key 'lrr'"),
        ({"train.epochs": {"type": "int", "low": 1, "high": 9}}, "tune.epochs"),
        ({"train.lr": {"type": "gaussian"}}, "expected {type: float|int|categorical"),
        ({"train.lr": {"type": "float", "low": 0.1}}, "a float needs high"),
        ({"train.lr": {"type": "float", "low": 1.0, "high": 0.1}}, "expected low < high"),
        ({"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "log scale needs low > 0"),
        ({"train.lr": {"type": "float", "low": 0.1, "high": 1, "choices": [1]}}, r"unknown key\(s\) choices"),
        ({"model.hidden": {"type": "float", "low": 0.5, "high": 2.0}}, "expected an integer"),
        ({"model.hidden": {"type": "categorical", "choices": []}}, "non-empty list"),
        ({"model.head": {"type": "categorical", "choices": ["mlp", "conv"]}}, "expected one of mlp, linear"),
        ({"augment.rotation": {"type": "float", "low": 0, "high": 90}}, "no effect in frozen mode"),
        ({"model.arch": {"type": "categorical", "choices": ["resnet18", "resnet50"]}}, "fixed by the embedding cache"),
        (
            {
                "augment.rotation": {"type": "float", "low": 0, "high": 90, "when": {"train.mode": "finetune"}},
                "train.mode": {"type": "categorical", "choices": ["frozen", "finetune"]},
            },
            "train.mode must come before augment.rotation",
        ),
        (
            {
                "train.mode": {"type": "categorical", "choices": ["frozen", "finetune"]},
                "augment.rotation": {"type": "float", "low": 0, "high": 90, "when": {"train.mode": "finetuned"}},
            },
            "train.mode never takes 'finetuned'",
        ),
        (
            {
                "train.mode": {"type": "categorical", "choices": ["frozen", "finetune"]},
                "augment.rotation": {"type": "float", "low": 0, "high": 90, "when": {"train.mode": {"not": "froze"}}},
            },
            "train.mode never takes 'froze'",
        ),
        (
            {"train.lr": {"type": "float", "low": 0.1, "high": 1, "when": {"model.weights": {"except": "none"}}}},
            r"when.model.weights: expected a value, a list or \{not: value\}",
        ),
        (
            {"train.lr": {"type": "float", "low": 0.1, "high": 1, "when": {"model.weights": {"not": []}}}},
            "when.model.weights: expected at least one value",
        ),
        ({}, "nothing to tune"),
    ],
)
def test_space_errors_name_the_entry(params, space, message):
    with pytest.raises(UserError, match=message) as info:
        parse_space(_with_space(params, space))
    assert "\n" not in str(info.value)


def test_conditional_entries_follow_earlier_draws(params):
    p = _with_space(
        params,
        {
            "train.mode": {"type": "categorical", "choices": ["frozen", "finetune"]},
            "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "augment.rotation": {"type": "float", "low": 0.0, "high": 180.0, "when": {"train.mode": "finetune"}},
        },
    )
    space = parse_space(p)
    frozen = suggest(optuna.trial.FixedTrial({"train.mode": "frozen", "train.lr": 0.01}), space, p)
    assert frozen == {"train.mode": "frozen", "train.lr": 0.01}
    fine = {"train.mode": "finetune", "train.lr": 0.001, "augment.rotation": 45.0}
    assert suggest(optuna.trial.FixedTrial(fine), space, p) == fine
    assert needs_features(p)
    run = trial_params(p, fine)
    assert (run.train.mode, run.augment.rotation, run.train.epochs) == ("finetune", 45.0, p.tune.epochs)


def test_a_negated_condition_holds_for_every_other_value(params):
    p = _with_space(
        params,
        {
            "model.arch": {"type": "categorical", "choices": ["resnet18", "resnet34", "resnet50"]},
            "model.hidden": {"type": "categorical", "choices": [256, 512], "when": {"model.arch": {"not": "resnet18"}}},
        },
    )
    p = with_overrides(p, {"train.mode": "finetune"}, "test")
    space = parse_space(p)
    assert suggest(optuna.trial.FixedTrial({"model.arch": "resnet18"}), space, p) == {"model.arch": "resnet18"}
    for arch in ("resnet34", "resnet50"):
        drawn = {"model.arch": arch, "model.hidden": 512}
        assert suggest(optuna.trial.FixedTrial(drawn), space, p) == drawn
    # `not: frozen` keeps a finetune-only key out of frozen trials as `finetune` does
    mixed = _with_space(
        params,
        {
            "train.mode": {"type": "categorical", "choices": ["frozen", "finetune"]},
            "augment.rotation": {"type": "float", "low": 0, "high": 90, "when": {"train.mode": {"not": "frozen"}}},
        },
    )
    space = parse_space(mixed)
    assert suggest(optuna.trial.FixedTrial({"train.mode": "frozen"}), space, mixed) == {"train.mode": "frozen"}


def test_storage_urls(tmp_path):
    assert storage_url(None) == f"sqlite:///{repo_root() / 'mlruns' / 'optuna.db'}"
    assert storage_url("sqlite:///runs/x.db") == f"sqlite:///{repo_root() / 'runs' / 'x.db'}"
    assert storage_url(None, f"sqlite:///{tmp_path}/o.db") == f"sqlite:///{tmp_path}/o.db"
    url = "postgresql+psycopg2://tuner:s3cret@db.example.org:5432/optuna"
    assert storage_url("sqlite:///ignored.db", url) == url
    assert storage_url("postgresql://tuner:s3cret@db.example.org:5432/optuna") == url  # galmorph[postgres]
    assert "s3cret" not in redact(url) and "tuner" in redact(url)
    with pytest.raises(UserError, match="expected sqlite:///path/to/optuna.db or postgresql://"):
        storage_url("mlruns/optuna.db")
    with pytest.raises(UserError, match="in-memory"):
        storage_url("sqlite:///:memory:")


def test_study_name_follows_what_trials_depend_on(tune_params, tiny_data):
    catalogue, features = tiny_data
    name = study_name(tune_params, catalogue, features.meta)
    assert name.startswith("galmorph-")
    more = dataclasses.replace(tune_params, tune=replace(tune_params.tune, n_trials=50, sampler="random"))
    assert study_name(more, catalogue, features.meta) == name  # a bigger budget continues the study
    space = dict(tune_params.tune.space) | {"train.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}}
    assert study_name(_with_space(tune_params, space), catalogue, features.meta) != name
    moved = catalogue.assign(split=catalogue["split"].where(catalogue.index != 0, "val"))
    assert study_name(tune_params, moved, features.meta) != name


# ------------------------------------------------------------------------------------------------ studies


def test_study_with_real_training_nests_trial_runs(tune_params, tiny_data, mlflow_uri):
    catalogue, features = tiny_data
    outcome = run_study(catalogue, tune_params, features=features, storage=tune_params.tune.storage)
    study = outcome.study
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert outcome.ran == 3

    parent, children = _runs(mlflow_uri)
    assert parent.info.run_id == outcome.parent_run_id == study.user_attrs["mlflow_run_id"]
    assert parent.data.tags["optuna.study_name"] == study.study_name
    assert parent.data.params["tune.n_trials"] == "3"
    assert parent.data.metrics["trials_complete"] == 3
    assert [c.data.tags["optuna.trial_number"] for c in children] == ["0", "1", "2"]
    client = mlflow.MlflowClient(mlflow_uri)
    for trial, child in zip(study.trials, children, strict=True):
        assert child.info.status == "FINISHED" and child.data.tags["optuna.state"] == "COMPLETE"
        assert child.data.tags["optuna.study_name"] == study.study_name
        assert child.data.params["train.lr"] == str(trial.params["train.lr"])
        assert child.data.metrics["objective"] == pytest.approx(trial.value)
        assert trial.user_attrs["mlflow_run_id"] == child.info.run_id
        curve = client.get_metric_history(child.info.run_id, "val_macro_f1")
        assert sorted(m.step for m in curve) == [1, 2]  # per-epoch metrics, step = epoch
        assert trial.intermediate_values == {m.step: pytest.approx(m.value) for m in curve}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/trials.csv", "optuna/timeline.png"} <= artifacts

    document = best_params_document(outcome, tune_params.tune.metric)
    write_best_params(tune_params.tune.out, document)
    written = yaml.safe_load(Path(tune_params.tune.out).read_text())
    assert written["params"] == study.best_params
    assert written["trial"] == study.best_trial.number and written["value"] == pytest.approx(study.best_value)
    # the train stage applies exactly these values
    final, _ = with_tuned(tune_params)
    assert final.train.lr == study.best_params["train.lr"]
    assert final.model.hidden == study.best_params["model.hidden"]


def test_failed_nan_and_pruned_trials_are_recorded_and_the_study_goes_on(
    tune_params, tiny_data, mlflow_uri, monkeypatch, quick_runs
):
    catalogue, features = tiny_data
    fake = FakeFit({0: 0.9, 1: RuntimeError("boom"), 2: 0.1, 3: math.nan, 4: 0.1})
    monkeypatch.setattr(worker, "fit", fake)
    outcome = run_study(catalogue, tune_params, features=features, storage=tune_params.tune.storage, plots=False)
    states = [t.state.name for t in outcome.study.trials]
    assert states == ["COMPLETE", "FAIL", "PRUNED", "FAIL", "PRUNED"]  # the budget counts COMPLETE + PRUNED only
    assert "RuntimeError: boom" in outcome.study.trials[1].user_attrs["error"]
    assert "FloatingPointError" in outcome.study.trials[3].user_attrs["error"]
    assert outcome.study.trials[2].intermediate_values == {1: 0.1}  # pruned after its first epoch

    parent, children = _runs(mlflow_uri)
    status = [(c.info.status, c.data.tags["optuna.state"]) for c in children]
    assert status == [
        ("FINISHED", "COMPLETE"),
        ("FAILED", "FAIL"),
        ("KILLED", "PRUNED"),
        ("FAILED", "FAIL"),
        ("KILLED", "PRUNED"),
    ]
    assert "boom" in children[1].data.tags["optuna.error"]
    assert parent.data.metrics["trials_fail"] == 2 and parent.data.metrics["trials_pruned"] == 2
    # the finished trials (0, 2, 4) could have run 3 x 2 epochs; pruning stopped two after one
    assert parent.data.metrics["epochs_saved"] == pytest.approx(1 - 4 / 6)


def test_a_user_error_stops_the_study_after_one_trial(tune_params, tiny_data, mlflow_uri, monkeypatch, quick_runs):
    catalogue, features = tiny_data
    monkeypatch.setattr(worker, "fit", FakeFit(default=0.5, script={0: UserError("splits.parquet: bad column x")}))
    with pytest.raises(UserError, match="bad column x"):
        run_study(catalogue, tune_params, features=features, storage=tune_params.tune.storage, plots=False)
    study = optuna.load_study(
        study_name=study_name(tune_params, catalogue, features.meta), storage=tune_params.tune.storage
    )
    assert [t.state.name for t in study.trials] == ["FAIL"]


def test_a_failure_every_trial_shares_stops_the_study_after_5_in_a_row(
    tune_params, tiny_data, mlflow_uri, monkeypatch, quick_runs
):
    """Not a UserError (a bug, say), so each failed trial is replaced, but not for ever: five in a row stop
    the worker with one line naming the error. A success in between resets the count."""
    catalogue, features = tiny_data
    boom = ValueError("Input and output must have the same number of spatial dimensions")
    fake = FakeFit({0: boom, 1: boom, 2: 0.5, **{k: boom for k in range(3, 20)}})
    monkeypatch.setattr(worker, "fit", fake)
    with pytest.raises(UserError, match=r"tune: 5 trials in a row failed, the last with ValueError: Input and output"):
        run_study(catalogue, tune_params, features=features, storage=tune_params.tune.storage, plots=False)
    assert fake.n_calls == 8  # 2 failed, 1 complete, 5 failed


def test_resume_continues_without_redoing_trials(tune_params, tiny_data, mlflow_uri, monkeypatch, quick_runs):
    catalogue, features = tiny_data
    fake = FakeFit({0: 0.5, 1: 0.6, 2: 0.7, 3: 0.8, 4: 0.9})
    monkeypatch.setattr(worker, "fit", fake)
    two = dataclasses.replace(tune_params, tune=replace(tune_params.tune, n_trials=2))
    run = lambda p, **kw: run_study(  # noqa: E731
        catalogue, p, features=features, storage=p.tune.storage, plots=False, progress=False, **kw
    )
    first = run(two)
    assert fake.n_calls == 2
    again = run(two)  # nothing left to do
    assert fake.n_calls == 2 and again.ran == 0
    assert again.parent_run_id == first.parent_run_id  # one MLflow run per study, across sessions
    four = dataclasses.replace(tune_params, tune=replace(tune_params.tune, n_trials=5))
    limited = run(four, worker_trials=1)  # this worker's own budget
    assert limited.ran == 1 and fake.n_calls == 3
    final = run(four)
    assert fake.n_calls == 5 and final.ran == 2
    assert [t.number for t in final.study.trials] == [0, 1, 2, 3, 4]
    drawn = [tuple(sorted(t.params.items())) for t in final.study.trials]
    assert len(set(drawn)) == 5  # every session drew new points (seeded per trial, not per process)
    _parent, children = _runs(mlflow_uri)
    assert len(children) == 5


def test_a_trial_over_the_global_budget_is_dropped_before_training(
    tune_params, tiny_data, mlflow_uri, monkeypatch, quick_runs
):
    """Two workers asking at the same moment: the later trial finds the budget taken and never trains."""
    catalogue, features = tiny_data
    fake = FakeFit()
    monkeypatch.setattr(worker, "fit", fake)
    p = dataclasses.replace(tune_params, tune=replace(tune_params.tune, n_trials=2))
    study, _ = open_study(p, "race", open_storage(p.tune.storage))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # heartbeats are for optimize(); these trials stay RUNNING
        study.ask(), study.ask()  # two trials running elsewhere fill the budget
        late = study.ask()
    objective = worker._Objective(catalogue, p, parse_space(p), features, "test-worker")
    with pytest.raises(worker._OverBudget):
        objective(late)
    assert "over the global budget" in study.trials[2].user_attrs["skipped"]
    assert fake.n_calls == 0


# ------------------------------------------------------------------------------------------ stage and CLI


def _wsgi_get(app, path: str) -> dict:
    """GET path from a WSGI app in-process; the JSON body."""
    import io
    import json
    from wsgiref.util import setup_testing_defaults

    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), status
    return json.loads(body)


def test_stage_writes_best_params_and_show_prints_a_table(
    tune_params, tiny_data, mlflow_uri, monkeypatch, tmp_path, capsys, quick_runs
):
    catalogue, features = tiny_data
    write_parquet(tune_params.split.out, catalogue)
    save_feature_cache(features, tune_params.embed.out)
    monkeypatch.setattr(worker, "fit", FakeFit({0: 0.7, 1: 0.9, 2: 0.8}))
    monkeypatch.setattr(results, "study_figures", lambda study, seed=0: ({}, {}))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(dataclasses.asdict(tune_params), sort_keys=False))

    assert cli.main(["--params", str(params_file), "tune"]) == 0
    out = capsys.readouterr().out
    written = yaml.safe_load(Path(tune_params.tune.out).read_text())
    assert written["trial"] == 1 and written["value"] == pytest.approx(0.9)
    assert "tune: best trial 1 val_macro_f1 0.9000" in out

    assert cli.main(["--params", str(params_file), "tune", "--show"]) == 0
    table = capsys.readouterr().out
    assert written["study"] in table and "rank" in table and "train.lr" in table
    rows = [line for line in table.splitlines() if line.startswith("│")]
    assert [row.split("│")[2].strip() for row in rows] == ["1", "2", "0"]  # trials by value, best first
    assert "3 complete" in table

    # optuna-dashboard (README) reads the same storage: its API lists the study and its 3 trials
    dashboard = optuna_dashboard.wsgi(tune_params.tune.storage)
    (summary,) = _wsgi_get(dashboard, "/api/studies")["study_summaries"]
    assert summary["study_name"] == written["study"]
    detail = _wsgi_get(dashboard, f"/api/studies/{summary['study_id']}")
    assert sorted(t["number"] for t in detail["trials"]) == [0, 1, 2]

    assert cli.main(["--params", str(params_file), "tune", "--storage", "mongodb://nowhere/db"]) == 1  # a UserError
    err = capsys.readouterr().err.strip()
    assert err.startswith("galmorph tune: error: tune.storage") and "\n" not in err


def test_show_lists_the_studies_when_params_changed(
    tune_params, tiny_data, mlflow_uri, monkeypatch, quick_runs, capsys
):
    catalogue, features = tiny_data
    monkeypatch.setattr(worker, "fit", FakeFit())
    run_study(catalogue, tune_params, features=features, storage=tune_params.tune.storage, plots=False)
    capsys.readouterr()
    other = dataclasses.replace(tune_params, tune=replace(tune_params.tune, epochs=5))
    tune_stage.show(other, catalogue, other.tune.storage, features.meta)
    out = capsys.readouterr().out
    assert "no study" in out and study_name(tune_params, catalogue, features.meta) in out


def test_stage_main_takes_the_cli_namespace(tune_params, tiny_data, mlflow_uri, monkeypatch, quick_runs):
    """main() as dvc runs it: the budget from params, --n-trials limiting this worker."""
    catalogue, features = tiny_data
    write_parquet(tune_params.split.out, catalogue)
    save_feature_cache(features, tune_params.embed.out)
    fake = FakeFit()
    monkeypatch.setattr(worker, "fit", fake)
    monkeypatch.setattr(results, "study_figures", lambda study, seed=0: ({}, {}))
    tune_stage.main(tune_params, argparse.Namespace(show=False, storage=None, n_trials=2))
    assert fake.n_calls == 2
    assert yaml.safe_load(Path(tune_params.tune.out).read_text())["trials"]["complete"] == 2


def test_zero_trials_skips_the_study_and_train_keeps_params_yaml(tune_params, tiny_data, monkeypatch):
    """tune.n_trials: 0 switches tuning off: no study, an empty tune.out, and train uses params.yaml as it is."""
    catalogue, _ = tiny_data
    write_parquet(tune_params.split.out, catalogue)
    fake = FakeFit()
    monkeypatch.setattr(worker, "fit", fake)
    off = dataclasses.replace(tune_params, tune=replace(tune_params.tune, n_trials=0))
    tune_stage.main(off, argparse.Namespace(show=False, storage=None, n_trials=None))
    assert fake.n_calls == 0
    assert yaml.safe_load(Path(off.tune.out).read_text())["params"] == {}
    assert not Path(off.tune.storage.removeprefix("sqlite:///")).exists()
    assert with_tuned(off) == (off, {})
    # every file DVC expects of the stage is there all the same, saying why it holds no plot
    for name in results.COMPARISON:
        assert _png_size(Path(off.tune.plots_dir) / f"{name}.png")[1] < 200
    page = (Path(off.tune.plots_dir) / "study.html").read_text()
    assert page.count("not drawn: tune.n_trials is 0: no study was run") == len(results.COMPARISON)


# ------------------------------------------------------------------------------- the study's comparison


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # the whole image decodes, not just its header
        return im.size


def test_stage_writes_the_study_comparison_and_logs_the_same_files(
    tune_params, tiny_data, mlflow_uri, monkeypatch, tmp_path, quick_runs
):
    """tune.plots_dir: Optuna's parallel coordinates, importances and history as PNGs (DVC image plots) and
    study.html holding them with a row per trial; the parent MLflow run has the very same files."""
    catalogue, features = tiny_data
    write_parquet(tune_params.split.out, catalogue)
    save_feature_cache(features, tune_params.embed.out)
    monkeypatch.setattr(worker, "fit", FakeFit({0: 0.7, 1: 0.9, 2: 0.8}))
    tune_stage.main(tune_params, argparse.Namespace(show=False, storage=None, n_trials=None))

    folder = Path(tune_params.tune.plots_dir)
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{n}.png" for n in results.COMPARISON] + ["study.html"])
    page = (folder / "study.html").read_text()
    for name in results.COMPARISON:
        width, height = _png_size(folder / f"{name}.png")
        assert width >= 800 and height >= 400, (name, width, height)  # Optuna's plot, not a note saying why not
        embedded = base64.b64encode((folder / f"{name}.png").read_bytes()).decode()
        assert f'id="{name}" alt="{name}" src="data:image/png;base64,{embedded}"' in page
    assert "not drawn" not in page
    table = page.split('<table id="trials">', 1)[1]
    rows = table.split("<tr>")[2:]
    assert [row.split("<td>")[1].split("<")[0] for row in rows] == ["1", "2", "0"]  # best first
    assert "<th>train.lr</th>" in table and "COMPLETE" in table

    parent, children = _runs(mlflow_uri)
    assert children[1].info.run_id in rows[0]  # each row names its trial's MLflow run
    client = mlflow.MlflowClient(mlflow_uri)
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert {f"optuna/{p.name}" for p in folder.iterdir()} <= logged
    assert {"optuna/slice.png", "optuna/timeline.png", "optuna/trials.csv"} <= logged  # the other plots as before
    copy = Path(client.download_artifacts(parent.info.run_id, "optuna/study.html", str(tmp_path / "dl")))
    assert copy.read_bytes() == (folder / "study.html").read_bytes()


def test_a_comparison_that_cannot_be_drawn_still_writes_every_file(tmp_path):
    """One complete trial: no parallel coordinates or importances (they need two); DVC still finds every
    declared file, each a small image with the reason, and the page says it too."""
    study = optuna.create_study(direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            params={"train.lr": 0.01},
            distributions={"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)},
            value=0.5,
        )
    )
    figures, skipped = results.study_figures(study)
    assert set(skipped) >= {"parallel_coordinate", "param_importances"}
    written = results.write_comparison(tmp_path / "tune", study, figures, skipped)
    results._close(figures)
    assert [p.name for p in written] == [f"{n}.png" for n in results.COMPARISON] + ["study.html"]
    assert _png_size(tmp_path / "tune" / "param_importances.png")[1] < 200  # the note
    assert _png_size(tmp_path / "tune" / "optimization_history.png")[1] >= 400  # drawn from one trial
    page = (tmp_path / "tune" / "study.html").read_text()
    assert "not drawn: needs 2 complete trial(s), the study has 1" in page
    assert "1 complete" in page and "<td>0.5000</td>" in page


def test_the_comparison_is_a_dvc_output_and_its_images_dvc_plots(params):
    """Declared once: the folder as the tune stage's (git-kept) output, each image in the top-level plots."""
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    outs = dvc_yaml["stages"]["tune"]["outs"]
    assert {"${tune.plots_dir}": {"cache": False}} in outs
    images = [p for p in dvc_yaml["plots"] if isinstance(p, str) and p.startswith("${tune.plots_dir}/")]
    assert images == [f"${{tune.plots_dir}}/{name}.png" for name in results.COMPARISON]
    assert params.tune.plots_dir == "reports/tune"
