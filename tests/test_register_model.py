"""`galmorph register --model FILE`: a model file trained elsewhere becomes a version (@challenger, never
promoted there), which `galmorph promote --version N --rescore` then scores and gates."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
import torch

from galmorph.models import resnet
from galmorph.serving import promotion
from galmorph.serving.model_file import MODEL_FILE, SOURCE, STAGE
from galmorph.tracking import logged_model
from galmorph.tracking import registry as mlflow_registry
from tests.serving_utils import register_tiny, store_cfg
from tests.test_promotion import GATE, run_cli, write_model_file


@pytest.fixture
def cfg(mlflow_uri):
    return store_cfg(mlflow_uri)


def versions(cfg) -> list[str]:
    return [v.version for v in mlflow_registry.model_versions(cfg.registered_model, cfg=cfg)]


def runs_of(stage: str) -> int:
    return len(mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`galmorph.stage` = '{stage}'"))


def test_a_model_file_is_registered_as_challenger_then_rescored_and_promoted(tiny_model, cfg, tmp_path, capsys):
    register_tiny(tiny_model, cfg, f1=0.99, split="old-split")
    promotion.promote(cfg.registered_model, GATE, cfg)  # v1: the champion
    model_file = write_model_file(tmp_path / "elsewhere" / "model.pt", temperature=2.0)
    capsys.readouterr()

    assert run_cli("register", "--model", str(model_file)) == 0
    out = capsys.readouterr().out
    assert "registered version 2 (@challenger)" in out and "not promoted" in out
    assert "galmorph promote --version 2 --rescore" in out
    v2 = mlflow_registry.model_version(cfg.registered_model, "2", cfg=cfg)
    assert v2.aliases == ("challenger",)
    assert promotion.version_by_alias(cfg.registered_model, "champion", cfg).version == "1"
    assert v2.tags[SOURCE] == "file" and v2.tags[MODEL_FILE] == str(model_file.resolve())
    assert v2.tags["model_digest"] == resnet.model_digest(model_file)
    assert promotion.F1_KEY not in v2.tags and promotion.SPLIT_KEY not in v2.tags  # not evaluated here
    assert v2.run_id == v2.tags["training_run_id"]
    assert mlflow.get_run(v2.run_id).data.tags["galmorph.stage"] == STAGE
    assert "registered from a model file" in mlflow.MlflowClient().get_model_version("galmorph", "2").description
    # what the version serves is the file's model: weights, preprocessing and temperature
    served = logged_model.checkpoint_file(v2.uri, tmp_path / "download", cfg)
    assert resnet.model_digest(served) == resnet.model_digest(model_file)

    # the same file again: no second version and no second logged model, @challenger back on it
    register_tiny(tiny_model, cfg, f1=0.5)  # v3, @challenger
    assert run_cli("register", "--model", str(model_file)) == 0
    assert "this model is already version 2 (@challenger)" in capsys.readouterr().out
    assert versions(cfg) == ["3", "2", "1"] and runs_of(STAGE) == 1
    assert promotion.version_by_alias(cfg.registered_model, "challenger", cfg).version == "2"

    # without test metrics the gate refuses it; --rescore scores it and the champion on the test split
    assert run_cli("promote", "--version", "2") == 3
    assert "no test_macro_f1" in capsys.readouterr().err
    register_tiny(tiny_model, cfg, f1=0.5)  # v4 takes @challenger: --rescore must score --version 2 all the same
    n = len(tiny_model.images)
    splits = tmp_path / "splits.parquet"
    pd.DataFrame(
        {
            "galaxy_id": [f"g{i}" for i in range(n)],
            "image_path": [str(p) for p in tiny_model.images],
            "label": ["spiral", "elliptical"] * (n // 2),
            "label_id": [0, 1] * (n // 2),
            "split": ["test"] * n,
        }
    ).to_parquet(splits)
    overrides = ("-S", f"split.out={splits}", "-S", "register.max_ece=1.0")
    assert run_cli(*overrides, "promote", "--version", "2", "--rescore") == 0
    v1, v2, v4 = (mlflow_registry.model_version(cfg.registered_model, v, cfg=cfg) for v in ("1", "2", "4"))
    digest = promotion.test_split_digest(pd.read_parquet(splits))
    assert v1.tags[promotion.SPLIT_KEY] == v2.tags[promotion.SPLIT_KEY] == digest
    assert "rescored_at" in v2.tags and "rescored_at" not in v4.tags
    assert float(v2.tags[promotion.F1_KEY]) == float(v1.tags[promotion.F1_KEY])  # the same weights
    assert "champion" in v2.aliases


def test_a_bad_model_path_is_one_line_and_registers_nothing(cfg, tmp_path, capsys):
    not_a_model = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, not_a_model)
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    cases = [
        (tmp_path / "missing.pt", "no such file"),
        (tmp_path, "a folder; pass the model file"),
        (not_a_model, "not a galmorph model file"),
        (text, "not a galmorph model file"),
    ]
    for path, message in cases:
        assert run_cli("register", "--model", str(path)) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert versions(cfg) == [] and runs_of(STAGE) == 0


def test_register_without_model_is_still_the_stage(cfg, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no reports/ here: the stage stops at its first input
    assert run_cli("register") == 1
    assert "train.metrics not found" in capsys.readouterr().err
    assert versions(cfg) == []
