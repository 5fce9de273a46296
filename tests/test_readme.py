"""The README's commands are the ones that run: its copy of `make real` is the Makefile's, and every override in
the real-data recipes names a parameter with a valid value."""

from __future__ import annotations

import re
import shlex

import pytest

from galmorph.cli import resolve_params

from .conftest import REPO


def makefile_overrides(name: str) -> list[str]:
    """The `-S key=value` arguments of a Makefile variable (continuation lines joined), a leading `$(OTHER)`
    expanded to OTHER's, as make would."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(rf"^{name} := (.*)$", text, re.M)
    assert match, f"Makefile: no {name}"
    args, head = shlex.split(match[1]), []
    if args and (base := re.fullmatch(r"\$\((\w+)\)", args[0])):
        args, head = args[1:], makefile_overrides(base[1])
    assert args[::2] == ["-S"] * (len(args) // 2), args
    return [*head, *args[1::2]]


def readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    return text.split(f"<!-- {marker} -->\n", 1)[1].split(f"<!-- /{marker} -->", 1)[0]


def test_readme_real_command_is_the_makefiles():
    block = readme_block("real-cpu")
    command = shlex.split(block.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " "))
    assert command[:5] == ["dvc", "exp", "run", "-n", "real-cpu"]
    assert command[5::2] == ["-S"] * len(command[6::2]) and command[6::2] == makefile_overrides("REAL_CPU")
    assert "$(BIN)/dvc exp run -n $(or $(NAME),real-cpu) $(REAL_CPU) $(EXTRA)" in (REPO / "Makefile").read_text()


def test_real_camera_is_real_cpu_with_photometric_survey_effects(monkeypatch):
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^REAL_CAMERA := \$\(REAL_CPU\) -S ", makefile, re.M)
    assert "$(BIN)/dvc exp run -n $(or $(NAME),real-camera) $(REAL_CAMERA) $(EXTRA)" in makefile
    monkeypatch.chdir(REPO)
    params = resolve_params(None, makefile_overrides("REAL_CAMERA"))
    survey = params.augment.survey
    assert survey.p == 0.8 and params.data.source == "manifest" and params.preprocess.sky == "none"
    assert survey.stars_p == survey.blur_p == survey.pixel_p == survey.noise_p == 0
    assert min(survey.sky_p, survey.colour_p, survey.gamma_p, survey.saturate_p, survey.grey_p) > 0


@pytest.mark.parametrize("name", ["REAL_CPU", "REAL_GPU"])
def test_real_recipes_name_valid_parameters(name, monkeypatch):
    monkeypatch.chdir(REPO)
    params = resolve_params(None, makefile_overrides(name))
    assert params.data.source == "manifest" and params.train.mode == "finetune"
    assert params.evaluate.ood_manifest == "../shared/ood-dev/labels.csv"
