"""training/synthetic_outliers.py and `galmorph outliers`: made-up outliers (blends, irregulars, disturbed
galaxies) are made of the training galaxies they name, only add what they claim to add, and never replace or
half-write a folder's images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from galmorph import cli
from galmorph.errors import UserError
from galmorph.training import synthetic_outliers as synthetic

from .conftest import REPO


def test_blend_pair_adds_a_second_galaxy_off_centre_and_no_edge():
    yy, xx = np.mgrid[:64, :64]
    blob = (200 * np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / 20.0))[..., None].repeat(3, 2).astype(np.uint8) + 5
    frame = np.full((64, 64, 3), 255, np.uint8)  # a galaxy that fills its frame to the edge
    out = synthetic.blend_pair(blob, blob, np.random.default_rng(1))
    assert out.shape == blob.shape and out.dtype == np.uint8
    assert (out.astype(int) >= blob.astype(int) - 1).all()  # screen blending only adds light
    added = out.astype(int) - blob
    cy, cx = np.unravel_index(added[..., 0].argmax(), added.shape[:2])
    assert 0.06 * 64 <= np.hypot(cy - 32, cx - 32) <= 0.2 * 64  # the second galaxy sits 8-18% of the frame away
    edged = synthetic.blend_pair(np.zeros((64, 64, 3), np.uint8), frame, np.random.default_rng(1))
    assert edged[0].max() == edged[-1].max() == edged[:, 0].max() == edged[:, -1].max() == 0  # tapered to nothing


def test_write_synthetic_writes_jpegs_of_one_source_and_refuses_to_replace(tmp_path):
    from PIL import Image

    paths = grey_images(tmp_path, [0, 40, 80])
    datasets = ["gz1_sdss", "gz1_sdss", "gz2_sdss_cutout128"]  # gz2 has one image: never drawn
    images = pd.DataFrame({"image_path": paths, "dataset": datasets})
    out = tmp_path / "blends"
    table = synthetic.write_synthetic(out, images, 4, seed=0)
    assert len(table) == 4 and set(table["group"]) == {"synthetic blend of two train galaxies"}
    assert sorted(p.name for p in out.iterdir()) == [f"blend_{k:05d}.jpg" for k in range(4)]  # no temporaries
    for p in table["image_path"]:
        with Image.open(p) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    with pytest.raises(UserError, match="already holds"):
        synthetic.write_synthetic(out, images, 1, seed=0)
    assert len(synthetic.write_synthetic(out, images, 2, seed=1, force=True)) == 2
    (tmp_path / "g1.png").write_bytes(b"not a png")  # a training image that no longer decodes: named, not traced
    with pytest.raises(UserError, match=r"^g1\.png: not a decodable image"):
        synthetic.write_synthetic(tmp_path / "bad", images.iloc[:2], 1, seed=0)
    with pytest.raises(UserError, match="no dataset has 2 galaxies to make a blend of"):
        synthetic.write_synthetic(tmp_path / "none", images.iloc[[0, 2]], 1, seed=0)
    assert not (tmp_path / "none").exists()  # refused before anything is written


def test_disturb_makes_a_symmetric_galaxy_lopsided_and_leaves_the_far_sky_alone():
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

    out = synthetic.disturb(a, np.random.default_rng(3))
    assert out.shape == a.shape and out.dtype == np.uint8
    assert asymmetry(a) < 0.1 and asymmetry(out) > 0.3  # 0.05 and 0.46-0.64 over seeds 0-5
    np.testing.assert_array_equal(out, synthetic.disturb(a, np.random.default_rng(3)))  # one seed, one image
    # the sky's noise is left where it was: the corners, far from the galaxy, move by rounding only where no tail
    # reaches them (the tail only adds light, so the darker of the two is the original)
    corner = (slice(0, 12), slice(0, 12))
    assert np.median(np.abs(out[corner].astype(int) - a[corner].astype(int))) <= 1
    # no central source (a blank frame): the frame's own fallback radius, and no error
    blank = np.full((64, 64, 3), 10, np.uint8)
    assert synthetic.disturb(blank, np.random.default_rng(0)).shape == blank.shape


def test_irregular_takes_the_core_and_the_symmetry_away_and_adds_blue_knots():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128] + 0.5
    sky = rng.normal(20, 3, (128, 128, 3))
    blob = 200 * np.exp(-((yy - 64) ** 2 + (xx - 64) ** 2) / (2 * 6.0**2))  # a grey galaxy with a sharp core
    a = np.clip(sky + blob[..., None], 0, 255).astype(np.uint8)
    r = np.hypot(yy - 64, xx - 64)

    def concentration(img: np.ndarray) -> float:
        """The light within 4 px of the centre over that within 24 px: high for a core."""
        light = np.clip(img.astype(float).mean(-1) - 20, 0, None)
        return float(light[r < 4].sum() / light[r < 24].sum())

    def asymmetry(img: np.ndarray) -> float:
        light = img[40:88, 40:88].astype(float) - 20
        return float(np.abs(light - light[::-1, ::-1]).sum() / np.abs(light).sum())

    made = [synthetic.irregular(a, np.random.default_rng(seed)) for seed in range(8)]
    assert all(m.shape == a.shape and m.dtype == np.uint8 for m in made)
    # coreless: 0.21 for the galaxy, 0.03-0.24 (mean 0.10) over seeds 0-7 (a knot may land on the centre)
    assert concentration(a) > 0.2 and np.mean([concentration(m) for m in made]) < 0.15
    assert asymmetry(a) < 0.2 and min(asymmetry(m) for m in made) > 0.6  # shapeless: 0.90-1.46
    for m in made:  # the knots are bluer than the grey galaxy they were made of (B / R 1.22-1.28)
        light = m[r < 30].astype(float) - 20
        assert light[:, 2].sum() > 1.1 * light[:, 0].sum()
        # the far sky is the original's: rolled residual only where the galaxy was
        assert np.median(np.abs(m[:12, :12].astype(int) - a[:12, :12].astype(int))) <= 1
    np.testing.assert_array_equal(made[3], synthetic.irregular(a, np.random.default_rng(3)))  # one seed, one image
    blank = np.full((64, 64, 3), 10, np.uint8)  # no source, no light: the frame's fallback radius, no knots
    np.testing.assert_array_equal(synthetic.irregular(blank, np.random.default_rng(0)), blank)


def test_write_kinds_refuses_every_kind_before_writing_any(tmp_path):
    paths = grey_images(tmp_path, [0, 40, 80])
    images = pd.DataFrame({"image_path": paths, "dataset": ["a"] * 3})
    out = tmp_path / "synth"
    table = synthetic.write_kinds(out, images, {"blend": 2, "irregular": 1}, seed=0)
    assert table["group"].value_counts(sort=False).to_dict() == {
        "synthetic blend of two train galaxies": 2,
        "synthetic irregular train galaxy": 1,
    }
    for made in out.glob("blend_*.jpg"):
        made.unlink()
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError, match="already holds irregular_"):  # the blends come first, yet none is written
        synthetic.write_kinds(out, images, {"blend": 2, "irregular": 1}, seed=0)
    assert sorted(p.name for p in out.iterdir()) == before
    with pytest.raises(UserError, match="unknown synthetic outlier kind 'merger'"):
        synthetic.write_kinds(out, images, {"merger": 2}, seed=0)
    with pytest.raises(UserError, match="a count > 0 of at least one kind"):
        synthetic.write_kinds(out, images, {"blend": 0}, seed=0)


def test_outliers_command_writes_a_table_training_reads_from_train_galaxies_only(tmp_path, capsys):
    from galmorph.data.dataset import outlier_paths
    from galmorph.data.images import load_rgb

    paths = grey_images(tmp_path, [20 * k for k in range(8)])
    splits = tmp_path / "splits.parquet"
    pd.DataFrame(
        {
            "galaxy_id": range(8),
            "image_path": paths,
            "label_id": [0, 1] * 4,
            "split": ["train"] * 4 + ["test"] * 4,
            "dataset": list("aabb") + ["a"] * 4,
        }
    ).to_parquet(splits)
    out = tmp_path / "made"
    argv = ["--params", str(REPO / "params.yaml"), "outliers", str(out), "--splits", str(splits)]
    preview = tmp_path / "look.png"
    assert cli.main([*argv, "--blends", "3", "--irregular", "2", "--preview", str(preview)]) == 0
    printed = capsys.readouterr().out
    assert "outliers.csv: 5 rows" in printed and "from 4 training galaxies" in printed
    assert "set train.outliers:" in printed and "look.png: 10 tiles" in printed
    assert load_rgb(preview).size[0] > 300
    table = pd.read_csv(out / "outliers.csv")
    assert list(table["image_path"]) == [f"blend_{k:05d}.jpg" for k in range(3)] + ["irregular_00000.jpg",
                                                                                 "irregular_00001.jpg"]  # fmt: skip
    assert set(table["made_from"]) <= set(paths[:4])  # training galaxies only, never a test galaxy
    assert [p.name for p in outlier_paths(out / "outliers.csv")] == list(table["image_path"])  # what training reads
    for extra, message in (
        (["--blends", "3"], "made/outliers.csv: already exists (pass --force"),
        (["--blends", "-1"], "--blends -1: expected a count from 0 to 100,000"),
        (["--irregular", "100001"], "--irregular 100001: expected a count from 0"),
        ([], "ask for at least one kind"),
        (["--blends", "1", "--seed", "-1"], "--seed -1: expected an integer >= 0"),
    ):
        assert cli.main([*argv, *extra]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and str(tmp_path) not in err
    (tmp_path / "afile").write_text("")
    for bad, message in (
        ([str(tmp_path / "afile"), "--blends", "1"], "OUT: afile is a file, not a folder"),
        ([str(tmp_path / "new"), "--blends", "1", "--preview", str(tmp_path / "afile" / "p.png")], "afile is a file"),
        ([str(tmp_path / "new"), "--blends", "1", "--preview", str(tmp_path / "p.jpg")], "p.jpg: expected a .png"),
    ):
        assert cli.main([*argv[:3], *bad, *argv[4:]]) == 1
        assert message in capsys.readouterr().err and not (tmp_path / "new").exists()  # refused before writing
    (out / "outliers.csv").unlink()  # the images are still there: refused by kind, before anything is written
    assert cli.main([*argv, "--irregular", "1"]) == 1 and "already holds irregular_" in capsys.readouterr().err
    assert cli.main([*argv, "--irregular", "1", "--force"]) == 0
    assert len(pd.read_csv(out / "outliers.csv")) == 1
    only_test = tmp_path / "test-only.parquet"
    pd.read_parquet(splits).assign(split="test").to_parquet(only_test)
    assert cli.main([*argv[:-1], str(only_test), "--blends", "1", "--force"]) == 1
    assert "test-only.parquet: no train rows" in capsys.readouterr().err


def test_write_synthetic_disturbed_uses_one_galaxy_and_its_own_stream(tmp_path):
    paths = grey_images(tmp_path, [0, 80])
    images = pd.DataFrame({"image_path": paths, "dataset": ["gz1_sdss", "gz2_sdss_cutout128"]})  # one per dataset
    out = tmp_path / "synth"
    table = synthetic.write_synthetic(out, images, 3, seed=0, kind="disturbed")
    assert set(table["group"]) == {"synthetic disturbed train galaxy"} and len(table) == 3
    assert sorted(p.name for p in out.iterdir()) == [f"disturbed_{k:05d}.jpg" for k in range(3)]
    # blends beside them in the same folder: each kind refuses to replace only its own files
    blends = pd.DataFrame({"image_path": paths * 2, "dataset": ["a"] * 4})
    assert len(synthetic.write_synthetic(out, blends, 1, seed=0)) == 1
    with pytest.raises(UserError, match="already holds disturbed_"):
        synthetic.write_synthetic(out, images, 1, seed=0, kind="disturbed")
    # the preview: each made image beside the galaxy it was made from, framed as the model sees them
    from galmorph.commands.outliers import preview
    from galmorph.config import load_params

    assert set(table["made_from"]) <= set(paths)
    png = tmp_path / "preview.png"
    preprocess = load_params(REPO / "params.yaml").preprocess
    assert preview(table, png, preprocess, per_kind=2) == 4 and png.read_bytes()[:4] == b"\x89PNG"


def grey_images(folder, levels: list[int]) -> list[str]:
    """One flat 32-px RGB PNG per grey level, so a test can tell which images a blend was made of."""
    from PIL import Image

    paths = []
    for k, level in enumerate(levels):
        path = folder / f"g{k}.png"
        Image.fromarray(np.full((32, 32, 3), level, np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_sources_reads_the_dataset_column_or_names_one_source():
    from galmorph.commands.outliers import sources, training_galaxies

    rows = pd.DataFrame({"image_path": ["a.jpg", "b.jpg", "c.jpg"], "split": "train", "dataset": ["gz1", None, "x"]})
    assert list(sources(rows)) == ["gz1", "", "x"]  # a missing source is the unnamed one, never "None" or NaN
    assert list(sources(rows.drop(columns="dataset"))) == ["", "", ""]
    assert list(training_galaxies(rows)["dataset"]) == ["gz1", "", "x"]  # the blends' pairing uses the same rule
