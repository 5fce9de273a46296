"""Which backbone features make the best out-of-distribution score (post hoc, no retraining).

The product's detector (models.ood) uses layer4's pooled features. This refits the same detector (one Ledoit-Wolf
covariance, threshold at the 0.99 val quantile) on other layers and combinations, standardised per feature, and
prints each variant's AUROC against the real test galaxies for Galaxy Zoo's `other` rows (1,000 sampled), ood-dev's
`other` rows and ood-dev's spirals and ellipticals, and the share of each it flags. The images go through the
model's EvalPreset without TTA, as bench_ood.py's do; the layer4 row differs from bench_ood.py's in the Galaxy Zoo
`other` sample (pandas' sample here, numpy's permutation there).

    .venv/bin/python benchmarks/ood_features.py --model /tmp/real-ood/runs/makereal-seed1/model.pt \
        --splits /tmp/real-ood/data/processed/splits.parquet
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from galmorph.data.dataset import ImageDataset, label_ids
from galmorph.data.transforms import EvalPreset
from galmorph.models.inference import prepare_for_inference
from galmorph.models.ood import fit_detector
from galmorph.models.resnet import load_model
from galmorph.paths import repo_root, resolve_path

SHARED = Path(__file__).resolve().parents[2] / "shared"
VARIANTS = {
    "layer4 (product)": (["l4"], False),
    "layer4, standardised": (["l4"], True),
    "layer3": (["l3"], True),
    "layer3 + layer4": (["l3", "l4"], True),
    "layer2 + layer3 + layer4": (["l2", "l3", "l4"], True),
    "layer4 mean + std": (["l4", "l4std"], True),
}


def layer_features(net: torch.nn.Module, preprocess, paths: Iterable[str]) -> dict[str, np.ndarray]:
    """Spatially pooled layer2/3/4 features (and layer4's spatial std) of each image."""
    b = net.backbone
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("l2", "l3", "l4", "l4std")}
    loader = DataLoader(ImageDataset(list(paths), EvalPreset(preprocess)), batch_size=128, num_workers=2)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for x, *_ in loader:
            h = b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x.contiguous(memory_format=torch.channels_last))))))
            h2 = b.layer2(h)
            h3 = b.layer3(h2)
            h4 = b.layer4(h3).float()
            out["l2"].append(h2.float().mean((2, 3)))
            out["l3"].append(h3.float().mean((2, 3)))
            out["l4"].append(h4.mean((2, 3)))
            out["l4std"].append(h4.std((2, 3)))
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--splits", required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    loaded = load_model(args.model)
    net = prepare_for_inference(loaded.model, torch.device("cpu"))
    splits = pd.read_parquet(args.splits)
    root = repo_root()
    gz = pd.read_csv(SHARED / "galaxyzoo" / "labels.csv", usecols=["filename", "label"])
    od = pd.read_csv(SHARED / "ood-dev" / "labels.csv", usecols=["filename", "label"])
    groups = {
        name: [str(resolve_path(str(p), root)) for p in splits.loc[splits.split == name, "image_path"]]
        for name in ("train", "val", "test")
    }
    other = gz[gz.label == "other"].sample(1000, random_state=0)
    groups["GZ other"] = [str(SHARED / "galaxyzoo" / f) for f in other.filename]
    groups["ood-dev other"] = [str(SHARED / "ood-dev" / f) for f in od.loc[od.label == "other", "filename"]]
    groups["ood-dev galaxies"] = [str(SHARED / "ood-dev" / f) for f in od.loc[od.label != "other", "filename"]]
    start = time.time()
    feats = {name: layer_features(net, loaded.preprocess, paths) for name, paths in groups.items()}
    print(f"features of {sum(map(len, groups.values())):,} images in {time.time() - start:.0f} s")

    train = feats["train"]
    mean = {k: v.mean(0) for k, v in train.items()}
    std = {k: v.std(0) + 1e-6 for k, v in train.items()}
    y = label_ids(splits[splits.split == "train"])
    against = ("GZ other", "ood-dev other", "ood-dev galaxies")
    print("| features | " + " | ".join(f"AUROC {g}" for g in against) + " | test flagged | "
          + " | ".join(f"{g} flagged" for g in against) + " |")  # fmt: skip
    print("| --- |" + " ---: |" * (2 * len(against) + 1))
    for name, (keys, standardise) in VARIANTS.items():

        def stack(group: str, keys=keys, standardise=standardise) -> np.ndarray:
            f = feats[group]
            return np.hstack([(f[k] - mean[k]) / std[k] if standardise else f[k] for k in keys])

        detector = fit_detector(stack("train"), y, stack("val"), 0.99)
        scores = {g: detector.scores(stack(g)) for g in ("test", *against)}
        aucs = [
            roc_auc_score(
                np.r_[np.zeros(len(scores["test"])), np.ones(len(scores[g]))], np.r_[scores["test"], scores[g]]
            )
            for g in against
        ]
        flagged = [np.mean(scores[g] > 1) for g in ("test", *against)]
        print(
            f"| {name} | "
            + " | ".join(f"{a:.3f}" for a in aucs)
            + " | "
            + " | ".join(f"{f:.1%}" for f in flagged)
            + " |"
        )


if __name__ == "__main__":
    main()
