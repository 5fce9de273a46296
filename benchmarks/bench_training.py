"""Training speed on CPU: frozen mode's head epoch on cached embeddings vs the seed's way, and the
images/s of both modes at 64 and 224 px.

1. frozen mode: one epoch of head training (params.yaml's mlp head, batch 128, AdamW) on 10,000 cached
   ResNet-50 embeddings (5 views, 2048 features, float16) through fit(); target <= 2 s.
   The seed's way runs the backbone on every image every epoch: decode + EvalPreset + ResNet-50 forward
   (fp32, eager) + the same head step, timed on a subset of real JPEGs and extrapolated per image to 10,000.
2. images/s: the embed stage (backbone inference per image and view) and finetune training steps
   (forward + backward + AdamW, the whole ResNet-50), on tensors already in memory and, at 64 px, end to end
   through fit() with TrainPreset decoding real JPEGs.

    .venv/bin/python benchmarks/bench_training.py
    .venv/bin/python benchmarks/bench_training.py --subset 128 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from galmorph.config import load_params, replace
from galmorph.data.dataset import ImageDataset
from galmorph.data.transforms import EvalPreset
from galmorph.models.inference import amp_dtype_for, autocast
from galmorph.models.resnet import build_model, param_groups, set_trainable
from galmorph.training.features import FeatureCache, compute_features
from galmorph.training.loop import fit

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "galaxyzoo"


def real_catalogue(n: int) -> pd.DataFrame:
    """n real SDSS cut-outs (423 px JPEGs of GZ1), alternating classes, as a catalogue."""
    labels = pd.read_csv(REAL / "labels.csv", usecols=["filename", "label", "dataset"])
    labels = labels[(labels["dataset"] == "gz1_sdss") & labels["label"].isin(["spiral", "elliptical"])]
    per_class = [g.head(n // 2) for _, g in labels.groupby("label")]
    df = pd.concat(per_class).reset_index(drop=True)
    return pd.DataFrame(
        {
            "galaxy_id": df["filename"],
            "image_path": [str(REAL / f) for f in df["filename"]],
            "label": df["label"],
            "label_id": (df["label"] == "elliptical").astype(int),
            "p_spiral": np.nan,
            "p_elliptical": np.nan,
        }
    )


def frozen_epoch(params, n: int = 10_000, views: int = 5, dim: int = 2048) -> float:
    """Median seconds of one head-training epoch (train_one_epoch only) over epochs 2..4 of fit()."""
    rng = np.random.default_rng(0)
    ids = [f"g{i}" for i in range(n + 1000)]
    feats = np.abs(rng.standard_normal((len(ids), views, dim), dtype=np.float32)).astype(np.float16)
    labels = rng.integers(0, 2, len(ids))
    catalogue = pd.DataFrame(
        {
            "galaxy_id": ids,
            "image_path": "unused.jpg",
            "label_id": labels,
            "split": ["train"] * n + ["val"] * 1000,
        }
    )
    model = build_model(params.model)
    cache = FeatureCache(
        features=feats,
        galaxy_ids=np.asarray(ids, dtype=object),
        image_paths=catalogue["image_path"].to_numpy(dtype=object),
        views=["identity", "rot90", "rot180", "rot270", "hflip"][:views],
        backbone_state=model.backbone.state_dict(),
        meta={"arch": params.model.arch, "weights": params.model.weights},
    )
    p = dataclasses.replace(
        params, train=replace(params.train, mode="frozen", epochs=4, device="cpu", early_stopping_patience=0)
    )
    result = fit(catalogue, p, features=cache, progress=False)
    return statistics.median(n / h["images_per_s"] for h in result.history[1:])


def seed_way_per_image(params, catalogue: pd.DataFrame, batch_size: int) -> float:
    """Seconds per image of the seed's frozen training: decode, preprocess, backbone forward, head step."""
    torch.manual_seed(0)
    model = build_model(params.model)
    set_trainable(model, "frozen", 0)
    model.eval()
    opt = torch.optim.AdamW(param_groups(model, 1e-3, 1e-4, 1.0))
    loader = DataLoader(ImageDataset(catalogue, EvalPreset(params.preprocess)), batch_size=batch_size, num_workers=2)
    seen, start = 0, None
    for i, (x, y, _soft, _idx) in enumerate(loader):
        if i == 1:  # the first batch pays for worker start-up and oneDNN set-up
            seen, start = 0, time.perf_counter()
        with torch.no_grad():
            f = model.backbone(x)
        model.head.train()
        loss = torch.nn.functional.cross_entropy(model.head(f), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    return (time.perf_counter() - start) / seen


def finetune_step_rate(params, size: int, batch_size: int, steps: int, amp_dtype: torch.dtype | None = None) -> float:
    """Images/s of full ResNet-50 training steps on an in-memory batch (no data loading), fp32 or autocast."""
    torch.manual_seed(0)
    model = build_model(params.model).to(memory_format=torch.channels_last)
    set_trainable(model, "finetune", 0)
    model.train()
    opt = torch.optim.AdamW(param_groups(model, 1e-3, 1e-4, 0.7))
    x = torch.randn(batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch_size,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with autocast(torch.device("cpu"), amp_dtype):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times[1:])


def embed_rate(params, catalogue: pd.DataFrame, size: int, amp_dtype: torch.dtype | None = None) -> float:
    """Image-views/s of the embed stage's backbone pass (decoding included) on real JPEGs."""
    torch.manual_seed(0)
    pre = replace(params.preprocess, image_size=size)
    model = build_model(params.model)
    views = ["identity", "rot90"]
    compute_features(model.backbone, catalogue.head(8), pre, views, batch_size=8, num_workers=0, progress=False)
    start = time.perf_counter()
    compute_features(
        model.backbone, catalogue, pre, views, batch_size=32, num_workers=2, amp_dtype=amp_dtype, progress=False
    )
    return len(catalogue) * len(views) / (time.perf_counter() - start)


def finetune_e2e_rate(params, catalogue: pd.DataFrame, size: int, batch_size: int) -> float:
    """Images/s of a finetune epoch through fit(): TrainPreset on real JPEGs in 2 workers + training steps."""
    cat = catalogue.copy()
    cat["split"] = ["train"] * (len(cat) - 16) + ["val"] * 16
    p = dataclasses.replace(
        params,
        preprocess=replace(params.preprocess, image_size=size),
        train=replace(
            params.train, mode="finetune", epochs=1, batch_size=batch_size, device="cpu", num_workers=2, warmup_epochs=0
        ),
    )
    return fit(cat, p, progress=False).history[0]["images_per_s"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subset", type=int, default=192, help="real images for the seed's way and end-to-end rates")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--skip-224", action="store_true", help="leave out the (slow) 224 px finetune step")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = load_params(REPO / "params.yaml")
    params = dataclasses.replace(params, model=replace(params.model, arch="resnet50", weights="none"))
    print(
        f"{params.model.arch}, head {params.model.head} {params.model.hidden}, {args.threads} threads, "
        f"preprocess {params.preprocess.resize}->{params.preprocess.crop}->{params.preprocess.image_size} px"
    )
    if not (REAL / "labels.csv").is_file():
        sys.exit(f"{REAL}: real images needed for the seed's way and the end-to-end rates")
    catalogue = real_catalogue(args.subset)

    epoch_s = frozen_epoch(params)
    print("\n## frozen mode, one epoch over 10,000 galaxies")
    print("| way | s per epoch | note |")
    print("| --- | ---: | --- |")
    print(
        f"| head on cached embeddings (galmorph) | {epoch_s:.2f} | median of epochs 2-4 through fit(); any input size |"
    )
    for size in (params.preprocess.image_size, 224):
        sized = dataclasses.replace(params, preprocess=replace(params.preprocess, image_size=size))
        per_image = seed_way_per_image(sized, catalogue, batch_size=64)
        seed_epoch = per_image * 10_000
        print(
            f"| backbone on every image (seed's way), {size} px input | {seed_epoch:.0f} | "
            f"{per_image * 1000:.1f} ms/image measured on {len(catalogue) - 64} real JPEGs, x 10,000; "
            f"speed-up {seed_epoch / epoch_s:.0f}x |"
        )
    print(f"epoch target <= 2 s: {epoch_s <= 2}; speed-up target >= 100x (see the rows above)")

    print("\n## images/s")
    print("| mode | what | 64 px | 224 px |")
    print("| --- | --- | ---: | ---: |")
    print(f"| frozen | head training (embeddings/s; independent of image size) | {10_000 / epoch_s:,.0f} | same |")
    amp = amp_dtype_for(torch.device("cpu"), "auto")  # what train.precision: auto picks on this CPU
    modes = [("fp32", None)] + ([("bf16 autocast (default here)", amp)] if amp is not None else [])
    for name, dtype in modes:
        e64 = embed_rate(params, catalogue.head(64), 64, dtype)
        e224 = embed_rate(params, catalogue.head(32), 224, dtype)
        print(
            f"| frozen | embed stage, {name}: backbone per image-view, JPEG decoding included | {e64:.1f} | {e224:.1f} |"
        )
    for name, dtype in modes:
        f64 = finetune_step_rate(params, 64, 32, 3, dtype)
        f224 = float("nan") if args.skip_224 else finetune_step_rate(params, 224, 8, 2, dtype)
        print(f"| finetune | ResNet-50 training step, {name}, tensors in memory | {f64:.1f} | {f224:.1f} |")
    e2e = finetune_e2e_rate(params, catalogue, 64, 32)
    print(f"| finetune | fit() epoch, train.precision auto: TrainPreset on real JPEGs + steps | {e2e:.1f} | - |")


if __name__ == "__main__":
    main()
