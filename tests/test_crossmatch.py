"""galmorph crossmatch: labels from a reference catalogue attached to positions offset by known amounts (RA
offsets scaled by cos(dec)), across RA 0/360 and near the poles, with ambiguous, unmatched and shared matches
counted; the tables in every format astropy writes, degrees or sexagesimal; bad input named in one line."""

from __future__ import annotations

import math

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table

from galmorph.cli import main as cli_main
from galmorph.data.crossmatch import crossmatch_tables, match_positions
from galmorph.data.tables import read_table, sky_coords
from galmorph.errors import UserError

ARCSEC = 1 / 3600


def offset(ra: float, dec: float, east_arcsec: float, north_arcsec: float) -> tuple[float, float]:
    """A position `east_arcsec` along RA (divided by cos(dec): RA lines converge) and `north_arcsec` in Dec."""
    return (ra + east_arcsec * ARCSEC / math.cos(math.radians(dec))) % 360, dec + north_arcsec * ARCSEC


#: reference galaxies at the equator, mid and high latitudes, both hemispheres
REFERENCE = [(10.0, 0.0), (150.0, 45.0), (250.0, -60.0), (320.0, 80.0)]
#: (east, north, expected separation) in arcsec: 0.5" north, 1.5" east, 3" east + 4" north (5")
OFFSETS = [(0.0, 0.5, 0.5), (1.5, 0.0, 1.5), (3.0, 4.0, 5.0)]


def crossmatch(mine: Table, ref: Table, radius: float = 2.0, **kw):
    return crossmatch_tables(mine, ref, radius_arcsec=radius, mine_path="mine.csv", reference_path="ref.csv", **kw)


def test_known_offsets_match_within_the_radius_only():
    ref = Table(
        {
            "ra": [r for r, _ in REFERENCE],
            "dec": [d for _, d in REFERENCE],
            "label": ["spiral", "elliptical", "spiral", "elliptical"],
        }
    )
    rows, expected = [], []
    for k, (ra, dec) in enumerate(REFERENCE):
        for east, north, sep in OFFSETS:
            rows.append((*offset(ra, dec, east, north), f"g{k}-{sep}"))
            expected.append((k, sep))
    mine = Table(rows=rows, names=("ra", "dec", "name"))
    out, report = crossmatch(mine, ref, radius=2.0)

    seps = np.array([s for _, s in expected])
    np.testing.assert_allclose(out["match_sep_arcsec"], seps, atol=1e-3)  # 5" is flat-sky: 1e-3 tolerates that
    status = np.where(seps < 2.0, "matched", "unmatched")
    assert list(out["match_status"]) == list(status)
    assert list(out["match_n"]) == [int(s < 2.0) for s in seps]
    labelled = seps < 2.0
    ref_rows = np.array([k for k, _ in expected]) + 1
    assert list(out["match_ref_row"][labelled]) == list(ref_rows[labelled])
    assert out["match_ref_row"].mask[~labelled].all() and out["label"].mask[~labelled].all()
    assert list(out["label"][labelled]) == [ref["label"][k] for k, s in expected if s < 2.0]
    # the user's ra/dec keep their names; the reference's, which clash, come with a prefix
    assert out.colnames[:3] == ["ra", "dec", "name"] and {"ref_ra", "ref_dec"} <= set(out.colnames)
    assert report["matched"] == 8 and report["unmatched"] == 4 and report["ambiguous"] == 0
    assert report["labelled"] == 8 and report["shared_references"] == 4  # 0.5" and 1.5" both take each galaxy
    assert report["separation_arcsec"]["max"] == pytest.approx(1.5, abs=1e-6)

    # a 6" radius takes the 5" offsets too: the radius is the only thing that decides
    _, wide = crossmatch(mine, ref, radius=6.0)
    assert wide["matched"] == 12 and wide["unmatched"] == 0


def test_without_the_cos_dec_correction_an_ra_offset_is_smaller_on_the_sky():
    """1.5" of RA *coordinate* at dec 80 is only 1.5 * cos(80) = 0.26" on the sky: what the offsets above avoid."""
    ref = SkyCoord([320.0], [80.0], unit="deg")
    raw = SkyCoord([320.0 + 1.5 * ARCSEC], [80.0], unit="deg")
    m = match_positions(raw, ref, 2.0)
    assert m.sep_arcsec[0] == pytest.approx(1.5 * math.cos(math.radians(80)), rel=1e-6)


@pytest.mark.parametrize(
    ("mine", "ref", "sep"),
    [
        ((359.9999, 0.0), (0.0001, 0.0), 0.72),  # across RA 0/360: 0.0002 deg, not 359.9998
        ((0.0001, -30.0), (359.9999, -30.0), 0.72 * math.cos(math.radians(30))),
        ((0.0, 89.9999), (180.0, 89.9999), 0.72),  # over the north pole: 180 deg of RA apart, 0.72" on the sky
        ((90.0, -89.9999), (270.0, -89.9999), 0.72),
        ((12.0, 90.0), (200.0, 90.0), 0.0),  # the pole itself has every RA
    ],
)
def test_ra_wrap_and_poles(mine, ref, sep):
    # decoys: the far side of the sky from the naive (RA-difference) point of view
    ref_table = Table(rows=[(*ref, "yes"), (180.0, 0.0, "decoy"), (ref[0], -ref[1] if ref[1] else 45.0, "decoy")])
    ref_table.rename_columns(["col0", "col1", "col2"], ["ra", "dec", "which"])
    out, report = crossmatch(Table(rows=[mine], names=("ra", "dec")), ref_table, radius=1.0)
    assert out["match_sep_arcsec"][0] == pytest.approx(sep, abs=1e-6)
    assert out["which"][0] == "yes" and report["matched"] == 1


def test_ambiguous_rows_are_counted_and_dropped_or_given_the_nearest():
    ra0, dec0 = 40.0, 20.0
    ref = Table(
        rows=[(*offset(ra0, dec0, 0, 0), "spiral"), (*offset(ra0, dec0, 1.0, 0), "elliptical")],
        names=("ra", "dec", "label"),
    )
    mine = Table(
        rows=[offset(ra0, dec0, 0.4, 0), offset(ra0, dec0, 0.9, 0), offset(ra0, dec0, 0, 30)],
        names=("ra", "dec"),
    )
    out, report = crossmatch(mine, ref, radius=2.0)
    assert list(out["match_status"]) == ["ambiguous", "ambiguous", "unmatched"]
    assert list(out["match_n"]) == [2, 2, 0]
    assert out["label"].mask.all()
    np.testing.assert_allclose(out["match_sep_arcsec"][:2], [0.4, 0.1], atol=1e-6)
    assert (report["ambiguous"], report["unmatched"], report["labelled"]) == (2, 1, 0)

    out, report = crossmatch(mine, ref, radius=2.0, ambiguous="nearest")
    assert list(out["label"][:2]) == ["spiral", "elliptical"] and out["label"].mask[2]
    assert list(out["match_status"]) == ["ambiguous", "ambiguous", "unmatched"]
    assert (report["ambiguous"], report["labelled"]) == (2, 2)

    # a smaller radius resolves the pair: each position then has one neighbour
    out, report = crossmatch(mine, ref, radius=0.5)
    assert list(out["match_status"]) == ["matched", "matched", "unmatched"]
    assert list(out["label"][:2]) == ["spiral", "elliptical"]


def test_sexagesimal_units_and_case_of_the_column_names():
    ref = Table({"RA": ["12:30:00.00", "12h30m10s", "187.6"], "DEC": ["+12:00:00.0", "-00:30:00", "12 00 01"]})
    ref["votes"] = [0.9, 0.2, 0.5]
    coords = sky_coords(ref, "ra", "dec", "ref.csv")  # RA/DEC found for ra/dec (GZ1 table 2 spells them so)
    np.testing.assert_allclose(coords.ra.deg, [187.5, 187.5 + 10 * 15 / 3600, 187.6])
    np.testing.assert_allclose(coords.dec.deg, [12.0, -0.5, 12 + 1 / 3600])

    mine = Table({"ra": [12.5, 12.5 + 10 / 3600], "dec": [12.0, -0.5]})
    mine["ra"].unit = u.hourangle  # a unit in the file's metadata is honoured
    out, _ = crossmatch(mine, ref, radius=1.0)
    assert list(out["votes"]) == [0.9, 0.2]
    assert list(out["match_ref_row"]) == [1, 2]
    assert {"ref_RA", "ref_DEC"} <= set(out.colnames)  # FITS ignores the case of names: RA would clash with ra


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (Table({"ra": [10.0, 11.0], "dec": [0.0, 91.0]}), "mine.csv: row 2, column dec: expected a declination"),
        (Table({"ra": ["10", "ten"], "dec": [0.0, 1.0]}), "mine.csv: row 2, column ra: expected a right ascension"),
        (Table({"ra": ["1", "1:60:00"], "dec": [0.0, 1.0]}), "mine.csv: row 2, column ra: .*got '1:60:00'"),
        (Table({"ra": ["1", "1"], "dec": ["0", "-00:00:60.0"]}), "mine.csv: row 2, column dec: .*got '-00:00:60.0'"),
        (Table({"ra": [10.0, np.nan], "dec": [0.0, 1.0]}), "mine.csv: row 2, column ra: missing value"),
        (Table({"R.A.": [10.0], "dec": [0.0]}), "mine.csv: missing column(s) ra"),
        (Table({"ra": [1.0], "dec": [0.0], "match_status": ["x"]}), "already has column(s) match_status"),
    ],
)
def test_bad_positions_are_named(table, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        crossmatch(table, Table({"ra": [1.0], "dec": [0.0]}))


def test_bad_radius():
    t = Table({"ra": [1.0], "dec": [0.0]})
    for radius in (0.0, -1.0, float("nan")):
        with pytest.raises(UserError, match="expected a positive number of arcseconds"):
            crossmatch(t, t, radius=radius)


def test_cli_reads_and_writes_every_format_and_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: crossmatch needs none
    ref = Table({"objid": [587722981742084144, 587722981742084145], "ra": [150.0, 151.0], "dec": [2.0, 2.0]})
    ref["p_spiral"] = [0.91, 0.05]
    ref.write("ref.parquet")
    mine = Table({"id": ["a", "b", "c"], "ra": [150.0 + 0.3 * ARCSEC, 151.0, 10.0], "dec": [2.0, 2.0 + ARCSEC, 0.0]})
    mine.write("mine.fits")
    mine.write("mine.vot", format="votable")

    for source, out in (
        ("mine.fits", "out.csv"),
        ("mine.vot", "out.fits"),
        ("mine.fits", "out.vot"),
        ("mine.vot", "out.parquet"),
    ):
        args = ["crossmatch", source, "ref.parquet", "--radius", "2", "--out", out, "--columns", "objid,p_spiral"]
        assert cli_main(args) == 0
        got = read_table(out)
        assert list(got["match_status"]) == ["matched", "matched", "unmatched"]
        assert list(got["objid"][:2]) == [587722981742084144, 587722981742084145]  # 18 digits, not through float
        assert got["p_spiral"][0] == pytest.approx(0.91) and "ref_ra" not in got.colnames
    assert "matched (one within the radius)" in capsys.readouterr().out
    header = fits.getheader("out.fits", 1)  # the match's settings travel with the file
    assert (header["XMRADIUS"], header["XMAMBIG"], header["XMREF"]) == (2.0, "drop", "ref.parquet")

    before = (tmp_path / "out.csv").read_bytes()
    assert cli_main(["crossmatch", "mine.fits", "ref.parquet", "--out", "out.csv"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "galmorph crossmatch: error: out.csv: already exists (pass --force to replace it)"
    assert (tmp_path / "out.csv").read_bytes() == before
    assert cli_main(["crossmatch", "mine.fits", "ref.parquet", "--out", "out.csv", "--radius", "0.1", "--force"]) == 0
    assert list(read_table("out.csv")["match_status"]) == ["unmatched", "unmatched", "unmatched"]

    assert cli_main(["crossmatch", "mine.fits", "ref.parquet", "--out", "out.txt"]) == 1
    assert "unknown table format '.txt'" in capsys.readouterr().err
    (tmp_path / "broken.fits").write_bytes(b"not a fits file at all" * 10)
    assert cli_main(["crossmatch", "broken.fits", "ref.parquet", "--out", "x.csv"]) == 1
    assert capsys.readouterr().err.startswith("galmorph crossmatch: error: broken.fits: cannot read the positions")
