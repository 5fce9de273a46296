"""The classifier that ships inside the logged MLflow model: images in, calibrated probabilities out.

Everything a prediction needs travels with it: the weights, the model and preprocess configs, the
calibration temperature. Preprocessing is EvalPreset, the same as evaluate uses, so a served model sees
exactly what the evaluated one saw. No mlflow here (galmorph.tracking wraps this as a pyfunc).

Inputs are what people have at hand: file paths, raw bytes (a web upload), base64 strings (JSON to a
REST endpoint), in a DataFrame column `image` or a plain list. A row that cannot be decoded gets NaN
probabilities and the label "error: <reason>"; the rest of the batch is still scored.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from galmorph.config import CLASSES, ModelConfig, PreprocessConfig, from_dict
from galmorph.data.images import load_rgb
from galmorph.data.transforms import EvalPreset

UNCERTAIN = "uncertain"
ERROR_PREFIX = "error: "
_DATA_URL = "base64,"

#: test-time views of a normalised batch (N, C, H, W): galaxies have no preferred orientation
TTA_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "rot90": lambda x: torch.rot90(x, 1, (2, 3)),
    "rot180": lambda x: torch.rot90(x, 2, (2, 3)),
    "rot270": lambda x: torch.rot90(x, 3, (2, 3)),
    "hflip": lambda x: torch.flip(x, (3,)),
}


def build_network(model_cfg: ModelConfig) -> torch.nn.Module:
    """The architecture of `model_cfg` without downloading anything: the weights come from the artifact."""
    try:
        from galmorph.models.resnet import build_model
    except ImportError:  # TEMPORARY until helper "train" lands models/resnet.py
        import torchvision

        net = getattr(torchvision.models, model_cfg.arch)(weights=None)
        net.fc = torch.nn.Linear(net.fc.in_features, len(CLASSES))
        return net
    return build_model(dataclasses.replace(model_cfg, weights="none"))


def save_artifacts(
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    preprocess: PreprocessConfig,
    temperature: float,
    out_dir: str | os.PathLike,
) -> dict[str, str]:
    """Write weights.pt (a state dict, loadable with weights_only=True) and config.json; returns the
    {name: path} artifacts mapping that mlflow.pyfunc.log_model wants."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "weights.pt"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
    config = out / "config.json"
    config.write_text(
        json.dumps(
            {
                "model": dataclasses.asdict(model_cfg),
                "preprocess": dataclasses.asdict(preprocess),
                "temperature": float(temperature),
                "classes": list(CLASSES),
            },
            indent=2,
        )
    )
    return {"weights": str(weights), "config": str(config)}


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
    """A network plus its preprocessing and temperature; scores images in batches."""

    def __init__(
        self,
        net: torch.nn.Module,
        preprocess: PreprocessConfig,
        *,
        temperature: float = 1.0,
        classes: Sequence[str] = CLASSES,
        batch_size: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = net.to(self.device).eval()
        self.transform = EvalPreset(preprocess)
        self.temperature = float(temperature)
        self.classes = tuple(classes)
        self.batch_size = batch_size

    @classmethod
    def from_artifacts(cls, weights: str | os.PathLike, config: str | os.PathLike, **kwargs: Any) -> GalaxyClassifier:
        """Rebuild from the files save_artifacts wrote."""
        cfg = json.loads(Path(config).read_text())
        model_cfg = from_dict(ModelConfig, cfg["model"], "model")
        net = build_network(model_cfg)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return cls(
            net,
            from_dict(PreprocessConfig, cfg["preprocess"], "preprocess"),
            temperature=cfg["temperature"],
            classes=cfg["classes"],
            **kwargs,
        )

    def _load(self, item: Any) -> torch.Tensor:
        return self.transform(decode_image(item))

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor, tta: bool) -> np.ndarray:
        batch = batch.to(self.device)
        views = TTA_VIEWS.values() if tta else [TTA_VIEWS["identity"]]
        # average probabilities, not logits: each view is a calibrated opinion
        probs = torch.stack([torch.softmax(self.net(view(batch)) / self.temperature, dim=1) for view in views])
        return probs.mean(0).float().cpu().numpy()

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
