"""Tiny, trivially separable galaxy catalogues for the training tests (blue spirals, red ellipticals)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from galmorph.config import CLASSES, Params, replace

REPO = Path(__file__).resolve().parents[1]


def _galaxy(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    cx, cy = size / 2 + rng.normal(0, 1), size / 2 + rng.normal(0, 1)
    r = np.hypot(xx - cx, yy - cy) / size
    if kind == "spiral":
        theta = np.arctan2(yy - cy, xx - cx)
        arms = 0.5 + 0.5 * np.cos(2 * theta - 14 * r + rng.uniform(0, 2 * np.pi))
        light = np.exp(-r / 0.18) * (0.4 + 0.6 * arms)
        colour = np.array([0.5, 0.6, 1.0])
    else:
        light = np.exp(-((r / 0.16) ** 2))
        colour = np.array([1.0, 0.7, 0.4])
    img = light[..., None] * colour + rng.normal(0, 0.03, (size, size, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_catalogue(folder: Path, n: int = 40, size: int = 48, seed: int = 0) -> pd.DataFrame:
    """n galaxies (half each class) as JPEGs under folder/images, with votes and a train/val/test split.

    Image paths are absolute (the folder is outside the repo), as the catalogue contract allows.
    """
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label_id = i % 2
        label = CLASSES[label_id]
        path = folder / "images" / f"g{i:04d}.jpg"
        Image.fromarray(_galaxy(label, size, rng)).save(path, quality=95)
        p = float(np.clip(rng.normal(0.85, 0.08), 0.55, 1.0))
        p_spiral = p if label == "spiral" else 1 - p
        if i % 7 == 3:
            p_spiral = np.nan  # some galaxies without votes: soft targets fall back to the label
        rows.append(
            {
                "galaxy_id": f"g{i:04d}",
                "image_path": str(path),
                "label": label,
                "label_id": label_id,
                "p_spiral": p_spiral,
                "p_elliptical": 1 - p_spiral,
            }
        )
    df = pd.DataFrame(rows)
    # 60/20/20 split, both classes in each part
    pos = np.arange(n) // 2
    n_pairs = n // 2
    df["split"] = np.where(pos < 0.6 * n_pairs, "train", np.where(pos < 0.8 * n_pairs, "val", "test"))
    return df


def tiny_params(params: Params, tmp_path: Path, **train: object) -> Params:
    """params.yaml shrunk for a test: resnet18 at 32 px, small batches, 1 worker, no early stop."""
    model = replace(params.model, arch="resnet18", weights="none", hidden=32)
    preprocess = replace(params.preprocess, resize=48, crop=40, image_size=32)
    embed = replace(params.embed, batch_size=16, num_workers=0, out=str(tmp_path / "features"))
    defaults = {
        "epochs": 2,
        "batch_size": 8,
        "num_workers": 0,
        "warmup_epochs": 0,
        "early_stopping_patience": 0,
        "device": "cpu",
        "precision": "fp32",
        "checkpoint_dir": str(tmp_path / "checkpoints"),
        "out": str(tmp_path / "models" / "model.pt"),
        "metrics": str(tmp_path / "reports" / "metrics.json"),
        "curves": str(tmp_path / "reports" / "curves.csv"),
    }
    defaults.update(train)
    return dataclasses.replace(
        params, model=model, preprocess=preprocess, embed=embed, train=replace(params.train, **defaults)
    )


def one_thread():
    """Generator body of an autouse fixture: torch on one thread while a test runs.

    The test machine's cores are shared; two OpenMP threads on a busy core spin-wait and make tiny
    networks several times slower in CPU time, not just wall time.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_params(p: Params, tmp_path: Path, catalogue: pd.DataFrame) -> tuple[Params, str]:
    """`p` with the catalogue as its splits file, written as tmp_path/params.yaml for the stages' CLI."""
    catalogue.to_parquet(tmp_path / "splits.parquet")
    p = dataclasses.replace(
        p,
        split=replace(p.split, out=str(tmp_path / "splits.parquet")),
        tune=replace(p.tune, out=str(tmp_path / "best_params.yaml")),
    )
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(p), sort_keys=False))
    return p, str(path)
