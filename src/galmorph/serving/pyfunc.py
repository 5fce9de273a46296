"""The classifier that ships inside the logged MLflow model: images in, calibrated probabilities out.

Everything a prediction needs travels with it: the model file of galmorph.models.resnet.save_model
(weights, model and preprocess configs, classes, calibration temperature), the TTA views. Inference is the
training package's own (EvalPreset, BatchNorm folded, channels_last, mean logits over views, then
softmax(logits / T)), so a served prediction equals what evaluate measured. No mlflow here
(galmorph.tracking wraps this as a pyfunc).

Inputs are what people have at hand: file paths, raw bytes (a web upload), base64 strings (JSON to a
REST endpoint), in a DataFrame column `image` or a plain list. A row that cannot be decoded gets NaN
probabilities and the label "error: <reason>"; the rest of the batch is still scored.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from galmorph.config import CLASSES, ModelConfig, PreprocessConfig
from galmorph.data.images import load_rgb
from galmorph.data.transforms import EvalPreset
from galmorph.models.resnet import build_model, load_model, save_model
from galmorph.training.engine import prepare_for_inference, softmax_t, view_logits
from galmorph.training.features import VIEWS, check_views

UNCERTAIN = "uncertain"
ERROR_PREFIX = "error: "
MODEL_FILE = "model.pt"
DEFAULT_TTA_VIEWS: tuple[str, ...] = tuple(VIEWS)
"""All eight symmetries of the square, as evaluate.tta_views has them by default."""
_DATA_URL = "base64,"


def build_network(model_cfg: ModelConfig) -> torch.nn.Module:
    """The architecture of `model_cfg` without downloading anything: the weights come from the artifact."""
    return build_model(dataclasses.replace(model_cfg, weights="none"))


def save_artifacts(
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    preprocess: PreprocessConfig,
    temperature: float,
    out_dir: str | os.PathLike,
) -> dict[str, str]:
    """Write the model file (the same format as models/model.pt, loadable with weights_only=True) and
    return the {name: path} artifacts mapping that mlflow.pyfunc.log_model wants."""
    path = Path(out_dir) / MODEL_FILE
    save_model(path, model, model_cfg, preprocess, temperature=temperature)
    return {"model": str(path)}


def decode_image(item: Any) -> Image.Image:
    """Path, bytes or base64 (optionally a data: URL) -> PIL RGB; ValueError/OSError say what was wrong."""
    if isinstance(item, bytes | bytearray | memoryview):
        return _load_bytes(bytes(item))
    if isinstance(item, os.PathLike):
        return load_rgb(item)
    if not isinstance(item, str):
        if item is None or (isinstance(item, float) and math.isnan(item)):
            raise ValueError("no image (empty value)")
        if isinstance(item, list | tuple | np.ndarray):
            raise ValueError("got a list in one row: pass one image per row")
        raise ValueError(f"expected a path, bytes or base64 text, got {type(item).__name__}")
    text = item.strip()
    if not text:
        raise ValueError("no image (empty string)")
    if os.path.isfile(text):  # before base64: a JPEG's base64 starts with "/9j/", which looks like a path
        return load_rgb(text)
    if text.startswith("data:") and _DATA_URL in text:
        text = text.split(_DATA_URL, 1)[1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(f"{shown}: no such file, and not base64 image data") from None
    return _load_bytes(data)


def _load_bytes(data: bytes) -> Image.Image:
    try:
        return load_rgb(data)
    except UnidentifiedImageError:  # its message is a useless "<_io.BytesIO object at 0x...>"
        raise ValueError(f"{len(data)} bytes that are not an image PIL can read") from None


def image_items(model_input: Any) -> list[Any]:
    """The images of a pyfunc input: a DataFrame (column `image`, or its only column), a Series, a
    dict {"image": [...]}, a list/array of items, or one item."""
    if isinstance(model_input, pd.DataFrame):
        if "image" in model_input.columns:
            return model_input["image"].tolist()
        if len(model_input.columns) == 1:
            return model_input.iloc[:, 0].tolist()
        raise ValueError(f"expected a column 'image', got columns {list(model_input.columns)}")
    if isinstance(model_input, dict):
        if "image" not in model_input:
            raise ValueError(f"expected a key 'image', got keys {list(model_input)}")
        value = model_input["image"]
        return list(value) if isinstance(value, list | tuple | np.ndarray | pd.Series) else [value]
    if isinstance(model_input, pd.Series | np.ndarray | list | tuple):
        return list(model_input)
    return [model_input]


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class GalaxyClassifier:
    """A network plus its preprocessing, temperature and TTA views; scores images in batches."""

    def __init__(
        self,
        net: torch.nn.Module,
        preprocess: PreprocessConfig,
        *,
        temperature: float = 1.0,
        classes: Sequence[str] = CLASSES,
        tta_views: Sequence[str] = DEFAULT_TTA_VIEWS,
        batch_size: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = prepare_for_inference(net, self.device)  # an exact, faster copy: BN folded, channels_last
        self.transform = EvalPreset(preprocess)
        self.temperature = float(temperature)
        self.classes = tuple(classes)
        self.tta_views = check_views(tta_views, "tta_views")
        self.batch_size = batch_size

    @classmethod
    def from_artifacts(cls, model_file: str | os.PathLike, **kwargs: Any) -> GalaxyClassifier:
        """Rebuild from the model file save_artifacts wrote (kwargs: tta_views, batch_size, device)."""
        loaded = load_model(model_file)
        return cls(loaded.model, loaded.preprocess, temperature=loaded.temperature, classes=loaded.classes, **kwargs)

    def _load(self, item: Any) -> torch.Tensor:
        return self.transform(decode_image(item))

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor, tta: bool) -> np.ndarray:
        """Probabilities of a preprocessed batch: softmax(mean logits over the views / T), as evaluate does."""
        x = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        logits = view_logits(self.net, x, self.tta_views if tta else None)
        return softmax_t(logits.float().cpu().numpy(), self.temperature)

    def predict_proba(self, items: Sequence[Any], *, tta: bool = False) -> tuple[np.ndarray, list[str | None]]:
        """(N, n_classes) probabilities (NaN rows for unreadable images) and each row's error or None."""
        probs = np.full((len(items), len(self.classes)), np.nan)
        errors: list[str | None] = [None] * len(items)
        for start in range(0, len(items), self.batch_size):
            rows, tensors = [], []
            for i in range(start, min(start + self.batch_size, len(items))):
                try:
                    tensors.append(self._load(items[i]))
                    rows.append(i)
                except Exception as exc:  # one bad upload must not fail the batch
                    errors[i] = _reason(exc)
            if tensors:
                probs[rows] = self._forward(torch.stack(tensors), tta)
        return probs, errors

    def predict(self, model_input: Any, *, tta: bool = False, threshold: float = 0.0) -> pd.DataFrame:
        """A DataFrame with p_<class> columns and `label`: the top class, "uncertain" when its probability
        is under `threshold`, or "error: <reason>"."""
        items = image_items(model_input)
        probs, errors = self.predict_proba(items, tta=tta)
        labels = []
        for row, error in zip(probs, errors, strict=True):
            if error is not None:
                labels.append(ERROR_PREFIX + error)
            elif row.max() < threshold:
                labels.append(UNCERTAIN)
            else:
                labels.append(self.classes[int(row.argmax())])
        out = pd.DataFrame({f"p_{c}": probs[:, k] for k, c in enumerate(self.classes)})
        out["label"] = labels
        return out
