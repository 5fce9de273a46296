"""Where does the rest of the distance to 97% come from: compute, or the data? The same training code (galmorph's
fit(), train.loader: cache, BatchAugment) on a GPU, where epochs, depth and resolution cost minutes instead of
hours, scored like evaluate on the same test split and on ../shared/ood-dev.

The GPU machine has PyTorch but not ../shared (174 MB, over what travels there), so `pack` writes, here, each
image's fixed frame (preprocess.crop of the 424-px frame, make real's 192) at its native resolution, at most
`--side` px, as a JPEG (quality 90) with an index of labels, vote fractions, sources and the main split; `run`,
there, trains each recipe on those files with preprocess.resize = crop, so the frame is the whole file, and
writes every KPI and every prediction (for benchmarks/shared_errors.py against a CPU run) under --out.

    # here, after real_runs.sh has prepared its scratch copy (data/processed/splits.parquet)
    .venv/bin/python benchmarks/gpu_ceiling.py pack /tmp/real-base/data/processed/splits.parquet \\
        --ood ../shared/ood-dev/labels.csv --out .gpu-pack
    # on the GPU machine, in the repo's root, with .gpu-pack (git-ignored) carried there
    PYTHONPATH=src python3 benchmarks/gpu_ceiling.py run .gpu-pack --out "$OUT" --budget 400 \
        --set train.deterministic=false --set train.seed=1 r18-64-35 r50-128-40 r18-64-100
    # a check of the harness on any machine (a few images per split, one epoch at 32 px)
    .venv/bin/python benchmarks/gpu_ceiling.py pack ... --limit 40 --out /tmp/pack && \
        .venv/bin/python benchmarks/gpu_ceiling.py run /tmp/pack tiny --device cpu --out /tmp/ceiling

Differences from the CPU runs, all small: each image is resampled twice (to the packed side, then to the
network's) and JPEG-compressed once more; the seed's run is not bit-identical to the CPU's (cuDNN, bf16 on a GPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from galmorph.config import CLASSES, PreprocessConfig, load_params, with_overrides
from galmorph.data.images import load_rgb
from galmorph.data.transforms import FixedFrame
from galmorph.errors import UserError
from galmorph.evaluation.calibration import fit_temperature
from galmorph.evaluation.metrics import classification_metrics
from galmorph.evaluation.subsets import winning_fraction
from galmorph.models.inference import predict_logits, softmax_t
from galmorph.training.loop import fit

REPO = Path(__file__).resolve().parents[1]
INDEX_COLUMNS = ["galaxy_id", "file", "label", "p_spiral", "p_elliptical", "dataset", "split"]

# make real (the Makefile's REAL_CPU) without its data and evaluate keys: the base every recipe changes
MAKE_REAL = {
    "train.mode": "finetune", "model.arch": "resnet18", "preprocess.image_size": 64, "train.epochs": 35,
    "train.batch_size": 64, "train.lr": 0.0007447144904083078, "train.weight_decay": 1.2697111322756417e-06,
    "model.hidden": 256, "model.dropout": 0.16516741050193706, "train.label_smoothing": 0.030697295105676373,
    "train.layer_decay": 1.0, "train.early_stopping_patience": 0, "train.loader": "cache",
    "preprocess.decode": "draft",
}  # fmt: skip
# REAL_GPU's training values (the Makefile, params.yaml's head), without its 12 tuning trials; the loader and
# decoding stay make real's (cache, draft), which change the speed, not what the network sees
REAL_GPU = {
    "model.arch": "resnet50", "preprocess.image_size": 128, "train.epochs": 40, "train.batch_size": 128,
    "train.lr": 0.001, "train.weight_decay": 0.05, "train.label_smoothing": 0.05, "model.hidden": 1024,
    "model.dropout": 0.2,
}  # fmt: skip
RECIPES: dict[str, dict[str, Any]] = {
    "r18-64-35": {},  # make real itself: the anchor against the CPU runs
    "r50-128-40": REAL_GPU,  # make real-gpu's training
    "r18-64-100": {"train.epochs": 100},  # epochs alone
    "r18-64-150": {"train.epochs": 150},
    "r18-128-100": {"preprocess.image_size": 128, "train.epochs": 100},  # resolution (and epochs)
    "r50-64-100": {"model.arch": "resnet50", "train.epochs": 100},  # depth (and epochs)
    "tiny": {"preprocess.image_size": 32, "train.epochs": 1},  # a check of the harness, on any machine
}


def pack(
    splits: Path, ood: Path | None, out: Path, side: int, crop: int, resize: int, limit: int | None, force: bool
) -> None:
    """The fixed frame of every image of the main split (and ood-dev's spirals and ellipticals) as JPEG files."""
    if (out / "index.csv").exists() and not force:
        raise UserError(f"{out}: already holds a pack (index.csv); pass --force to write over it")
    rows = pd.read_parquet(splits)
    rows = rows.assign(galaxy_id=rows["galaxy_id"].astype(str), source=rows["image_path"].astype(str))
    if ood is not None:
        o = pd.read_csv(ood)
        o = o[o["label"].isin(CLASSES)]
        o = pd.DataFrame({
            "galaxy_id": o["filename"], "source": [str(ood.parent / f) for f in o["filename"]], "label": o["label"],
            "dataset": o.get("dataset", "ood"), "split": "ood",
        })  # fmt: skip
        rows = pd.concat([rows, o], ignore_index=True)
    if limit:
        rows = rows.groupby("split", group_keys=False).head(limit)
    (out / "images").mkdir(parents=True, exist_ok=True)
    cfg = PreprocessConfig(resize=resize, crop=crop, image_size=side)
    files = []
    for i, src in enumerate(tqdm(rows["source"], desc="pack", unit="img")):
        try:
            img = load_rgb(Path(src))
        except (OSError, ValueError, UserError) as exc:
            raise UserError(f"{src}: cannot read image (row {i} of the pack): {exc}") from None
        native = round(min(img.size) * crop / resize)
        name = f"images/{i:05d}.jpg"
        FixedFrame(cfg, min(native, side))(img).save(out / name, "JPEG", quality=90)
        files.append(name)
    rows = rows.assign(file=files)
    for c in ("p_spiral", "p_elliptical"):
        if c not in rows.columns:
            rows[c] = np.nan
    tmp = out / "index.csv.tmp"
    rows[INDEX_COLUMNS].to_csv(tmp, index=False)
    tmp.replace(out / "index.csv")
    size = sum(p.stat().st_size for p in (out / "images").iterdir())
    print(f"wrote {len(rows)} images ({size / 2**20:.1f} MiB) and {out / 'index.csv'}")


def _scores(model: Any, rows: pd.DataFrame, params: Any, temperature: float, device: str) -> tuple[dict, np.ndarray]:
    """evaluate's KPIs (with 95% bootstrap intervals) of one set, and its calibrated probabilities."""
    logits = predict_logits(model, rows, params.preprocess, device=device, num_workers=8)
    probs = softmax_t(logits, temperature)
    labels = rows["label_id"].to_numpy()
    kpis = {k: v.to_dict() for k, v in classification_metrics(probs, labels).items()}
    kpis["n"] = len(rows)
    return kpis, probs


def run_one(name: str, index: pd.DataFrame, device: str, deadline: float, extra: dict[str, Any]) -> tuple[dict, list]:
    overrides = {**MAKE_REAL, **RECIPES[name], **extra, "train.device": device, "train.num_workers": 8}
    side = 2 * overrides["preprocess.image_size"]
    # the files are the frame already: crop = resize keeps all of each file (FixedFrame, draft_side)
    overrides |= {"preprocess.crop": side, "preprocess.resize": side}
    params = with_overrides(load_params(REPO / "params.yaml"), overrides)

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"budget spent after epoch {epoch}")

    start = time.monotonic()
    try:
        result = fit(index, params, on_epoch=on_epoch, progress=False)
    except TimeoutError as exc:
        return {"recipe": name, "overrides": overrides, "stopped": str(exc)}, []
    train_s = time.monotonic() - start
    n_train = int((index["split"] == "train").sum())
    epochs = result.history[1:] or result.history
    val = index[index["split"] == "val"]
    temperature = fit_temperature(result.val_logits, result.val_labels)
    record: dict[str, Any] = {
        "recipe": name, "overrides": overrides, "train_min": round(train_s / 60, 2),
        # one epoch's training images over the median epoch's seconds (validation included), the first left out
        "images_per_s": round(n_train / float(np.median([h["epoch_time_s"] for h in epochs])), 1),
        "best_epoch": result.best_epoch, "val_accuracy": result.best_metrics.get("val_acc"),
        "temperature": temperature, "n_val": len(val),
    }  # fmt: skip
    preds = []
    for part in ("test", "ood"):
        rows = index[index["split"] == part]
        if rows.empty:
            continue
        kpis, probs = _scores(result.model, rows, params, temperature, device)
        if part == "test":
            win = winning_fraction(rows, rows["label_id"].to_numpy())
            sure = np.isfinite(win) & (win >= 0.8)
            right = probs.argmax(1) == rows["label_id"].to_numpy()
            kpis["n_confident"] = int(sure.sum())
            kpis["confident_accuracy"] = float(right[sure].mean()) if sure.any() else None
            kpis["by_dataset"] = {
                d: float(right[(rows["dataset"] == d).to_numpy()].mean()) for d in rows["dataset"].unique()
            }
        record[part] = kpis
        preds.append(pd.DataFrame({
            "run": name, "set": part, "galaxy_id": rows["galaxy_id"].to_numpy(), "label": rows["label"].to_numpy(),
            "predicted": np.array(CLASSES)[probs.argmax(1)], "p_spiral": probs[:, 0], "dataset": rows["dataset"].to_numpy(),
        }))  # fmt: skip
    return record, preds


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run(
    packed: Path, out: Path, names: list[str], budget_s: float, device: str, extra: dict[str, Any], force: bool
) -> None:
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise UserError(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    if not (packed / "index.csv").is_file():
        raise UserError(f"{packed}: no index.csv (expected a folder written by `gpu_ceiling.py pack`)")
    if (out / "ceiling.json").exists() and not force:
        raise UserError(f"{out}: already holds results (ceiling.json); pass --force to write over them")
    index = pd.read_csv(packed / "index.csv", dtype={"galaxy_id": str})
    missing = set(INDEX_COLUMNS) - set(index.columns)
    if missing:
        raise UserError(f"{packed / 'index.csv'}: missing column(s) {', '.join(sorted(missing))}")
    index = index.assign(
        image_path=[str((packed / f).resolve()) for f in index["file"]],
        label_id=index["label"].map({c: i for i, c in enumerate(CLASSES)}).astype("int64"),
    )
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    records, preds = [], []
    for name in names:
        if time.monotonic() > deadline:
            records.append({"recipe": name, "stopped": "budget spent before it started"})
            continue
        print(f"{name}: training", flush=True)
        record, p = run_one(name, index, device, deadline, extra)
        records.append(record)
        preds += p
        summary = {k: record.get(k) for k in ("train_min", "images_per_s", "best_epoch", "stopped")}
        if "test" in record:
            summary |= {"test": record["test"]["accuracy"]["value"], "confident": record["test"]["confident_accuracy"]}
        if "ood" in record:
            summary["ood"] = record["ood"]["accuracy"]["value"]
        print(f"{name}: {json.dumps(summary, default=str)}", flush=True)
        _write(out / "ceiling.json", json.dumps(records, indent=1, default=str))
        if preds:
            _write(out / "predictions.csv", pd.concat(preds).to_csv(index=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("splits", type=Path)
    p.add_argument("--ood", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--side", type=int, default=192, help="the most pixels a packed frame keeps on a side")
    p.add_argument("--crop", type=int, default=192)
    p.add_argument("--resize", type=int, default=424)
    p.add_argument("--limit", type=int, help="at most this many images per split (a quick check)")
    p.add_argument("--force", action="store_true", help="write over an existing pack in --out")
    r = sub.add_parser("run")
    r.add_argument("packed", type=Path)
    r.add_argument("recipes", nargs="+")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--budget", type=float, default=480.0, help="seconds for all recipes; one past it stops")
    r.add_argument("--device", default="cuda")
    r.add_argument("--set", action="append", default=[], help="KEY=VALUE (JSON value) on top of every recipe")
    r.add_argument("--force", action="store_true", help="write over earlier results in --out")
    args = ap.parse_args()
    try:
        if args.cmd == "pack":
            if not args.splits.is_file():
                raise UserError(f"{args.splits}: not found (expected the split stage's splits.parquet)")
            pack(args.splits, args.ood, args.out, args.side, args.crop, args.resize, args.limit, args.force)
        else:
            run(args.packed, args.out, args.recipes, args.budget, args.device, _sets(args.set), args.force)
    except UserError as exc:
        ap.exit(2, f"gpu_ceiling: {exc}\n")


def _sets(items: list[str]) -> dict[str, Any]:
    """--set KEY=VALUE: the value as JSON (numbers, true/false), else as the plain string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. train.seed=1")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


if __name__ == "__main__":
    main()
