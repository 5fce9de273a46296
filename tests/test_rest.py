"""REST: `mlflow models serve -m models:/galmorph@champion --env-manager local` serves the pyfunc.

Starts the real server on 127.0.0.1 (a free port) with an image root (GALMORPH_IMAGE_ROOT), posts a JPEG as
base64 and as a file: path under the root, then hostile rows (server paths, bombs, PDFs: per-row errors that
name no server path, null probabilities) and malformed bodies (a 4xx); the server keeps answering.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.http_utils import free_port
from tests.serving_utils import champion_store, wait_until_answers

pytestmark = pytest.mark.slow
STARTUP_S = 240


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory, _mlflow_empty_db):
    root = tmp_path_factory.mktemp("rest")
    with champion_store(root, tiny_model, _mlflow_empty_db) as cfg:
        port = free_port()
        bin_dir = str(Path(sys.executable).parent)  # mlflow starts `uvicorn` from PATH
        env = {**os.environ, "MLFLOW_TRACKING_URI": cfg.tracking_uri, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
        env["GALMORPH_IMAGE_ROOT"] = str(tiny_model.images[0].parent)  # file: rows are read only under it
        log = (root / "server.log").open("w")
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/galmorph@champion"]
        cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
        # its own process group: mlflow runs uvicorn as a child, and both must go at the end
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_answers(proc, f"{url}/ping", root / "server.log", STARTUP_S)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            log.close()


def invoke(url: str, body) -> requests.Response:
    kwargs = {"data": body} if isinstance(body, str | bytes) else {"json": body}
    return requests.post(f"{url}/invocations", headers={"Content-Type": "application/json"}, timeout=60, **kwargs)


def test_dataframe_split_with_base64_and_params(server, tiny_model):
    b64 = base64.b64encode(tiny_model.images[0].read_bytes()).decode("ascii")
    response = invoke(
        server,
        {
            "dataframe_split": {"columns": ["image"], "data": [[b64], ["bm90IGFuIGltYWdl"]]},
            "params": {"threshold": 0.0},
        },
    )
    assert response.status_code == 200, response.text
    first, second = response.json()["predictions"]
    assert abs(first["p_spiral"] + first["p_elliptical"] - 1) < 1e-6
    assert first["label"] in ("spiral", "elliptical")
    assert second["label"].startswith("error: ")  # a bad row is reported, the others still scored


def test_dataframe_records_with_paths_and_uncertain(server, tiny_model):
    records = [{"image": f"file:{p.name}"} for p in tiny_model.images[:2]] + [{"image": f"file:{tiny_model.images[2]}"}]
    response = invoke(server, {"dataframe_records": records, "params": {"threshold": 1.0, "tta": True}})
    assert response.status_code == 200, response.text
    assert [r["label"] for r in response.json()["predictions"]] == ["uncertain"] * 3


def strict_json(text: str):
    """As a browser parses: NaN is not JSON."""

    def refuse(constant):
        raise ValueError(f"{constant} in the response: not JSON")

    return json.loads(text, parse_constant=refuse)


def test_hostile_rows_get_errors_that_reveal_nothing(server, tiny_model):
    from tests.test_images import PDF, png_bomb

    good = base64.b64encode(tiny_model.images[0].read_bytes()).decode("ascii")
    rows = ["/etc/passwd", "file:/etc/passwd", "file:../../../../../../etc/passwd", "file:/proc/self/environ"]
    rows += ["file:no_such.jpg", base64.b64encode(PDF).decode(), base64.b64encode(png_bomb(6000, 6000, 8)).decode()]
    response = invoke(server, {"dataframe_split": {"columns": ["image"], "data": [[r] for r in [good, *rows]]}})
    assert response.status_code == 200, response.text
    first, *bad = strict_json(response.text)["predictions"]
    assert first["label"] in ("spiral", "elliptical")
    for row in bad:
        assert row["label"].startswith("error: ") and row["p_spiral"] is None and row["p_elliptical"] is None
        assert "passwd" not in row["label"] and "environ" not in row["label"] and "Errno" not in row["label"]
    refusal = "error: no readable image file at that path under the server's image root"
    assert [r["label"] for r in bad[1:5]] == [refusal] * 4  # the same words whether the file exists or not
    assert bad[5]["label"].startswith("error: a PDF document, not an image; accepted: JPEG")
    assert bad[6]["label"] == "error: 6000x6000 pixels (36.0 Mpx), over the 25 Mpx limit: send a smaller cut-out"
    over = invoke(server, {"dataframe_split": {"columns": ["image"], "data": [[good]] * 257}})
    assert {r["label"] for r in strict_json(over.text)["predictions"]} == {
        "error: the request has 257 images, over the limit of 256: split it"
    }


@pytest.mark.parametrize(
    "body",
    [
        "this is not JSON",
        {"no_known_key": [1, 2]},
        {"dataframe_split": {"columns": ["image"], "data": "not rows"}},
        {"dataframe_records": [{"image": "x"}], "params": {"threshold": "high"}},
    ],
)
def test_malformed_bodies_get_4xx_and_the_server_stays_up(server, tiny_model, body):
    response = invoke(server, body)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert requests.get(f"{server}/ping", timeout=5).status_code == 200
    ok = invoke(server, {"dataframe_records": [{"image": f"file:{tiny_model.images[1].name}"}]})
    assert ok.status_code == 200


def test_a_base64_fits_row_is_scored_as_the_png_it_decodes_to(server):
    """A FITS file (a 3-band cube: Lupton colour) sent as base64 through the real server, beside the PNG the
    loader makes of it: the same probabilities; a FITS header declaring 9000x9000 pixels gets its reason."""
    import io

    from galmorph.data.images import load_rgb
    from tests.test_fits import fits_bytes, fits_header_only, galaxy_bands

    data = fits_bytes(galaxy_bands(3, 64, seed=3, spiral=True))
    png = io.BytesIO()
    load_rgb(data).save(png, "PNG")
    rows = [[base64.b64encode(b).decode("ascii")] for b in (data, png.getvalue(), fits_header_only(9000, 9000))]
    response = invoke(server, {"dataframe_split": {"columns": ["image"], "data": rows}})
    assert response.status_code == 200, response.text
    fits_row, png_row, bomb = response.json()["predictions"]
    assert abs(fits_row["p_spiral"] - png_row["p_spiral"]) < 1e-6 and fits_row["label"] == png_row["label"]
    assert bomb["label"] == "error: 9000x9000 pixels (81.0 Mpx), over the 25 Mpx limit: send a smaller cut-out"
