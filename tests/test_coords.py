"""The coords data source against the local fake cut-out services (127.0.0.1 only): a 20-row catalogue of
positions and votes -> fetch -> join -> select -> split through the real stage functions, the rows without a
usable cut-out counted by kind and listed, a re-run answered from the cache, and bad catalogues refused before
the first request."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from galmorph.cli import resolve_params
from galmorph.config import CutoutServiceConfig, Params
from galmorph.data.crossmatch import crossmatch_tables
from galmorph.data.fetch import fetch_data
from galmorph.data.images import load_rgb
from galmorph.data.sources.rawdir import read_source
from galmorph.data.tables import sky_coords
from galmorph.errors import UserError
from galmorph.stages import fetch as fetch_stage
from galmorph.stages import join as join_stage
from galmorph.stages import select as select_stage
from galmorph.stages import split as split_stage
from tests.conftest import REPO
from tests.fake_cutouts import EXAMPLE_COLUMNS, FakeCutoutService, example_rows, write_example_catalogue

N = 20
OFF_FOOTPRINT, NO_SIZE, SERVER_ERROR, NOT_AN_IMAGE = 19, 20, 4, 7
"""1-based rows: the example's Dec -45 row and its -9999 radius; two more the test makes the service fail."""


@pytest.fixture
def fake():
    service = FakeCutoutService().start()
    yield service
    service.stop()


def catalogue(folder: Path, *, bad_vote_row: int | None = None) -> Path:
    """tests.fake_cutouts' 20-row example (sexagesimal RA/Dec, 18-digit objid, petroR90_r with SDSS's -9999)
    plus Galaxy Zoo-style votes: spirals and ellipticals in turn, one uncertain, and NVOTE."""
    folder.mkdir(parents=True, exist_ok=True)
    table = Table.read(write_example_catalogue(folder / "example.csv", N), format="ascii.csv")
    spiral = np.array([0.9 if i % 2 == 0 else 0.05 for i in range(N)])
    spiral[9] = 0.5  # row 10: the votes settle nothing (uncertain)
    table["P_CS"] = spiral
    table["P_EL"] = np.round(1 - spiral - 0.03, 2)
    table["NVOTE"] = np.arange(N) + 10
    if bad_vote_row is not None:
        table["P_CS"] = table["P_CS"].astype(str)
        table["P_CS"][bad_vote_row - 1] = "1.3"
    path = folder / "targets.csv"
    table.write(path, format="ascii.csv", overwrite=True)
    return path


def coords_params(params: Params, fake: FakeCutoutService, tmp: Path, table: Path, **coords) -> Params:
    """The repository's params.yaml with data.source coords over `table`, the fake SDSS service (64 px) and
    every output under `tmp`."""
    settings = {
        "path": str(table),
        "ra_column": "ra",
        "dec_column": "dec",
        "id_column": "objid",
        "size_column": "petroR90_r",
        "service": "sdss",
        "max_rows": None,
        "label_column": None,
        "vote_columns": {"spiral": "P_CS", "elliptical": "P_EL"},
        "vote_threshold": 0.8,
        "count_columns": None,
        "total_votes_column": "NVOTE",
        **coords,
    }
    data = dataclasses.replace(
        params.data,
        source="coords",
        raw_dir=str(tmp / "raw"),
        coords=dataclasses.replace(params.data.coords, **settings),
    )
    services = {"sdss": CutoutServiceConfig(fake.url("sdss"), 0.396, 64)}
    cutouts = dataclasses.replace(
        params.cutouts,
        services=services,
        service="sdss",
        cache_dir=str(tmp / "cache"),
        rate_per_s=None,
        retries=1,
        backoff_s=0.001,
        workers=4,
    )
    out = tmp / "out"
    return dataclasses.replace(
        params,
        data=data,
        cutouts=cutouts,
        join=dataclasses.replace(
            params.join,
            out=str(out / "joined.parquet"),
            uncertain_out=str(out / "uncertain.parquet"),
            report=str(out / "join.json"),
        ),
        select=dataclasses.replace(
            params.select,
            verify="decode",
            workers=0,
            class_folders=None,
            out=str(out / "manifest.parquet"),
            dropped=str(out / "dropped.csv"),
            report=str(out / "select.json"),
        ),
        split=dataclasses.replace(params.split, out=str(out / "splits.parquet"), report=str(out / "split.json")),
    )


def failing(fake: FakeCutoutService, row: int, how: str) -> None:
    """Make the fake service fail the example's `row` (1-based): a 500 every time, or an HTML page."""
    example = Table(rows=example_rows(N), names=EXAMPLE_COLUMNS)
    ra = round(float(sky_coords(example, "ra", "dec", "example").ra.deg[row - 1]), 6)
    if how == "500":
        fake.fail[ra] = [500] * 50
    else:
        fake.html.add(ra)


def test_catalogue_to_splits_through_the_stages(params, fake, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    failing(fake, SERVER_ERROR, "500")
    failing(fake, NOT_AN_IMAGE, "html")
    p = coords_params(params, fake, tmp_path, catalogue(tmp_path / "external"))
    no_args = argparse.Namespace(force=False)

    fetch_stage.main(p, no_args)
    printed = capsys.readouterr().out
    assert "16 of 20 rows" in printed and "4 without" in printed
    source = read_source(p.data.raw_dir)
    assert source["kind"] == "manifest" and source["source"] == "coords"
    counts = source["cutouts"]
    assert (counts["rows"], counts["with_image"], counts["failed"], counts["images"]) == (20, 16, 4, 16)
    assert counts["unlabelled_not_fetched"] == 0  # row 10's votes leave it uncertain: evaluate scores it
    assert counts["failed_by_kind"] == {
        "blank or off the footprint": 1,
        "no usable position or size": 1,
        "not an image": 1,
        "request failed": 1,
    }
    # 19 positions asked (row 20 has no size); the 500 one twice (retries: 1)
    assert counts["requested"] == 19 and len(fake.requests) == 20
    failed = pd.read_csv(tmp_path / "raw" / "cutouts_failed.csv", dtype={"id": str})
    assert list(failed["catalogue_row"]) == [SERVER_ERROR, NOT_AN_IMAGE, OFF_FOOTPRINT, NO_SIZE]
    assert failed["id"].iat[0] == str(587722981736120347 + SERVER_ERROR - 1)  # all 18 digits
    assert "petroR90_r" in failed["error"].iat[3] and "HTTP 500" in failed["error"].iat[0]

    images = sorted((tmp_path / "raw" / "cutouts").iterdir())
    assert len(images) == 16 and all(load_rgb(f).size == (64, 64) for f in images)
    cached = {f.name: f for f in (tmp_path / "cache").rglob("*.jpg")}
    assert all(f.read_bytes() == cached[f.name].read_bytes() for f in images)  # the cache's file, in raw_dir

    join_stage.main(p, no_args)
    joined = pd.read_parquet(p.join.out)
    report = json.loads(Path(p.join.report).read_text())
    assert report["source"] == "coords" and report["cutouts"]["failed"] == 4
    assert report["rows_read"] == {"manifest": 16} and report["uncertain"] == 1  # row 10
    assert len(joined) == 15 and set(joined["label"]) == {"spiral", "elliptical"}
    assert all(path.startswith("raw/cutouts/") for path in joined["image_path"])
    assert str(587722981736120347) in set(joined["galaxy_id"])
    first = joined.set_index("galaxy_id").loc[str(587722981736120347)]
    assert first["count_spiral"] == pytest.approx(0.9 * 10)  # fractions x NVOTE, for train.loss dirichlet

    select_stage.main(p, no_args)
    selected = json.loads(Path(p.select.report).read_text())
    assert selected["rows_in"] == 15 and selected["kept"] == 15

    split_stage.main(p, no_args)
    splits = pd.read_parquet(p.split.out)
    assert len(splits) == 15 and set(splits["split"]) == {"train", "val", "test"}


def test_a_rerun_is_answered_by_the_cache_and_follows_the_catalogue(params, fake, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    failing(fake, SERVER_ERROR, "500")
    path = catalogue(tmp_path / "external")
    p = coords_params(params, fake, tmp_path, path)
    fetch_data(p.data, cutouts=p.cutouts, progress=False)
    images = {f.name: f.stat().st_ino for f in (tmp_path / "raw" / "cutouts").iterdir()}
    before = len(fake.requests)

    source, removed = fetch_data(p.data, cutouts=p.cutouts, progress=False)
    # only the answer that was not an image (the 500, never cached) is asked again, retries included
    assert source["cutouts"]["requested"] == 1 and len(fake.requests) - before == 2 and removed == []
    assert {f.name: f.stat().st_ino for f in (tmp_path / "raw" / "cutouts").iterdir()} == images

    # fewer rows: their cut-outs leave raw_dir (DVC versions the current set only), still without a request
    before = len(fake.requests)
    fewer = dataclasses.replace(p.data, coords=dataclasses.replace(p.data.coords, max_rows=10))
    source, _ = fetch_data(fewer, cutouts=p.cutouts, progress=False)
    assert len(list((tmp_path / "raw" / "cutouts").iterdir())) == 9 == source["cutouts"]["with_image"]
    assert len(fake.requests) - before == 2  # the 500 row again


def test_a_bad_catalogue_is_refused_before_any_request(params, fake, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = coords_params(params, fake, tmp_path, catalogue(tmp_path / "external"))
    fetch_data(good.data, cutouts=good.cutouts, progress=False)
    before = len(fake.requests)
    bad = catalogue(tmp_path / "bad", bad_vote_row=5)
    cases = [
        ({"path": str(bad)}, rf"{bad}: row 5, column P_CS: expected a vote fraction in \[0, 1\], got '1.3'"),
        ({"vote_columns": {"spiral": "P_CS_DEBIASED", "elliptical": "P_EL"}}, "missing column.*P_CS_DEBIASED"),
        ({"ra_column": "RAJ2000"}, r"missing column\(s\) RAJ2000"),
        ({"path": str(tmp_path / "raw" / "coords.csv")}, "is inside data.raw_dir"),
        ({"service": "hubble"}, "cut-out service 'hubble': not in params.yaml cutouts.services"),
        ({"vote_columns": None}, "data.coords: set label_column or vote_columns"),
        ({"path": str(tmp_path / "nothing.fits")}, "nothing.fits: data.coords.path catalogue not found"),
    ]
    for changes, message in cases:
        p = coords_params(params, fake, tmp_path, Path(good.data.coords.path), **changes)
        with pytest.raises(UserError, match=message):
            fetch_data(p.data, cutouts=p.cutouts, progress=False)
    assert len(fake.requests) == before
    assert read_source(good.data.raw_dir)["cutouts"]["with_image"] == 18  # the last good fetch still stands


def test_any_table_format_and_a_label_column(params, fake, tmp_path, monkeypatch):
    """A FITS catalogue in degrees with a text label column (no size: the service's own pixel scale)."""
    monkeypatch.chdir(tmp_path)
    table = Table(
        {
            "RA": [150.0, 150.01, 150.02, 150.03],
            "DEC": [2.0, 2.0, -50.0, 2.0],
            "class": ["S", "E", "S", "merger"],
        }
    )
    table.write(tmp_path / "gals.fits")
    p = coords_params(
        params,
        fake,
        tmp_path,
        tmp_path / "gals.fits",
        ra_column="ra",  # found as RA
        dec_column="dec",
        id_column=None,
        size_column=None,
        vote_columns=None,
        total_votes_column=None,
        label_column="class",
        label_map={"S": "spiral", "E": "elliptical"},
    )
    source, _ = fetch_data(p.data, cutouts=p.cutouts, progress=False)
    assert source["id_column"] == "catalogue_row" and source["label_column"] == "class"
    assert source["cutouts"]["failed_by_kind"] == {"blank or off the footprint": 1}
    # the merger's label is not in label_map: no request for its image, and join counts it as for a manifest
    assert source["cutouts"]["unlabelled_not_fetched"] == 1 and len(fake.requests) == 3
    assert {q["scale"] for _, _, q in fake.requests} == {"0.396"}
    join_stage.main(p, argparse.Namespace())
    report = json.loads(Path(p.join.report).read_text())
    assert report["classes"] == {"spiral": 1, "elliptical": 1} and report["dropped_labels"] == {"merger": 1}


def test_a_crossmatched_table_trains_as_coords(params, fake, tmp_path, monkeypatch):
    """galmorph crossmatch's output is a coords catalogue: unmatched rows (no votes) are never fetched, and join
    counts them as missing votes."""
    monkeypatch.chdir(tmp_path)
    reference = Table.read(catalogue(tmp_path / "external"), format="ascii.csv")  # sexagesimal RA/Dec, votes
    ref = sky_coords(reference, "ra", "dec", "ref")
    mine = Table(
        {
            "name": ["a", "b", "c", "d", "far"],
            "RA": [*(ref.ra.deg[:4] + 0.5 / 3600), 200.0],  # 0.5" of RA coordinate: under 0.5" on the sky
            "DEC": [*ref.dec.deg[:4], 10.0],
        }
    )
    labelled, report = crossmatch_tables(
        mine,
        reference,
        radius_arcsec=2.0,
        mine_path="mine",
        reference_path="ref",
        ra_column="RA",
        dec_column="DEC",
        ref_ra_column="ra",
        ref_dec_column="dec",
        columns=["P_CS", "P_EL", "NVOTE"],
    )
    assert (report["matched"], report["unmatched"]) == (4, 1)
    labelled.write(tmp_path / "external" / "labelled.parquet")
    p = coords_params(
        params, fake, tmp_path, tmp_path / "external" / "labelled.parquet", id_column="name", size_column=None
    )
    source, _ = fetch_data(p.data, cutouts=p.cutouts, progress=False)
    assert source["cutouts"]["unlabelled_not_fetched"] == 1 and len(fake.requests) == 4
    join_stage.main(p, argparse.Namespace())
    joined = json.loads(Path(p.join.report).read_text())
    assert joined["missing_votes"] == 1 and joined["classes"] == {"spiral": 2, "elliptical": 2}


def test_the_readme_commands_name_valid_parameters(monkeypatch):
    """The `dvc exp run -S ...` lines of README's coords section set parameters that exist, to valid values."""
    text = (REPO / "README.md").read_text()
    section = text.split("### A training set from a catalogue of positions", 1)[1].split("\n### ", 1)[0]
    commands = [line for line in section.splitlines() if line.startswith("dvc exp run")]
    assert len(commands) == 2
    monkeypatch.chdir(REPO)
    for line in commands:
        args = shlex.split(line)
        sets = [a for flag, a in zip(args, args[1:], strict=False) if flag == "-S"]
        p = resolve_params(None, sets, ("data",))
        assert p.data.source == "coords"
