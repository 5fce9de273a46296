"""benchmarks/recipes.py: its doctests, and the README's table of measured recipes is the one recipes.csv gives."""

from __future__ import annotations

import doctest
import importlib.util

import pandas as pd

from .conftest import REPO


def _recipes_module():
    spec = importlib.util.spec_from_file_location("recipes", REPO / "benchmarks" / "recipes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_doctests_pass():
    result = doctest.testmod(_recipes_module())
    assert result.attempted >= 2 and result.failed == 0


def test_readme_table_is_recipes_csv():
    recipes = _recipes_module()
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- recipes -->\n", 1)[1].split("<!-- /recipes -->", 1)[0]
    assert block.strip().splitlines() == recipes.table_lines(pd.read_csv(recipes.CSV))
