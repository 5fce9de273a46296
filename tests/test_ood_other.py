"""benchmarks/ood_other.py --write-outliers: the train.outliers table of the outlier-exposure experiment is the
fit half of Galaxy Zoo's unusual `other` rows, so the half its tables score was never trained on."""

from __future__ import annotations

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
