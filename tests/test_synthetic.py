"""The synthetic Galaxy Zoo source: official file formats, realistic proportions, determinism, and images whose
pixels agree with the votes (checked physically: colour, brightness, size, arm winding)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from galmorph import cli
from galmorph.config import SyntheticConfig
from galmorph.data.gzcsv import read_mapping, read_table2
from galmorph.data.images import load_rgb
from galmorph.data.sources import synthetic as synth
from galmorph.data.sources.synthetic import population, render
from galmorph.errors import UserError

from .conftest import REPO

TINY = SyntheticConfig(n_galaxies=60, mapping_fraction=0.8, missing_image_fraction=0.05, image_size=64, seed=7)
FRACTIONS = ["P_EL", "P_CW", "P_ACW", "P_EDGE", "P_DK", "P_MG"]


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic")
    counts = synth.generate(TINY, out, workers=1, progress=False)
    return out, counts


def test_table2_has_the_official_columns_types_and_invariants(tiny_set):
    out, _ = tiny_set
    header = (out / "GalaxyZoo1_DR_table2.csv").read_text().splitlines()[0]
    # the header of the file data.galaxyzoo.org distributes, spelled out: not the schema constant the writer uses
    assert header == (
        "OBJID,RA,DEC,NVOTE,P_EL,P_CW,P_ACW,P_EDGE,P_DK,P_MG,P_CS,P_EL_DEBIASED,P_CS_DEBIASED,SPIRAL,ELLIPTICAL,UNCERTAIN"
    )
    t2 = pd.read_csv(out / "GalaxyZoo1_DR_table2.csv")
    for col in ("OBJID", "NVOTE", "SPIRAL", "ELLIPTICAL", "UNCERTAIN"):
        assert t2[col].dtype == np.int64, col
    for col in [*FRACTIONS, "P_CS", "P_EL_DEBIASED", "P_CS_DEBIASED"]:
        assert t2[col].dtype == np.float64, col
        assert t2[col].between(0, 1).all(), col
        np.testing.assert_allclose(t2[col] * 1000, np.rint(t2[col] * 1000), atol=1e-6, err_msg=col)  # 3 decimals
    assert t2["OBJID"].astype(str).str.fullmatch(r"58\d{16}").all()  # 18-digit SDSS DR7 objids
    assert t2["OBJID"].is_unique
    assert t2["RA"].str.fullmatch(r"\d\d:[0-5]\d:[0-5]\d\.\d\d").all()
    assert t2["DEC"].str.fullmatch(r"[+-]\d\d:[0-5]\d:[0-5]\d\.\d").all()
    assert (t2["NVOTE"] >= 10).all()
    np.testing.assert_allclose(t2[FRACTIONS].sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(t2["P_CS"], t2[["P_CW", "P_ACW", "P_EDGE"]].sum(axis=1), atol=1e-9)
    assert (t2[["SPIRAL", "ELLIPTICAL", "UNCERTAIN"]].sum(axis=1) == 1).all()
    degrees = read_table2(out / "GalaxyZoo1_DR_table2.csv")  # the join stage's reader accepts it
    assert len(degrees) == TINY.n_galaxies


def test_sky_coordinates_format_like_the_real_table():
    assert population._format_ra(np.array([0.0017083, 359.99999999])) == ["00:00:00.41", "00:00:00.00"]
    assert population._format_dec(np.array([-10.373805555, 0.5, -0.00001])) == [
        "-10:22:25.7",
        "+00:30:00.0",
        "-00:00:00.0",
    ]


def test_proportions_and_flag_disagreement_resemble_the_real_catalogue():
    t2, mapping = population.generate_catalogues(60_000, 355_990 / 667_944, seed=1)
    shares = t2[["SPIRAL", "ELLIPTICAL", "UNCERTAIN"]].mean()
    assert shares["SPIRAL"] == pytest.approx(0.285, abs=0.025)
    assert shares["ELLIPTICAL"] == pytest.approx(0.093, abs=0.02)
    assert shares["UNCERTAIN"] == pytest.approx(0.622, abs=0.03)
    rule = np.select([t2["P_CS_DEBIASED"] > 0.8, t2["P_EL_DEBIASED"] > 0.8], [0, 1], 2)
    flags = np.select([t2["SPIRAL"] == 1, t2["ELLIPTICAL"] == 1], [0, 1], 2)
    assert 0.08 < (rule != flags).mean() < 0.18  # the real table: about 13%
    assert 25 <= t2["NVOTE"].median() <= 50
    # raw votes lean elliptical, debiasing moves them towards spiral (the GZ1 redshift bias)
    assert t2["P_EL"].mean() > t2["P_EL_DEBIASED"].mean()
    assert len(mapping) == round(60_000 * 355_990 / 667_944)


def test_mapping_is_partial_unique_in_assets_and_has_duplicates(tiny_set):
    out, counts = tiny_set
    mapping = pd.read_csv(out / "gz2_filename_mapping.csv")
    t2 = pd.read_csv(out / "GalaxyZoo1_DR_table2.csv")
    assert list(mapping.columns) == ["objid", "sample", "asset_id"]  # the header of Zenodo's file
    assert mapping["objid"].dtype == np.int64 and mapping["asset_id"].dtype == np.int64
    assert len(mapping) == round(TINY.n_galaxies * TINY.mapping_fraction) == counts["mapping_rows"]
    assert mapping["asset_id"].is_unique
    assert mapping["objid"].duplicated().sum() >= 1
    assert set(mapping["sample"]) <= set(population.SAMPLES)
    covered = set(mapping["objid"]) & set(t2["OBJID"])
    assert 0 < len(covered) < len(t2)
    assert len(read_mapping(out / "gz2_filename_mapping.csv")) == len(mapping)


def test_full_size_mapping_has_duplicates_and_coadd_objids_outside_table2():
    t2, mapping = population.generate_catalogues(20_000, 0.53, seed=2)
    assert mapping["objid"].duplicated().sum() > 20
    outside = mapping[~mapping["objid"].isin(t2["OBJID"])]
    assert len(outside) > 0 and outside["sample"].str.startswith("stripe82_coadd").all()
    assert mapping["asset_id"].tolist() == list(range(1, len(mapping) + 1))


def test_images_one_per_mapping_row_except_the_missing_share(tiny_set):
    out, counts = tiny_set
    mapping = pd.read_csv(out / "gz2_filename_mapping.csv")
    files = sorted((out / "images_gz2" / "images").iterdir())
    expected_missing = round(len(mapping) * TINY.missing_image_fraction)
    assert expected_missing >= 1
    assert counts["images_missing"] == expected_missing
    assert len(files) == counts["images_written"] == len(mapping) - expected_missing
    assert {int(p.stem) for p in files} <= set(mapping["asset_id"])
    assert all(p.suffix == ".jpg" for p in files)
    for path in files:
        image = load_rgb(path)
        assert image.mode == "RGB" and image.size == (TINY.image_size, TINY.image_size)
    assert sum(counts["images_by_class"].values()) == counts["images_written"]


def test_same_seed_same_bytes_in_any_process_layout_other_seed_differs(tmp_path, tiny_set):
    reference, _ = tiny_set
    synth.generate(TINY, tmp_path / "again", workers=2, progress=False)  # a process pool this time
    assert _digests(tmp_path / "again") == _digests(reference)
    other = dataclasses.replace(TINY, seed=TINY.seed + 1)
    synth.generate(other, tmp_path / "other", images=False, progress=False)
    for name in ("GalaxyZoo1_DR_table2.csv", "gz2_filename_mapping.csv"):
        assert (tmp_path / "other" / name).read_bytes() != (reference / name).read_bytes()
    pop = population.sample_population(5, TINY.seed).iloc[0].to_dict()
    a = render.render_galaxy(pop, 64, render.render_seed(0, 1))
    assert not np.array_equal(a, render.render_galaxy(pop, 64, render.render_seed(1, 1)))
    assert np.array_equal(a, render.render_galaxy(pop, 64, render.render_seed(0, 1)))


def test_rerun_removes_stale_images_and_leftover_temporary_files(tmp_path):
    cfg = SyntheticConfig(n_galaxies=12, mapping_fraction=0.5, missing_image_fraction=0.0, image_size=32, seed=0)
    images = tmp_path / "images_gz2" / "images"
    images.mkdir(parents=True)
    (images / "999999.jpg").write_bytes(b"old")
    (images / ".3.jpg.abcd.tmp").write_bytes(b"half")
    counts = synth.generate(cfg, tmp_path, workers=1, progress=False)
    assert counts["stale_files_removed"] == 2
    assert sorted(int(p.stem) for p in images.iterdir()) == list(range(1, counts["mapping_rows"] + 1))


def _pixel_stats(pop: pd.DataFrame, rows: np.ndarray, size: int = 64) -> np.ndarray:
    """Per image: colour (B-R)/(B+R) and flux of the sky-subtracted centre, and pixels clearly above the sky."""
    stats = []
    for row in rows:
        img = render.render_galaxy(pop.iloc[row].to_dict(), size, render.render_seed(3, int(row))).astype(np.float32)
        centre = img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] - np.median(img, axis=(0, 1))
        light = np.clip(centre.sum(axis=-1), 0.0, None)
        colour = ((centre[..., 2] - centre[..., 0]) * light).sum() / ((centre[..., 2] + centre[..., 0]) * light).sum()
        stats.append((colour, light.sum(), (light > 30).sum()))
    return np.array(stats)


def test_pixels_agree_with_the_votes():
    pop = population.sample_population(400, 3)
    by_flag = {f: np.flatnonzero(pop[f].to_numpy() == 1)[:25] for f in ("SPIRAL", "ELLIPTICAL", "UNCERTAIN")}
    stats = {f: _pixel_stats(pop, rows) for f, rows in by_flag.items()}
    # spirals are bluer than ellipticals (young stars in the disk, old red ellipticals)
    assert stats["SPIRAL"][:, 0].mean() > stats["ELLIPTICAL"][:, 0].mean() + 0.1
    # the galaxies the votes left uncertain are fainter and smaller on average
    confident = np.concatenate([stats["SPIRAL"], stats["ELLIPTICAL"]])
    assert stats["UNCERTAIN"][:, 1].mean() < 0.75 * confident[:, 1].mean()
    assert stats["UNCERTAIN"][:, 2].mean() < 0.75 * confident[:, 2].mean()


@pytest.mark.parametrize("chirality", [1, -1])
def test_arms_wind_the_way_the_votes_say(chirality):
    """GZ1 'clockwise' (P_CW) spirals are Z-wise: going outwards, the arm turns anticlockwise on the image."""
    pop = population.sample_population(40, 0)
    galaxy = pop[pop["morph"] == "spiral"].iloc[0].to_dict()
    galaxy.update(
        cos_i=1.0, q=1.0, arm_contrast=1.0, sb=60.0, r_e=40.0, bar=0.0, merger=False, star_density=0.0,
        neighbour_density=0.0, n_arms=2, pitch=np.radians(20.0), bulge_frac=0.1, psf_fwhm=2.0, chirality=chirality,
    )  # fmt: skip
    size = 128
    light = render.render_galaxy(galaxy, size, np.random.default_rng(0)).astype(np.float64).sum(axis=-1)
    rows, cols = np.mgrid[:size, :size] + 0.5
    dx, dy = cols - size / 2, size / 2 - rows
    radius, angle = np.hypot(dx, dy), np.arctan2(dy, dx)
    radii = np.linspace(5, 30, 12)
    phase = [np.angle((light * np.exp(-2j * angle))[np.abs(radius - r) < 1].sum()) for r in radii]
    crest_angle = -np.unwrap(phase) / 2  # the m=2 Fourier phase tracks the arms' crest
    winding = np.polyfit(np.log(radii), crest_angle, 1)[0]
    assert np.sign(winding) == chirality
    assert abs(winding) == pytest.approx(1 / np.tan(np.radians(20.0)), rel=0.25)


def test_cw_votes_follow_the_true_winding_when_arms_are_visible():
    pop = population.sample_population(20_000, 4)
    clear = pop[(pop["v_arm"] > 0.7) & (pop["P_CW"] + pop["P_ACW"] > 0.3)]
    said_cw = clear["P_CW"] > clear["P_ACW"]
    assert (said_cw == (clear["chirality"] > 0)).mean() > 0.9


def test_cli_writes_the_three_outputs(tmp_path, capsys):
    out = tmp_path / "gz"
    argv = ["--params", str(REPO / "params.yaml"), "-S", "data.synthetic.image_size=32", "synth", str(out)]
    assert cli.main([*argv, "--n-galaxies", "20", "--examples", str(tmp_path / "grid.png")]) == 0
    assert load_rgb(tmp_path / "grid.png").size[0] > 300
    assert (out / "GalaxyZoo1_DR_table2.csv").is_file() and (out / "gz2_filename_mapping.csv").is_file()
    assert len(list((out / "images_gz2" / "images").glob("*.jpg"))) > 0
    assert len(pd.read_csv(out / "GalaxyZoo1_DR_table2.csv")) == 20
    assert re.search(r"table 2 20 rows", capsys.readouterr().out)
    assert cli.main([*argv[:-1], str(tmp_path / "cat"), "--n-galaxies", "15", "--no-images"]) == 0
    assert not (tmp_path / "cat" / "images_gz2").exists()


def test_bad_settings_are_one_line_user_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="mapping_fraction"):
        synth.generate(SyntheticConfig(10, 0.0, 0.0, 32, 0), tmp_path, progress=False)
    with pytest.raises(UserError, match="image_size"):
        synth.generate(SyntheticConfig(10, 0.5, 0.0, 8, 0), tmp_path, progress=False)
    assert cli.main(["--params", str(REPO / "params.yaml"), "synth", str(tmp_path), "--n-galaxies", "0"]) == 1
    assert "n_galaxies" in capsys.readouterr().err
