"""The web page: a person uploads a galaxy image and sees the model's verdict and which model gave it.

Plain HTML, no JavaScript needed, so it works for a class on any browser; `POST /api/predict` answers the
same as JSON. A bad upload gets a clear message and the server carries on. `app_from_env` is the entry
point for production WSGI servers (gunicorn), configured by environment variables.
"""

from __future__ import annotations

import base64
import io
import math
import os
from typing import Any

from flask import Flask, jsonify, render_template, request
from werkzeug.exceptions import RequestEntityTooLarge

from galmorph.config import MlflowConfig, load_params
from galmorph.data.images import decode_image
from galmorph.errors import UserError
from galmorph.models.inference import ERROR_PREFIX, UNCERTAIN, GalaxyClassifier
from galmorph.serving.resolve import ModelRef, load_model, resolve_model

THUMBNAIL_PX = 320


def _thumbnail(data: bytes) -> str | None:
    """The upload as a small JPEG data URL, so the page shows what was scored (None if undecodable)."""
    try:
        image = decode_image(data)
    except Exception:
        return None
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def classify_upload(
    classifier: GalaxyClassifier, data: bytes, *, threshold: float, tta: bool = False
) -> dict[str, Any]:
    """{"probabilities": {class: p}, "verdict": class|uncertain, "top": p, "leaning": top class} or
    {"error": reason}."""
    if not data:
        return {"error": "the file is empty"}
    row = classifier.predict([data], tta=tta, threshold=threshold).iloc[0]
    if str(row["label"]).startswith(ERROR_PREFIX):
        return {"error": "not a readable image (" + str(row["label"])[len(ERROR_PREFIX) :] + ")"}
    probs = {c: float(row[f"p_{c}"]) for c in classifier.classes}
    leaning = max(probs, key=probs.__getitem__)
    return {"probabilities": probs, "verdict": str(row["label"]), "top": probs[leaning], "leaning": leaning}


def create_app(
    classifier: GalaxyClassifier, ref: ModelRef, *, threshold: float, max_upload_bytes: int = 10 * 2**20
) -> Flask:
    """The Flask app around a loaded classifier (tests and WSGI servers call this directly)."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    limit_mb = max_upload_bytes / 2**20
    page = {
        "model": ref,
        "classes": classifier.classes,
        "threshold": threshold,
        "limit_mb": f"{limit_mb:g}",
        "limit_bytes": max_upload_bytes,
        "uncertain": UNCERTAIN,
    }

    def upload() -> tuple[dict[str, Any], str | None, str]:
        file = request.files.get("image")
        if file is None or not file.filename:
            return {"error": "choose an image file first (JPEG or PNG)"}, None, ""
        data = file.read()
        tta = request.form.get("tta") in ("on", "true", "1")
        return classify_upload(classifier, data, threshold=threshold, tta=tta), _thumbnail(data), file.filename

    @app.get("/")
    def index() -> str:
        return render_template("index.html", **page, result=None)

    @app.post("/")
    def predict_page() -> tuple[str, int]:
        result, thumbnail, filename = upload()
        status = 400 if "error" in result else 200
        return render_template("index.html", **page, result=result, thumbnail=thumbnail, filename=filename), status

    @app.post("/api/predict")
    def predict_api() -> Any:
        result, _, filename = upload()
        body = {"file": filename, **result, "model": ref.display, "threshold": threshold}
        return jsonify(body), (400 if "error" in result else 200)

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok", "model": ref.display})

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc: RequestEntityTooLarge) -> Any:
        message = f"the file is larger than the {limit_mb:g} MB limit; send a smaller cut-out"
        if request.path.startswith("/api/"):
            return jsonify({"error": message}), 413
        return render_template("index.html", **page, result={"error": message}), 413

    app.jinja_env.globals["pct"] = lambda p: f"{100 * p:.1f}" if math.isfinite(p) else "—"
    return app


def build(
    model: str | None, mlflow_cfg: MlflowConfig, *, threshold: float, max_upload_mb: float = 10.0
) -> tuple[Flask, ModelRef]:
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: expected a probability between 0 and 1")
    if not max_upload_mb > 0:
        raise UserError(f"--max-upload-mb {max_upload_mb}: expected a positive size")
    ref = resolve_model(model, mlflow_cfg)
    app = create_app(load_model(ref, mlflow_cfg), ref, threshold=threshold, max_upload_bytes=int(max_upload_mb * 2**20))
    return app, ref


def app_from_env() -> Flask:
    """For WSGI servers: GALMORPH_MODEL (default the champion), GALMORPH_PARAMS (default params.yaml)."""
    params = load_params(os.environ.get("GALMORPH_PARAMS", "params.yaml"))
    app, _ = build(os.environ.get("GALMORPH_MODEL"), params.mlflow, threshold=params.evaluate.abstain_threshold)
    return app
