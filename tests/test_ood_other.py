"""benchmarks/ood_other.py --write-outliers: the train.outliers table of the outlier-exposure experiment is the
fit half of Galaxy Zoo's unusual `other` rows, so the half its tables score was never trained on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from galmorph.data.dataset import outlier_paths
from galmorph.errors import UserError

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
    extra = pd.DataFrame({"image_path": ["/x/blend_00000.jpg"], "group": ["synthetic blend of two train galaxies"]})
    ood_other.write_outliers(out, seed=0, extra=extra)
    assert (
        pd.read_csv(out)["image_path"].tolist()[-1] == "/x/blend_00000.jpg" and len(pd.read_csv(out)) == len(paths) + 1
    )
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


def test_blend_pair_adds_a_second_galaxy_off_centre_and_no_edge(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    ood_other = benchmark_module("ood_other")
    yy, xx = np.mgrid[:64, :64]
    blob = (200 * np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / 20.0))[..., None].repeat(3, 2).astype(np.uint8) + 5
    frame = np.full((64, 64, 3), 255, np.uint8)  # a galaxy that fills its frame to the edge
    out = ood_other.blend_pair(blob, blob, np.random.default_rng(1))
    assert out.shape == blob.shape and out.dtype == np.uint8
    assert (out.astype(int) >= blob.astype(int) - 1).all()  # screen blending only adds light
    added = out.astype(int) - blob
    cy, cx = np.unravel_index(added[..., 0].argmax(), added.shape[:2])
    assert 0.06 * 64 <= np.hypot(cy - 32, cx - 32) <= 0.2 * 64  # the second galaxy sits 8-18% of the frame away
    edged = ood_other.blend_pair(np.zeros((64, 64, 3), np.uint8), frame, np.random.default_rng(1))
    assert edged[0].max() == edged[-1].max() == edged[:, 0].max() == edged[:, -1].max() == 0  # tapered to nothing


def test_write_synthetic_writes_jpegs_of_one_source_and_refuses_to_replace(monkeypatch, tmp_path):
    from PIL import Image

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    ood_other = benchmark_module("ood_other")
    paths = _grey_images(tmp_path, [0, 40, 80])
    datasets = ["gz1_sdss", "gz1_sdss", "gz2_sdss_cutout128"]  # gz2 has one image: never drawn
    images = pd.DataFrame({"image_path": paths, "dataset": datasets})
    out = tmp_path / "blends"
    table = ood_other.write_synthetic(out, images, 4, seed=0)
    assert len(table) == 4 and set(table["group"]) == {"synthetic blend of two train galaxies"}
    assert sorted(p.name for p in out.iterdir()) == [f"blend_{k:05d}.jpg" for k in range(4)]  # no temporaries
    for p in table["image_path"]:
        with Image.open(p) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    with pytest.raises(UserError, match="already holds"):
        ood_other.write_synthetic(out, images, 1, seed=0)
    assert len(ood_other.write_synthetic(out, images, 2, seed=1, force=True)) == 2
    (tmp_path / "g1.png").write_bytes(b"not a png")  # a training image that no longer decodes: named, not traced
    with pytest.raises(UserError, match=r"^g1\.png: not a decodable image"):
        ood_other.write_synthetic(tmp_path / "bad", images.iloc[:2], 1, seed=0)
    with pytest.raises(UserError, match="no dataset has 2 galaxies to make a blend of"):
        ood_other.write_synthetic(tmp_path / "none", images.iloc[[0, 2]], 1, seed=0)
    assert not (tmp_path / "none").exists()  # refused before anything is written


def test_disturb_makes_a_symmetric_galaxy_lopsided_and_leaves_the_far_sky_alone(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    ood_other = benchmark_module("ood_other")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128] + 0.5
    sky = rng.normal(20, 3, (128, 128, 3))  # a noisy sky: what the warp must not smear
    blob = 200 * np.exp(-((yy - 64) ** 2 + (xx - 64) ** 2) / (2 * 6.0**2))
    galaxy = np.clip(sky + blob[..., None], 0, 255)
    a = galaxy.astype(np.uint8)

    def asymmetry(img: np.ndarray) -> float:
        """CAS asymmetry: |I - I rotated by 180 degrees| over the light above the sky, in the central 24 px."""
        light = img[52:76, 52:76].astype(float) - 20
        return float(np.abs(light - light[::-1, ::-1]).sum() / np.abs(light).sum())

    out = ood_other.disturb(a, np.random.default_rng(3))
    assert out.shape == a.shape and out.dtype == np.uint8
    assert asymmetry(a) < 0.1 and asymmetry(out) > 0.3  # 0.05 and 0.46-0.64 over seeds 0-5
    np.testing.assert_array_equal(out, ood_other.disturb(a, np.random.default_rng(3)))  # one seed, one image
    # the sky's noise is left where it was: the corners, far from the galaxy, move by rounding only where no tail
    # reaches them (the tail only adds light, so the darker of the two is the original)
    corner = (slice(0, 12), slice(0, 12))
    assert np.median(np.abs(out[corner].astype(int) - a[corner].astype(int))) <= 1
    # no central source (a blank frame): the frame's own fallback radius, and no error
    blank = np.full((64, 64, 3), 10, np.uint8)
    assert ood_other.disturb(blank, np.random.default_rng(0)).shape == blank.shape


def test_write_synthetic_disturbed_uses_one_galaxy_and_its_own_stream(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    ood_other = benchmark_module("ood_other")
    paths = _grey_images(tmp_path, [0, 80])
    images = pd.DataFrame({"image_path": paths, "dataset": ["gz1_sdss", "gz2_sdss_cutout128"]})  # one per dataset
    out = tmp_path / "synth"
    table = ood_other.write_synthetic(out, images, 3, seed=0, kind="disturbed")
    assert set(table["group"]) == {"synthetic disturbed train galaxy"} and len(table) == 3
    assert sorted(p.name for p in out.iterdir()) == [f"disturbed_{k:05d}.jpg" for k in range(3)]
    # blends beside them in the same folder: each kind refuses to replace only its own files
    blends = pd.DataFrame({"image_path": paths * 2, "dataset": ["a"] * 4})
    assert len(ood_other.write_synthetic(out, blends, 1, seed=0)) == 1
    with pytest.raises(UserError, match="already holds disturbed_"):
        ood_other.write_synthetic(out, images, 1, seed=0, kind="disturbed")
    # the preview: each made image beside the galaxy it was made from, framed as the model sees them
    assert set(table["made_from"]) <= set(paths)
    png = tmp_path / "preview.png"
    assert ood_other.preview_synthetic(table, png, per_kind=2) == 4 and png.read_bytes()[:4] == b"\x89PNG"


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
    for extra, message in (
        ([], "--blends/--disturbed N need N > 0, --synthetic-dir and --splits"),
        (["--blends", "0", "--only-blends"], "--only-synthetic and --preview need --blends N or --disturbed N"),
        (["--blend-dir", str(tmp_path / "b"), "--splits", str(tmp_path / "nope.parquet")], "nope.parquet not found"),
        (["--blend-dir", str(tmp_path / "b"), "--splits", str(bad)], "bad.parquet is not a splits.parquet"),
        (["--blend-dir", str(tmp_path / "b"), "--splits", str(nosplit)], "nosplit.parquet has no column split"),
    ):
        monkeypatch.setattr(sys, "argv", ["ood_other.py", "--write-outliers", str(out), "--blends", "3", *extra])
        with pytest.raises(SystemExit):
            ood_other.main()
        err = capsys.readouterr().err
        assert message in err and str(tmp_path) not in err  # names the file, never the server path
    assert list(tmp_path.iterdir()) == [bad.parent]  # nothing written beside the input


def test_only_synthetic_from_the_command_line_uses_training_galaxies_of_one_dataset(monkeypatch, tmp_path, capsys):
    """The README's command: the split's own `dataset` column pairs the galaxies; no test galaxy is ever drawn."""
    import sys

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    ood_other = benchmark_module("ood_other")
    paths = _grey_images(tmp_path, [20 * k for k in range(8)])
    splits = tmp_path / "splits.parquet"
    pd.DataFrame(
        {"image_path": paths, "split": ["train"] * 4 + ["test"] * 4, "dataset": list("aabb") + ["a"] * 4}
    ).to_parquet(splits)
    drawn, disturbed = [], []
    real_blend, real_disturb = ood_other.blend_pair, ood_other.disturb
    monkeypatch.setattr(
        ood_other, "blend_pair", lambda a, b, rng: drawn.append((a[0, 0, 0], b[0, 0, 0])) or real_blend(a, b, rng)
    )
    monkeypatch.setattr(ood_other, "disturb", lambda a, rng: disturbed.append(a[0, 0, 0]) or real_disturb(a, rng))
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


def _grey_images(folder, levels: list[int]) -> list[str]:
    """One flat 32-px RGB PNG per grey level, so a test can tell which images a blend was made of."""
    from PIL import Image

    paths = []
    for k, level in enumerate(levels):
        path = folder / f"g{k}.png"
        Image.fromarray(np.full((32, 32, 3), level, np.uint8)).save(path)
        paths.append(str(path))
    return paths


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
    paths = _grey_images(tmp_path, [0, 20, 40, 60])
    splits = tmp_path / "splits.parquet"
    pd.DataFrame({"image_path": paths, "split": ["train"] * 4, "dataset": ["a"] * 4}).to_parquet(splits)
    synth = tmp_path / "synth"
    synth.mkdir()
    (synth / "disturbed_00000.jpg").write_bytes(b"kept")
    (tmp_path / "p.png").write_bytes(b"kept")
    base = ["ood_other.py", "--write-outliers", str(tmp_path / "o.csv"), "--splits", str(splits)]
    made = ["--blends", "2", "--disturbed", "2", "--synthetic-dir", str(synth), "--only-synthetic"]
    for extra, message in (
        (made, "synth already holds disturbed_*.jpg files"),
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
