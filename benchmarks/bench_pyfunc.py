"""Benchmark the logged MLflow classifier (galmorph.tracking + galmorph.models.inference) on CPU.

What a user of `mlflow.pyfunc.load_model("models:/galmorph@champion")` gets: the params.yaml model
(ResNet-50, MLP head) at the params.yaml input size, scoring SDSS-sized JPEGs (424x424) given as file: paths.
Beside it, in the same run, the obvious baselines: the same network in eval mode (decode, EvalPreset,
forward, softmax) in batches of 64 with NCHW tensors and unfolded BatchNorm, and one image at a time.
Also: the cost of logging and loading the model, what the provenance tags (git + dvc.lock + DVC
experiment) add to opening a run, and runs.log_dataset on a survey-sized catalogue beside MLflow's own
from_pandas + log_input.

    .venv/bin/python benchmarks/bench_pyfunc.py                  # 128 images, 3 rounds
    .venv/bin/python benchmarks/bench_pyfunc.py --images 256 --rounds 5 --arch resnet18

Target: the pyfunc at least as fast as the batched baseline and 2x the one-at-a-time one, with the same
probabilities (to 1e-4), and start_run with provenance under 2 s (exit status 1 when missed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP = 2.0
TARGET_PROVENANCE_S = 2.0


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Noisy elliptical blobs, 424x424 like SDSS cut-outs, saved as JPEG."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:424, :424].astype(np.float32)
    paths = []
    for i in range(n):
        a, b = rng.uniform(10, 60, 2)
        blob = np.exp(-(((xx - 212) / a) ** 2 + ((yy - 212) / b) ** 2))
        img = blob[..., None] * rng.uniform(100, 255, 3) + rng.normal(0, 6, (424, 424, 3))
        path = folder / f"g{i:05d}.jpg"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def baseline(net: torch.nn.Module, paths: list[Path], preprocess, temperature: float, batch_size: int) -> np.ndarray:
    """The obvious implementation: decode, EvalPreset, forward in eval mode (NCHW, BatchNorm as is), softmax."""
    from galmorph.data.images import load_rgb
    from galmorph.data.transforms import EvalPreset

    preset = EvalPreset(preprocess)
    out = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            x = torch.stack([preset(load_rgb(p)) for p in paths[start : start + batch_size]])
            out.append(torch.softmax(net(x) / temperature, 1).numpy())
    return np.concatenate(out)


def catalogue(n: int, seed: int = 0) -> pd.DataFrame:
    """A splits.parquet-shaped table of `n` galaxies."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "galaxy_id": [f"{587722981741363294 + i}" for i in range(n)],
            "image_path": [f"data/raw/images_gz2/images/{i}.jpg" for i in range(n)],
            "label": rng.choice(["spiral", "elliptical"], n),
            "label_id": rng.integers(0, 2, n),
            "p_spiral": rng.random(n),
            "p_elliptical": rng.random(n),
            "split": rng.choice(["train", "val", "test"], n),
            "ra": rng.uniform(0, 360, n),
            "dec": rng.uniform(-10, 70, n),
        }
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--arch", default=None, help="default: params.yaml model.arch")
    ap.add_argument("--catalogue-rows", type=int, default=600_000, help="rows for log_dataset (0 = skip)")
    args = ap.parse_args()

    import dataclasses

    import mlflow

    from galmorph.config import load_params
    from galmorph.models.inference import build_network
    from galmorph.tracking import logged_model, runs, store

    params = load_params(REPO / "params.yaml")
    model_cfg = dataclasses.replace(params.model, weights="none", arch=args.arch or params.model.arch)
    preprocess = params.preprocess
    temperature = 1.7
    torch.manual_seed(0)
    net = build_network(model_cfg).eval()
    print(
        f"{model_cfg.arch} {model_cfg.head} head, input {preprocess.image_size} px, {args.images} JPEGs 424x424, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="bench-pyfunc-") as tmp:
        tmp_path = Path(tmp)
        paths = write_images(tmp_path, args.images)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
        cfg = dataclasses.replace(params.mlflow, experiment="bench")
        store.experiment_id(cfg)  # create the store (SQLite migrations) outside the timings

        # provenance: runs.start_run (git, dvc.lock, exp tags, params) vs a bare mlflow run, in the repo
        with contextlib.chdir(REPO):
            exp_id = store.experiment_id(cfg)
            ours, bare = [], []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                with runs.start_run(cfg, "train", params):
                    pass
                ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                with mlflow.start_run(experiment_id=exp_id):
                    pass
                bare.append(time.perf_counter() - t0)

        dataset_s = bare_dataset_s = None
        if args.catalogue_rows:
            table = catalogue(args.catalogue_rows)
            table_path = tmp_path / "splits.parquet"
            table.to_parquet(table_path, index=False)
            with runs.start_run(cfg, "train", None):
                t0 = time.perf_counter()
                runs.log_dataset(table, table_path, name="splits", context="training")
                dataset_s = time.perf_counter() - t0
                t0 = time.perf_counter()  # baseline: MLflow's own from_pandas (schema from every value)
                plain = mlflow.data.from_pandas(table, source=str(table_path), name="plain", targets="label")
                mlflow.log_input(plain, context="training")
                bare_dataset_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        with runs.start_run(cfg, "train", None):
            uri = logged_model.log_classifier(
                net, model_cfg, preprocess, temperature=temperature, input_example=paths[0]
            )
        log_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = mlflow.pyfunc.load_model(uri, model_config={"image_root": str(paths[0].parent)})
        load_s = time.perf_counter() - t0

        frame = pd.DataFrame({"image": [f"file:{p}" for p in paths]})  # paths only under the image root
        few = max(1, args.images // 8)  # batch-1 forwards are slow: the per-image baseline scores fewer
        pyfunc_s, batched_s, single_s = [], [], []
        for _ in range(args.rounds):  # interleaved, so load changes hit all alike
            t0 = time.perf_counter()
            out = model.predict(frame)
            pyfunc_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            expected = baseline(net, paths, preprocess, temperature, batch_size=64)
            batched_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            baseline(net, paths[:few], preprocess, temperature, batch_size=1)
            single_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        model.predict(frame.head(few), params={"tta": True})
        tta_s = [time.perf_counter() - t0]

    diff = float(np.abs(out[["p_spiral", "p_elliptical"]].to_numpy() - expected).max())
    n = args.images
    rows = [
        ("pyfunc `predict` (batches of 64, BN folded, channels_last)", n, pyfunc_s),
        ("baseline: batches of 64, NCHW, BN as trained", n, batched_s),
        ("baseline: one image at a time", few, single_s),
        ("pyfunc `predict`, tta=True (8 views)", few, tta_s),
    ]
    rates = {name: k / statistics.median(xs) for name, k, xs in rows}
    rate, batched_rate, single_rate = (rates[r[0]] for r in rows[:3])
    print()
    print(f"| scoring JPEG paths ({args.rounds} rounds, TTA 1) | images | median s | min s | max s | images/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, k, xs in rows:
        med = statistics.median(xs)
        print(f"| {name} | {k} | {med:.2f} | {min(xs):.2f} | {max(xs):.2f} | {rates[name]:.1f} |")
    print()
    print(
        f"speed-up {rate / batched_rate:.2f}x over the batched baseline, {rate / single_rate:.1f}x over one at a "
        f"time; max |p_pyfunc - p_baseline| = {diff:.2e}"
    )
    print(f"log_classifier {log_s:.1f} s, mlflow.pyfunc.load_model {load_s:.1f} s")
    print(
        f"start_run with provenance: median {statistics.median(ours):.2f} s (min {min(ours):.2f}); "
        f"bare mlflow.start_run: median {statistics.median(bare):.2f} s"
    )
    if dataset_s is not None:
        print(
            f"log_dataset of {args.catalogue_rows:,} rows: {dataset_s:.2f} s (md5 of the file, schema from a "
            f"sample); mlflow.data.from_pandas + log_input: {bare_dataset_s:.2f} s"
        )
    ok = (
        rate / single_rate >= TARGET_SPEEDUP
        and rate >= batched_rate
        and diff < 1e-4
        and statistics.median(ours) < TARGET_PROVENANCE_S
    )
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
