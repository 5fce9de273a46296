"""The web page: a person uploads a galaxy image and sees the model's verdict and which model gave it.

Plain HTML, no JavaScript needed, so it works for a class on any browser; `POST /api/predict` answers the
same as JSON. A bad upload gets a clear message and a 4xx (415 for a file that is not an accepted image
format, 413 for one too large in bytes or pixels, 400 for a broken image) and the server carries on. Each
upload is decoded once, under the classifier's limits (serve.max_pixels, serve.max_decodes at a time).
`app_from_env` is the entry point for production WSGI servers (gunicorn), configured by environment variables.
"""

from __future__ import annotations

import base64
import io
import math
import os
from typing import Any

from flask import Flask, jsonify, render_template, request
from PIL import Image
from werkzeug.exceptions import RequestEntityTooLarge

from galmorph.config import FitsConfig, MlflowConfig, ServeConfig, load_params
from galmorph.data.images import ACCEPTED, ImageError, InputLimits
from galmorph.errors import UserError
from galmorph.models.inference import UNCERTAIN, GalaxyClassifier
from galmorph.models.ood import OOD_COLUMN, UNLIKE
from galmorph.serving.resolve import LiveModel, ModelRef, load_model, resolve_model

THUMBNAIL_PX = 320
#: HTTP status of an upload the loader refused, by its reason (anything else: 400).
STATUS_BY_REASON = {"not_an_image": 415, "unsupported_format": 415, "too_large": 413}


def _thumbnail(image: Image.Image) -> str:
    """The scored image as a small JPEG data URL, so the page shows what was scored (shrinks `image`)."""
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def classify_upload(
    classifier: GalaxyClassifier,
    data: bytes,
    *,
    threshold: float,
    tta: bool = False,
    name: str = "the file",
    thumbnail: bool = False,
) -> tuple[dict[str, Any], int, str | None]:
    """({"probabilities": {class: p}, "verdict": class|uncertain|unlike training data, "top": p, "leaning": top
    class, and "ood_score" for a model with an out-of-distribution detector} or {"error": reason}, HTTP status,
    the thumbnail's data URL when asked for). The bytes are decoded once."""
    if not data:
        return {"error": f"{name}: the file is empty"}, 400, None
    try:
        with classifier.decoding(data) as image:  # the full-size image lives only inside its decoding slot
            x = classifier.transform(image)
            thumb = _thumbnail(image) if thumbnail else None
    except ImageError as exc:
        return {"error": f"{name}: {exc}"}, STATUS_BY_REASON.get(exc.reason, 400), None
    scores = classifier.score_batch(x[None], tta=tta)
    verdict = classifier.labels(scores, [None], threshold)[0]
    probs = {c: float(p) for c, p in zip(classifier.classes, scores[0, : len(classifier.classes)], strict=True)}
    leaning = max(probs, key=probs.__getitem__)
    result: dict[str, Any] = {"probabilities": probs, "verdict": verdict, "top": probs[leaning], "leaning": leaning}
    if classifier.ood is not None:
        result[OOD_COLUMN] = float(scores[0, -1])
    return result, 200, thumb


def create_app(
    classifier: GalaxyClassifier,
    ref: ModelRef,
    *,
    threshold: float,
    max_upload_bytes: int = 10 * 2**20,
    limits: InputLimits | None = None,
    mlflow_cfg: MlflowConfig | None = None,
    follow_s: float | None = None,
    fits: FitsConfig | None = None,
) -> Flask:
    """The Flask app around a loaded classifier (tests and WSGI servers call this directly). `limits`: the
    pixel limit and decodes at once (no paths: uploads only); `fits`: how a FITS upload is read (params.yaml's
    fits section; default its defaults). With `mlflow_cfg` and `follow_s`, a page serving a registry alias
    follows it (see LiveModel): a promote or rollback reaches it without a restart."""
    limits = limits or InputLimits(max_request_bytes=max_upload_bytes)
    fits = fits or FitsConfig()

    def prepare(c: GalaxyClassifier) -> None:
        c.set_limits(limits)
        c.fits = fits

    live = LiveModel(classifier, ref, mlflow_cfg, follow_s=follow_s, prepare=prepare)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    limit_mb = max_upload_bytes / 2**20
    page = {
        "classes": classifier.classes,
        "threshold": threshold,
        "limit_mb": f"{limit_mb:g}",
        "limit_bytes": max_upload_bytes,
        "uncertain": UNCERTAIN,
        "unlike": UNLIKE,
        "accepted": ACCEPTED.removeprefix("accepted: "),
    }

    def upload(classifier: GalaxyClassifier, *, thumbnail: bool) -> tuple[dict[str, Any], int, str | None, str]:
        file = request.files.get("image")
        if file is None or not file.filename:
            return {"error": "choose an image file first (JPEG, PNG, TIFF, WEBP, BMP, GIF or FITS)"}, 400, None, ""
        data = file.read()
        tta = request.form.get("tta") in ("on", "true", "1")
        result, status, thumb = classify_upload(
            classifier, data, threshold=threshold, tta=tta, name=file.filename, thumbnail=thumbnail
        )
        return result, status, thumb, file.filename

    @app.get("/")
    def index() -> str:
        _, current = live.current()
        return render_template("index.html", **page, model=current, result=None)

    @app.post("/")
    def predict_page() -> tuple[str, int]:
        classifier, current = live.current()
        result, status, thumbnail, filename = upload(classifier, thumbnail=True)
        html = render_template(
            "index.html", **page, model=current, result=result, thumbnail=thumbnail, filename=filename
        )
        return html, status

    @app.post("/api/predict")
    def predict_api() -> Any:
        classifier, current = live.current()
        result, status, _, filename = upload(classifier, thumbnail=False)  # the API has no use for a thumbnail
        body = {"file": filename, **result, "model": current.display, "threshold": threshold}
        return jsonify(body), status

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok", "model": live.current()[1].display})

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc: RequestEntityTooLarge) -> Any:
        message = f"the file is larger than the {limit_mb:g} MB limit; send a smaller cut-out"
        if request.path.startswith("/api/"):
            return jsonify({"error": message}), 413
        return render_template("index.html", **page, model=live.current()[1], result={"error": message}), 413

    app.jinja_env.globals["pct"] = lambda p: f"{100 * p:.1f}" if math.isfinite(p) else "—"
    return app


def build(
    model: str | None,
    mlflow_cfg: MlflowConfig,
    *,
    threshold: float,
    max_upload_mb: float = 10.0,
    serve: ServeConfig | None = None,
    follow_s: float | None = 30.0,
    fits: FitsConfig | None = None,
) -> tuple[Flask, ModelRef]:
    """The app for `model` (default @champion). `follow_s`: how often a page serving an alias checks whether it
    moved (None: never); serve.follow_s when `serve` is given. `fits`: how FITS uploads are read."""
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold {threshold}: expected a probability between 0 and 1")
    if not max_upload_mb > 0:
        raise UserError(f"--max-upload-mb {max_upload_mb}: expected a positive size")
    max_upload_bytes = int(max_upload_mb * 2**20)
    limits = InputLimits(max_request_bytes=max_upload_bytes)
    if serve is not None:
        for key in ("max_pixels", "max_decodes"):
            if getattr(serve, key) < 1:
                raise UserError(f"params: serve.{key}: expected a positive whole number, got {getattr(serve, key)}")
        if serve.follow_s is not None and not serve.follow_s >= 0:
            raise UserError(f"params: serve.follow_s: expected seconds >= 0 or null, got {serve.follow_s}")
        limits = InputLimits(
            max_pixels=serve.max_pixels, max_decodes=serve.max_decodes, max_request_bytes=max_upload_bytes
        )
        follow_s = serve.follow_s
    ref = resolve_model(model, mlflow_cfg)
    app = create_app(
        load_model(ref, mlflow_cfg),
        ref,
        threshold=threshold,
        max_upload_bytes=max_upload_bytes,
        limits=limits,
        mlflow_cfg=mlflow_cfg,
        follow_s=follow_s,
        fits=fits,
    )
    return app, ref


def app_from_env() -> Flask:
    """For WSGI servers: GALMORPH_MODEL (default the champion), GALMORPH_PARAMS (default params.yaml),
    GALMORPH_MAX_UPLOAD_MB (default 10); the serve section of the params gives the image limits."""
    params = load_params(os.environ.get("GALMORPH_PARAMS", "params.yaml"))
    try:
        max_upload_mb = float(os.environ.get("GALMORPH_MAX_UPLOAD_MB") or 10.0)
    except ValueError:
        raise UserError(f"GALMORPH_MAX_UPLOAD_MB={os.environ['GALMORPH_MAX_UPLOAD_MB']!r}: expected a number") from None
    app, _ = build(
        os.environ.get("GALMORPH_MODEL"),
        params.mlflow,
        threshold=params.evaluate.abstain_threshold,
        max_upload_mb=max_upload_mb,
        serve=params.serve,
        fits=params.fits,
    )
    return app
