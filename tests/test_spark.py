"""Survey-scale batch: the registered pyfunc as a Spark UDF (local[2]) gives the same numbers as
`galmorph predict`, from a folder (binaryFile) and from a table of paths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from galmorph.errors import UserError
from galmorph.serving import predict
from galmorph.serving.resolve import load_model, resolve_model
from tests.serving_utils import champion_store, write_images

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


@pytest.fixture(scope="module")
def expected(store, survey):
    classifier = load_model(resolve_model(None, store), store)
    paths = predict.expand_inputs([str(survey)])
    return predict.score_files(classifier, paths, threshold=0.7, progress=False).set_index("path")


def test_folder_equals_galmorph_predict(spark, store, survey, expected, tmp_path):
    from galmorph.serving.spark import run_batch

    out = tmp_path / "scores.parquet"
    _ref, counts = run_batch(str(survey), str(out), None, store, master="local[2]", threshold=0.7, partitions=4)
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
