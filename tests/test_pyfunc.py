"""The logged classifier: images in (paths, bytes, base64), calibrated probabilities out, anywhere.

One tiny model (resnet18 at 32 px) is logged once for the module, because MLflow model logging is slow.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from galmorph.config import MlflowConfig, ModelConfig, PreprocessConfig
from galmorph.data.images import decode_image, image_items
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
    model = mlflow.pyfunc.load_model(sys.argv[2])
    images = sys.argv[3:]
    raw = Path(images[1]).read_bytes()
    frame = pd.DataFrame({"image": [images[0], raw, base64.b64encode(raw).decode(), b"not a jpeg", "missing.jpg"]})
    out = model.predict(frame)
    sure = model.predict(pd.DataFrame({"image": [images[2]]}), params={"threshold": 0.999})
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
    assert all(np.isnan(got["probs"][i]).all() for i in (3, 4))
    assert got["labels"][3].startswith("error: ") and "not an image" in got["labels"][3]
    assert got["labels"][4].startswith("error: missing.jpg")
    assert got["uncertain"] == ["uncertain"]


# ------------------------------------------------------------------------------------------ in process


@pytest.fixture(scope="module")
def loaded(logged):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", logged.uri)
        yield logged_model.load_classifier(logged.model_uri)


def test_temperature_is_applied(logged, loaded):
    out = loaded.predict(pd.DataFrame({"image": [str(p) for p in logged.images]}))
    probs = out[["p_spiral", "p_elliptical"]].to_numpy()
    np.testing.assert_allclose(probs, _expected(logged.net, logged.images, TEMPERATURE), atol=1e-5)
    uncalibrated = _expected(logged.net, logged.images, 1.0)
    assert np.abs(probs - uncalibrated).max() > 1e-3  # T=2.5 really changed something
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)


def test_tta_averages_the_logits_of_the_eight_views(logged, loaded):
    """As evaluate's TTA: softmax(mean logits over the dihedral views / T)."""
    out = loaded.predict(pd.DataFrame({"image": [str(logged.images[0])]}), params={"tta": True})
    x = EvalPreset(PREPROCESS)(Image.open(logged.images[0]).convert("RGB"))[None]
    with torch.inference_mode():
        logits = torch.stack([logged.net(view(x)) for view in VIEWS.values()]).mean(0)
    expected = torch.softmax(logits / TEMPERATURE, 1).numpy()
    np.testing.assert_allclose(out[["p_spiral", "p_elliptical"]].to_numpy(), expected, atol=1e-5)
    plain = loaded.predict(pd.DataFrame({"image": [str(logged.images[0])]}))
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


def test_rest_json_request(logged, loaded):
    """What `mlflow models serve` does with a JSON body (base64 image, params), via its own handler."""
    from mlflow.pyfunc.scoring_server import invocations

    b64 = base64.b64encode(logged.images[1].read_bytes()).decode()
    body = {"dataframe_split": {"columns": ["image"], "data": [[b64], ["bad"]]}, "params": {"threshold": 0.0}}
    resp = invocations(json.dumps(body), "application/json", loaded, loaded.metadata.get_input_schema())
    assert resp.status == 200, resp.response
    rows = json.loads(resp.response)["predictions"]
    expected = _expected(logged.net, [logged.images[1]], TEMPERATURE)[0]
    assert rows[0]["p_spiral"] == pytest.approx(float(expected[0]), abs=1e-5)
    assert rows[1]["label"].startswith("error: bad")


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
    out = classifier.predict([str(logged.images[0]), "nope.png"], threshold=1.0)
    assert out["label"].tolist()[0] == "uncertain"
    assert out["label"].tolist()[1].startswith("error: nope.png")
    assert classifier.predict(str(logged.images[0]))["label"].iloc[0] in ("spiral", "elliptical")


def test_other_image_modes_and_inputs(tmp_path, classifier):
    png = _galaxy(tmp_path / "rgba.png", 5, "RGBA")
    grey = _galaxy(tmp_path / "grey.png", 6, "L")
    out = classifier.predict({"image": [str(png), grey.read_bytes()]})
    assert out["label"].isin(["spiral", "elliptical"]).all()
    assert len(classifier.predict(pd.Series([str(png)]))) == 1


def test_decode_image_accepts_paths_bytes_base64_and_data_urls(tmp_path):
    jpg = _galaxy(tmp_path / "g.jpg", 1)
    raw = jpg.read_bytes()
    b64 = base64.b64encode(raw).decode()  # a JPEG's starts "/9j/": it looks like an absolute path
    for item in (jpg, str(jpg), raw, bytearray(raw), b64, f"data:image/jpeg;base64,{b64}"):
        assert decode_image(item).size == (64, 64)
    buf = io.BytesIO()
    Image.new("I;16", (8, 8), 300).save(buf, format="PNG")
    assert decode_image(buf.getvalue()).mode == "RGB"
    for bad, reason in [(None, "no image"), ("", "no image"), ("x.jpg", "no such file"), ([1], "one image per row")]:
        with pytest.raises(ValueError, match=reason):
            decode_image(bad)


def test_image_items_shapes():
    assert image_items(pd.DataFrame({"image": ["a", "b"]})) == ["a", "b"]
    assert image_items(pd.DataFrame({"path": ["a"]})) == ["a"]
    assert image_items(["a", b"b"]) == ["a", b"b"]
    assert image_items("a") == ["a"]
    with pytest.raises(ValueError, match="column 'image'"):
        image_items(pd.DataFrame({"a": [1], "b": [2]}))
