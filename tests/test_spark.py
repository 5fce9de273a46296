"""Survey-scale batch: the registered pyfunc as a Spark UDF (local[2]) gives the same numbers as
`galmorph predict`, from a folder (binaryFile) and from a table of paths."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from galmorph import cli
from galmorph.errors import UserError
from galmorph.models.ood import OOD_COLUMN, UNLIKE
from galmorph.serving import predict
from galmorph.serving.resolve import load_model, resolve_model
from tests.conftest import REPO
from tests.serving_utils import champion_store, log_tiny_model_once, write_images

pytestmark = [pytest.mark.spark, pytest.mark.slow]
pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed (pip install 'galmorph[spark]')")
N_IMAGES = 200


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory, _mlflow_empty_db):
    with champion_store(tmp_path_factory.mktemp("spark"), tiny_model, _mlflow_empty_db) as cfg:
        yield cfg


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    root = tmp_path_factory.mktemp("survey")
    write_images(root / "a", N_IMAGES // 2, size=40)
    write_images(root / "b" / "deep", N_IMAGES // 2, size=40, start=N_IMAGES // 2)
    (root / "b" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "readme.txt").write_text("not an image: skipped by the glob filter")
    return root


@pytest.fixture(scope="module")
def spark():
    from galmorph.serving.spark import spark_session

    session = spark_session("local[2]")
    yield session
    session.stop()
    _stop_gateway()


def _stop_gateway() -> None:
    """session.stop() keeps the JVM that pyspark started until Python exits: stop it too (the suite's check
    that no process outlives it, tests/conftest.py)."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is None:
        return
    gateway.shutdown()
    proc = getattr(gateway, "proc", None)
    if proc is not None:
        proc.stdin.close()  # the JVM exits when its stdin closes
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    SparkContext._gateway = None
    SparkContext._jvm = None


@pytest.fixture(scope="module")
def expected(store, survey):
    classifier = load_model(resolve_model(None, store), store)
    paths = predict.expand_inputs([str(survey)])
    return predict.score_files(classifier, paths, threshold=0.7, progress=False).set_index("path")


def test_folder_equals_galmorph_predict(spark, store, survey, expected, tmp_path):
    from galmorph.serving.spark import run_batch

    out = tmp_path / "scores.parquet"
    counts = run_batch(str(survey), str(out), None, store, master="local[2]", threshold=0.7, partitions=4).counts
    got = pd.read_parquet(out).set_index("path").sort_index()
    assert list(got.columns) == ["p_spiral", "p_elliptical", "label", "error"]
    assert (got["error"] != "").sum() == 1, got["error"].iloc[0]
    assert len(got) == N_IMAGES + 1 and sum(counts.values()) == N_IMAGES + 1
    assert counts.get("unreadable") == 1 and got.loc[str(survey / "b" / "corrupt.jpg"), "error"]
    want = expected.loc[got.index]
    np.testing.assert_allclose(got["p_spiral"], want["p_spiral"], atol=1e-5)
    assert (got["label"] == want["label"]).all()
    with pytest.raises(UserError, match="already exists"):
        run_batch(str(survey), str(out), None, store, master="local[2]")


def test_a_model_with_a_detector_adds_its_ood_score(spark, survey, tmp_path_factory, _mlflow_empty_db, tmp_path):
    """The score predict gives, per row, null for the unreadable file; the verdict the same as predict's."""
    from galmorph.serving.spark import run_batch

    root = tmp_path_factory.mktemp("tiny-ood")
    (root / "mlruns").mkdir()
    shutil.copyfile(_mlflow_empty_db, root / "mlruns" / "mlflow.db")
    with champion_store(root / "store", log_tiny_model_once(root, ood=True), _mlflow_empty_db) as cfg:
        classifier = load_model(resolve_model(None, cfg), cfg)
        assert classifier.ood is not None
        paths = predict.expand_inputs([str(survey / "b")])
        want = predict.score_files(classifier, paths, progress=False).set_index("path")
        out = tmp_path / "scores.parquet"
        run_batch(str(survey / "b"), str(out), None, cfg, master="local[2]")
    got = pd.read_parquet(out).set_index("path").loc[want.index]
    assert list(got.columns) == ["p_spiral", "p_elliptical", "label", OOD_COLUMN, "error"]
    assert want["label"].isin([UNLIKE]).any() and not want["label"].eq(UNLIKE).all()  # the test can tell
    assert (got["label"] == want["label"]).all()
    np.testing.assert_allclose(got[OOD_COLUMN], want[OOD_COLUMN], rtol=1e-4, equal_nan=True)
    assert pd.isna(got.loc[str(survey / "b" / "corrupt.jpg"), OOD_COLUMN])


def test_table_of_paths_keeps_its_columns(spark, store, survey, expected, tmp_path):
    from galmorph.serving.spark import run_batch

    sample = expected.index[:50].tolist()
    table = tmp_path / "catalogue.parquet"
    pd.DataFrame({"galaxy_id": [f"g{i}" for i in range(50)], "image_path": sample}).to_parquet(table)
    out = tmp_path / "scores.parquet"
    run_batch(str(table), str(out), "models:/galmorph@champion", store, master="local[2]", threshold=0.7)
    got = pd.read_parquet(out).set_index("path").loc[sample]
    assert got["galaxy_id"].tolist() == [f"g{i}" for i in range(50)]
    np.testing.assert_allclose(got["p_spiral"], expected.loc[sample, "p_spiral"], atol=1e-5)

    with pytest.raises(UserError, match="no column 'filename'"):
        run_batch(str(table), str(tmp_path / "x.parquet"), None, store, master="local[2]", path_column="filename")
    with pytest.raises(UserError, match="has no alias @nope"):
        run_batch(str(table), str(tmp_path / "y.parquet"), "models:/galmorph@nope", store, master="local[2]")


def test_an_ordinary_catalogue_keeps_its_columns_and_paths_start_at_its_folder(
    spark, store, survey, expected, tmp_path, monkeypatch, capsys
):
    """A labelled CSV (label, path, error columns of its own) with paths relative to its folder, run from
    elsewhere: every input column is kept as it was, the outputs that share a name get `pred_` in front."""
    sample = expected.index[:20].tolist()
    catalogue = survey / "labels.csv"  # beside the images: paths relative to it, as evaluate-folder reads them
    rel = [str(Path(p).relative_to(survey)) for p in sample]
    pd.DataFrame({"filename": rel, "label": ["spiral"] * 20, "Path": ["theirs"] * 20, "error": ["x"] * 20}).to_csv(
        catalogue, index=False
    )
    monkeypatch.chdir(tmp_path)  # somewhere the relative paths do not resolve
    out = tmp_path / "scores.parquet"
    argv = ["--params", str(REPO / "params.yaml"), "-S", "mlflow.tracking_uri=null", "batch", str(catalogue)]
    assert cli.main([*argv, str(out), "--path-column", "filename", "--master", "local[2]", "--threshold", "0.7"]) == 0
    assert "label -> pred_label" in capsys.readouterr().err
    got = pd.read_parquet(out)
    assert list(got.columns) == [
        "filename", "label", "Path", "error", "pred_path", "p_spiral", "p_elliptical",
        "pred_label", "pred_error",
    ]  # fmt: skip
    assert (got["label"] == "spiral").all() and (got["error"] == "x").all() and (got["Path"] == "theirs").all()
    assert (got["pred_error"] == "").all(), got["pred_error"].iloc[0]
    got = got.set_index("pred_path").loc[sample]
    np.testing.assert_allclose(got["p_spiral"], expected.loc[sample, "p_spiral"], atol=1e-5)
    assert (got["pred_label"] == expected.loc[sample, "label"]).all()


def test_nothing_scored_is_an_error(spark, store, tmp_path, capsys):
    (tmp_path / "gone.csv").write_text("image_path\nnot/here.jpg\n/nor/here.png\n")
    out = tmp_path / "scores.parquet"
    argv = ["--params", str(REPO / "params.yaml"), "-S", "mlflow.tracking_uri=null", "batch"]
    assert cli.main([*argv, str(tmp_path / "gone.csv"), str(out), "--master", "local[2]"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "none of the 2 images could be scored" in err and err.startswith("galmorph batch: error:")
    assert len(pd.read_parquet(out)) == 2  # the errors are written


def test_overwrite_replaces_only_a_previous_output(spark, store, survey, tmp_path):
    from galmorph.serving.spark import run_batch

    table = tmp_path / "one.parquet"
    pd.DataFrame({"image_path": [str(next(iter(sorted(survey.rglob("*.jpg")))))]}).to_parquet(table)
    mine = tmp_path / "mine"  # a folder of the user's: never replaced
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "part-0000.parquet").write_text("looks like Spark's, is not")
    with pytest.raises(UserError, match=r"mine: exists and is not a previous `galmorph batch` output \(thesis.tex\)"):
        run_batch(str(table), str(mine), None, store, master="local[2]", overwrite=True)
    assert (mine / "thesis.tex").read_text() == "years of work"
    afile = tmp_path / "notes.parquet"
    afile.write_text("a file")
    with pytest.raises(UserError, match="not a previous `galmorph batch` output"):
        run_batch(str(table), str(afile), None, store, master="local[2]", overwrite=True)

    out = tmp_path / "scores.parquet"
    assert run_batch(str(table), str(out), None, store, master="local[2]").counts
    first = sorted(p.name for p in out.iterdir())
    assert "_SUCCESS" in first
    assert run_batch(str(survey), str(out), None, store, master="local[2]", overwrite=True).counts
    assert len(pd.read_parquet(out)) == N_IMAGES + 1  # the new output, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "notes.parquet", "one.parquet", "scores.parquet"]


def test_fits_files_are_read_with_the_hdu_and_the_stretch_of_params(spark, store, tmp_path, capsys):
    """`batch --hdu SCI` on a folder of FITS files (one band, cubes, RICE tiles): the numbers `galmorph predict`
    gives with the same HDU; the model reads them with model_config fits from params.yaml."""
    from galmorph.config import FitsConfig
    from tests.test_fits import fits_bytes, galaxy_bands

    folder = tmp_path / "fits"
    folder.mkdir()
    decoy = np.eye(40, dtype=np.float32)  # the primary HDU: what is read without --hdu
    for i in range(4):
        sci = galaxy_bands(3 if i % 2 else 1, 40, seed=i, spiral=i > 1)
        (folder / f"g{i}.fits").write_bytes(fits_bytes(decoy, sci, names=("SCI",)))
    rice = (galaxy_bands(1, 40, seed=9) * 1000).astype(np.int32)
    (folder / "g4.FITS.fz").write_bytes(fits_bytes(decoy, rice, names=("SCI",), compress="RICE_1"))
    (folder / "broken.fits").write_bytes(b"SIMPLE  =                    T" + bytes(3000))
    out = tmp_path / "scores.parquet"
    argv = ["--params", str(REPO / "params.yaml"), "-S", "mlflow.tracking_uri=null", "batch", str(folder), str(out)]
    assert cli.main([*argv, "--master", "local[2]", "--hdu", "SCI"]) == 0, capsys.readouterr().err
    got = pd.read_parquet(out).set_index("path").sort_index()
    assert len(got) == 6 and "not FITS header text" in got.loc[str(folder / "broken.fits"), "error"]
    classifier = load_model(resolve_model(None, store), store)
    paths = [p for p in predict.expand_inputs([str(folder)]) if not p.endswith("broken.fits")]
    want = predict.score_files(classifier, paths, workers=0, progress=False, fits=FitsConfig(hdu="SCI"))
    want = want.set_index("path").loc[got.index.drop(str(folder / "broken.fits"))]
    np.testing.assert_allclose(got.loc[want.index, "p_spiral"], want["p_spiral"], atol=1e-5)
    decoys = predict.score_files(classifier, paths, workers=0, progress=False).set_index("path").loc[want.index]
    assert not np.allclose(decoys["p_spiral"], want["p_spiral"], atol=1e-6)  # --hdu reached the executors
