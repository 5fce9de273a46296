"""The logged classifier: images in (bytes, base64, file: paths under an image root), calibrated probabilities
out, anywhere; server paths off by default, limits per request, null (not NaN) for a failed row.

One tiny model (resnet18 at 32 px) is logged once for the module, because MLflow model logging is slow.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from galmorph.config import MlflowConfig, ModelConfig, PreprocessConfig
from galmorph.data.images import ImageError, InputLimits, decode_image, image_items
from galmorph.data.transforms import VIEWS, EvalPreset
from galmorph.models.inference import GalaxyClassifier, build_network
from galmorph.models.resnet import load_model
from galmorph.tracking import logged_model, runs
from galmorph.tracking import registry as mlflow_registry

SRC = Path(__file__).resolve().parents[1] / "src"
MODEL_CFG = ModelConfig(arch="resnet18", weights="none", head="linear", hidden=16, dropout=0.0)
PREPROCESS = PreprocessConfig(resize=64, crop=48, image_size=32)
TEMPERATURE = 2.5
REGISTERED = "galmorph-test"


def _galaxy(path: Path, seed: int, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    blob = np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / (2 * (6 + 4 * seed) ** 2))
    rgb = (blob[..., None] * rng.uniform(120, 255, 3) + rng.normal(0, 8, (64, 64, 3))).clip(0, 255).astype(np.uint8)
    Image.fromarray(rgb).convert(mode).save(path)
    return path


def _expected(net: torch.nn.Module, images: list[Path], temperature: float) -> np.ndarray:
    """The model's probabilities computed by hand: EvalPreset, forward, softmax(logits / T)."""
    preset = EvalPreset(PREPROCESS)
    batch = torch.stack([preset(Image.open(p).convert("RGB")) for p in images])
    with torch.inference_mode():
        return torch.softmax(net(batch) / temperature, dim=1).numpy()


@pytest.fixture(scope="module")
def logged(tmp_path_factory, _mlflow_empty_db):
    """A tiny network logged once as the pyfunc (T=2.5) and registered with alias @champion."""
    tmp = tmp_path_factory.mktemp("pyfunc")
    (tmp / "mlruns").mkdir()
    shutil.copyfile(_mlflow_empty_db, tmp / "mlruns" / "mlflow.db")
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    torch.manual_seed(0)
    net = build_network(MODEL_CFG).eval()
    images = [_galaxy(tmp / f"galaxy{i}.jpg", i) for i in range(3)]
    cfg = MlflowConfig(experiment="pyfunc-test", tracking_uri=None, registered_model=REGISTERED)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(tmp)
        with runs.start_run(cfg, "train", {"model": MODEL_CFG}) as run:
            model_uri = logged_model.log_classifier(
                net, MODEL_CFG, PREPROCESS, temperature=TEMPERATURE, input_example=images[0]
            )
        shipped = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp / "shipped"))) / "code"
        assert (shipped / "galmorph" / "tracking" / "logged_model.py").is_file()
        assert (shipped / "galmorph" / "models" / "inference.py").is_file()
        assert not list(shipped.glob("**/__pycache__"))  # source only: bytecode is per-interpreter
        version = mlflow_registry.register_model(model_uri, REGISTERED, {"source": "test"}, cfg=cfg)
        mlflow_registry.set_alias(REGISTERED, "champion", version, cfg=cfg)
        yield SimpleNamespace(
            uri=uri, model_uri=model_uri, run_id=run.info.run_id, net=net, images=images, cfg=cfg, version=version
        )


# ----------------------------------------------------------------------------------- fresh process


FRESH = textwrap.dedent(
    """
    import base64, importlib.util, json, sys
    from pathlib import Path
    # hide the editable install: the model must bring its own galmorph
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(sys.argv[1])]
    assert importlib.util.find_spec("galmorph") is None, "galmorph is importable before loading"
    import mlflow, pandas as pd
    images = sys.argv[3:]
    model = mlflow.pyfunc.load_model(sys.argv[2], model_config={"image_root": str(Path(images[0]).parent)})
    raw = Path(images[1]).read_bytes()
    rows = ["file:" + images[0], raw, base64.b64encode(raw).decode(), b"not a jpeg", "file:missing.jpg"]
    out = model.predict(pd.DataFrame({"image": rows}))
    sure = model.predict(pd.DataFrame({"image": ["file:" + Path(images[2]).name]}), params={"threshold": 0.999})
    import galmorph
    print(json.dumps({
        "probs": out[["p_spiral", "p_elliptical"]].values.tolist(),
        "labels": out["label"].tolist(),
        "columns": list(out.columns),
        "uncertain": sure["label"].tolist(),
        "galmorph_file": galmorph.__file__,
    }))
    """
)


@pytest.mark.slow
def test_loads_and_predicts_in_a_fresh_process_without_the_repo(logged, tmp_path):
    """By alias from the registry, in a folder outside the repo, with the editable galmorph hidden."""
    script = tmp_path / "predict.py"
    script.write_text(FRESH)
    proc = subprocess.run(
        [sys.executable, str(script), str(SRC), f"models:/{REGISTERED}@champion", *map(str, logged.images)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"MLFLOW_TRACKING_URI": logged.uri, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "/code/galmorph/" in got["galmorph_file"] and not got["galmorph_file"].startswith(str(SRC))
    assert got["columns"] == ["p_spiral", "p_elliptical", "label"]
    expected = _expected(logged.net, [logged.images[0], logged.images[1], logged.images[1]], TEMPERATURE)
    np.testing.assert_allclose(np.array(got["probs"][:3]), expected, atol=1e-5)  # path, bytes, base64
    assert got["labels"][:3] == [("spiral", "elliptical")[int(k)] for k in expected.argmax(1)]
    assert got["probs"][3:] == [[None, None], [None, None]]  # null in JSON, not NaN
    assert got["labels"][3] == "error: plain text, not an image; accepted: JPEG, PNG, TIFF, WEBP, BMP, GIF or FITS"
    assert got["labels"][4] == "error: no readable image file at that path under the server's image root"
    assert got["uncertain"] == ["uncertain"]


# ------------------------------------------------------------------------------------------ in process


@pytest.fixture(scope="module")
def loaded(logged):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", logged.uri)
        yield logged_model.load_classifier(logged.model_uri)


def test_temperature_is_applied(logged, loaded):
    out = loaded.predict(pd.DataFrame({"image": [p.read_bytes() for p in logged.images]}))
    probs = out[["p_spiral", "p_elliptical"]].to_numpy()
    np.testing.assert_allclose(probs, _expected(logged.net, logged.images, TEMPERATURE), atol=1e-5)
    uncalibrated = _expected(logged.net, logged.images, 1.0)
    assert np.abs(probs - uncalibrated).max() > 1e-3  # T=2.5 really changed something
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)


def test_tta_averages_the_logits_of_the_eight_views(logged, loaded):
    """As evaluate's TTA: softmax(mean logits over the dihedral views / T)."""
    raw = logged.images[0].read_bytes()
    out = loaded.predict(pd.DataFrame({"image": [raw]}), params={"tta": True})
    x = EvalPreset(PREPROCESS)(Image.open(logged.images[0]).convert("RGB"))[None]
    with torch.inference_mode():
        logits = torch.stack([logged.net(view(x)) for view in VIEWS.values()]).mean(0)
    expected = torch.softmax(logits / TEMPERATURE, 1).numpy()
    np.testing.assert_allclose(out[["p_spiral", "p_elliptical"]].to_numpy(), expected, atol=1e-5)
    plain = loaded.predict(pd.DataFrame({"image": [raw]}))
    assert not np.allclose(plain[["p_spiral", "p_elliptical"]].to_numpy(), expected, atol=1e-6)


def test_signature_example_and_requirements(logged, loaded):
    meta = loaded.metadata
    assert meta.get_input_schema().input_names() == ["image"]
    assert meta.get_output_schema().input_names() == ["p_spiral", "p_elliptical", "label"]
    defaults = {p.name: p.default for p in meta.get_params_schema().params}
    assert defaults == {"tta": False, "threshold": 0.0}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", logged.uri)
        local = Path(mlflow.artifacts.download_artifacts(logged.model_uri))
    example = meta.load_input_example(str(local))
    assert base64.b64decode(example["image"][0]) == logged.images[0].read_bytes()  # runs anywhere
    reqs = (local / "requirements.txt").read_text().splitlines()
    assert "torch==2.14.1" in reqs and "torchvision==0.29.1" in reqs
    assert any(r.startswith("pillow==") for r in reqs) and any(r.startswith("pandas==") for r in reqs)
    shipped = load_model(local / "artifacts" / "model.pt")  # the same file format as models/model.pt
    assert shipped.temperature == TEMPERATURE and shipped.preprocess == PREPROCESS
    assert shipped.model_cfg == MODEL_CFG
    assert loaded.model_config["tta_views"] == list(VIEWS)
    assert {k: loaded.model_config[k] for k in logged_model.SERVE_ENV} == dict.fromkeys(logged_model.SERVE_ENV)


def test_rest_json_request(logged, loaded):
    """What `mlflow models serve` does with a JSON body (base64 image, params), via its own handler."""
    from mlflow.pyfunc.scoring_server import invocations

    b64 = base64.b64encode(logged.images[1].read_bytes()).decode()
    body = {"dataframe_split": {"columns": ["image"], "data": [[b64], ["bad"]]}, "params": {"threshold": 0.0}}
    resp = invocations(json.dumps(body), "application/json", loaded, loaded.metadata.get_input_schema())
    assert resp.status == 200, resp.response
    rows = strict_json(resp.response)["predictions"]
    expected = _expected(logged.net, [logged.images[1]], TEMPERATURE)[0]
    assert rows[0]["p_spiral"] == pytest.approx(float(expected[0]), abs=1e-5)
    assert rows[1]["label"].startswith("error: not base64 image data")
    assert rows[1]["p_spiral"] is None and rows[1]["p_elliptical"] is None  # null: browsers reject NaN


def strict_json(text: str):
    """json.loads as a browser parses: NaN and Infinity are not JSON."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


SECRETS = ("/etc/passwd", "/proc/self/environ", "/etc/hostname")


def test_served_model_never_opens_server_paths(logged, loaded, monkeypatch, tmp_path):
    """Without an image root, no string makes the server open a file, and the answer does not say whether
    one exists: a path is refused by its form, before the file system is asked."""
    from mlflow.pyfunc.scoring_server import invocations

    inside = tmp_path / "g.jpg"
    inside.write_bytes(logged.images[0].read_bytes())
    opened = []
    real_open, real_io_open, real_stat = os.open, io.open, os.stat

    def spy(real):
        def wrapper(path, *args, **kwargs):
            if any(str(path).startswith(s[:8]) for s in SECRETS) or str(path).startswith(str(tmp_path)):
                opened.append(str(path))
            return real(path, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(os, "open", spy(real_open))
    monkeypatch.setattr(io, "open", spy(real_io_open))
    monkeypatch.setattr(os, "stat", spy(real_stat))
    rows = [*SECRETS, *(f"file:{s}" for s in SECRETS), "file:///etc/passwd", str(inside), f"file:{inside}"]
    body = {"dataframe_records": [{"image": r} for r in rows]}
    resp = invocations(json.dumps(body), "application/json", loaded, loaded.metadata.get_input_schema())
    assert resp.status == 200, resp.response
    got = strict_json(resp.response)["predictions"]
    assert opened == []
    labels = [r["label"] for r in got]
    assert all(label.startswith("error: ") for label in labels), labels
    for label in labels:  # no path, no OS error: nothing to learn about the server
        assert "/" not in label.removeprefix(
            "error: not base64 image data (a file on the server is written file:<path>)"
        )
        assert "Errno" not in label and "passwd" not in label and "No such" not in label
    assert set(labels[3:7] + labels[8:]) == {
        "error: paths are not accepted here: send the image itself (base64 or bytes)"
    }


@pytest.fixture
def image_root(tmp_path, logged):
    """An image root with a galaxy, a sub-folder, a symlink out of it and a FIFO; a secret file beside it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    shutil.copyfile(logged.images[0], root / "g.jpg")
    shutil.copyfile(logged.images[1], root / "sub" / "h.jpg")
    shutil.copyfile(logged.images[2], tmp_path / "secret.jpg")
    os.symlink(tmp_path / "secret.jpg", root / "escape.jpg")
    os.symlink(root / "g.jpg", root / "alias.jpg")
    os.mkfifo(root / "pipe.jpg")
    return root


def test_paths_under_the_image_root_only(logged, classifier, image_root):
    from galmorph.data.images import InputLimits

    classifier.set_limits(InputLimits(image_root=str(image_root)))
    try:
        inside = ["file:g.jpg", "file:sub/h.jpg", f"file:{image_root}/g.jpg", f"file:///{image_root}/sub/../g.jpg"]
        inside += ["file:alias.jpg"]  # a symlink that stays inside
        outside = ["file:../secret.jpg", "file:escape.jpg", f"file:{image_root.parent}/secret.jpg", "file:/etc/passwd"]
        outside += ["file:pipe.jpg", "file:sub", "file:nope.jpg", "file://host/g.jpg", "file:", "file:g.jpg\x00x"]
        probs, errors = classifier.predict_proba(inside + outside)
        assert errors[: len(inside)] == [None] * len(inside), errors
        assert np.isfinite(probs[: len(inside)]).all()
        refusal = "no readable image file at that path under the server's image root"
        assert errors[len(inside) :] == [refusal] * len(outside)  # the same words: no oracle
        assert classifier.predict_proba(["g.jpg"])[1][0].startswith("not base64")  # a path needs its prefix
    finally:
        classifier.set_limits(InputLimits())


def test_image_root_at_load_time_and_from_the_environment(logged, image_root, monkeypatch):
    """`mlflow models serve` has no params.yaml: GALMORPH_IMAGE_ROOT; load_model(model_config=...) wins."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged.uri)
    with_root = mlflow.pyfunc.load_model(logged.model_uri, model_config={"image_root": str(image_root)})
    out = with_root.predict(pd.DataFrame({"image": ["file:g.jpg"]}))
    assert out["label"].iloc[0] in ("spiral", "elliptical")
    limits = logged_model.input_limits({}, env={"GALMORPH_IMAGE_ROOT": str(image_root), "GALMORPH_MAX_ROWS": "0"})
    assert limits.image_root == str(image_root) and limits.max_rows is None
    assert limits.max_pixels == 25_000_000 and limits.max_decodes == 2
    limits = logged_model.input_limits({"max_rows": 3, "max_request_mb": 0.5}, env={"GALMORPH_MAX_ROWS": "9"})
    assert limits.max_rows == 3 and limits.max_request_bytes == 2**19 and limits.image_root is None
    for env, message in [
        ({"GALMORPH_IMAGE_ROOT": str(image_root / "nope")}, "GALMORPH_IMAGE_ROOT=.*not a folder"),
        ({"GALMORPH_MAX_PIXELS": "lots"}, "GALMORPH_MAX_PIXELS='lots': expected a number"),
        ({"GALMORPH_MAX_DECODES": "0"}, "GALMORPH_MAX_DECODES='0': expected a positive number"),
    ]:
        with pytest.raises(ValueError, match=message):
            logged_model.input_limits({}, env=env)


def test_registry_reads_versions_and_aliases(logged):
    """What promote, rollback and `galmorph models` read: versions with their aliases, tags and run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", logged.uri)
        assert mlflow_registry.registered_model_aliases(REGISTERED, cfg=logged.cfg) == {"champion": logged.version}
        version = mlflow_registry.model_version(REGISTERED, logged.version, cfg=logged.cfg)
        assert version.aliases == ("champion",) and version.run_id == logged.run_id
        assert version.tags == {"source": "test"}
        assert version.uri == f"models:/{REGISTERED}/{logged.version}"
        assert mlflow_registry.model_versions(REGISTERED, cfg=logged.cfg) == [version]
        assert mlflow_registry.model_version(REGISTERED, "999", cfg=logged.cfg) is None
        assert mlflow_registry.registered_model_aliases("no-such-model", cfg=logged.cfg) is None
        assert mlflow_registry.model_version("no-such-model", "1", cfg=logged.cfg) is None
        assert mlflow_registry.model_versions("no-such-model", cfg=logged.cfg) == []
        assert mlflow_registry.registered_model_tags("no-such-model", cfg=logged.cfg) == {}


# ------------------------------------------------------------------------------------------- no mlflow


@pytest.fixture(scope="module")
def classifier(logged):
    return GalaxyClassifier(logged.net, PREPROCESS, temperature=TEMPERATURE, batch_size=2, device="cpu")


def test_batches_give_the_same_answer_and_keep_row_order(logged, classifier):
    items = [logged.images[0], b"\x00\x01", logged.images[1], None, logged.images[2]]
    probs, errors = classifier.predict_proba(items)
    good = [0, 2, 4]
    np.testing.assert_allclose(probs[good], _expected(logged.net, logged.images, TEMPERATURE), atol=1e-5)
    assert [e is None for e in errors] == [True, False, True, False, True]
    assert np.isnan(probs[[1, 3]]).all()


def test_threshold_and_error_labels(logged, classifier):
    out = classifier.predict([logged.images[0], Path("nope.png")], threshold=1.0)  # Path: a trusted local file
    assert out["label"].tolist()[0] == "uncertain"
    assert out["label"].tolist()[1].startswith("error: ") and "nope.png" in out["label"].tolist()[1]
    assert classifier.predict(logged.images[0])["label"].iloc[0] in ("spiral", "elliptical")


def test_other_image_modes_and_inputs(tmp_path, classifier):
    png = _galaxy(tmp_path / "rgba.png", 5, "RGBA")
    grey = _galaxy(tmp_path / "grey.png", 6, "L")
    out = classifier.predict({"image": [png, grey.read_bytes()]})
    assert out["label"].isin(["spiral", "elliptical"]).all()
    assert len(classifier.predict(pd.Series([png]))) == 1


def test_decode_image_accepts_paths_bytes_base64_and_data_urls(tmp_path):
    jpg = _galaxy(tmp_path / "g.jpg", 1)
    raw = jpg.read_bytes()
    b64 = base64.b64encode(raw).decode()  # a JPEG's starts "/9j/": it looks like an absolute path
    for item in (jpg, raw, bytearray(raw), memoryview(raw), b64, f"data:image/jpeg;base64,{b64}"):
        assert decode_image(item).size == (64, 64)
    buf = io.BytesIO()
    Image.new("I;16", (8, 8), 300).save(buf, format="PNG")
    assert decode_image(buf.getvalue()).mode == "RGB"
    bad_items = [(None, "no image"), ("", "no image"), ("x.jpg", "not base64"), ([1], "one image per row")]
    bad_items += [(str(jpg), "not base64"), (f"file:{jpg}", "paths are not accepted"), (3.5, "got float")]
    for bad, reason in bad_items:
        with pytest.raises(ImageError, match=reason) as info:
            decode_image(bad)
        assert str(tmp_path) not in str(info.value)


def test_image_items_shapes():
    assert image_items(pd.DataFrame({"image": ["a", "b"]})) == ["a", "b"]
    assert image_items(pd.DataFrame({"path": ["a"]})) == ["a"]
    assert image_items(["a", b"b"]) == ["a", b"b"]
    assert image_items("a") == ["a"]
    with pytest.raises(ValueError, match="column 'image'"):
        image_items(pd.DataFrame({"a": [1], "b": [2]}))


def test_requests_over_the_row_or_byte_limit_are_refused_before_decoding(logged, classifier, monkeypatch):
    raw = logged.images[0].read_bytes()
    classifier.set_limits(InputLimits(max_rows=2, max_request_bytes=3 * len(raw)))
    try:
        decoded = []
        real = classifier.tensor
        monkeypatch.setattr(classifier, "tensor", lambda item: decoded.append(1) or real(item))
        probs, errors = classifier.predict_proba([raw, raw, raw])
        assert errors == ["the request has 3 images, over the limit of 2: split it"] * 3 and np.isnan(probs).all()
        b64 = base64.b64encode(raw).decode()  # counted as sent: base64 is 4/3 of the bytes
        probs, errors = classifier.predict_proba([b64, b64 + b64])
        assert all(e and "MB of image data, over the" in e for e in errors)
        assert decoded == []
        assert classifier.predict_proba([raw, b64])[1] == [None, None]
    finally:
        classifier.set_limits(InputLimits())


def test_decodes_in_flight_are_bounded(logged, monkeypatch):
    """However many threads (web requests, REST calls) share the classifier, at most max_decodes images are
    being decoded at once: what bounds the memory of concurrent uploads."""
    from galmorph.models import inference

    raw = logged.images[0].read_bytes()
    busy, peak, lock = 0, 0, threading.Lock()
    real_decode = inference.decode_image

    def slow_decode(item, limits=None, fits=None, draft=None):
        nonlocal busy, peak
        with lock:
            busy += 1
            peak = max(peak, busy)
        time.sleep(0.05)
        try:
            return real_decode(item, limits, fits, draft)
        finally:
            with lock:
                busy -= 1

    monkeypatch.setattr(inference, "decode_image", slow_decode)
    for max_decodes in (1, 3):
        busy, peak = 0, 0
        clf = GalaxyClassifier(logged.net, PREPROCESS, device="cpu", limits=InputLimits(max_decodes=max_decodes))
        threads = [threading.Thread(target=clf.predict_proba, args=([raw, raw],)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert peak == max_decodes


def test_an_unexpected_error_reaches_the_client_by_its_type_only(logged, classifier, monkeypatch):
    def broken(image):
        raise RuntimeError("/srv/secret/internal.py line 3")

    monkeypatch.setattr(classifier, "transform", broken)
    _, errors = classifier.predict_proba([logged.images[0].read_bytes()])
    assert errors == ["could not score this image (RuntimeError)"]


def test_predict_tta_help_names_the_eight_views(capsys):
    from galmorph import cli

    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "8 rotations and flips (8 views, 8x slower)" in help_text and "5 views" not in help_text
