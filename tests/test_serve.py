"""`galmorph export` (a model file as an MLflow model folder) and `galmorph serve` (the REST endpoint on the
project's store, a model file served as it is)."""

from __future__ import annotations

import base64
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests

from galmorph import cli
from galmorph.models import resnet
from galmorph.models.inference import GalaxyClassifier
from tests.conftest import REPO
from tests.http_utils import free_port
from tests.serving_utils import TINY_MODEL, TINY_PREPROCESS, galaxy_image, tiny_network, wait_until_answers


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("served") / "model.pt"
    resnet.save_model(path, tiny_network(), TINY_MODEL, TINY_PREPROCESS, temperature=1.5)
    return path


@pytest.fixture(scope="module")
def image_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "g.jpg"
    galaxy_image(3, 96).save(path)
    return path.read_bytes()


def test_export_writes_the_pyfunc_that_scores_as_the_file_does(model_file, image_bytes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: export needs none
    out = tmp_path / "exported"
    assert cli.main(["export", str(model_file), str(out)]) == 0
    assert (out / "MLmodel").is_file() and not (tmp_path / "mlflow.db").exists()
    pyfunc = mlflow.pyfunc.load_model(str(out))
    got = pyfunc.predict(pd.DataFrame({"image": [base64.b64encode(image_bytes).decode()]}))
    direct = GalaxyClassifier.from_artifacts(str(model_file), device="cpu").predict(
        pd.DataFrame({"image": [image_bytes]})
    )
    np.testing.assert_allclose(got["p_spiral"], direct["p_spiral"], atol=1e-6)

    capsys.readouterr()
    assert cli.main(["export", str(model_file), str(out)]) == 1  # never replaced without --force
    assert "already exists (pass --force" in capsys.readouterr().err
    assert cli.main(["export", str(model_file), str(out), "--force"]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert cli.main(["export", str(model_file), str(mine), "--force"]) == 1  # not an exported model: refused
    assert (mine / "notes.txt").read_text() == "keep"
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert cli.main(["export", str(tmp_path / "junk.pt"), str(tmp_path / "x")]) == 1
    assert "not a galmorph model file" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))


@pytest.mark.slow
def test_serve_a_model_file_on_the_projects_store_and_stop_it(spawn, model_file, image_bytes, tmp_path):
    """`galmorph serve --model model.pt` answers REST requests (exported on the fly), leaves no mlflow.db where
    it ran, and SIGTERM stops mlflow's server and its workers."""
    port = free_port()
    log = tmp_path / "serve.log"
    store = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    argv = [sys.executable, "-m", "galmorph.cli", "--params", str(REPO / "params.yaml")]
    argv += ["-S", f"mlflow.tracking_uri={store}", "serve", "--model", str(model_file), "--port", str(port)]
    with log.open("w") as out:
        proc = spawn(argv, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_answers(proc, f"{url}/ping", log)
    body = {"dataframe_records": [{"image": base64.b64encode(image_bytes).decode()}, {"image": "/etc/passwd"}]}
    answer = requests.post(f"{url}/invocations", json=body, timeout=60).json()["predictions"]
    assert answer[0]["p_spiral"] + answer[0]["p_elliptical"] == pytest.approx(1.0)
    assert answer[1]["p_spiral"] is None and "/etc/passwd" not in answer[1]["label"]
    proc.terminate()
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert "REST server stopped (SIGTERM)" in log.read_text()
    assert not (tmp_path / "mlflow.db").exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/ping", timeout=2)
