"""The classifier as a self-contained MLflow pyfunc: logging it, loading it, and its Spark UDF.

The model is logged "from code" with the galmorph package in its code/ folder and pinned requirements, so
`mlflow.pyfunc.load_model(uri)` works in any environment without this repository.
"""

from __future__ import annotations

import base64
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

import galmorph
from galmorph.config import CLASSES, MlflowConfig, ModelConfig, PreprocessConfig
from galmorph.tracking import runs, store

if typing.TYPE_CHECKING:
    import torch

PIP_REQUIREMENTS = ("torch", "torchvision", "pillow", "pandas", "numpy", "pyyaml", "tqdm")
"""What the logged pyfunc needs besides mlflow (pinned to the versions it was logged with)."""


class GalaxyPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc face of galmorph.models.inference.GalaxyClassifier.

    Logged as a model from code (_MODEL_CODE), which imports galmorph from the model's code/ folder.
    """

    def load_context(self, context: Any) -> None:
        # torch loads with the model, not with every importer of galmorph.tracking
        from galmorph.models.inference import GalaxyClassifier

        options = dict(context.model_config or {})
        self.classifier = GalaxyClassifier.from_artifacts(context.artifacts["model"], **options)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        # a DataFrame hint: MLflow validates against the explicit signature instead of inferring one
        params = params or {}
        return self.classifier.predict(
            model_input, tta=bool(params.get("tta", False)), threshold=float(params.get("threshold", 0.0))
        )


_MODEL_CODE = """\
# galmorph's classifier as an MLflow model from code: MLflow runs this file when the model loads.
import mlflow

from galmorph.tracking import GalaxyPyfunc

mlflow.models.set_model(GalaxyPyfunc())
"""


def classifier_signature(classes: Sequence[str] = CLASSES) -> ModelSignature:
    """Input: column `image` (path, base64 or bytes); output: p_<class>..., label; params tta, threshold."""
    outputs = [ColSpec("double", f"p_{c}") for c in classes] + [ColSpec("string", "label")]
    return ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("tta", "boolean", False), ParamSpec("threshold", "double", 0.0)]),
    )


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
) -> str:
    """Log the network as a self-contained pyfunc in the active run and return its model URI.

    The artifact is the model file of galmorph.models.resnet.save_model (weights, model and preprocess
    configs, classes, calibration temperature); the galmorph package rides along in code/ and the pip
    requirements are pinned, so `mlflow.pyfunc.load_model(uri)` works in any environment without this
    repository. `input_example`: a JPEG, stored base64-encoded so the example runs anywhere.
    `tta_views` (default: all eight, as evaluate.tta_views) are what predict(params={"tta": True}) averages.
    """
    # torch loads only where a model is logged, not with every importer of galmorph.tracking
    from galmorph.data.transforms import check_views
    from galmorph.models.inference import DEFAULT_TTA_VIEWS, save_artifacts

    runs.active_run()
    views = check_views(tta_views or DEFAULT_TTA_VIEWS, "tta_views")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    example = None
    if input_example is not None:
        example = {"image": [base64.b64encode(Path(input_example).read_bytes()).decode("ascii")]}
    with tempfile.TemporaryDirectory(prefix="galmorph-pyfunc-") as tmp:
        artifacts = save_artifacts(model, model_cfg, preprocess, temperature, Path(tmp) / "artifacts")
        code = Path(tmp) / "code" / "galmorph"
        shutil.copytree(Path(galmorph.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # a model from code, not a pickle: loading runs this file, nothing is unpickled
        model_code = Path(tmp) / "galmorph_model.py"
        model_code.write_text(_MODEL_CODE)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(model_code),
            artifacts=artifacts,
            code_paths=[str(code)],
            pip_requirements=_pip_requirements(),
            signature=classifier_signature(),
            input_example=pd.DataFrame(example) if example else None,
            model_config={"tta_views": views, "batch_size": batch_size},
            metadata={"classes": list(CLASSES), "temperature": temperature, "galmorph_version": galmorph.__version__},
        )
    return info.model_uri


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
) -> Any:
    """The pyfunc as a Spark pandas UDF, run in the executors' own Python (env_manager="local": a cluster's
    executors need galmorph's requirements installed, as with spark-submit --py-files or a cluster image)."""
    store.client(cfg)
    return mlflow.pyfunc.spark_udf(
        spark, model_uri, result_type=result_type, env_manager="local", params=dict(params or {})
    )
