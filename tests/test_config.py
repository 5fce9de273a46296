import dataclasses
import shutil

import pytest
import yaml

from galmorph import cli
from galmorph.cli import main, resolve_params
from galmorph.config import DEFAULTS_WITHOUT_PARAMS_FILE, load_params
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


def _params_with(tmp_path, old: str, new: str):
    text = (REPO / "params.yaml").read_text()
    assert old in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_a_command_validates_only_what_it_reads(tmp_path):
    """After a failed `dvc exp run -S train.lr=abc` params.yaml holds the bad value: the commands that do not read
    train.lr still run, those that do fail on it, and the rest of the section stays readable."""
    path = _params_with(tmp_path, "\n  lr: 0.001", "\n  lr: abc")
    p = load_params(path, required=("mlflow", "evaluate.abstain_threshold"))
    assert p.mlflow.registered_model and p.evaluate.abstain_threshold == 0.7
    assert p.train.epochs == 20  # the valid keys of train read as usual
    with pytest.raises(UserError, match="train.lr: expected a number, got 'abc'"):
        _ = p.train.lr
    with pytest.raises(UserError, match="train.lr: expected a number"):
        load_params(path)  # everything, as before
    with pytest.raises(UserError, match="train.lr: expected a number"):
        load_params(path, required=("train",))
    with pytest.raises(UserError, match="train.lr: expected a number"):
        load_params(path, required=("train.lr",))
    assert load_params(path, required=("train.epochs",)).train.epochs == 20
    with pytest.raises(UserError, match="train.lr"):  # the pipeline's own stage still refuses it
        resolve_params(str(path), [], cli.SECTIONS["train"])
    assert resolve_params(str(REPO / "params.yaml"), ["train.lr=abc"], cli.SECTIONS["predict"]).mlflow


def test_a_missing_key_in_a_section_not_read_names_the_likely_typo(tmp_path):
    path = _params_with(tmp_path, "  abstain_threshold:", "  abstain_treshold:")
    p = load_params(path, required=("mlflow",))
    with pytest.raises(UserError, match=r"evaluate: missing key abstain_threshold \(abstain_treshold: a typo"):
        _ = p.evaluate.abstain_threshold
    with pytest.raises(UserError, match=r"abstain_treshold \(did you mean abstain_threshold\?\)"):
        load_params(path)


def test_every_stage_validates_what_dvc_yaml_lists_for_it():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        command = stage["cmd"].split()[1]
        for entry in stage.get("params", []):
            if isinstance(entry, dict):  # another file's values (train: the tuned ones in tune.out), not params.yaml
                assert list(entry) == ["${tune.out}"], entry
                continue
            section = entry.split(".")[0]
            assert section in cli.SECTIONS[command], f"dvc.yaml {name}: {entry} not in cli.SECTIONS[{command!r}]"
    assert set(cli.SECTIONS) == set(cli.COMMANDS)


def test_defaults_without_a_params_file_are_params_yaml_values(params):
    for section, values in DEFAULTS_WITHOUT_PARAMS_FILE.items():
        for key, value in values.items():
            assert getattr(getattr(params, section), key) == value, f"{section}.{key}"


def test_set_typo_gets_a_did_you_mean():
    with pytest.raises(
        UserError, match=r"--set train.lrr: no such parameter in params.yaml \(did you mean train.lr\?\)"
    ):
        resolve_params(str(REPO / "params.yaml"), ["train.lrr=0.1"])
    with pytest.raises(UserError, match=r"--set trian.lr: .*\(did you mean train.lr\?\)"):
        resolve_params(str(REPO / "params.yaml"), ["trian.lr=0.1"])
    with pytest.raises(UserError, match=r"--set train.zzzz: no such parameter in params.yaml$"):
        resolve_params(str(REPO / "params.yaml"), ["train.zzzz=1"])


@pytest.mark.parametrize(
    "override",
    ["train.lr=0.003", "data.source=manifest", "evaluate.ood_manifest=../shared/ood-dev", "tune.n_trials=0"],
)
def test_dvc_exp_run_set_changes_only_the_line_it_sets(override, tmp_path):
    """`dvc exp run -S` writes params.yaml back through ruamel (dvc.utils.hydra.apply_overrides): a file in another
    layout came back with a 67-line diff and every `null` blanked. params.yaml is kept in the layout DVC writes."""
    from dvc.utils.hydra import apply_overrides

    copy = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", copy)
    apply_overrides(str(copy), [override])
    before = (REPO / "params.yaml").read_text().splitlines()
    after = copy.read_text().splitlines()
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    key, value = override.split("=", 1)
    assert len(changed) == 1, [(before[i], after[i]) for i in changed]
    line = after[changed[0]]
    assert line.strip().startswith(f"{key.rsplit('.', 1)[1]}: {value}"), line
    assert load_params(copy) is not None


def test_a_mapping_set_merges_into_the_mapping_as_dvc_exp_run_does(tmp_path):
    """`-S 'tune.space={...}'` changes the keys it names and keeps the rest, in galmorph and in `dvc exp run -S`
    alike, so one override means the same study on either path."""
    from dvc.utils.hydra import apply_overrides

    override = "tune.space={train.lr: {type: float, low: 0.0002, high: 0.004, log: true}}"
    ours = resolve_params(str(REPO / "params.yaml"), [override]).tune.space
    copy = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", copy)
    apply_overrides(str(copy), [override])
    theirs = load_params(copy).tune.space
    assert ours == theirs
    assert ours["train.lr"] == {"type": "float", "low": 0.0002, "high": 0.004, "log": True}
    assert ours["model.dropout"] == load_params(REPO / "params.yaml").tune.space["model.dropout"]
