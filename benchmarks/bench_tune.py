"""Tuning throughput: a frozen-mode Optuna study on cached embeddings, the pruner's saving, and workers on PostgreSQL.

    .venv/bin/python benchmarks/bench_tune.py                      # all three parts (PostgreSQL if installed)
    .venv/bin/python benchmarks/bench_tune.py --trials 10 --skip-postgres   # a quick look

1. The default study (params.yaml's tune section and search space) over --images galaxies whose embeddings
   are synthetic (2048-d, 5 views, float16, a class signal along a random direction, some labels flipped):
   the timing is the head's training, which does not care whether the features came from a real ResNet-50.
   Trials/minute and wall time include everything `galmorph tune` does (MLflow runs, plots).
2. The same study with `tune.pruner: none`, in the same run: the baseline for the epochs the pruner saves.
3. PostgreSQL (a throwaway cluster plus an MLflow server on it): one `galmorph tune` worker, then two on a
   fresh study, trials/minute from the first trial's start to the last trial's end in the storage (process
   start-up is not tuning).
Torch runs one thread per process (--threads) so 1 and 2 workers compare on equal terms on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from galmorph.config import CLASSES, Params, load_params, replace  # noqa: E402
from galmorph.io import write_parquet  # noqa: E402
from galmorph.models.resnet import build_model  # noqa: E402
from galmorph.tracking import store  # noqa: E402
from galmorph.training.features import FeatureCache, save_feature_cache  # noqa: E402
from galmorph.tuning.results import epochs_summary  # noqa: E402
from galmorph.tuning.study import storage_url  # noqa: E402
from galmorph.tuning.worker import run_study  # noqa: E402


def synthetic_data(params: Params, n: int, dim: int, views: int, seed: int = 0) -> tuple[pd.DataFrame, FeatureCache]:
    """A split catalogue of n galaxies and an embedding cache of the real backbone's shape."""
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 2
    noisy = rng.random(n) < 0.08  # volunteers disagree: some labels are wrong
    direction = rng.normal(size=dim) / np.sqrt(dim)
    signal = np.where(label ^ noisy, 1.0, -1.0)[:, None, None] * direction * 2.2
    features = np.empty((n, views, dim), dtype=np.float16)
    for i in range(0, n, 1000):
        block = rng.normal(size=(min(1000, n - i), views, dim)) + signal[i : i + 1000]
        features[i : i + 1000] = np.maximum(block, 0)  # post-ReLU features, as a backbone's are
    ids = np.array([f"g{i:06d}" for i in range(n)], dtype=object)
    part = rng.permutation(n) % 20
    split = np.where(part < 14, "train", np.where(part < 17, "val", "test"))
    catalogue = pd.DataFrame(
        {
            "galaxy_id": ids,
            "image_path": [f"synthetic/{g}.jpg" for g in ids],
            "label": np.array(CLASSES)[label],
            "label_id": label,
            "p_spiral": np.nan,
            "p_elliptical": np.nan,
            "split": split,
        }
    )
    torch.manual_seed(params.embed.seed)
    backbone = build_model(params.model).backbone.state_dict()
    meta = {
        "format": "galmorph.features/1",
        "fingerprint": f"synthetic-{n}-{dim}-{views}-{seed}",
        "arch": params.model.arch,
        "weights": params.model.weights,
        "preprocess": dataclasses.asdict(params.preprocess),
        "views": list(params.embed.views[:views]),
        "n": n,
        "feature_dim": dim,
        "device": "cpu",
    }
    cache = FeatureCache(features, ids, catalogue["image_path"].to_numpy(), meta["views"], backbone, meta)
    return catalogue, cache


def bench_params(base: Params, work: Path, **tune: object) -> Params:
    return dataclasses.replace(
        base,
        train=replace(base.train, device="cpu", num_workers=0),
        embed=replace(base.embed, out=str(work / "features")),
        split=replace(base.split, out=str(work / "splits.parquet")),
        tune=replace(base.tune, out=str(work / "best_params.yaml"), plots_dir=str(work / "tune"), **tune),
        mlflow=replace(base.mlflow, experiment="bench-tune"),
    )


def in_process_study(catalogue: pd.DataFrame, cache: FeatureCache, params: Params) -> dict[str, float]:
    start = time.perf_counter()
    outcome = run_study(catalogue, params, features=cache, storage=params.tune.storage, progress=False, echo=print)
    wall = time.perf_counter() - start
    finished = outcome.study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    epochs = epochs_summary(outcome.study, params.tune.epochs)
    return {
        "wall_s": wall,
        "trials": len(finished),
        "trials_per_min": 60 * len(finished) / wall,
        "epochs_run": epochs["epochs_run"],
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in finished),
        "best": outcome.study.best_value,
    }


def postgres_workers(
    params_file: Path, storage: str, tracking_url: str, workers: int, threads: int
) -> dict[str, float]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_url, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "galmorph.cli", "--params", str(params_file), "tune", "--storage", storage]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(workers)
    ]
    for proc in procs:
        out = proc.communicate()[0]
        if proc.returncode != 0:
            raise SystemExit(f"worker failed:\n{out[-3000:]}")
    best = yaml.safe_load((Path(yaml.safe_load(params_file.read_text())["tune"]["out"])).read_text())
    study = optuna.load_study(study_name=best["study"], storage=storage_url(None, storage))
    done = [
        t for t in study.get_trials() if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return {
        "trials": len(done),
        "span_s": span,
        "trials_per_min": 60 * len(done) / span,
        "workers_seen": len({t.user_attrs["worker"] for t in done}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--views", type=int, default=5)
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--pg-trials", type=int, default=12, help="trials per PostgreSQL configuration")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--skip-unpruned", action="store_true")
    ap.add_argument("--skip-postgres", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    base = load_params(REPO / "params.yaml")
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        work = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
        t0 = time.perf_counter()
        catalogue, cache = synthetic_data(base, args.images, args.dim, args.views)
        n_train = int((catalogue["split"] == "train").sum())
        print(
            f"data: {args.images:,} galaxies ({n_train:,} train) x {args.views} views x {args.dim} synthetic "
            f"features, made in {time.perf_counter() - t0:.1f} s; torch threads {args.threads}; "
            f"tune.epochs {base.tune.epochs}, pruner {base.tune.pruner}, space {', '.join(base.tune.space)}"
        )
        storage = f"sqlite:///{work / 'optuna.db'}"
        pruned_p = bench_params(base, work, n_trials=args.trials, storage=storage)
        store.experiment_id(pruned_p.mlflow)  # the new store's migrations are not tuning: outside the timing
        pruned = in_process_study(catalogue, cache, pruned_p)
        print(
            f"study, {pruned['trials']} trials, pruner {base.tune.pruner}: {pruned['wall_s']:.1f} s, "
            f"{pruned['trials_per_min']:.1f} trials/min, {pruned['pruned']} pruned, {pruned['epochs_run']:.0f} epochs, "
            f"best {base.tune.metric} {pruned['best']:.4f}"
        )
        if not args.skip_unpruned:
            none_p = bench_params(
                base, work, n_trials=args.trials, storage=storage, pruner="none", study_name="nopruning"
            )
            full = in_process_study(catalogue, cache, none_p)
            saved = 1 - pruned["epochs_run"] / full["epochs_run"]
            print(
                f"baseline, same study without pruning: {full['wall_s']:.1f} s, {full['trials_per_min']:.1f} trials/min, "
                f"{full['epochs_run']:.0f} epochs, best {full['best']:.4f}"
            )
            print(
                f"pruner saved {saved:.1%} of the epochs ({pruned['epochs_run']:.0f} vs {full['epochs_run']:.0f}) and "
                f"{1 - pruned['wall_s'] / full['wall_s']:.1%} of the wall time"
            )
        if not args.skip_postgres:
            postgres_part(base, work, catalogue, cache, args)


def postgres_part(
    base: Params, work: Path, catalogue: pd.DataFrame, cache: FeatureCache, args: argparse.Namespace
) -> None:
    from tests.postgres_utils import missing_requirements, mlflow_server, postgres_cluster

    reason = missing_requirements()
    if reason:
        print(f"postgres: skipped ({reason})")
        return
    write_parquet(work / "splits.parquet", catalogue)
    save_feature_cache(cache, work / "features")
    results = {}
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(postgres_cluster(["optuna1", "optuna2", "mlflow"]))
        url = stack.enter_context(mlflow_server(storage_url(None, f"{pg}/mlflow"), work / "artifacts"))
        for workers in (1, 2):
            p = bench_params(base, work, n_trials=args.pg_trials, study_name=f"pg{workers}")
            params_file = work / f"params-{workers}.yaml"
            params_file.write_text(yaml.safe_dump(dataclasses.asdict(p), sort_keys=False))
            results[workers] = postgres_workers(params_file, f"{pg}/optuna{workers}", url, workers, args.threads)
            r = results[workers]
            print(
                f"postgres, {workers} worker(s): {r['trials']} trials in {r['span_s']:.1f} s = "
                f"{r['trials_per_min']:.1f} trials/min (trials by {r['workers_seen']} worker(s))"
            )
    print(
        f"postgres: 2 workers / 1 worker = {results[2]['trials_per_min'] / results[1]['trials_per_min']:.2f}x trials/min"
    )


if __name__ == "__main__":
    main()
