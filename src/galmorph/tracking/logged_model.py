"""The classifier as a self-contained MLflow pyfunc: logging it, loading it, and its Spark UDF.

The model is logged "from code" with the galmorph package in its code/ folder and pinned requirements, so
`mlflow.pyfunc.load_model(uri)` works in any environment without this repository. Loading a logged model
runs the code shipped inside it: load only models you trust.

What the served model accepts (README "Security"): images as base64 text or bytes; a server file only as
`file:<path>`, and only when an image root is set; limits on pixels, rows and bytes per request and decodes
at once. `mlflow models serve` has no params.yaml, so these come from the environment (SERVE_ENV), or from
`model_config` at load time (mlflow.pyfunc.load_model(uri, model_config={"image_root": ...})), which wins.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.metadata
import math
import os
import shutil
import tempfile
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image

import galmorph
from galmorph.config import CLASSES, FitsConfig, MlflowConfig, ModelConfig, PreprocessConfig, from_dict
from galmorph.data.images import InputLimits
from galmorph.tracking import runs, store

if typing.TYPE_CHECKING:
    import torch

    from galmorph.models.ood import OodDetector

PIP_REQUIREMENTS = ("torch", "torchvision", "pillow", "pandas", "numpy", "pyyaml", "tqdm", "astropy")
"""What the logged pyfunc needs besides mlflow (pinned to the versions it was logged with)."""

OOD_COLUMN = "ood_score"
"""galmorph.models.ood.OOD_COLUMN, without importing torch with galmorph.tracking."""

SERVE_ENV: dict[str, str] = {
    "image_root": "GALMORPH_IMAGE_ROOT",  # file:<path> rows are read only under this folder (default: never)
    "max_pixels": "GALMORPH_MAX_PIXELS",  # per image (default 25,000,000)
    "max_rows": "GALMORPH_MAX_ROWS",  # images per request (default 256; 0 = no limit)
    "max_request_mb": "GALMORPH_MAX_REQUEST_MB",  # image data per request, as sent (default 64; 0 = no limit)
    "max_decodes": "GALMORPH_MAX_DECODES",  # images decoded at once per server process (default 2)
}
"""model_config key -> environment variable, for what the served model accepts (InputLimits)."""


def input_limits(config: Mapping[str, Any], env: Mapping[str, str] | None = None) -> InputLimits:
    """The served model's InputLimits: a key of `config` (model_config at load time) when not None, else its
    SERVE_ENV variable when set, else InputLimits' default. ValueError names the setting that is wrong."""
    env = os.environ if env is None else env
    defaults = InputLimits()
    values: dict[str, Any] = {}
    for key, var in SERVE_ENV.items():
        raw = config.get(key)
        where = f"model_config {key}"
        if raw is None and env.get(var, "").strip():
            raw, where = env[var].strip(), var
        if raw is None:
            continue
        if key == "image_root":
            root = os.path.expanduser(str(raw))
            if not os.path.isdir(root):
                raise ValueError(f"{where}={raw}: not a folder (the served model's image root)")
            values[key] = root
            continue
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{where}={raw!r}: expected a number") from None
        if not math.isfinite(number) or number < 0 or (number == 0 and key in ("max_pixels", "max_decodes")):
            raise ValueError(f"{where}={raw!r}: expected a positive number")
        if key == "max_request_mb":
            values["max_request_bytes"] = int(number * 2**20) if number else None
        elif key == "max_rows":
            values[key] = int(number) if number else None
        else:
            values[key] = int(number)
    return dataclasses.replace(defaults, **values)


class GalaxyPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc face of galmorph.models.inference.GalaxyClassifier.

    Logged as a model from code (_MODEL_CODE), which imports galmorph from the model's code/ folder.
    """

    def load_context(self, context: Any) -> None:
        # torch loads with the model, not with every importer of galmorph.tracking
        from galmorph.models.inference import GalaxyClassifier

        options = dict(context.model_config or {})
        limits = input_limits({key: options.pop(key, None) for key in SERVE_ENV})
        fits = fits_config(options.pop("fits", None))
        self.classifier = GalaxyClassifier.from_artifacts(
            context.artifacts["model"], limits=limits, fits=fits, **options
        )

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        # a DataFrame hint: MLflow validates against the explicit signature instead of inferring one
        params = params or {}
        out = self.classifier.predict(
            model_input, tta=bool(params.get("tta", False)), threshold=float(params.get("threshold", 0.0))
        )
        return nulls_for_failed_rows(out)


def fits_config(value: Mapping[str, Any] | None) -> FitsConfig:
    """How the served model reads FITS: params.yaml's defaults (FitsConfig()), with the keys that model_config
    "fits" sets (at load time, MLFLOW_PYFUNC_INFERENCE_CONFIG for `mlflow models serve`, or `galmorph batch`)."""
    if value is None:
        return FitsConfig()
    if not isinstance(value, Mapping):
        raise ValueError(f"model_config fits: expected a mapping such as {{'hdu': 1}}, got {value!r}")
    return from_dict(FitsConfig, {**dataclasses.asdict(FitsConfig()), **value}, "model_config fits")


def nulls_for_failed_rows(out: pd.DataFrame) -> pd.DataFrame:
    """A failed row's probabilities (and ood_score) as None, so JSON carries null: NaN is not JSON, and browsers'
    parsers reject the `NaN` Python writes. Columns stay float64 when every row scored."""
    columns = [c for c in out.columns if c.startswith(("p_", "vote_fraction_")) or c == OOD_COLUMN]
    failed = out[columns].isna().any(axis=1)
    if failed.any():
        for column in columns:
            values = out[column].astype(object)
            values[failed] = None
            out[column] = values
    return out


_MODEL_CODE = """\
# galmorph's classifier as an MLflow model from code: MLflow runs this file when the model loads.
import mlflow

from galmorph.tracking import GalaxyPyfunc

mlflow.models.set_model(GalaxyPyfunc())
"""


def classifier_signature(classes: Sequence[str] = CLASSES, *, ood: bool = False) -> ModelSignature:
    """Input: column `image` (base64, bytes or file:<path>); output: p_<class>..., label, and ood_score for a
    model with an out-of-distribution detector; params tta, threshold."""
    outputs = [ColSpec("double", f"p_{c}") for c in classes] + [ColSpec("string", "label")]
    if ood:
        outputs.append(ColSpec("double", OOD_COLUMN))
    return ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("tta", "boolean", False), ParamSpec("threshold", "double", 0.0)]),
    )


def output_schema(model_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """(name, type) of each output column in a downloaded model's signature (p_<class>..., label, and
    ood_score when it has an out-of-distribution detector): what a Spark result type must list. A model logged
    without a signature is taken to have classifier_signature()'s columns."""
    from mlflow.models import Model

    signature = Model.load(str(model_dir)).signature
    schema = signature.outputs if signature is not None and signature.outputs else classifier_signature().outputs
    return [(spec.name, spec.type.name) for spec in schema.inputs]


def _pip_requirements() -> list[str]:
    reqs = []
    for dist in PIP_REQUIREMENTS:
        version = importlib.metadata.version(dist).split("+")[0]  # torch's "+cpu" is not on PyPI
        reqs.append(f"{dist}=={version}")
    return reqs


def log_classifier(
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    preprocess: PreprocessConfig,
    *,
    temperature: float = 1.0,
    input_example: str | os.PathLike | None = None,
    name: str = "model",
    tta_views: Sequence[str] | None = None,
    batch_size: int = 64,
    ood: OodDetector | None = None,
) -> str:
    """Log the network as a self-contained pyfunc in the active run and return its model URI.

    The artifact is the model file of galmorph.models.resnet.save_model (weights, model and preprocess
    configs, classes, calibration temperature); the galmorph package rides along in code/ and the pip
    requirements are pinned, so `mlflow.pyfunc.load_model(uri)` works in any environment without this
    repository. `input_example`: a JPEG, stored base64-encoded so the example runs anywhere.
    `tta_views` (default: all eight, as evaluate.tta_views) are what predict(params={"tta": True}) averages.
    `ood`: the out-of-distribution detector stored in the model file (models.ood).
    """
    # torch loads only where a model is logged, not with every importer of galmorph.tracking
    from galmorph.models.inference import save_artifacts

    runs.active_run()
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    with tempfile.TemporaryDirectory(prefix="galmorph-pyfunc-") as tmp:
        artifacts = save_artifacts(model, model_cfg, preprocess, temperature, Path(tmp) / "artifacts", ood=ood)
        parts = _pyfunc_parts(Path(tmp), temperature, tta_views, batch_size, input_example, ood=ood is not None)
        info = mlflow.pyfunc.log_model(name=name, artifacts=artifacts, **parts)
    return info.model_uri


def export_classifier(
    model_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tta_views: Sequence[str] | None = None,
    batch_size: int = 64,
) -> Path:
    """Write a models/model.pt (trained here or elsewhere) as an MLflow model folder, the same pyfunc that
    training logs, without a run or a store: `mlflow models serve -m OUT`, `galmorph batch --model OUT` and
    mlflow.pyfunc.load_model(OUT) take it. `out_dir` must not exist."""
    from galmorph.models.resnet import load_model

    loaded = load_model(model_file)  # a UserError naming the file when it is not a galmorph model
    with tempfile.TemporaryDirectory(prefix="galmorph-pyfunc-") as tmp:
        example = Path(tmp) / "example.jpg"  # a dark sky: the input example MLflow validates the signature with
        Image.new("RGB", (64, 64), (10, 10, 20)).save(example)
        parts = _pyfunc_parts(Path(tmp), loaded.temperature, tta_views, batch_size, example, ood=loaded.ood is not None)
        with runs.quiet_artifact_copies():
            mlflow.pyfunc.save_model(path=str(out_dir), artifacts={"model": str(model_file)}, **parts)
    return Path(out_dir)


def _pyfunc_parts(
    tmp: Path,
    temperature: float,
    tta_views: Sequence[str] | None,
    batch_size: int,
    input_example: str | os.PathLike | None,
    *,
    ood: bool = False,
) -> dict[str, Any]:
    """What a logged and an exported galmorph pyfunc share: the model code, the galmorph package in code/,
    pinned requirements, the signature, the serving config and the metadata (files written under `tmp`)."""
    from galmorph.data.transforms import check_views
    from galmorph.models.inference import DEFAULT_TTA_VIEWS

    views = check_views(tta_views or DEFAULT_TTA_VIEWS, "tta_views")
    example = None
    if input_example is not None:
        example = {"image": [base64.b64encode(Path(input_example).read_bytes()).decode("ascii")]}
    code = tmp / "code" / "galmorph"
    shutil.copytree(Path(galmorph.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # a model from code, not a pickle: loading runs this file, nothing is unpickled
    model_code = tmp / "galmorph_model.py"
    model_code.write_text(_MODEL_CODE)
    return {
        "python_model": str(model_code),
        "code_paths": [str(code)],
        "pip_requirements": _pip_requirements(),
        "signature": classifier_signature(ood=ood),
        "input_example": pd.DataFrame(example) if example else None,
        # the SERVE_ENV keys are logged unset (None): the environment or load-time model_config sets them
        # fits (how FITS inputs are read) is logged unset too: FitsConfig()'s defaults, params.yaml's
        "model_config": {"tta_views": views, "batch_size": batch_size, "fits": None, **dict.fromkeys(SERVE_ENV)},
        "metadata": {"classes": list(CLASSES), "temperature": temperature, "galmorph_version": galmorph.__version__},
    }


def load_classifier(uri: str, *, cfg: MlflowConfig | None = None) -> Any:
    """mlflow.pyfunc.load_model (e.g. of `models:/galmorph@champion`), for callers that must not import mlflow."""
    store.client(cfg)
    return mlflow.pyfunc.load_model(uri)


def spark_udf(
    spark: Any,
    model_uri: str,
    *,
    result_type: str,
    params: Mapping[str, Any] | None = None,
    cfg: MlflowConfig | None = None,
    fits: FitsConfig | None = None,
) -> Any:
    """The pyfunc as a Spark pandas UDF, run in the executors' own Python (env_manager="local": a cluster's
    executors need galmorph's requirements installed, as with spark-submit --py-files or a cluster image).

    A batch job is the user's own: its rows may be `file:<absolute path>` anywhere (image root /), and Arrow
    batches are not capped in rows or bytes; the pixel limit and the decode checks still apply. `fits`: how
    FITS rows are read (the model's model_config "fits"; None: its defaults)."""
    store.client(cfg)
    trusted = {SERVE_ENV["image_root"]: os.sep, SERVE_ENV["max_rows"]: "0", SERVE_ENV["max_request_mb"]: "0"}
    return mlflow.pyfunc.spark_udf(
        spark,
        model_uri,
        result_type=result_type,
        env_manager="local",
        params=dict(params or {}),
        extra_env=trusted,
        model_config={"fits": dataclasses.asdict(fits)} if fits is not None else None,
    )


def download(model_uri: str, dest: str | os.PathLike, cfg: MlflowConfig | None = None) -> Path:
    """Download a logged model (models:/..., runs:/..., a model folder) into `dest`: its local folder."""
    import mlflow.artifacts

    store.client(cfg)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest)))


def checkpoint_file(model_uri: str, dest: str | os.PathLike, cfg: MlflowConfig | None = None) -> Path:
    """Download a logged galmorph model (models:/..., runs:/..., a model folder) into `dest` and return its
    models/model.pt inside it: what evaluate-folder reads, so it can take the same --model as predict."""
    from mlflow.models import Model

    local = download(model_uri, dest, cfg)
    flavor = Model.load(str(local)).flavors.get("python_function", {})
    artifact = (flavor.get("artifacts") or {}).get("model", {}).get("path")
    if not artifact or not (local / artifact).is_file():
        raise ValueError(f"{model_uri}: not a galmorph model (no 'model' artifact in its MLmodel)")
    return local / artifact
