"""`galmorph predict` throughput on CPU beside the seed's way, measured in the same run.

A folder of 424x424 JPEGs (SDSS cut-outs from ../shared/galaxyzoo/images/kaggle_gz2 when present, else
synthetic ones) is scored by the params.yaml model (ResNet-50, MLP head, params.yaml's preprocessing):

  * baseline, the seed's way: one image at a time: PIL decode, EvalPreset, forward of a batch of one
    through the plain network (fp32, BatchNorm unfolded, NCHW), softmax(logits / T);
  * galmorph predict: predict.score_files (DataLoader decoding workers, batches, the pyfunc's
    GalaxyClassifier with BatchNorm folded and channels-last).

Rounds alternate the two, so a busy neighbour slows both alike; medians are reported, with the largest
difference between the two methods' probabilities (they must agree to 1e-4). Random weights: speed does
not depend on what the weights are.

    .venv/bin/python benchmarks/bench_predict.py                         # 256 images, 3 rounds
    .venv/bin/python benchmarks/bench_predict.py --images 512 --workers 2 --batch-size 64 --rounds 5
    .venv/bin/python benchmarks/bench_predict.py --synthetic             # no real images needed

Target: >= 3x the baseline's images/s (exit status 1 when missed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from galmorph.config import load_params
from galmorph.data.images import load_rgb
from galmorph.data.transforms import EvalPreset
from galmorph.models.inference import GalaxyClassifier, build_network
from galmorph.serving import predict

REPO = Path(__file__).resolve().parents[1]
REAL_IMAGES = REPO.parent / "shared" / "galaxyzoo" / "images" / "kaggle_gz2"
TARGET_SPEEDUP = 3.0
TEMPERATURE = 1.3


def synthetic_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """Noisy elliptical blobs, 424x424 JPEGs like SDSS cut-outs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:424, :424].astype(np.float32)
    paths = []
    for i in range(n):
        a, b = rng.uniform(20, 80, 2)
        blob = np.exp(-(((xx - 212) / a) ** 2 + ((yy - 212) / b) ** 2))
        rgb = np.stack([blob * c for c in rng.uniform(120, 255, 3)], -1) + rng.normal(0, 8, (424, 424, 3))
        path = folder / f"g{i:05d}.jpg"
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def seed_way(net: torch.nn.Module, preset: EvalPreset, paths: list[str]) -> np.ndarray:
    """One image at a time, fp32, the plain network: how the seed scored images."""
    out = np.empty((len(paths), 2), dtype=np.float64)
    with torch.no_grad():
        for i, path in enumerate(paths):
            x = preset(load_rgb(path)).unsqueeze(0)
            out[i] = torch.softmax(net(x) / TEMPERATURE, dim=1)[0].numpy()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--synthetic", action="store_true", help="synthetic JPEGs even when real ones are there")
    args = ap.parse_args(argv)

    params = load_params(REPO / "params.yaml")
    torch.manual_seed(0)
    net = build_network(params.model).eval()
    classifier = GalaxyClassifier(net, params.preprocess, temperature=TEMPERATURE, device="cpu")
    preset = EvalPreset(params.preprocess)

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        if REAL_IMAGES.is_dir() and not args.synthetic:
            paths = sorted(str(p) for p in REAL_IMAGES.glob("*.jpg"))[: args.images]
            source = f"{len(paths)} SDSS JPEGs from {REAL_IMAGES}"
        else:
            paths = synthetic_images(Path(tmp), args.images)
            source = f"{len(paths)} synthetic 424x424 JPEGs"
        print(
            f"{source}; model {params.model.arch}/{params.model.head}, input {params.preprocess.image_size} px; "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads",
            flush=True,
        )
        seed_way(net, preset, paths[:4])  # warm-up: allocator, oneDNN primitives
        predict.score_files(classifier, paths[:8], batch_size=4, workers=0, progress=False)

        times: dict[str, list[float]] = {"baseline": [], "predict": []}
        diff = 0.0
        for r in range(args.rounds):
            t = time.perf_counter()
            base = seed_way(net, preset, paths)
            times["baseline"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ours = predict.score_files(
                classifier, paths, batch_size=args.batch_size, workers=args.workers, progress=False
            )
            times["predict"].append(time.perf_counter() - t)
            diff = max(diff, float(np.abs(ours[["p_spiral", "p_elliptical"]].to_numpy() - base).max()))
            print(
                f"round {r + 1}: baseline {len(paths) / times['baseline'][-1]:.1f} img/s, "
                f"predict {len(paths) / times['predict'][-1]:.1f} img/s",
                flush=True,
            )

    rate = {k: len(paths) / statistics.median(v) for k, v in times.items()}
    speedup = rate["predict"] / rate["baseline"]
    print(f"\n| method ({args.rounds} rounds, median) | images/s | x baseline |")
    print("| --- | ---: | ---: |")
    print(f"| baseline: one image at a time, fp32 | {rate['baseline']:.1f} | 1.00 |")
    print(
        f"| galmorph predict (batch {args.batch_size}, {args.workers} workers) | {rate['predict']:.1f} | {speedup:.2f} |"
    )
    print(f"largest probability difference: {diff:.2e}")
    ok = speedup >= TARGET_SPEEDUP and diff < 1e-4
    print(f"target >= {TARGET_SPEEDUP}x with probabilities equal to 1e-4: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
