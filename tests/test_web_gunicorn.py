"""The web page as README's production deployment runs it: gunicorn workers with request limits, on 127.0.0.1.

Every limit is checked on the real server: an upload over GALMORPH_MAX_UPLOAD_MB gets 413, a request line over
gunicorn's --limit-request-line gets gunicorn's 400, a PDF 415, a broken image 400, and the server keeps answering.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.http_utils import free_port
from tests.serving_utils import wait_until_answers

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
STARTUP_S = 180

# The command README.md documents under "Production deployment of the web page".
GUNICORN = ["-m", "gunicorn", "-w", "2", "--threads", "4", "--timeout", "60", "--limit-request-line", "4094"]
GUNICORN += ["--limit-request-fields", "50", "--limit-request-field_size", "8190"]


@pytest.fixture(scope="module")
def web(tiny_model, tmp_path_factory):
    """gunicorn serving galmorph.serving.web:app_from_env() with the tiny model and a 1 MB upload limit."""
    import subprocess

    from galmorph.tracking.ui import stop_process_group

    log_path = tmp_path_factory.mktemp("gunicorn") / "server.log"
    port = free_port()
    # a new store, as on a fresh machine: both workers start on it at once (tracking.store creates it once)
    store_db = tmp_path_factory.mktemp("store") / "mlflow.db"
    env = {**os.environ, "GALMORPH_MODEL": tiny_model.source, "GALMORPH_MAX_UPLOAD_MB": "1"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store_db}"
    cmd = [sys.executable, *GUNICORN, "-b", f"127.0.0.1:{port}", "galmorph.serving.web:app_from_env()"]
    with log_path.open("w") as log:
        # module scope: the per-test `spawn` fixture cannot hold it, so it is stopped here, also on failure
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, process_group=0)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_answers(proc, f"{url}/healthz", log_path, STARTUP_S)
            yield url
        finally:
            stop_process_group(proc, grace_s=20.0)


def upload(url: str, name: str, data: bytes) -> requests.Response:
    return requests.post(f"{url}/api/predict", files={"image": (name, data)}, timeout=60)


def jpeg(size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (90, 70, 50)).save(buf, "JPEG")
    return buf.getvalue()


def test_a_good_upload_is_classified(web):
    response = upload(web, "galaxy.jpg", jpeg())
    assert response.status_code == 200, response.text
    assert set(response.json()["probabilities"]) == {"spiral", "elliptical"}


@pytest.mark.parametrize(
    ("name", "data", "status"),
    [
        ("big.jpg", b"\xff\xd8" + os.urandom(2 * 2**20), 413),  # over GALMORPH_MAX_UPLOAD_MB=1
        ("paper.pdf", b"%PDF-1.4\n1 0 obj << >> endobj\n", 415),
        ("broken.jpg", jpeg()[:200], 400),
    ],
)
def test_limits_and_bad_uploads_get_a_4xx_with_a_reason(web, name, data, status):
    response = upload(web, name, data)
    assert response.status_code == status, response.text
    error = response.json().get("error")
    assert error and str(REPO) not in error and "/tmp" not in error  # a reason, never a server path
    assert requests.get(f"{web}/healthz", timeout=5).status_code == 200


def test_gunicorn_refuses_an_overlong_request_line(web):
    response = requests.get(f"{web}/?q={'x' * 5000}", timeout=10)
    assert response.status_code == 400 and "Request Line is too large" in response.text  # gunicorn's own answer
    assert upload(web, "galaxy.jpg", jpeg()).status_code == 200
