"""Registry policy: the promotion gate, promote/rollback on a real (SQLite) registry, the CLI commands and
the register stage."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from galmorph import cli
from galmorph.config import RegisterConfig
from galmorph.errors import UserError
from galmorph.serving import promotion
from galmorph.stages import register as register_stage
from galmorph.tracking import registry as mlflow_registry
from galmorph.tracking import runs
from tests.conftest import REPO
from tests.serving_utils import register_tiny, store_cfg

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
        train=dataclasses.replace(params.train, metrics=str(train_metrics)),
        evaluate=dataclasses.replace(params.evaluate, metrics=str(eval_metrics)),
        split=dataclasses.replace(params.split, out=str(splits)),
        register=dataclasses.replace(params.register, report=str(report)),
        mlflow=cfg,
    )
    register_stage.main(p, None)
    result = json.loads(report.read_text())
    assert result["promoted"] and result["version"] == 1 and result["champion_version"] == 1
    assert result["test_macro_f1"] == 0.9
    version = mlflow_registry.model_version(cfg.registered_model, "1", cfg=cfg)
    assert set(version.aliases) == {"champion", "challenger"}
    assert version.tags["training_run_id"] == run_id and "git.commit" in version.tags
    assert version.tags["test_split_digest"] == promotion.test_split_digest(pd.read_parquet(splits))
    assert "@challenger" in capsys.readouterr().out

    eval_metrics.write_text(json.dumps({"test_macro_f1": 0.7, "test_ece_calibrated": 0.04}))
    register_stage.main(p, None)  # a refused promotion is recorded, not an error
    result = json.loads(report.read_text())
    assert not result["promoted"] and result["champion_version"] == 1 and result["reasons"]

    train_metrics.write_text(json.dumps({"mlflow_run_id": run_id}))
    with pytest.raises(UserError, match="no 'model_uri'"):
        register_stage.main(p, None)


def test_promote_rescore_compares_on_the_current_test_split(tiny_model, cfg, tmp_path, capsys):
    register_tiny(tiny_model, cfg, f1=0.99, split="old-split")
    promotion.promote(cfg.registered_model, GATE, cfg)
    register_tiny(tiny_model, cfg, f1=0.70, split="new-split")
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
    v1, v2 = (mlflow_registry.model_version(cfg.registered_model, v, cfg=cfg) for v in ("1", "2"))
    assert v1.tags["test_split_digest"] == v2.tags["test_split_digest"] != "old-split"
    assert v1.tags["previous_test_split_digest"] == "old-split" and "rescored_at" in v2.tags
    assert float(v1.tags["test_macro_f1"]) == float(v2.tags["test_macro_f1"])  # the same weights
    assert promotion.version_by_alias(cfg.registered_model, "champion", cfg).version == "2"
