"""Registry policy: the promotion gate, promote/rollback on a real (SQLite) registry, the CLI commands and
the register stage."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from galmorph import cli
from galmorph.config import RegisterConfig
from galmorph.errors import UserError
from galmorph.models import resnet
from galmorph.serving import promotion
from galmorph.stages import register as register_stage
from galmorph.tracking import registry as mlflow_registry
from galmorph.tracking import runs
from tests.conftest import REPO
from tests.registry_race import racing_register_stage
from tests.serving_utils import TINY_MODEL, TINY_PREPROCESS, register_tiny, store_cfg, tiny_network

GATE = RegisterConfig(promote_margin=0.01, max_ece=0.1, report="unused.json")


def tags(f1: float | None = 0.9, ece: float | None = 0.05, split: str | None = "s1") -> dict[str, str]:
    out = {"test_accuracy": "0.9"}
    for key, value in (("test_macro_f1", f1), ("test_ece_calibrated", ece), ("test_split_digest", split)):
        if value is not None:
            out[key] = str(value)
    return out


# ------------------------------------------------------------------------------------------------ gate


def test_gate_passes_within_margin():
    decision = promotion.gate(tags(f1=0.895), tags(f1=0.90), GATE)
    assert decision.passed and not decision.reasons
    f1_row = next(c for c in decision.checks if c.metric == "test_macro_f1")
    assert f1_row.passed is True and f1_row.champion == "0.9000" and f1_row.challenger == "0.8950"


@pytest.mark.parametrize(
    ("challenger", "champion", "reason"),
    [
        (tags(f1=0.88), tags(f1=0.90), "more than 0.01 below"),
        (tags(ece=0.12), tags(), "not under register.max_ece"),
        (tags(split="s2"), tags(split="s1"), "not evaluated on the same test split"),
        (tags(), tags(split=None), "not evaluated on the same test split"),
        (tags(f1=None), tags(), "has no test_macro_f1"),
        (tags(ece=None), tags(), "has no test_ece_calibrated"),
    ],
)
def test_gate_refuses_with_reason(challenger, champion, reason):
    decision = promotion.gate(challenger, champion, GATE)
    assert not decision.passed
    assert any(reason in r for r in decision.reasons), decision.reasons


def test_first_model_passes_and_a_bad_ece_is_a_warning():
    decision = promotion.gate(tags(ece=0.3), None, GATE)
    assert decision.passed
    assert decision.warnings and "max_ece" in decision.warnings[0]
    assert not promotion.gate(tags(f1=None), None, GATE).passed  # evaluate never ran: still refused


def test_split_digest_ignores_order_and_sees_a_changed_test_set():
    df = pd.DataFrame(
        {"galaxy_id": ["a", "b", "c", "d"], "label": ["spiral", "elliptical"] * 2, "split": ["test"] * 3 + ["train"]}
    )
    digest = promotion.test_split_digest(df)
    assert promotion.test_split_digest(df.iloc[::-1]) == digest
    assert promotion.test_split_digest(df.assign(split="test")) != digest
    with pytest.raises(UserError, match="missing column 'split'"):
        promotion.test_split_digest(df.drop(columns="split"))
    with pytest.raises(UserError, match="no rows"):
        promotion.test_split_digest(df.assign(split="train"))


# ------------------------------------------------------------------------------------- promote/rollback


@pytest.fixture
def cfg(mlflow_uri):
    return store_cfg(mlflow_uri)


def test_promote_first_then_gate_then_force_then_rollback(tiny_model, cfg):
    name = cfg.registered_model
    v1 = register_tiny(tiny_model, cfg, f1=0.90)
    assert v1.aliases == ("challenger",)
    first = promotion.promote(name, GATE, cfg)
    assert first.promoted and first.champion_before is None
    assert promotion.version_by_alias(name, "champion", cfg).version == v1.version

    again = promotion.promote(name, GATE, cfg)
    assert not again.promoted and not again.refused and "already champion" in again.note

    v2 = register_tiny(tiny_model, cfg, f1=0.80)
    refused = promotion.promote(name, GATE, cfg)
    assert refused.refused and "below the champion" in refused.note
    assert promotion.version_by_alias(name, "champion", cfg).version == v1.version

    forced = promotion.promote(name, GATE, cfg, force=True, reason="new survey")
    assert forced.promoted and forced.forced
    v2_now = mlflow_registry.model_version(name, v2.version, cfg=cfg)
    assert v2_now.tags["forced"] == "true" and v2_now.tags["force_reason"] == "new survey"
    assert v2_now.tags["previous_champion"] == v1.version
    assert promotion.champion_history(name, cfg) == [v1.version, v2.version]

    before, after = promotion.rollback(name, cfg)
    assert (before.version, after.version) == (v2.version, v1.version)
    assert promotion.version_by_alias(name, "champion", cfg).version == v1.version
    with pytest.raises(UserError, match="no previous champion"):
        promotion.rollback(name, cfg)


def test_better_challenger_is_promoted(tiny_model, cfg):
    register_tiny(tiny_model, cfg, f1=0.85)
    promotion.promote(cfg.registered_model, GATE, cfg)
    v2 = register_tiny(tiny_model, cfg, f1=0.91)
    result = promotion.promote(cfg.registered_model, GATE, cfg)
    assert result.promoted and not result.forced
    assert promotion.version_by_alias(cfg.registered_model, "champion", cfg).version == v2.version


def test_missing_model_and_aliases_are_clear_errors(tiny_model, cfg):
    with pytest.raises(UserError, match="no registered model 'nope'"):
        promotion.promote("nope", GATE, cfg)
    with pytest.raises(UserError, match="no registered model"):
        promotion.list_versions("nope", cfg)
    # a version that no alias points at, as a registration interrupted before set_alias leaves it
    v1 = mlflow_registry.register_model(tiny_model.source, cfg.registered_model, cfg=cfg)
    with pytest.raises(UserError, match="has no @challenger"):
        promotion.promote(cfg.registered_model, GATE, cfg)
    with pytest.raises(UserError, match="has no @champion to roll back"):
        promotion.rollback(cfg.registered_model, cfg)
    assert [v.version for v in promotion.list_versions(cfg.registered_model, cfg)] == [v1]


# ------------------------------------------------------------------------------------------------- CLI


def run_cli(*argv: str) -> int:
    """cli.main with the repo's params; -S overrides may lead, the subcommand follows them."""
    return cli.main(["--params", str(REPO / "params.yaml"), "-S", "mlflow.tracking_uri=null", *argv])


def test_cli_promote_models_rollback(tiny_model, cfg, capsys):
    assert run_cli("promote") == 1
    assert "no registered model 'galmorph'" in capsys.readouterr().err

    register_tiny(tiny_model, cfg, f1=0.9)
    assert run_cli("promote") == 0
    out = capsys.readouterr().out
    assert "challenger v1" in out and "first champion" in out

    register_tiny(tiny_model, cfg, f1=0.5)
    capsys.readouterr()  # MLflow's own "Created version" lines
    assert run_cli("promote") == 3  # refused by the gate: its own exit code
    captured = capsys.readouterr()
    assert "test_macro_f1" in captured.out and "NO" in captured.out  # the comparison table
    assert "refused" in captured.err and "0.5000 is more than 0.01 below" in captured.err
    assert len(captured.err.strip().splitlines()) == 1

    assert run_cli("promote", "--force", "--reason", "testing") == 0
    assert "(forced)" in capsys.readouterr().out

    assert run_cli("models") == 0
    out = capsys.readouterr().out
    assert "@champion" in out and "@challenger" in out and "forced" in out and "0.9000" in out

    assert run_cli("rollback") == 0
    assert "from version 2 to version 1" in capsys.readouterr().out
    assert run_cli("rollback") == 1
    assert "no previous champion" in capsys.readouterr().err
    assert run_cli("models", "--name", "other") == 1


# ------------------------------------------------------------------------------------------- the stage


def test_register_stage_registers_tags_and_promotes(tiny_model, cfg, params, tmp_path, capsys):
    with runs.start_run(cfg, "train") as run:
        run_id = run.info.run_id
    train_metrics = tmp_path / "train.json"
    train_metrics.write_text(json.dumps({"mlflow_run_id": run_id, "model_uri": tiny_model.source}))
    eval_metrics = tmp_path / "eval.json"
    eval_metrics.write_text(json.dumps({"test_macro_f1": 0.9, "test_ece_calibrated": 0.04, "test_accuracy": 0.91}))
    splits = tmp_path / "splits.parquet"
    pd.DataFrame({"galaxy_id": ["a", "b"], "label": ["spiral", "elliptical"], "split": ["test", "test"]}).to_parquet(
        splits
    )
    report = tmp_path / "register.json"
    p = dataclasses.replace(
        params,
        train=dataclasses.replace(
            params.train, metrics=str(train_metrics), out=str(write_model_file(tmp_path / "model.pt"))
        ),
        evaluate=dataclasses.replace(params.evaluate, metrics=str(eval_metrics)),
        split=dataclasses.replace(params.split, out=str(splits)),
        register=dataclasses.replace(
            params.register,
            report=str(report),
            headline=str(tmp_path / "headline.json"),
            links=str(tmp_path / "mlflow.json"),
        ),
        tune=dataclasses.replace(params.tune, out=str(tmp_path / "no-tuning.yaml")),  # not tuned: no trial count
        mlflow=cfg,
    )
    register_stage.main(p, None)
    result = json.loads(report.read_text())
    assert result["promoted"] and result["version"] == 1 and result["champion_version"] == 1
    assert result["test_macro_f1"] == 0.9
    headline = json.loads((tmp_path / "headline.json").read_text())
    assert headline == {"acc": 0.91, "f1": 0.9, "ece": 0.04, "version": 1, "promoted": True, "champion": 1}
    assert json.loads((tmp_path / "mlflow.json").read_text()) == {"mlflow_run_id": run_id}
    version = mlflow_registry.model_version(cfg.registered_model, "1", cfg=cfg)
    assert set(version.aliases) == {"champion", "challenger"}
    assert version.tags["training_run_id"] == run_id and "git.commit" in version.tags
    assert version.tags["test_split_digest"] == promotion.test_split_digest(pd.read_parquet(splits))
    assert "@challenger" in capsys.readouterr().out

    assert version.tags["data_source"] == params.data.source
    assert version.tags["model_digest"] == resnet.model_digest(p.train.out)

    write_model_file(Path(p.train.out), temperature=2.5)  # another model
    eval_metrics.write_text(json.dumps({"test_macro_f1": 0.7, "test_ece_calibrated": 0.04}))
    register_stage.main(p, None)  # a refused promotion is recorded, not an error
    result = json.loads(report.read_text())
    assert not result["promoted"] and result["champion_version"] == 1 and result["reasons"]

    train_metrics.write_text(json.dumps({"mlflow_run_id": run_id}))
    with pytest.raises(UserError, match="no 'model_uri'"):
        register_stage.main(p, None)


def test_promote_rescore_compares_on_the_current_test_split(tiny_model, cfg, tmp_path, capsys):
    run_ids = []
    for _ in range(2):
        with runs.start_run(cfg, "train") as run:
            run_ids.append(run.info.run_id)
    register_tiny(tiny_model, cfg, f1=0.99, split="old-split", training_run_id=run_ids[0])
    promotion.promote(cfg.registered_model, GATE, cfg)
    register_tiny(tiny_model, cfg, f1=0.70, split="new-split", training_run_id=run_ids[1])
    splits = tmp_path / "splits.parquet"
    n = len(tiny_model.images)
    pd.DataFrame(
        {
            "galaxy_id": [f"g{i}" for i in range(n)],
            "image_path": [str(p) for p in tiny_model.images],
            "label": ["spiral", "elliptical"] * (n // 2),
            "label_id": [0, 1] * (n // 2),
            "split": ["test"] * n,
        }
    ).to_parquet(splits)
    capsys.readouterr()
    assert run_cli("promote") == 3
    assert "--rescore" in capsys.readouterr().err

    assert run_cli("-S", f"split.out={splits}", "-S", "register.max_ece=1.0", "promote", "--rescore") == 0
    # the rescored predictions are kept in each training run: the gate ran its paired test on them
    out = capsys.readouterr().out
    assert "paired" in out and "+0.0000 [+0.0000, +0.0000]" in out, out
    v1, v2 = (mlflow_registry.model_version(cfg.registered_model, v, cfg=cfg) for v in ("1", "2"))
    assert v1.tags["test_split_digest"] == v2.tags["test_split_digest"] != "old-split"
    assert v1.tags["previous_test_split_digest"] == "old-split" and "rescored_at" in v2.tags
    assert float(v1.tags["test_macro_f1"]) == float(v2.tags["test_macro_f1"])  # the same weights
    assert promotion.version_by_alias(cfg.registered_model, "champion", cfg).version == "2"


# ------------------------------------------------------------------- concurrency and rollback semantics


def write_model_file(path: Path, temperature: float = 1.5) -> Path:
    """A tiny models/model.pt; a different temperature is a different model (model digest)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    resnet.save_model(path, tiny_network(), TINY_MODEL, TINY_PREPROCESS, temperature=temperature)
    return path


def stage_params(params, cfg, folder, *, model_uri, f1=0.9, run_id=None, temperature=1.5):
    """params for the register stage reading and writing its files under `folder` (its own report)."""
    folder.mkdir(parents=True, exist_ok=True)
    model_file = write_model_file(folder / "model.pt", temperature)
    (folder / "train.json").write_text(json.dumps({"mlflow_run_id": run_id, "model_uri": model_uri}))
    (folder / "eval.json").write_text(json.dumps({"test_macro_f1": f1, "test_ece_calibrated": 0.04}))
    splits = folder / "splits.parquet"
    pd.DataFrame({"galaxy_id": ["a", "b"], "label": ["spiral", "elliptical"], "split": ["test", "test"]}).to_parquet(
        splits
    )
    return dataclasses.replace(
        params,
        train=dataclasses.replace(params.train, metrics=str(folder / "train.json"), out=str(model_file)),
        evaluate=dataclasses.replace(params.evaluate, metrics=str(folder / "eval.json")),
        split=dataclasses.replace(params.split, out=str(splits)),
        register=dataclasses.replace(
            params.register,
            report=str(folder / "register.json"),
            headline=str(folder / "headline.json"),
            links=str(folder / "mlflow.json"),
        ),
        tune=dataclasses.replace(params.tune, out=str(folder / "best_params.yaml")),
        mlflow=cfg,
    )


def test_two_register_stages_racing_promote_and_report_their_own_versions(tiny_model, cfg, params, tmp_path):
    """Two register stages (two `dvc exp run`s) register at the same time, then both promote: each gates and
    reports the version it registered, and no champion is lost from the history rollback walks."""
    name = cfg.registered_model
    both = [
        stage_params(params, cfg, tmp_path / f"exp{i}", model_uri=tiny_model.source, temperature=1.0 + i)
        for i in (1, 2)
    ]
    digest = promotion.test_split_digest(pd.read_parquet(both[0].split.out))
    v1 = register_tiny(tiny_model, cfg, f1=0.9, ece=0.04, split=digest)
    assert promotion.promote(name, GATE, cfg).promoted

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=racing_register_stage, args=(p, barrier, results)) for p in both]
    for proc in procs:
        proc.start()
    try:
        registered = dict(results.get(timeout=300) for _ in procs)
        for proc in procs:
            proc.join(timeout=300)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert [proc.exitcode for proc in procs] == [0, 0]

    assert sorted(registered.values()) == ["2", "3"]
    for report_path, version in registered.items():
        report = json.loads(Path(report_path).read_text())
        assert report["version"] == int(version), report  # its own version, not the other process's
        assert report["promoted"], report
    history = promotion.champion_history(name, cfg)
    assert history[0] == v1.version and sorted(history[1:]) == ["2", "3"]  # no promotion lost
    assert promotion.version_by_alias(name, "champion", cfg).version == history[-1]
    assert promotion.rollback(name, cfg)[1].version == history[-2]
    assert promotion.rollback(name, cfg)[1].version == v1.version


def test_champion_moved_meanwhile_is_gated_against(tiny_model, cfg, monkeypatch):
    """@champion is read again right before it moves: a champion set meanwhile (another machine, the UI) is
    what the challenger is compared with, so a better champion is never replaced by a worse one."""
    name = cfg.registered_model
    register_tiny(tiny_model, cfg, f1=0.80)
    promotion.promote(name, GATE, cfg)
    strong = register_tiny(tiny_model, cfg, f1=0.99)
    register_tiny(tiny_model, cfg, f1=0.85)  # @challenger
    real_gate, calls = promotion.gate, []

    def gate_while_someone_promotes(*args, **kwargs):
        if not calls:  # between reading @champion and moving it, someone else moves it
            mlflow_registry.set_alias(name, "champion", strong.version, cfg=cfg)
        calls.append(args)
        return real_gate(*args, **kwargs)

    monkeypatch.setattr(promotion, "gate", gate_while_someone_promotes)
    result = promotion.promote(name, GATE, cfg)  # @challenger: weak
    assert result.refused and result.champion_before.version == strong.version
    assert promotion.version_by_alias(name, "champion", cfg).version == strong.version


def test_a_rolled_back_version_is_not_promoted_again_without_force(tiny_model, cfg, capsys):
    name = cfg.registered_model
    v1 = register_tiny(tiny_model, cfg, f1=0.9)
    promotion.promote(name, GATE, cfg)
    v2 = register_tiny(tiny_model, cfg, f1=0.9)
    assert promotion.promote(name, GATE, cfg).promoted
    promotion.rollback(name, cfg)
    assert promotion.version_by_alias(name, "challenger", cfg).version == v2.version  # still there to inspect

    again = promotion.promote(name, GATE, cfg)
    assert again.refused and "rolled back" in again.note
    assert promotion.version_by_alias(name, "champion", cfg).version == v1.version
    capsys.readouterr()
    assert run_cli("promote") == 3
    assert "rolled back" in capsys.readouterr().err
    assert run_cli("promote", "--force") == 1  # --force needs --reason
    assert "--reason" in capsys.readouterr().err
    assert run_cli("promote", "--force", "--reason", "the data bug is fixed") == 0
    assert promotion.version_by_alias(name, "champion", cfg).version == v2.version
    assert mlflow_registry.model_version(name, v2.version, cfg=cfg).tags["forced"] == "true"
    assert promotion.rollback(name, cfg)[1].version == v1.version  # and it can be rolled back again


def test_rollback_when_the_champions_version_was_deleted(tiny_model, cfg, capsys):
    import mlflow

    name = cfg.registered_model
    versions = []
    for _ in range(3):
        versions.append(register_tiny(tiny_model, cfg, f1=0.9).version)
        assert promotion.promote(name, GATE, cfg).promoted
    mlflow.MlflowClient(tracking_uri=cfg.tracking_uri).delete_model_version(name, versions[-1])
    assert promotion.version_by_alias(name, "champion", cfg) is None  # the alias went with the version

    capsys.readouterr()
    assert run_cli("rollback") == 0
    assert f"version {versions[1]}" in capsys.readouterr().out
    assert promotion.version_by_alias(name, "champion", cfg).version == versions[1]
    before, after = promotion.rollback(name, cfg)
    assert (before.version, after.version) == (versions[1], versions[0])


def test_a_held_registry_lock_is_waited_for_then_named(tiny_model, cfg, monkeypatch, capsys):
    from filelock import FileLock

    register_tiny(tiny_model, cfg, f1=0.9)
    path = mlflow_registry.lock_path(cfg)
    assert path.parent == mlflow_registry.store.sqlite_path(cfg.tracking_uri).parent  # beside mlflow.db
    monkeypatch.setattr(mlflow_registry, "LOCK_TIMEOUT_S", 0.2)
    with FileLock(path):  # another process's register/promote/rollback, as far as this one can tell
        capsys.readouterr()
        assert run_cli("promote") == 1
        err = capsys.readouterr().err
        assert "registry lock" in err and str(path) in err and len(err.strip().splitlines()) == 1
        assert promotion.version_by_alias(cfg.registered_model, "champion", cfg) is None
    assert run_cli("promote") == 0


def test_a_model_already_registered_is_not_registered_again(tiny_model, cfg, params, tmp_path, capsys):
    """Reruns after Ctrl-C (or a retrain to the same weights, saved into a new file) made one version each:
    the model digest finds the version that already holds the model."""
    p = stage_params(params, cfg, tmp_path / "exp", model_uri=tiny_model.source)
    register_stage.main(p, None)
    assert "registered version 1" in capsys.readouterr().out
    write_model_file(Path(p.train.out))  # the same model in a new file: other bytes, same digest
    register_stage.main(p, None)
    register_stage.main(p, None)
    out = capsys.readouterr().out
    assert out.count("this model is already version 1") == 2, out
    report = json.loads(Path(p.register.report).read_text())
    assert report["version"] == 1 and report["new_version"] is False
    assert [v.version for v in mlflow_registry.model_versions(cfg.registered_model, cfg=cfg)] == ["1"]

    write_model_file(Path(p.train.out), temperature=3.0)  # a different model
    register_stage.main(p, None)
    assert "registered version 2" in capsys.readouterr().out
    assert json.loads(Path(p.register.report).read_text())["new_version"] is True


def test_model_digest_sees_weights_and_calibration_not_the_container(tmp_path):
    a = write_model_file(tmp_path / "a.pt")
    b = write_model_file(tmp_path / "b" / "other-name.pt")
    assert a.read_bytes() != b.read_bytes()  # torch's zip records the file name
    assert resnet.model_digest(a) == resnet.model_digest(b)
    assert resnet.model_digest(write_model_file(tmp_path / "c.pt", temperature=2.0)) != resnet.model_digest(a)
    with pytest.raises(UserError, match="not a galmorph model file"):
        (tmp_path / "x.pt").write_bytes(b"junk")
        resnet.model_digest(tmp_path / "x.pt")


def test_promote_a_chosen_version_and_a_refusal_says_how_to_override(tiny_model, cfg, capsys):
    register_tiny(tiny_model, cfg, f1=0.9)
    register_tiny(tiny_model, cfg, f1=0.95)
    register_tiny(tiny_model, cfg, f1=0.5)  # @challenger
    capsys.readouterr()
    assert run_cli("promote", "--version", "1") == 0
    assert promotion.version_by_alias(cfg.registered_model, "champion", cfg).version == "1"
    assert run_cli("promote") == 3  # @challenger, v3: refused
    err = capsys.readouterr().err
    assert 'to override: galmorph promote --version 3 --force --reason "..."' in err
    assert run_cli("promote", "--version", "2") == 0
    assert promotion.version_by_alias(cfg.registered_model, "champion", cfg).version == "2"
    assert run_cli("promote", "--version", "9") == 1
    assert "has no version '9'" in capsys.readouterr().err
    assert run_cli("models") == 0
    out = capsys.readouterr().out
    assert "data" in out and "test split" in out and "split-a" in out


# ------------------------------------------------------------------------------------ the paired test


def test_paired_f1_difference_matches_sklearn_and_cancels_what_both_agree_on():
    from sklearn.metrics import f1_score

    from galmorph.evaluation.metrics import paired_f1_difference

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    a = np.where(rng.random(300) < 0.85, labels, 1 - labels)
    same = paired_f1_difference(labels, a, a)
    assert same.diff == 0.0 and same.low == 0.0 and same.high == 0.0  # identical models: no noise at all
    b = a.copy()
    wrong = np.flatnonzero(a != labels)[:20]
    b[wrong] = labels[wrong]  # B fixes 20 of A's mistakes and changes nothing else
    better = paired_f1_difference(labels, a, b)
    expected = f1_score(labels, b, average="macro") - f1_score(labels, a, average="macro")
    assert better.diff == pytest.approx(expected) and better.n == 300
    assert 0 < better.low < better.diff < better.high
    # the same two F1s from independent (unpaired) intervals would overlap: the pairing is what decides
    worse = paired_f1_difference(labels, b, a)
    assert worse.high < 0 and worse.diff == pytest.approx(-expected)


def test_gate_with_the_paired_test_prints_the_interval_and_decides_on_it():
    from galmorph.evaluation.metrics import PairedDifference

    noisy = PairedDifference(n=72, diff=-0.005, low=-0.06, high=0.05)
    decision = promotion.gate(tags(f1=0.895), tags(f1=0.90), GATE, paired=noisy)  # within 0.01 by point
    assert not decision.passed and "-0.0050 [-0.0600, +0.0500] on 72 test galaxies" in decision.reasons[0]
    assert decision.paired == noisy
    sure = PairedDifference(n=3000, diff=-0.015, low=-0.009, high=-0.001)  # below by point, inside by test
    decision = promotion.gate(tags(f1=0.885), tags(f1=0.90), GATE, paired=sure)
    assert decision.passed and not decision.warnings
    row = next(c for c in decision.checks if c.metric.startswith("test_macro_f1 paired"))
    assert row.passed and "Δ -0.0150 [-0.0090, -0.0010]" in row.challenger
    decision = promotion.gate(tags(f1=0.895), tags(f1=0.90), GATE)  # no predictions: point rule, said so
    assert decision.passed and "point estimates compared" in decision.warnings[0]


def _version_with_predictions(tiny_model, cfg, tmp_path, name, labels, predicted, f1):
    """A registered version whose training run carries evaluate's test predictions."""
    from galmorph.tracking import runs as tracking_runs

    ids = [f"g{i:03d}" for i in range(len(labels))]
    frame = pd.DataFrame(
        {
            "galaxy_id": ids,
            "label": [("spiral", "elliptical")[k] for k in labels],
            "p_spiral": np.where(np.asarray(predicted) == 0, 0.8, 0.2),
            "p_elliptical": np.where(np.asarray(predicted) == 0, 0.2, 0.8),
        }
    )
    folder = tmp_path / name
    folder.mkdir()
    frame.to_csv(folder / "predictions.csv", index=False)
    split = promotion.test_split_digest(frame.assign(split="test"))
    with runs.start_run(cfg, "train") as run:
        tracking_runs.log_artifact(folder / "predictions.csv", "evaluation")
    return register_tiny(tiny_model, cfg, f1=f1, split=split, training_run_id=run.info.run_id)


def test_promote_runs_the_paired_test_on_both_versions_predictions(tiny_model, cfg, tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 80)
    champion = np.where(rng.random(80) < 0.9, labels, 1 - labels)
    v1 = _version_with_predictions(tiny_model, cfg, tmp_path, "a", labels, champion, f1=0.9)
    assert promotion.promote(cfg.registered_model, GATE, cfg).promoted
    noisy = np.where(rng.random(80) < 0.9, labels, 1 - labels)  # as good, on other galaxies: too noisy
    _version_with_predictions(tiny_model, cfg, tmp_path, "b", labels, noisy, f1=0.9)
    result = promotion.promote(cfg.registered_model, GATE, cfg)
    assert not result.promoted and result.decision.paired is not None and result.decision.paired.n == 80
    report = promotion.promotion_report(result)
    assert report["paired_f1_diff_ci_low"] < -0.01 < report["paired_f1_diff_ci_high"]
    assert promotion.version_by_alias(cfg.registered_model, "champion", cfg).version == v1.version
    fixed = champion.copy()
    fixed[np.flatnonzero(champion != labels)[:4]] = labels[np.flatnonzero(champion != labels)[:4]]
    v3 = _version_with_predictions(tiny_model, cfg, tmp_path, "c", labels, fixed, f1=0.93)  # fixes 4 errors
    result = promotion.promote(cfg.registered_model, GATE, cfg)
    assert result.promoted and result.decision.paired.low >= 0, result.decision.paired  # never worse
    assert promotion.version_by_alias(cfg.registered_model, "champion", cfg).version == v3.version


# ------------------------------------------------------------------- models, not just runs, in MLflow


def test_evaluation_metrics_rank_logged_models(mlflow_uri, params, tmp_path):
    """evaluate logs its metrics on the LoggedModel as well as the run: search_logged_models ranks models."""
    import mlflow

    from galmorph.evaluation.evaluate import log_to_mlflow
    from tests.serving_utils import galaxy_image, log_tiny_model

    cfg = store_cfg(mlflow_uri)
    example = tmp_path / "g.jpg"
    galaxy_image(0).save(example)
    splits = tmp_path / "splits.parquet"
    rows = {"galaxy_id": ["a", "b", "c"], "image_path": ["g.jpg"] * 3, "label_id": [0, 1, 0]}
    pd.DataFrame(rows | {"split": ["train", "test", "test"]}).to_parquet(splits)
    ids = []
    for seed, f1 in ((0, 0.71), (1, 0.93)):
        model_uri = log_tiny_model(cfg, example, seed=seed)
        metrics_file = tmp_path / f"train{seed}.json"
        metrics_file.write_text(json.dumps({"model_uri": model_uri}))
        p = dataclasses.replace(
            params,
            mlflow=cfg,
            train=dataclasses.replace(params.train, metrics=str(metrics_file)),
            split=dataclasses.replace(params.split, out=str(splits)),
        )
        (tmp_path / f"eval{seed}").mkdir()
        eval_run = log_to_mlflow(p, {"test_macro_f1": f1, "test_accuracy": f1}, tmp_path / f"eval{seed}")
        ids.append(model_uri.removeprefix("models:/"))
    from galmorph.tracking import store

    ranked = mlflow.search_logged_models(
        experiment_ids=[store.experiment_id(cfg)],
        order_by=[{"field_name": "metrics.test_macro_f1", "ascending": False}],
        output_format="list",
    )
    assert [m.model_id for m in ranked] == [ids[1], ids[0]]
    assert {m.key: m.value for m in ranked[0].metrics}["test_macro_f1"] == 0.93
    # measured on the test split: the metric names the dataset (its digest is splits.parquet's md5, as in dvc.lock)
    f1 = next(m for m in ranked[0].metrics if m.key == "test_macro_f1")
    assert (f1.dataset_name, f1.dataset_digest) == ("test", hashlib.md5(splits.read_bytes()).hexdigest())
    inputs = mlflow.get_run(eval_run).inputs.dataset_inputs
    assert [(i.dataset.name, [t.value for t in i.tags]) for i in inputs] == [("test", ["testing"])]


def test_a_registered_version_carries_a_model_card_and_a_handful_of_tags(tiny_model, cfg, params, tmp_path):
    p = stage_params(params, cfg, tmp_path / "exp", model_uri=tiny_model.source)
    evaluation = {f"test_{k}": 0.9 for k in ("accuracy", "macro_f1", "brier", "f1_spiral", "f1_elliptical", "auc")}
    evaluation |= {"test_ece_calibrated": 0.04, "test_macro_f1_ci_low": 0.8, "test_macro_f1_ci_high": 0.97}
    evaluation |= {f"tta_test_{k}": 0.9 for k in range(40)}  # the ~130 keys evaluate writes
    Path(p.evaluate.metrics).write_text(json.dumps(evaluation))
    register_stage.main(p, None)
    version = mlflow_registry.model_version(cfg.registered_model, "1", cfg=cfg)
    metric_tags = [k for k in version.tags if k.startswith(("test_", "tta_"))]
    assert sorted(metric_tags) == sorted(
        ["test_accuracy", "test_macro_f1", "test_macro_f1_ci_low", "test_macro_f1_ci_high", "test_ece_calibrated"]
        + ["test_split_digest"]
    )
    card = mlflow.MlflowClient().get_model_version(cfg.registered_model, "1").description
    assert card.startswith("# galmorph v1: spiral vs elliptical")
    assert "macro F1:** 0.900 (95% CI 0.800–0.970)" in card and "Known limitations" in card
    assert f"`{params.data.source}` source" in card and "arch resnet" in card
