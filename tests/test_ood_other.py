"""benchmarks/ood_other.py --write-outliers: the train.outliers table of the outlier-exposure experiment is the
fit half of Galaxy Zoo's unusual `other` rows, so the half its tables score was never trained on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from galmorph.data.dataset import outlier_paths
from galmorph.training import synthetic_outliers as synthetic

from .conftest import REPO, benchmark_module
from .test_outliers import grey_images


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
    extra = pd.DataFrame({"image_path": ["/x/blend_00000.jpg"], "group": ["synthetic blend of two train galaxies"]})
    ood_other.write_outliers(out, seed=0, extra=extra)
    assert (
        pd.read_csv(out)["image_path"].tolist()[-1] == "/x/blend_00000.jpg" and len(pd.read_csv(out)) == len(paths) + 1
    )
    ood_other.write_outliers(out, seed=0, extra=extra, copies=2)  # --real-copies 2: the real rows again, after
    table = pd.read_csv(out)
    real = table.iloc[: len(paths)].reset_index(drop=True)
    assert len(table) == 2 * len(paths) + 1 and table["image_path"].iloc[len(paths)] == "/x/blend_00000.jpg"
    assert table.iloc[len(paths) + 1 :].reset_index(drop=True).equals(real)
    ood_other.write_outliers(out, seed=0, extra=extra, unusual_rows=False)  # --only-blends
    assert pd.read_csv(out).to_dict("list") == extra.to_dict("list")


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


def test_same_source_aurocs_see_a_score_that_keys_on_the_source(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    ood_other = benchmark_module("ood_other")
    rng = np.random.default_rng(0)
    # 40 GZ1 and 40 GZ2 test galaxies; 20 unusual GZ1 rows, 20 unusual GZ2 rows and 5 usual ones
    test_source = np.array(["gz1"] * 40 + ["gz2"] * 40, dtype=object)
    held_source = np.array(["gz1"] * 20 + ["gz2"] * 20 + ["gz1"] * 5, dtype=object)
    unusual = np.r_[np.ones(40, bool), np.zeros(5, bool)]
    # "source": high for everything GZ1 (a shortcut); "merger": high for the unusual rows only
    scores = {
        "source": {
            "test": (test_source == "gz1") + rng.uniform(0, 0.1, 80),
            "other held": (held_source == "gz1") * 1.0,
        },
        "merger": {"test": rng.uniform(0, 0.5, 80), "other held": np.r_[np.ones(40), np.zeros(5)]},
    }
    got = ood_other.same_source_aurocs(scores, test_source, held_source, unusual)
    assert [(s, n_u, n_t) for s, n_u, n_t, _ in got] == [("gz1", 20, 40), ("gz2", 20, 40)]
    gz1, gz2 = (dict((k, v[0]) for k, v in aucs.items()) for *_, aucs in got)
    assert gz1["merger"] == gz2["merger"] == 1.0
    # against all test galaxies the source score would rank GZ1 unusual rows above half of them; within GZ1 the
    # unusual rows (score exactly 1) sit below the GZ1 galaxies (1 + noise) and within GZ2 level with them
    assert gz1["source"] == 0.0 and gz2["source"] == 0.0
    # a source with fewer than 10 unusual rows is left out
    few = ood_other.same_source_aurocs(scores, test_source, held_source, np.r_[np.ones(25, bool), np.zeros(20, bool)])
    assert [s for s, *_ in few] == ["gz1"]


def test_a_detector_per_source_sees_what_the_pooled_one_spreads_over_two_surveys(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    ood_other = benchmark_module("ood_other")
    rng = np.random.default_rng(0)

    def survey(n: int, centre: float) -> np.ndarray:  # tight galaxies of one survey, 4 features
        return rng.normal(0, 0.1, (n, 4)) + np.array([centre, 0, 0, 0])

    feats = {
        "train": np.vstack([survey(200, 0.0), survey(200, 5.0)]),
        "val": np.vstack([survey(100, 0), survey(100, 5)]),
    }
    src = {
        "train": np.array(["a"] * 200 + ["b"] * 200, dtype=object),
        "val": np.array(["a"] * 100 + ["b"] * 100, dtype=object),
    }
    y_train = np.tile([0, 1], 200)
    # to score: a B galaxy, an odd B row half way between the surveys, and an odd row of survey "c" (no train rows)
    feats["score"] = np.array([[5.0, 0, 0, 0], [2.5, 0, 0, 0], [2.5, 0, 0, 0]])
    src["score"] = np.array(["b", "b", "c"], dtype=object)
    pooled = ood_other.fit_detector(feats["train"], y_train, feats["val"], 0.99).scores(feats["score"])
    got = ood_other.per_source_scores(feats, src, y_train, pooled, 0.99)
    assert got[2] == pooled[2]  # no detector of its own: the pooled score stands
    assert got[0] < 1.5  # an ordinary B galaxy stays near its own survey's validation quantile
    # the pooled detector's covariance spans the gap between the surveys, so the odd row looks less odd to it
    assert got[1] > 5 * got[0] and got[1] > 2 * pooled[1]


def test_blends_without_their_inputs_are_refused_before_anything_is_written(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    ood_other = benchmark_module("ood_other")
    out = tmp_path / "outliers.csv"
    bad = tmp_path / "in" / "bad.parquet"
    bad.parent.mkdir()
    bad.write_text("not parquet")
    nosplit = bad.parent / "nosplit.parquet"
    pd.DataFrame({"image_path": ["a.png"]}).to_parquet(nosplit)
    labels = bad.parent / "shared" / "galaxyzoo" / "labels.csv"  # these refusals come first, with or without ../shared
    labels.parent.mkdir(parents=True)
    labels.touch()
    monkeypatch.setattr(ood_other, "SHARED", labels.parent.parent)
    for extra, message in (
        ([], "--blends/--disturbed/--irregular N need N > 0, --synthetic-dir and --splits"),
        (
            ["--blends", "0", "--only-blends"],
            "--only-synthetic and --preview need --blends, --disturbed or --irregular N",
        ),
        (["--blend-dir", str(tmp_path / "b"), "--splits", str(tmp_path / "nope.parquet")], "nope.parquet not found"),
        (["--blend-dir", str(tmp_path / "b"), "--splits", str(bad)], "bad.parquet is not a splits.parquet"),
        (["--blend-dir", str(tmp_path / "b"), "--splits", str(nosplit)], "nosplit.parquet has no column split"),
        (["--real-copies", "0"], "--real-copies N needs N >= 1"),
        (["--real-copies", "2", "--only-synthetic"], "--real-copies N needs N >= 1 and Galaxy Zoo's rows"),
    ):
        monkeypatch.setattr(sys, "argv", ["ood_other.py", "--write-outliers", str(out), "--blends", "3", *extra])
        with pytest.raises(SystemExit):
            ood_other.main()
        err = capsys.readouterr().err
        assert message in err and str(tmp_path) not in err  # names the file, never the server path
    assert list(tmp_path.iterdir()) == [bad.parent]  # nothing written beside the input
    # no Galaxy Zoo folder for the real rows: refused before any made-up image is written
    monkeypatch.setattr(ood_other, "SHARED", tmp_path / "no-shared")
    monkeypatch.setattr(sys, "argv", ["ood_other.py", "--write-outliers", str(out), "--blends", "3",
                                      "--blend-dir", str(tmp_path / "b"), "--splits", str(nosplit)])  # fmt: skip
    with pytest.raises(SystemExit):
        ood_other.main()
    err = capsys.readouterr().err
    assert "no ../shared/galaxyzoo/labels.csv" in err and str(tmp_path) not in err
    assert list(tmp_path.iterdir()) == [bad.parent]


def test_only_synthetic_from_the_command_line_uses_training_galaxies_of_one_dataset(monkeypatch, tmp_path, capsys):
    """The README's command: the split's own `dataset` column pairs the galaxies; no test galaxy is ever drawn."""
    import sys

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    ood_other = benchmark_module("ood_other")
    paths = grey_images(tmp_path, [20 * k for k in range(8)])
    splits = tmp_path / "splits.parquet"
    pd.DataFrame(
        {"image_path": paths, "split": ["train"] * 4 + ["test"] * 4, "dataset": list("aabb") + ["a"] * 4}
    ).to_parquet(splits)
    drawn, disturbed = [], []
    makers = dict(synthetic.MAKERS)  # where write_synthetic looks them up
    monkeypatch.setitem(
        synthetic.MAKERS,
        "blend",
        lambda a, b, rng: drawn.append((a[0, 0, 0], b[0, 0, 0])) or makers["blend"](a, b, rng),
    )
    monkeypatch.setitem(
        synthetic.MAKERS, "disturbed", lambda a, rng: disturbed.append(a[0, 0, 0]) or makers["disturbed"](a, rng)
    )
    out = tmp_path / "blends.csv"
    argv = ["ood_other.py", "--write-outliers", str(out), "--blends", "6", "--disturbed", "3"]
    extra = ["--synthetic-dir", str(tmp_path / "b"), "--only-synthetic", "--preview", str(tmp_path / "p.png")]
    monkeypatch.setattr(sys, "argv", [*argv, *extra, "--splits", str(splits)])
    monkeypatch.setattr(ood_other, "SHARED", tmp_path / "no-shared")  # another survey: no Galaxy Zoo folder needed
    ood_other.main()
    table = pd.read_csv(out)
    assert table["group"].value_counts().to_dict() == {
        "synthetic blend of two train galaxies": 6,
        "synthetic disturbed train galaxy": 3,
    }
    # train galaxies only (grey levels 0, 20, 40, 60), each pair from one dataset: {0, 20} or {40, 60}
    assert all({a, b} in ({0, 20}, {40, 60}) for a, b in drawn) and set(disturbed) <= {0, 20, 40, 60}
    printed = capsys.readouterr().out
    assert "blends.csv: 9 rows" in printed and "p.png: 18 tiles" in printed and (tmp_path / "p.png").is_file()


def test_paired_auroc_difference_is_tight_where_two_models_share_their_rows(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench_ood = benchmark_module("bench_ood")
    rng = np.random.default_rng(0)
    inside, outside = rng.normal(0, 1, 300), rng.normal(1, 1, 60)
    same = bench_ood.paired_auroc_difference((inside, inside), (outside, outside), n_boot=200)
    assert same[0] == same[1] and same[2:] == (0.0, 0.0, 0.0)  # one model against itself: exactly nothing
    # B adds a little to every outlier's score: a small gain that the paired interval resolves
    a_auc, b_auc, diff, lo, hi = bench_ood.paired_auroc_difference(
        (inside, inside), (outside, outside + 0.2), n_boot=300
    )
    assert b_auc > a_auc and diff == pytest.approx(b_auc - a_auc) and 0 < lo < diff < hi
    separate = bench_ood.auroc_interval(inside, outside)
    assert hi - lo < (separate[2] - separate[1]) / 2  # far tighter than either model's own interval


def test_saved_scores_compare_paired_and_refuse_other_rows(monkeypatch, tmp_path, capsys):
    import sys

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    ood_other = benchmark_module("ood_other")
    rng = np.random.default_rng(1)
    held = pd.DataFrame({"group": ["GZ1 merger"] * 12 + ["Kaggle non-spiral (smooth and featured)"] * 5})
    paths = {"test": [f"/srv/t{i}.jpg" for i in range(40)], "other held": [f"/srv/o{i}.jpg" for i in range(17)]}
    source = np.array(["gz1_sdss"] * 40, dtype=object)
    for name, shift in (("a", 0.0), ("b", 3.0)):
        scores = {"detector (product)": {"test": rng.normal(0, 1, 40), "other held": rng.normal(shift, 1, 17)}}
        ood_other.save_scores(tmp_path / f"{name}.parquet", scores, paths, held, source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]  # no temporaries left
    argv = ["ood_other.py", "--paired", str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")]
    monkeypatch.setattr(sys, "argv", argv)
    ood_other.main()
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("| all unusual | 12 | detector (product) |"))
    assert float(line.split("|")[6].split()[0]) > 0.3  # B ranks the 12 mergers far above the test galaxies
    assert "GZ1 don't know" not in out  # groups without 10 rows are left out
    other = pd.read_parquet(tmp_path / "b.parquet").iloc[1:]
    other.to_parquet(tmp_path / "c.parquet")
    (tmp_path / "bad.parquet").write_text("no")
    for pair, message in (
        (["a.parquet", "c.parquet"], "a and c were not scored on the same rows"),
        (["a.parquet", "bad.parquet"], "bad.parquet: not a --save-scores parquet"),
        (["a.parquet", "nope.parquet"], "nope.parquet not found"),
    ):
        monkeypatch.setattr(sys, "argv", ["ood_other.py", "--paired", *(str(tmp_path / p) for p in pair)])
        with pytest.raises(SystemExit):
            ood_other.main()
        err = capsys.readouterr().err
        assert message in err and str(tmp_path) not in err


def test_nothing_is_replaced_or_half_written_without_force(monkeypatch, tmp_path, capsys):
    """A folder that already holds one kind refuses before the other kind is written; an existing --preview or
    --save-scores file is never overwritten, and a missing folder for either is named before any work."""
    import sys

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    ood_other = benchmark_module("ood_other")
    paths = grey_images(tmp_path, [0, 20, 40, 60])
    splits = tmp_path / "splits.parquet"
    pd.DataFrame({"image_path": paths, "split": ["train"] * 4, "dataset": ["a"] * 4}).to_parquet(splits)
    synth = tmp_path / "synth"
    synth.mkdir()
    (synth / "disturbed_00000.jpg").write_bytes(b"kept")
    (tmp_path / "p.png").write_bytes(b"kept")
    base = ["ood_other.py", "--write-outliers", str(tmp_path / "o.csv"), "--splits", str(splits)]
    made = ["--blends", "2", "--disturbed", "2", "--synthetic-dir", str(synth), "--only-synthetic"]
    for extra, message in (
        (made, "--synthetic-dir: synth: already holds disturbed_*.jpg files"),
        (["--blends", "2", "--synthetic-dir", str(tmp_path / "s2"), "--preview", str(tmp_path / "p.png")],
         "--preview: p.png already exists"),
        (["--save-scores", str(tmp_path / "no" / "s.parquet")], "--save-scores: the folder of s.parquet does not exist"),
    ):  # fmt: skip
        monkeypatch.setattr(sys, "argv", [*base, *extra])
        with pytest.raises(SystemExit):
            ood_other.main()
        err = capsys.readouterr().err
        assert message in err and str(tmp_path) not in err
    assert sorted(p.name for p in synth.iterdir()) == ["disturbed_00000.jpg"]  # no blend written beside it
    assert (tmp_path / "p.png").read_bytes() == b"kept" and not (tmp_path / "o.csv").exists()
    assert not (tmp_path / "s2").exists()


def test_writer_options_without_write_outliers_are_refused_not_ignored(monkeypatch, tmp_path, capsys):
    """--blends or --preview beside --model (a scoring run) would otherwise be dropped without a word."""
    import sys

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    ood_other = benchmark_module("ood_other")
    argv = ["ood_other.py", "--model", "m.pt", "--splits", "s.parquet", "--blends", "5", "--preview", "p.png"]
    monkeypatch.setattr(sys, "argv", [*argv, "--real-copies", "2"])
    with pytest.raises(SystemExit) as exit_info:
        ood_other.main()
    assert exit_info.value.code == 2
    assert "--blends, --preview, --real-copies only go with --write-outliers CSV" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
