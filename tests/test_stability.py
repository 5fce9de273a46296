"""Repeated-split bookkeeping (the refits themselves run in test_evaluate's end-to-end test)."""

from __future__ import annotations

import pandas as pd
import pytest

from galmorph.errors import UserError
from galmorph.evaluation.stability import repeated_split_columns, run_stability, summarize


def test_repeated_split_columns_in_numeric_order():
    df = pd.DataFrame(columns=["split", "split_10", "split_2", "split_1", "splitter", "split_x"])
    assert repeated_split_columns(df) == ["split_1", "split_2", "split_10"]


def test_summarize_mean_and_sample_std():
    per = pd.DataFrame(
        {
            "split": ["split_1", "split_2", "split_3"],
            "n_test": 10,
            "accuracy": [0.8, 0.9, 1.0],
            "macro_f1": [0.7, 0.7, 0.7],
        }
    )
    s = summarize(per)
    assert s["n_splits"] == 3
    assert s["accuracy_mean"] == pytest.approx(0.9)
    assert s["accuracy_std"] == pytest.approx(0.1)
    assert s["macro_f1_std"] == pytest.approx(0.0, abs=1e-12)
    assert summarize(per.iloc[:1])["accuracy_std"] == 0.0


def test_run_stability_without_repeated_splits_is_a_user_error(params):
    with pytest.raises(UserError, match="split.repeats"):
        run_stability(pd.DataFrame({"split": ["train"], "galaxy_id": ["a"]}), params)
