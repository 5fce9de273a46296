"""`galmorph batch` on catalogues: a FITS table with RA/Dec (and a row with an image path) and a CSV of positions
without a path column, cut-outs fetched on the driver from the local fake service; every input column kept and
the same numbers as `galmorph predict --catalogue`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from galmorph import cli
from galmorph.config import CutoutServiceConfig, load_params
from galmorph.data.catalogue import find_columns
from galmorph.serving.catalogue import score_catalogue
from galmorph.serving.resolve import load_model, resolve_model
from tests.conftest import REPO
from tests.fake_cutouts import FakeCutoutService
from tests.serving_utils import champion_store, galaxy_image

pytestmark = [pytest.mark.spark, pytest.mark.slow]
pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'galmorph[spark]')")


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory, _mlflow_empty_db):
    with champion_store(tmp_path_factory.mktemp("catalogue-batch"), tiny_model, _mlflow_empty_db) as cfg:
        yield cfg


@pytest.fixture(scope="module")
def spark():
    from galmorph.serving.spark import spark_session
    from tests.test_spark import _stop_gateway

    session = spark_session("local[2]")
    yield session
    session.stop()
    _stop_gateway()


@pytest.fixture
def fake():
    service = FakeCutoutService().start()
    yield service
    service.stop()


def batch(fake: FakeCutoutService, tmp_path, *argv: str) -> int:
    sets = [
        "mlflow.tracking_uri=null",
        f"cutouts.services.sdss.url={fake.url('sdss')}",
        "cutouts.services.sdss.size=64",
        f"cutouts.cache_dir={tmp_path / 'cache'}",
        "cutouts.rate_per_s=null",
    ]
    args = ["--params", str(REPO / "params.yaml"), *(a for s in sets for a in ("-S", s)), "batch", *argv]
    return cli.main([*args, "--master", "local[2]", "--threshold", "0.7"])


def test_a_fits_catalogue_of_positions_scores_as_predict_does(spark, store, fake, tmp_path, capsys):
    galaxy_image(7, 80).save(tmp_path / "own.png")
    table = Table(
        {
            "objid": np.arange(587722981736120347, 587722981736120353, dtype=np.int64),
            "RA": [150.0, 150.2, 150.4, 150.6, 150.8, 0.0],
            "DEC": [2.0, 2.5, -45.0, 3.5, 4.0, 0.0],  # row 3 off the fake footprint
            "image_path": ["", "", "", "", "", "own.png"],
            "label": ["S", "E", "S", "E", "S", "E"],  # the catalogue's own: kept, the output is pred_label
        }
    )
    source = tmp_path / "targets.fits"
    table.write(source)
    out = tmp_path / "scores.parquet"
    assert batch(fake, tmp_path, str(source), str(out)) == 0, capsys.readouterr().err
    got = pd.read_parquet(out).sort_values("objid").reset_index(drop=True)
    assert list(got.columns) == [
        "objid", "RA", "DEC", "image_path", "label", "path", "p_spiral", "p_elliptical", "pred_label", "error",
    ]  # fmt: skip
    assert got["objid"].tolist() == list(table["objid"]) and got["label"].tolist() == list(table["label"])
    assert got["error"][2].startswith("outside the survey footprint or blank") and got["path"][2] == ""
    assert np.isnan(got["p_spiral"][2]) and got["pred_label"][2] == ""
    assert (got["error"].drop(index=2) == "").all() and len(fake.requests) == 5

    cfg = load_params(REPO / "params.yaml", required=("cutouts",)).cutouts
    cfg = dataclasses.replace(
        cfg, services={"sdss": CutoutServiceConfig(fake.url("sdss"), 0.396, 64)}, cache_dir=str(tmp_path / "cache")
    )
    classifier = load_model(resolve_model(None, store), store)
    want = score_catalogue(
        classifier, table, find_columns(table, str(source)), str(source), cutouts=cfg, threshold=0.7, workers=0
    ).table
    np.testing.assert_allclose(got["p_spiral"], np.asarray(want["p_spiral"]), atol=1e-5)
    assert got["pred_label"].tolist() == [str(v) for v in want["pred_label"]]
    assert len(fake.requests) == 5  # predict found them all in the cache batch filled


def test_a_csv_of_positions_without_a_path_column(spark, store, fake, tmp_path, capsys):
    source = tmp_path / "positions.csv"
    source.write_text("name,ra,dec\na,10:00:00,+02:00:00\nb,150.5,2.5\n")
    out = tmp_path / "scores.parquet"
    assert batch(fake, tmp_path, str(source), str(out)) == 0, capsys.readouterr().err
    got = pd.read_parquet(out).sort_values("name")
    assert got.columns.tolist()[:3] == ["name", "ra", "dec"] and (got["error"] == "").all()
    assert sorted(q["ra"] for _, _, q in fake.requests) == ["150.000000", "150.500000"]
    assert batch(fake, tmp_path, str(source), str(tmp_path / "x.parquet"), "--ra-column", "RAJ") == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("galmorph batch: error:") and "RAJ" in last and "--ra-column" in last
