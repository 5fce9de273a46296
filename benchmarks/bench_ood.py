"""How well the out-of-distribution score (models.ood) tells ordinary galaxies from what the model never saw.

In-distribution: the test split's spirals and ellipticals (real SDSS cut-outs nobody trained or tuned on).
Against them, each group's AUROC (95% bootstrap interval) and the share it flags (ood_score > 1), for the
Mahalanobis score and, as the baseline measured in the same run, 1 - max calibrated probability (MSP):

  * Galaxy Zoo's own `other` rows (../shared/galaxyzoo/labels.csv: mostly ordinary galaxies under a catch-all
    label, a few mergers, disturbed galaxies, stars and artefacts; ood_other.py splits them by kind);
  * ../shared/ood-dev: its `other` rows, and its spirals and ellipticals (a survey shift, not a new kind);
  * made-up non-galaxy images: Gaussian and uniform noise, blank frames, stripes and checkerboards, smooth
    gradients, star fields without a galaxy, random shapes and text.

Every image goes through predict's own path (serving.predict.score_files), so this is what users get.

    .venv/bin/python benchmarks/bench_ood.py --model /tmp/real-ood/runs/makereal-seed1/model.pt \
        --splits /tmp/real-ood/data/processed/splits.parquet --out /tmp/bench-ood [--tta]

With --tta every image is scored as `galmorph predict --tta` does (mean features over the model's TTA views). A
model trained before the detector had a TTA scale (models.ood) gets one fitted here as training now fits it
(the 0.99 quantile of the val split's mean features); --identity-tta scores its identity view instead (the
fallback), to compare the two.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from sklearn.metrics import roc_auc_score

from galmorph.evaluation.metrics import bootstrap_counts
from galmorph.models.inference import DEFAULT_TTA_VIEWS, GalaxyClassifier, predict_outputs
from galmorph.models.ood import OOD_COLUMN
from galmorph.models.resnet import load_model
from galmorph.paths import repo_root, resolve_path
from galmorph.serving.predict import score_files

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def made_up_images(folder: Path, n: int, seed: int = 0) -> dict[str, list[Path]]:
    """n images of each non-galaxy kind, 424 px like an SDSS cut-out, as PNG."""
    rng = np.random.default_rng(seed)
    size = 424
    yy, xx = np.mgrid[:size, :size] / size
    kinds: dict[str, list[Path]] = {}

    def save(kind: str, i: int, arr: np.ndarray) -> None:
        path = folder / f"{kind.replace('/', '-').replace(' ', '_')}_{i:03d}.png"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
        kinds.setdefault(kind, []).append(path)

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        save("gaussian noise", i, rng.normal(rng.uniform(20, 128), rng.uniform(10, 60), (size, size, 3)))
        save("uniform noise", i, rng.uniform(0, 255, (size, size, 3)))
        save("blank", i, np.full((size, size, 3), rng.uniform(0, 255, 3)))
        period = rng.uniform(0.02, 0.2)
        stripes = 127 + 127 * np.sign(np.sin(2 * np.pi * (xx * np.cos(i) + yy * np.sin(i)) / period))
        save(
            "stripes/checkers",
            i,
            (stripes if i % 2 else stripes * np.sign(np.sin(2 * np.pi * yy / period)))[..., None]
            * rng.uniform(0.3, 1, 3),
        )
        grad = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) * 255
        save("gradient", i, (grad - grad.min())[..., None] * rng.uniform(0.3, 1, 3))
        stars = rng.normal(15, 4, (size, size, 3))
        for _ in range(rng.integers(5, 40)):
            cy, cx, flux, width = *rng.uniform(0, size, 2), rng.uniform(50, 255), rng.uniform(1, 3)
            stars += flux * np.exp(-((yy * size - cy) ** 2 + (xx * size - cx) ** 2) / (2 * width**2))[..., None]
        save("star field", i, stars)
        im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(12):
            box = sorted(rng.uniform(0, size, 2)), sorted(rng.uniform(0, size, 2))
            shape = (box[0][0], box[1][0], box[0][1], box[1][1])
            colour = tuple(int(v) for v in rng.integers(0, 255, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(shape, fill=colour)
        draw.text((20, 20), "GALMORPH " * 3, fill=(255, 255, 255))
        save("shapes and text", i, np.asarray(im, dtype=np.float64))
    return kinds


def auroc_interval(
    inside: np.ndarray, outside: np.ndarray, n_boot: int = 200, seed: int = 0
) -> tuple[float, float, float]:
    """AUROC of telling `outside` (positive) from `inside` by a higher score, with a 95% bootstrap interval
    (the two groups resampled separately)."""
    y = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    s = np.r_[inside, outside]
    auc = roc_auc_score(y, s)
    rng = np.random.default_rng(seed)
    w_in, w_out = bootstrap_counts(rng, len(inside), n_boot), bootstrap_counts(rng, len(outside), n_boot)
    boots = [roc_auc_score(y, s, sample_weight=np.r_[a, b]) for a, b in zip(w_in, w_out, strict=True)]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(auc), float(lo), float(hi)


def paired_auroc_difference(
    inside: tuple[np.ndarray, np.ndarray], outside: tuple[np.ndarray, np.ndarray], n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float, float, float]:
    """(AUROC of A, of B, B minus A, its interval) on the same images (`inside` and `outside` each as (A's scores, B's
    scores)), with a 95% interval from one bootstrap of the images shared by both models: two models' AUROCs on
    the same rows are correlated, so their separate intervals overlap long after the difference is clear."""
    y = np.r_[np.zeros(len(inside[0])), np.ones(len(outside[0]))]
    a, b = np.r_[inside[0], outside[0]], np.r_[inside[1], outside[1]]
    auc_a, auc_b = roc_auc_score(y, a), roc_auc_score(y, b)
    rng = np.random.default_rng(seed)
    w_in, w_out = bootstrap_counts(rng, len(inside[0]), n_boot), bootstrap_counts(rng, len(outside[0]), n_boot)
    boots = [
        roc_auc_score(y, b, sample_weight=np.r_[i, o]) - roc_auc_score(y, a, sample_weight=np.r_[i, o])
        for i, o in zip(w_in, w_out, strict=True)
    ]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(auc_a), float(auc_b), float(auc_b - auc_a), float(lo), float(hi)


def scored(classifier: GalaxyClassifier, paths: list[str], workers: int, tta: bool = False) -> pd.DataFrame:
    df = score_files(classifier, paths, batch_size=128, workers=workers, tta=tta, progress=True)
    bad = df["error"] != ""
    if bad.any():
        print(f"  {int(bad.sum())} of {len(df)} unreadable, left out: {df.loc[bad, 'error'].iloc[0]}")
    df = df[~bad].copy()
    df["msp"] = 1.0 - df[[c for c in df.columns if c.startswith("p_")]].max(axis=1)
    return df


def labelled(csv: Path, keep: str | None) -> list[str]:
    table = pd.read_csv(csv, usecols=["filename", "label"], dtype=str)
    rows = table if keep is None else table[table["label"] == keep]
    return [str(csv.parent / f) for f in rows["filename"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a models/model.pt trained with train.ood_quantile > 0")
    ap.add_argument("--splits", required=True, help="the data/processed/splits.parquet it was trained on")
    ap.add_argument("--out", default="/tmp/bench-ood", help="made-up images and the table go here")
    ap.add_argument("--n-made-up", type=int, default=40, help="images of each non-galaxy kind")
    ap.add_argument("--max-other", type=int, default=1000, help="Galaxy Zoo `other` rows to score (a random sample)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--time-n", type=int, default=1000, help="test images timed with and without the detector")
    ap.add_argument("--tta", action="store_true", help="score as `galmorph predict --tta` does (the model's views)")
    ap.add_argument("--identity-tta", action="store_true", help="with --tta: no fitted TTA scale (the fallback)")
    args = ap.parse_args()
    if args.identity_tta and not args.tta:
        ap.error("--identity-tta is a way of scoring with --tta: pass both")
    out = Path(args.out)
    classifier = GalaxyClassifier.from_artifacts(args.model, device="cpu")
    if classifier.ood is None:
        raise SystemExit(f"{args.model}: no out-of-distribution detector (train it with train.ood_quantile > 0)")
    start = time.perf_counter()
    splits = pd.read_parquet(args.splits)
    test = splits[splits["split"] == "test"]
    root = repo_root()
    if args.tta and not args.identity_tta and not classifier.ood.scores_views(classifier.tta_views):
        val = [str(resolve_path(str(p), root)) for p in splits.loc[splits["split"] == "val", "image_path"]]
        loaded = load_model(args.model)
        kw = {"tta_views": DEFAULT_TTA_VIEWS, "features": True, "num_workers": args.workers, "progress": True}
        _, feats = predict_outputs(loaded.model, val, loaded.preprocess, **kw)
        classifier.ood = classifier.ood.with_tta_scale(feats, DEFAULT_TTA_VIEWS)
        print(
            f"TTA scale fitted on {len(val)} val images: {classifier.ood.tta_scale:.1f} "
            f"(one view: {classifier.ood.scale:.1f})"
        )
    if args.identity_tta:
        classifier.ood = dataclasses.replace(classifier.ood, tta_views=(), tta_scale=0.0)
    inside = scored(classifier, [str(resolve_path(str(p), root)) for p in test["image_path"]], args.workers, args.tta)
    gz_other = labelled(SHARED / "galaxyzoo" / "labels.csv", "other")
    gz_other = list(np.random.default_rng(0).permutation(gz_other)[: args.max_other])
    groups = {
        "Galaxy Zoo `other` (SDSS)": gz_other,
        "ood-dev `other` (DECaLS)": labelled(SHARED / "ood-dev" / "labels.csv", "other"),
        "ood-dev spirals+ellipticals (DECaLS)": [
            p
            for p in labelled(SHARED / "ood-dev" / "labels.csv", None)
            if p not in set(labelled(SHARED / "ood-dev" / "labels.csv", "other"))
        ],
    }
    groups |= {k: [str(p) for p in v] for k, v in made_up_images(out / "made_up", args.n_made_up).items()}
    rows = [
        {
            "group": "SDSS test galaxies (in-distribution)",
            "n": len(inside),
            "flagged": (inside[OOD_COLUMN] > 1).mean(),
            "auroc": "",
            "auroc_msp": "",
        }
    ]
    for name, paths in groups.items():
        print(f"{name}: {len(paths)} images")
        df = scored(classifier, paths, args.workers, args.tta)
        auc, lo, hi = auroc_interval(inside[OOD_COLUMN].to_numpy(), df[OOD_COLUMN].to_numpy())
        msp, mlo, mhi = auroc_interval(inside["msp"].to_numpy(), df["msp"].to_numpy())
        rows.append(
            {
                "group": name,
                "n": len(df),
                "flagged": (df[OOD_COLUMN] > 1).mean(),
                "auroc": f"{auc:.3f} [{lo:.3f}, {hi:.3f}]",
                "auroc_msp": f"{msp:.3f} [{mlo:.3f}, {mhi:.3f}]",
            }
        )
    # what the detector costs predict: the same images with and without it, alternating rounds (best of 3)
    some = [str(resolve_path(str(p), root)) for p in test["image_path"][: args.time_n]]
    detector, times = classifier.ood, {"without": [], "with": []}
    for _ in range(3):
        for name, ood in (("without", None), ("with", detector)):
            classifier.ood = ood
            t0 = time.perf_counter()
            score_files(classifier, some, batch_size=128, workers=args.workers, tta=args.tta, progress=False)
            times[name].append(time.perf_counter() - t0)
    classifier.ood = detector
    rate = {k: len(some) / min(v) for k, v in times.items()}
    print(
        f"predict on {len(some)} test images: {rate['without']:.0f} img/s without the detector, "
        f"{rate['with']:.0f} with it (ratio {rate['with'] / rate['without']:.3f})"
    )
    table = pd.DataFrame(rows)
    table["flagged"] = table["flagged"].map(lambda v: f"{100 * v:.1f}%")
    md = table.rename(
        columns={
            "flagged": "flagged (score > 1)",
            "auroc": "AUROC, ood_score",
            "auroc_msp": "AUROC, 1 - max p (baseline)",
        }
    ).to_markdown(index=False)
    print(md)
    print(
        f"model {args.model}; quantile {classifier.ood.quantile}; tta {args.tta} (scale {classifier.ood.tta_scale:.1f}); "
        f"{time.perf_counter() - start:.0f} s"
    )
    (out / "table.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
