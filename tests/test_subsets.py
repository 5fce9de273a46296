"""KPIs per source and by the volunteers' confidence: where a model's errors are."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from galmorph.errors import UserError
from galmorph.evaluation.subsets import (
    check_vote_bins,
    flat_subsets,
    subset_kpis,
    vote_confidence,
    winning_fraction,
)


def probs_for(predicted: list[int]) -> np.ndarray:
    p = np.full((len(predicted), 2), 0.1)
    p[np.arange(len(predicted)), predicted] = 0.9
    return p


def test_kpis_per_source_count_each_sets_rows_and_mistakes():
    labels = np.array([0, 1, 0, 1, 0, 0])
    probs = probs_for([0, 1, 1, 1, 0, 1])  # gz1: 3 of 3 right; gz2: 1 of 3 right
    groups = pd.Series(["gz1", "gz1", "gz2", "gz1", "gz2", "gz2"])
    got = subset_kpis(probs, labels, groups, n_resamples=200, seed=0)
    assert list(got) == ["gz1", "gz2"]
    assert got["gz1"]["n"] == 3 and got["gz1"]["accuracy"].value == 1.0
    assert got["gz2"]["accuracy"].value == pytest.approx(1 / 3)
    assert got["gz2"]["classes"] == {"spiral": 3, "elliptical": 0}
    assert got["gz2"]["accuracy"].low <= 1 / 3 <= got["gz2"]["accuracy"].high
    missing = subset_kpis(probs, labels, pd.Series(["a", None, "", "a", "a", "a"]), n_resamples=0, seed=0)
    assert missing["(none)"]["n"] == 2


def test_confident_labels_and_mistakes_on_split_labels_apart():
    """The own-class vote fraction: spiral rows use p_spiral, elliptical rows p_elliptical; NaN = no votes."""
    catalogue = pd.DataFrame(
        {
            "p_spiral": [0.95, 0.10, 0.62, 0.85, np.nan, 0.55],
            "p_elliptical": [0.05, 0.90, 0.38, 0.15, np.nan, 0.45],
        }
    )
    labels = np.array([0, 1, 0, 0, 1, 0])
    winning = winning_fraction(catalogue, labels)
    np.testing.assert_allclose(winning, [0.95, 0.90, 0.62, 0.85, np.nan, 0.55])
    probs = probs_for([0, 1, 1, 1, 0, 1])  # wrong: row 2 (split), 3 (confident), 4 (no votes), 5 (split)
    votes = vote_confidence(probs, labels, winning, edges=[0.5, 0.6, 0.7, 0.8, 0.9, 1.0], confident=0.8,
                            n_resamples=100, seed=0)  # fmt: skip
    assert votes["n_with_votes"] == 5 and votes["n_confident"] == 3
    assert votes["confident"]["accuracy"].value == pytest.approx(2 / 3)
    assert (votes["mistakes_confident"], votes["mistakes_split"], votes["mistakes_without_votes"]) == (1, 2, 1)
    by_bin = {(b["low"], b["high"]): b for b in votes["bins"]}
    assert by_bin[(0.5, 0.6)]["n"] == 1 and by_bin[(0.5, 0.6)]["accuracy"].value == 0.0
    assert by_bin[(0.9, 1.0)]["n"] == 2 and by_bin[(0.9, 1.0)]["accuracy"].value == 1.0  # 1.0 is in the last bin
    assert by_bin[(0.7, 0.8)]["n"] == 0 and "accuracy" not in by_bin[(0.7, 0.8)]
    flat = flat_subsets("test", None, votes)
    assert flat["test_confident_accuracy"] == pytest.approx(2 / 3) and flat["test_mistakes_split"] == 2
    assert flat["test_accuracy_votes_0.90_1.00"] == 1.0
    assert vote_confidence(probs, labels, np.full(6, np.nan), edges=[0.5, 1.0], confident=0.8,
                           n_resamples=0, seed=0) is None  # fmt: skip


@pytest.mark.parametrize("edges, confident", [([0.5], 0.8), ([0.6, 0.5], 0.8), ([0.5, 1.2], 0.8), ([0.5, 1], 0)])
def test_bad_vote_bins_name_the_parameter(edges, confident):
    with pytest.raises(UserError, match=r"evaluate\.(vote_bins|confident_fraction)"):
        check_vote_bins(edges, confident)
