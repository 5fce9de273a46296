"""`galmorph embed`: backbone features of every catalogue image under every view (embed.views), cached
under embed.out for frozen-mode training. Reuses an existing cache made from the same rows and params;
in finetune mode there is nothing to cache and the stage only leaves a note."""

from __future__ import annotations

import argparse

from galmorph.config import Params
from galmorph.data.dataset import read_splits
from galmorph.training.features import ensure_feature_cache, skip_feature_cache


def main(params: Params, args: argparse.Namespace) -> None:
    cfg = params.embed
    if params.train.mode != "frozen":
        skip_feature_cache(cfg.out, f"train.mode is {params.train.mode}: the backbone trains, nothing to cache")
        print(f"embed: skipped (train.mode={params.train.mode}); wrote {cfg.out}/meta.json")
        return
    catalogue = read_splits(params.split.out)
    cache, reused = ensure_feature_cache(
        catalogue, params.model, params.preprocess, cfg, device=params.train.device, precision=params.train.precision
    )
    n, v, d = cache.features.shape
    verb = "reused" if reused else "wrote"
    print(
        f"embed: {verb} {cfg.out}: {n:,} galaxies x {v} views x {d} features ({params.model.arch}, "
        f"weights={params.model.weights})"
    )
