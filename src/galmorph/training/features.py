"""The embedding cache of frozen mode: backbone features of every image under every view, computed once.

Galaxies have no preferred orientation, so the dihedral views (rotations by 90 degrees and flips) are
exact, free augmentations: the `embed` stage runs the backbone once per image and view and the head then
trains for many epochs on a random view per image without touching an image again. The cache holds the
backbone's weights too, because the final model must be exactly the backbone that produced the features.

Layout of embed.out (written file by file through atomic renames, meta.json last as the commit mark):
  features.npy  float16 (N, V, D)     ids.parquet  galaxy_id, image_path in row order
  backbone.pt   backbone state dict   meta.json    arch, weights, preprocess, views, shapes, fingerprint
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from galmorph.config import EmbedConfig, ModelConfig, PreprocessConfig
from galmorph.data.dataset import ImageDataset
from galmorph.data.transforms import EvalPreset, apply_view, check_views
from galmorph.errors import UserError
from galmorph.io import atomic_path, file_md5, write_json, write_parquet
from galmorph.models.inference import amp_dtype_for, autocast, iterate, prepare_for_inference, resolve_device, to_device
from galmorph.models.resnet import build_model

CACHE_FORMAT = "galmorph.features/1"


@dataclasses.dataclass
class FeatureCache:
    """Features (N, V, D) float16 of the catalogue rows `galaxy_ids`, and the backbone that made them."""

    features: np.ndarray
    galaxy_ids: np.ndarray
    image_paths: np.ndarray
    views: list[str]
    backbone_state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    #: what fit() derives from this cache (standardised features, the built backbone), kept for the next fit on
    #: the same rows: tuning trials share it instead of rebuilding it each time
    derived: dict[Any, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def rows(self, galaxy_ids: Sequence[str]) -> np.ndarray:
        """Row numbers of `galaxy_ids` in the cache; a clear error when the cache lacks some."""
        lookup = pd.Index(self.galaxy_ids)
        pos = lookup.get_indexer(pd.Index(galaxy_ids))
        missing = np.flatnonzero(pos < 0)
        if len(missing):
            raise UserError(
                f"embedding cache: {len(missing)} galaxies (e.g. {galaxy_ids[missing[0]]}) are not in the cache; "
                "run `galmorph embed` on the current splits"
            )
        return pos


def fingerprint(model_cfg: ModelConfig, preprocess: PreprocessConfig, embed: EmbedConfig, ids: Sequence[str]) -> str:
    """What the features depend on; equal fingerprints mean an existing cache can be reused as is."""
    blob = json.dumps(
        {
            "format": CACHE_FORMAT,
            "arch": model_cfg.arch,
            "weights": model_cfg.weights,
            "weights_md5": _weights_md5(model_cfg.weights),
            "preprocess": dataclasses.asdict(preprocess),
            "views": list(embed.views),
            "seed": embed.seed,
            "ids": hashlib.sha256("\n".join(map(str, ids)).encode()).hexdigest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _weights_md5(weights: str) -> str | None:
    """The digest of a weights file, so a changed file at the same path invalidates the cache."""
    if weights.lower() in ("none", "imagenet", "") or not Path(weights).is_file():
        return None
    return file_md5(weights)


@torch.inference_mode()
def compute_features(
    backbone: nn.Module,
    catalogue: pd.DataFrame,
    preprocess: PreprocessConfig,
    views: Sequence[str],
    *,
    batch_size: int = 64,
    num_workers: int = 2,
    device: torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Backbone features (N, V, D) as float16 for every row and view (eval preset, eval mode)."""

    device = device or torch.device("cpu")
    check_views(views)
    backbone = prepare_for_inference(backbone, device)
    channels_last = device.type != "mps"
    loader = DataLoader(
        ImageDataset(catalogue, EvalPreset(preprocess)),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    out: np.ndarray | None = None
    bar = tqdm(total=len(catalogue), desc="embed", unit="img", disable=not progress, leave=False)
    for x, _label, _soft, idx in iterate(loader):
        x = to_device(x, device, channels_last)
        with autocast(device, amp_dtype):
            feats = torch.stack([backbone(apply_view(x, v)).float() for v in views], dim=1)
        if out is None:
            out = np.empty((len(catalogue), len(views), feats.shape[-1]), dtype=np.float16)
        out[idx.numpy()] = feats.cpu().numpy().astype(np.float16)
        bar.update(len(idx))
    bar.close()
    if out is None:
        raise UserError("embed: the catalogue has no rows")
    return out


def build_feature_cache(
    catalogue: pd.DataFrame,
    model_cfg: ModelConfig,
    preprocess: PreprocessConfig,
    embed: EmbedConfig,
    *,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> FeatureCache:
    """Build the backbone (seeded, so weights `none` is reproducible) and embed every row under every view."""

    check_views(embed.views)
    ids = catalogue["galaxy_id"].astype(str).tolist()
    torch.manual_seed(embed.seed)
    model = build_model(model_cfg)
    dev = resolve_device(device)
    feats = compute_features(
        model.backbone,
        catalogue,
        preprocess,
        embed.views,
        batch_size=embed.batch_size,
        num_workers=embed.num_workers,
        device=dev,
        amp_dtype=amp_dtype_for(dev, precision),
        progress=progress,
    )
    meta = {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint(model_cfg, preprocess, embed, ids),
        "arch": model_cfg.arch,
        "weights": model_cfg.weights,
        "preprocess": dataclasses.asdict(preprocess),
        "views": list(embed.views),
        "n": len(ids),
        "feature_dim": int(feats.shape[-1]),
        "device": dev.type,
        "precision": str(amp_dtype_for(dev, precision) or torch.float32).removeprefix("torch."),
    }
    return FeatureCache(
        features=feats,
        galaxy_ids=np.asarray(ids, dtype=object),
        image_paths=catalogue["image_path"].astype(str).to_numpy(dtype=object),
        views=list(embed.views),
        backbone_state={k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()},
        meta=meta,
    )


def save_feature_cache(cache: FeatureCache, out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # invalid until every file below is in place
    with atomic_path(out / "features.npy") as tmp, tmp.open("wb") as fh:
        np.save(fh, cache.features)
    with atomic_path(out / "backbone.pt") as tmp:
        torch.save(cache.backbone_state, tmp)
    write_parquet(out / "ids.parquet", pd.DataFrame({"galaxy_id": cache.galaxy_ids, "image_path": cache.image_paths}))
    write_json(out / "meta.json", cache.meta)


def read_meta(out_dir: str | Path) -> dict[str, Any] | None:
    """meta.json of a complete cache, or None when there is none (never written, or skipped)."""
    path = Path(out_dir) / "meta.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    return meta if meta.get("format") == CACHE_FORMAT else None


def load_feature_cache(
    out_dir: str | Path, *, model_cfg: ModelConfig | None = None, preprocess: PreprocessConfig | None = None
) -> FeatureCache:
    """Read the cache; with configs given, refuse one made for a different backbone or preprocessing."""
    out = Path(out_dir)
    meta = read_meta(out)
    if meta is None:
        raise UserError(f"{out}: no embedding cache (train.mode=frozen needs it; run `galmorph embed`)")
    if model_cfg is not None and (meta["arch"], meta["weights"]) != (model_cfg.arch, model_cfg.weights):
        raise UserError(
            f"{out}/meta.json: features are from {meta['arch']} weights={meta['weights']}, params say "
            f"{model_cfg.arch} weights={model_cfg.weights}; run `galmorph embed` again"
        )
    if preprocess is not None and meta["preprocess"] != dataclasses.asdict(preprocess):
        raise UserError(f"{out}/meta.json: features were computed with other preprocess params; run `galmorph embed`")
    features = np.load(out / "features.npy", mmap_mode="r")
    ids = pd.read_parquet(out / "ids.parquet")
    if features.shape[:2] != (len(ids), len(meta["views"])):
        raise UserError(f"{out}/features.npy: shape {features.shape} does not match ids.parquet and meta.json")
    return FeatureCache(
        features=features,
        galaxy_ids=ids["galaxy_id"].astype(str).to_numpy(dtype=object),
        image_paths=ids["image_path"].astype(str).to_numpy(dtype=object),
        views=list(meta["views"]),
        backbone_state=torch.load(out / "backbone.pt", map_location="cpu", weights_only=True),
        meta=meta,
    )


def ensure_feature_cache(
    catalogue: pd.DataFrame,
    model_cfg: ModelConfig,
    preprocess: PreprocessConfig,
    embed: EmbedConfig,
    *,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> tuple[FeatureCache, bool]:
    """The cache under embed.out for these rows and params: reused when its fingerprint matches
    (returns (cache, True)), else computed and written (returns (cache, False))."""
    ids = catalogue["galaxy_id"].astype(str).tolist()
    meta = read_meta(embed.out)
    if meta is not None and meta.get("fingerprint") == fingerprint(model_cfg, preprocess, embed, ids):
        return load_feature_cache(embed.out, model_cfg=model_cfg, preprocess=preprocess), True
    cache = build_feature_cache(
        catalogue, model_cfg, preprocess, embed, device=device, precision=precision, progress=progress
    )
    save_feature_cache(cache, embed.out)
    return cache, False


def skip_feature_cache(out_dir: str | Path, reason: str) -> None:
    """Leave embed.out holding only a note: the stage's output exists for DVC, no stale features linger."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("features.npy", "backbone.pt", "ids.parquet"):
        (out / name).unlink(missing_ok=True)
    write_json(out / "meta.json", {"format": "galmorph.features/skipped", "reason": reason})
