"""benchmarks/ood_other.py --write-outliers: the train.outliers table of the outlier-exposure experiment is the
fit half of Galaxy Zoo's unusual `other` rows, so the half its tables score was never trained on."""

from __future__ import annotations

import numpy as np

from galmorph.data.dataset import outlier_paths

from .conftest import REPO, benchmark_module


def test_write_outliers_lists_only_the_fit_halfs_unusual_rows(real_galaxyzoo, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the script imports its sibling scripts
    ood_other = benchmark_module("ood_other")
    out = tmp_path / "outliers.csv"
    ood_other.write_outliers(out, seed=0)
    paths = outlier_paths(out)  # the table train.outliers reads: every image exists
    other, fit, held = ood_other.halves(0)
    unusual = other[other["group"].isin(ood_other.UNUSUAL)]
    fit_unusual = fit[fit["group"].isin(ood_other.UNUSUAL)]
    assert len(paths) == len(fit_unusual) and 0.4 * len(unusual) <= len(paths) <= 0.6 * len(unusual)
    names = {p.relative_to(real_galaxyzoo).as_posix() for p in paths}
    assert names == set(fit_unusual["filename"]) and not names & set(held["filename"])
    assert list(out.parent.iterdir()) == [out]  # written through a temporary file, nothing left beside it


def test_the_combined_score_and_the_flags_are_what_the_tables_say(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    ood_other = benchmark_module("ood_other")
    # validation 1 - max p: its 0.5 quantile is 0.2, so 0.4 counts as 2 and 0.1 as 0.5
    msp_val = np.array([0.1, 0.2, 0.3])
    det = {"test": np.array([0.5, 1.5]), "held": np.array([3.0, 0.2])}
    msp = {"test": np.array([0.4, 0.1]), "held": np.array([0.1, 0.05])}
    got = ood_other.combined_scores(det, msp, msp_val, 0.5)
    np.testing.assert_allclose(got["test"], [2.0, 1.5])  # each row's larger score
    np.testing.assert_allclose(got["held"], [3.0, 0.25])
    # flagged: detector above 1, or top probability 1 - msp under the abstain threshold
    assert ood_other.flagged_rows(np.array([0.5, 1.5, 0.5, 0.5]), np.array([0.1, 0.1, 0.35, 0.25]), 0.7).tolist() == [
        False,
        True,
        True,
        False,
    ]
