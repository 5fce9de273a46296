"""benchmarks/recipes.py: its doctests, and the README's table of measured recipes is the one recipes.csv gives."""

from __future__ import annotations

import doctest

import pandas as pd

from .conftest import REPO, benchmark_module


def _recipes_module():
    return benchmark_module("recipes")


def test_doctests_pass():
    result = doctest.testmod(_recipes_module())
    assert result.attempted >= 2 and result.failed == 0


def test_readme_table_is_recipes_csv():
    recipes = _recipes_module()
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- recipes -->\n", 1)[1].split("<!-- /recipes -->", 1)[0]
    assert block.strip().splitlines() == recipes.table_lines(pd.read_csv(recipes.CSV))
