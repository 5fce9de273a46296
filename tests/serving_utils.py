"""Helpers for the serving tests (registry, predict, REST, web, Spark): tiny images and a tiny logged model.

The model is logged once per session (conftest's `tiny_model`); each test registers its artifact folder
in its own SQLite store (`mlflow_uri`), so tests stay independent and never touch the repo's mlruns/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import torch
from PIL import Image, ImageDraw

from galmorph.config import MlflowConfig, ModelConfig, PreprocessConfig, RegisterConfig
from galmorph.models.inference import build_network, predict_outputs
from galmorph.models.ood import OodDetector, fit_detector
from galmorph.serving import promotion
from galmorph.tracking import logged_model, runs
from galmorph.tracking.registry import VersionInfo

TINY_MODEL = ModelConfig(arch="resnet18", weights="none", head="linear", hidden=16, dropout=0.0)
TINY_PREPROCESS = PreprocessConfig(resize=64, crop=48, image_size=32)


@dataclasses.dataclass(frozen=True)
class TinyModel:
    """A logged tiny model: `source` is its artifact folder (a file URI) that any store can register."""

    source: str
    model_uri: str
    images: list[Path]


def galaxy_image(seed: int, size: int = 64, mode: str = "RGB") -> Image.Image:
    """A blob (elliptical-like) or a two-armed swirl (spiral-like) on a dark sky, with noise."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(im)
    c = size / 2
    if seed % 2:
        r = size * rng.uniform(0.15, 0.3)
        draw.ellipse((c - r, c - r * 0.7, c + r, c + r * 0.7), fill=(230, 200, 150))
    else:
        for arm in (0.0, math.pi):
            pts = [
                (c + t * size / 14 * math.cos(t + arm), c + t * size / 14 * math.sin(t + arm))
                for t in np.linspace(0.2, 5.0, 40)
            ]
            draw.line(pts, fill=(150, 180, 255), width=max(1, size // 20))
    arr = np.asarray(im, dtype=np.int16) + rng.integers(0, 30, (size, size, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8)).convert(mode)


def write_images(folder: Path, n: int, size: int = 64, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"galaxy_{i:04d}.jpg"
        galaxy_image(i, size).save(path, quality=90)
        paths.append(path)
    return paths


def tiny_network(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(TINY_MODEL).eval()


def log_tiny_model(
    cfg: MlflowConfig, example: Path, *, seed: int = 0, temperature: float = 1.5, ood: OodDetector | None = None
) -> str:
    """Log a randomly initialised resnet18 as the pyfunc (what the train stage logs); returns its URI."""
    with runs.start_run(cfg, "test", {"seed": seed}):
        return logged_model.log_classifier(
            tiny_network(seed), TINY_MODEL, TINY_PREPROCESS, temperature=temperature, input_example=example, ood=ood
        )


def tiny_detector(
    images: list[Path], quantile: float = 0.5, seed: int = 0, tta_views: tuple[str, ...] = ()
) -> OodDetector:
    """An out-of-distribution detector fitted on tiny_network(seed)'s own features of `images` (alternate
    rows as the two classes), with a TTA scale for `tta_views`; at quantile 0.5 it flags about half of them."""
    kw = {"num_workers": 0, "device": "cpu", "features": True}
    _, feats = predict_outputs(tiny_network(seed), images, TINY_PREPROCESS, **kw)
    tta = (
        predict_outputs(tiny_network(seed), images, TINY_PREPROCESS, tta_views=tta_views, **kw)[1]
        if tta_views
        else None
    )
    return fit_detector(feats, np.arange(len(feats)) % 2, feats, quantile, val_tta_features=tta, tta_views=tta_views)


def log_tiny_model_once(root: Path, *, ood: bool = False) -> TinyModel:
    """Log the tiny model (with a detector fitted on its example images when `ood`) into the store at
    root/mlruns/mlflow.db (the env var set only meanwhile)."""
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    cfg = MlflowConfig(experiment="galmorph-test", tracking_uri=uri, registered_model="galmorph")
    images = write_images(root / "images", 12 if ood else 6)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        model_uri = log_tiny_model(cfg, images[0], ood=tiny_detector(images) if ood else None)
        source = mlflow.get_logged_model(model_uri.removeprefix("models:/")).artifact_location
    return TinyModel(source, model_uri, images)


def store_cfg(uri: str, name: str = "galmorph") -> MlflowConfig:
    return MlflowConfig(experiment="galmorph-test", tracking_uri=uri, registered_model=name)


def register_tiny(
    tiny: TinyModel, cfg: MlflowConfig, *, f1: float = 0.8, ece: float = 0.05, split: str = "split-a", **tags: str
) -> VersionInfo:
    """A new version of cfg.registered_model with test-metric tags, as the register stage would add."""
    metrics = {"test_macro_f1": f1, "test_ece_calibrated": ece, "test_accuracy": f1, "test_split_digest": split}
    return promotion.register_version(cfg.registered_model, tiny.source, {**metrics, **tags}, cfg).version


@contextlib.contextmanager
def champion_store(root: Path, tiny: TinyModel, empty_db: Path) -> Iterator[MlflowConfig]:
    """A store of its own (MLFLOW_TRACKING_URI set meanwhile) where the tiny model is v1, @champion."""
    (root / "mlruns").mkdir(parents=True)
    shutil.copyfile(empty_db, root / "mlruns" / "mlflow.db")
    cfg = store_cfg(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", cfg.tracking_uri)
        register_tiny(tiny, cfg)
        promotion.promote(cfg.registered_model, RegisterConfig(0.01, 0.1, "unused.json"), cfg)
        yield cfg


def wait_until_answers(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 240) -> None:
    """Wait until GET `url` answers 200: fail with the server's log when it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[2:4]} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"no answer on {url} after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(1)
