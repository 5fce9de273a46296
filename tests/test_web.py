"""The web page: uploads through Flask's test client (fast), then a real headless chromium (marker browser)."""

from __future__ import annotations

import argparse
import dataclasses
import html
import io
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from werkzeug.serving import make_server

from galmorph.commands import web as web_command
from galmorph.config import ServeConfig
from galmorph.data.images import load_rgb
from galmorph.errors import UserError
from galmorph.serving import web
from tests.conftest import REPO
from tests.serving_utils import champion_store, galaxy_image
from tests.test_fits import fits_bytes, fits_header_only, galaxy_bands
from tests.test_images import EPS, FITS_GARBAGE, PDF, png_bomb

LIMIT_MB = 0.25


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory, _mlflow_empty_db):
    with champion_store(tmp_path_factory.mktemp("web"), tiny_model, _mlflow_empty_db) as cfg:
        yield cfg


@pytest.fixture(scope="module")
def app(store):
    app, ref = web.build(None, store, threshold=0.7, max_upload_mb=LIMIT_MB)
    assert (ref.name, ref.version, ref.alias) == ("galmorph", "1", "champion")
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def jpeg_bytes(seed: int = 0, size: int = 96, mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    galaxy_image(seed, size, mode).save(buf, format=fmt)
    return buf.getvalue()


def upload(client, data: bytes, name: str = "galaxy.jpg", url: str = "/", **form):
    return client.post(url, data={"image": (io.BytesIO(data), name), **form}, content_type="multipart/form-data")


def test_page_names_the_model(client):
    page = client.get("/").get_data(as_text=True)
    assert "galmorph" in page and "version <b>1</b>" in page and "@champion" in page
    assert 'type="file"' in page


@pytest.mark.parametrize(("mode", "fmt"), [("RGB", "JPEG"), ("RGBA", "PNG"), ("L", "PNG")])
def test_upload_shows_probabilities_and_verdict(client, mode, fmt):
    response = upload(client, jpeg_bytes(mode=mode, fmt=fmt), name=f"g.{fmt.lower()}")
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'id="verdict"' in page and 'id="p-spiral"' in page and 'id="p-elliptical"' in page
    assert "data:image/jpeg;base64," in page  # the thumbnail of what was scored


def test_api_returns_json_that_sums_to_one(client):
    body = upload(client, jpeg_bytes(), url="/api/predict", tta="on").get_json()
    assert set(body["probabilities"]) == {"spiral", "elliptical"}
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-6
    assert body["verdict"] in ("spiral", "elliptical", "uncertain")
    assert body["model"] == "galmorph v1 (@champion)"


def test_bad_uploads_get_a_message_and_the_server_carries_on(client):
    response = upload(client, b"this is not an image", name="notes.txt")
    page = response.get_data(as_text=True)
    assert response.status_code == 415
    assert "notes.txt: plain text, not an image; accepted: JPEG, PNG, TIFF, WEBP, BMP, GIF or FITS" in page
    response = upload(client, b"", name="empty.jpg")
    assert response.status_code == 400 and "the file is empty" in response.get_data(as_text=True)
    response = client.post("/", data={}, content_type="multipart/form-data")
    assert response.status_code == 400 and "choose an image file" in response.get_data(as_text=True)
    huge = b"\xff\xd8" + os.urandom(int(LIMIT_MB * 2**20) + 1000)
    response = upload(client, huge, name="huge.jpg")
    assert response.status_code == 413 and f"{LIMIT_MB:g} MB limit" in response.get_data(as_text=True)
    assert upload(client, huge, url="/api/predict").get_json()["error"].startswith("the file is larger")
    assert upload(client, jpeg_bytes()).status_code == 200
    assert client.get("/healthz").get_json()["status"] == "ok"


def _jpeg_zero_tail() -> bytes:
    data = jpeg_bytes()
    return data[: len(data) // 2] + bytes(len(data) - len(data) // 2)


def _nan_tiff() -> bytes:
    arr = np.ones((32, 32), dtype=np.float32)
    arr[3, 4] = np.nan
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "TIFF")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "status", "message"),
    [
        ("paper.pdf", PDF, 415, "paper.pdf: a PDF document, not an image; accepted: JPEG, PNG, TIFF, WEBP, BMP, GIF"),
        ("figure.eps", EPS, 415, "figure.eps: a PostScript/EPS file, not an accepted image format; accepted: JPEG"),
        ("fake.fits", FITS_GARBAGE, 400, "fake.fits: starts like a FITS file but its header is not FITS header text"),
        ("bomb.fits", fits_header_only(6000, 6000), 413, "bomb.fits: 6000x6000 pixels (36.0 Mpx), over the 25 Mpx"),
        ("bomb.png", png_bomb(6000, 6000, 8), 413, "bomb.png: 6000x6000 pixels (36.0 Mpx), over the 25 Mpx limit"),
        ("cut.jpg", _jpeg_zero_tail(), 400, "cut.jpg: the image data stops early"),
        ("nan.tif", _nan_tiff(), 400, "nan.tif: 1 of 1024 pixels are NaN or infinite"),
    ],
)
def test_hostile_and_broken_uploads_get_a_4xx_with_a_reason(client, monkeypatch, name, data, status, message):
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: pytest.fail("Ghostscript was started"))
    body = upload(client, data, name=name, url="/api/predict")
    assert body.status_code == status and body.get_json()["error"].startswith(message), body.get_json()
    assert "probabilities" not in body.get_json()
    page = upload(client, data, name=name)
    assert page.status_code == status and message in html.unescape(page.get_data(as_text=True))
    assert upload(client, jpeg_bytes(), url="/api/predict").status_code == 200


@pytest.mark.parametrize("fmt", ["TIFF", "WEBP", "BMP", "GIF"])
def test_every_accepted_format_is_scored(client, fmt):
    response = upload(client, jpeg_bytes(fmt=fmt), name=f"g.{fmt.lower()}", url="/api/predict")
    assert response.status_code == 200 and response.get_json()["verdict"] in ("spiral", "elliptical", "uncertain")


def test_a_fits_upload_is_scored_as_the_png_it_decodes_to(client):
    """One band (grey) and a 3-band cube (colour): scored, with a thumbnail, and the same numbers as the PNG
    of what the loader made of them."""
    for data in (fits_bytes(galaxy_bands(1)), fits_bytes(galaxy_bands(3))):
        body = upload(client, data, name="cut.fits", url="/api/predict").get_json()
        assert body["verdict"] in ("spiral", "elliptical", "uncertain"), body
        png = io.BytesIO()
        load_rgb(data).save(png, "PNG")
        as_png = upload(client, png.getvalue(), name="cut.png", url="/api/predict").get_json()
        assert body["probabilities"] == pytest.approx(as_png["probabilities"], abs=1e-6)
        page = upload(client, data, name="cut.fits")
        assert page.status_code == 200 and "data:image/jpeg;base64," in page.get_data(as_text=True)
    assert ".fits" in client.get("/").get_data(as_text=True)  # the file chooser offers FITS files


def test_each_upload_is_decoded_once(client, monkeypatch):
    """The page scores the image and shows its thumbnail from the same decode; the API makes no thumbnail."""
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(1) or real_open(fp, *a, **k))
    assert upload(client, jpeg_bytes()).status_code == 200
    assert len(opened) == 1
    assert upload(client, jpeg_bytes(), url="/api/predict").status_code == 200
    assert len(opened) == 2


def test_serve_params_set_the_pixel_limit_and_decodes_at_once(store):
    app, _ = web.build(None, store, threshold=0.7, serve=ServeConfig(max_pixels=5000, max_decodes=1, follow_s=None))
    response = upload(app.test_client(), jpeg_bytes(size=96), url="/api/predict")  # 9,216 pixels
    assert response.status_code == 413 and "over the 0.005 Mpx limit" in response.get_json()["error"]
    assert upload(app.test_client(), jpeg_bytes(size=64), url="/api/predict").status_code == 200
    with pytest.raises(UserError, match="serve.max_decodes"):
        web.build(None, store, threshold=0.7, serve=ServeConfig(max_pixels=5000, max_decodes=0, follow_s=None))


def test_bad_model_and_settings_are_user_errors(store):
    with pytest.raises(UserError, match="has no alias @staging"):
        web.build("models:/galmorph@staging", store, threshold=0.7)
    with pytest.raises(UserError, match="no registered model 'other'"):
        web.build("models:/other@champion", store, threshold=0.7)
    with pytest.raises(UserError, match="--threshold"):
        web.build(None, store, threshold=1.5)


def test_app_from_env_for_wsgi_servers(store, monkeypatch):
    monkeypatch.setenv("GALMORPH_PARAMS", str(REPO / "params.yaml"))
    monkeypatch.setenv("GALMORPH_MODEL", "models:/galmorph/1")
    page = web.app_from_env().test_client().get("/").get_data(as_text=True)
    assert "version <b>1</b>" in page and "@champion" not in page
    monkeypatch.setenv("GALMORPH_MAX_UPLOAD_MB", "0.5")
    assert web.app_from_env().config["MAX_CONTENT_LENGTH"] == 2**19
    monkeypatch.setenv("GALMORPH_MAX_UPLOAD_MB", "lots")
    with pytest.raises(UserError, match="GALMORPH_MAX_UPLOAD_MB='lots': expected a number"):
        web.app_from_env()


def test_main_refuses_a_busy_port(store, params):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args = argparse.Namespace(
            model=None, threshold=None, host="127.0.0.1", port=busy.getsockname()[1], max_upload_mb=1.0
        )
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1"):
            web_command.main(dataclasses.replace(params, mlflow=store), args)


# ---------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def server(app):
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    thread.join(10)


@pytest.mark.browser
def test_browser_upload_reads_the_verdict(server, browser, tmp_path):
    image = tmp_path / "NGC_1300.jpg"
    image.write_bytes(jpeg_bytes(seed=2, size=256))
    page = browser.new_page(viewport={"width": 900, "height": 760})
    try:
        page.goto(server)
        assert "galmorph" in page.inner_text("#model") and "@champion" in page.inner_text("#model")
        page.set_input_files("#image", str(image))
        page.click("#submit")
        page.wait_for_selector("#verdict")
        assert page.inner_text("#verdict").strip().lower() in ("spiral", "elliptical", "uncertain")
        assert page.inner_text("#p-spiral").endswith("%")
        shots = Path(os.environ.get("GALMORPH_SCREENSHOT_DIR") or REPO / "reports" / "web")  # git-ignored
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "web_screenshot.png"), full_page=True)

        bad = tmp_path / "notes.jpg"
        bad.write_text("not a galaxy")
        page.set_input_files("#image", str(bad))
        page.click("#submit")
        page.wait_for_selector("#error")
        assert "plain text, not an image" in page.inner_text("#error")
    finally:
        page.close()


@pytest.mark.browser
def test_browser_refuses_a_huge_file_before_uploading(server, browser, tmp_path):
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(b"\xff\xd8" + os.urandom(int(LIMIT_MB * 2**20) * 2))
    page = browser.new_page()
    try:
        page.goto(server)
        page.set_input_files("#image", str(huge))
        page.click("#submit")
        page.wait_for_function("document.getElementById('hint').textContent.includes('over the')")
        assert "limit" in page.inner_text("#hint")
        assert page.query_selector("#verdict") is None
    finally:
        page.close()


def test_the_page_follows_its_alias_without_a_restart(tiny_model, tmp_path, _mlflow_empty_db, caplog):
    """A promote (and a rollback) moves @champion: a running page answers with the new version at its next
    check, without a restart; a pinned version never moves, and an unreachable registry keeps the model."""
    from galmorph.config import RegisterConfig
    from galmorph.serving import promotion
    from tests.serving_utils import register_tiny

    with champion_store(tmp_path / "store", tiny_model, _mlflow_empty_db) as cfg:
        following, _ = web.build(None, cfg, threshold=0.7, follow_s=0.0)
        pinned, _ = web.build("models:/galmorph/1", cfg, threshold=0.7, follow_s=0.0)
        client, fixed = following.test_client(), pinned.test_client()
        assert client.get("/healthz").get_json()["model"] == "galmorph v1 (@champion)"
        register_tiny(tiny_model, cfg, f1=0.95)
        assert promotion.promote("galmorph", RegisterConfig(0.01, 0.1, "unused.json"), cfg).promoted
        assert client.get("/healthz").get_json()["model"] == "galmorph v2 (@champion)"
        body = upload(client, jpeg_bytes(), url="/api/predict").get_json()
        assert body["model"] == "galmorph v2 (@champion)" and body["verdict"]
        assert "version <b>2</b>" in client.get("/").get_data(as_text=True)
        assert fixed.get("/healthz").get_json()["model"] == "galmorph v1"
        promotion.rollback("galmorph", cfg)
        assert client.get("/healthz").get_json()["model"] == "galmorph v1 (@champion)"
        (tmp_path / "store" / "mlruns" / "mlflow.db").rename(tmp_path / "gone.db")  # the registry goes away
        assert client.get("/healthz").get_json()["model"] == "galmorph v1 (@champion)"
