import dataclasses

import pytest
import yaml

from galmorph.cli import main, resolve_params
from galmorph.config import load_params
from galmorph.errors import UserError

from .conftest import REPO


def test_load_params_keeps_every_key_and_value_of_params_yaml(params):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert dataclasses.asdict(params) == raw  # nothing dropped, renamed or filled in by a default
    # a YAML integer where the field is a float arrives as a float
    rotation = resolve_params(str(REPO / "params.yaml"), ["augment.rotation=90"]).augment.rotation
    assert rotation == 90 and isinstance(rotation, float)


def test_params_dumped_back_to_yaml_load_unchanged(params, tmp_path):
    """How the stage tests hand Params to the CLI: asdict -> YAML -> load_params."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(params), sort_keys=False))
    assert load_params(path) == params


def test_unknown_key_is_an_error(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("  epochs: 20\n", "  epochs: 20\n  epochz: 3\n", 1)
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(UserError, match=r"train: unknown key\(s\) epochz"):
        load_params(tmp_path / "p.yaml")


def test_wrong_type_names_the_key(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("  epochs: 20\n", "  epochs: many\n", 1)
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(UserError, match="train.epochs: expected an integer"):
        load_params(tmp_path / "p.yaml")


def test_missing_file_is_one_line_error(tmp_path, capsys):
    assert main(["--params", str(tmp_path / "nope.yaml"), "join"]) == 1
    err = capsys.readouterr().err
    assert "nope.yaml: params file not found" in err and "Traceback" not in err


def test_set_overrides_and_rejects_unknown():
    p = resolve_params(str(REPO / "params.yaml"), ["train.epochs=3", "split.seed=7"])
    assert p.train.epochs == 3 and p.split.seed == 7
    with pytest.raises(UserError, match="no such parameter"):
        resolve_params(str(REPO / "params.yaml"), ["train.epoch=3"])
