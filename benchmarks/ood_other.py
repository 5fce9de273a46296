"""What are Galaxy Zoo's `other` rows, and which of them can any score tell from the test galaxies?

The out-of-distribution target (issue 9: AUROC ≥ 0.9 against `other` rows) was measured at 0.58 against a random
1,000 of the 3,492 `other` rows of ../shared/galaxyzoo/labels.csv (bench_ood.py). Those rows are not one kind of
thing: SOURCES.md builds them from GZ1's "merger" and "don't know" leaves, GZ2 galaxies whose debiased votes fall
outside the spiral and elliptical rules, Kaggle "non-spirals" (smooth and featured galaxies alike) and help-page
examples. This script splits them by what the volunteers said (`other_group`) and scores every group against
the real test galaxies with:

  * the product's detector (the model file's Mahalanobis score on pooled layer4 features) and, as a baseline,
    1 - max calibrated probability;
  * their maximum, each in units of its validation quantile (a combined `unlike training data` verdict), and
    the share of each group that a user of predict sees flagged at all: `unlike training data` or `uncertain`
    (top probability under params.yaml's evaluate.abstain_threshold);
  * a post hoc k-nearest-neighbour distance (cosine, k-th nearest of the train galaxies; Sun et al. 2022);
  * a supervised probe: logistic regression on the same frozen features, fitted on half of the `other` rows
    (stratified by group) against the train galaxies, scored on the other half. It shows what a model told
    about these rows (a third class) could reach with the features the spiral/elliptical training built.

Two models are compared on the same rows with `--save-scores S.parquet` on each and then `--paired A B`: B minus A
per score and unusual group, with one bootstrap of the shared rows (far tighter than two separate intervals).
`--write-outliers CSV` writes the fit half's unusual rows as a train.outliers table, with `--blends N`,
`--irregular N` and `--disturbed N` synthetic outliers made of training galaxies (the makers of `galmorph
outliers`, training/synthetic_outliers.py; `--only-synthetic`: those alone; `--real-copies N`: the real rows N times).

AUROCs are on the held-out half of each group, with 95% bootstrap intervals, so all columns see the same images.
The images go through the model's EvalPreset without TTA (as ood_features.py). A second table refits the detector
on ood_features.py's layer variants, and on layer4 once per source, and scores each against the unusual rows.

    .venv/bin/python benchmarks/ood_other.py --model /tmp/real-base/runs/fast-35ep-seed1/model.pt \
        --splits /tmp/real-base/data/processed/splits.parquet
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors

from bench_ood import auroc_interval, paired_auroc_difference
from galmorph.commands.outliers import preview, sources, training_galaxies
from galmorph.config import load_params
from galmorph.data.dataset import label_ids
from galmorph.errors import UserError
from galmorph.models.inference import prepare_for_inference
from galmorph.models.ood import fit_detector
from galmorph.models.resnet import LOGITS, load_model
from galmorph.paths import repo_root, resolve_path
from galmorph.training.synthetic_outliers import write_kinds
from ood_features import SHARED, VARIANTS, layer_features

GZ2 = "gz2_t0"
UNUSUAL = ("GZ1 merger", "GZ1 don't know", "GZ2 odd: merger, disturbed or irregular")


def other_group(row: pd.Series) -> str:
    """What kind of `other` row this is, from its source and (GZ2) its debiased votes."""
    if row["dataset"] == "gz1_sdss":
        return "GZ1 merger" if row["label_detail"] == "Merger" else "GZ1 don't know"
    if row["dataset"] == "kaggle_gz2_challenge":
        return "Kaggle non-spiral (smooth and featured)"
    if row["dataset"] != "gz2_sdss_cutout128":
        return "GZ help-page examples"
    vote = {k: row[f"{GZ2}{k}_debiased"] for k in (
        "1_smooth_or_features_a01_smooth", "1_smooth_or_features_a02_features_or_disk",
        "1_smooth_or_features_a03_star_or_artifact", "6_odd_a14_yes", "8_odd_feature_a21_disturbed",
        "8_odd_feature_a22_irregular", "8_odd_feature_a24_merger",
    )}  # fmt: skip
    if any(pd.isna(v) for v in vote.values()):
        return "GZ2 without debiased votes"
    if vote["1_smooth_or_features_a03_star_or_artifact"] >= 0.5:
        return "GZ2 star or artefact"
    if vote["6_odd_a14_yes"] >= 0.5:
        mdi = max(
            vote[k] for k in ("8_odd_feature_a21_disturbed", "8_odd_feature_a22_irregular", "8_odd_feature_a24_merger")
        )
        return "GZ2 odd: merger, disturbed or irregular" if mdi >= 0.4 else "GZ2 odd: ring, lens, dust lane, other"
    if max(vote["1_smooth_or_features_a01_smooth"], vote["1_smooth_or_features_a02_features_or_disk"]) < 0.6:
        return "GZ2 smooth/featured vote split"
    return "GZ2 featured, no spiral or edge-on majority"


def halves(seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The `other` rows with their group, split in halves stratified by group: the same halves for a seed."""
    labels = pd.read_csv(SHARED / "galaxyzoo" / "labels.csv", low_memory=False)
    other = labels[labels["label"] == "other"].copy()
    other["group"] = other.apply(other_group, axis=1)
    fit_half, held = train_test_split(other, test_size=0.5, stratify=other["group"], random_state=seed)
    return other, fit_half, held


def combined_scores(
    det: dict[str, np.ndarray], msp: dict[str, np.ndarray], msp_val: np.ndarray, quantile: float
) -> dict[str, np.ndarray]:
    """max(detector, 1 - max p), both in units of their own validation `quantile` (the detector's ood_score already
    is): the larger one says how far past "ordinary" either score is, so > 1 stays a verdict."""
    msp_scale = max(float(np.quantile(msp_val, quantile)), 1e-12)
    return {g: np.maximum(det[g], msp[g] / msp_scale) for g in det}


def flagged_rows(det: np.ndarray, msp: np.ndarray, abstain: float) -> np.ndarray:
    """What a user of predict sees flagged: `unlike training data` (ood_score > 1) or `uncertain` (top
    probability under `abstain`, evaluate.abstain_threshold)."""
    return (det > 1) | (1 - msp < abstain)


def write_outliers(
    path: Path, seed: int, extra: pd.DataFrame | None = None, *, unusual_rows: bool = True, copies: int = 1
) -> None:
    """The fit half's mergers, disturbed and irregular galaxies and "don't know" as a train.outliers table, with
    `extra` (image_path, group) rows after them (write_synthetic's); `unusual_rows=False` writes `extra` alone.

    `copies` > 1 lists the real rows again after `extra`, so that they are drawn as often as a larger made-up kind
    (rows 61-63: 137 real rows twice beside 274 of each made-up kind); the order is the one those runs trained on."""
    real = pd.DataFrame(columns=["image_path", "group"])
    if unusual_rows:  # --only-synthetic needs no Galaxy Zoo folder: any survey's split can be used
        _, fit_half, _ = halves(seed)
        unusual = fit_half[fit_half["group"].isin(UNUSUAL)]
        real = pd.DataFrame({"image_path": [str(SHARED / "galaxyzoo" / f) for f in unusual["filename"]],
                             "group": unusual["group"].to_numpy()})  # fmt: skip
    made_up = [] if extra is None else [extra[["image_path", "group"]]]
    table = pd.concat([real, *made_up, *[real] * (copies - 1)], ignore_index=True)
    tmp = path.with_name(path.name + ".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
    print(
        f"{path}: {len(table)} rows (" + "; ".join(f"{g} {n}" for g, n in table["group"].value_counts().items()) + ")"
    )


def same_source_aurocs(
    scores: dict[str, dict[str, np.ndarray]], test_source: np.ndarray, held_source: np.ndarray, unusual: np.ndarray
) -> list[tuple[str, int, int, dict[str, tuple[float, float, float]]]]:
    """Per source, the AUROC of its unusual held-out rows against the test galaxies of the same source only.

    The outlier table is 62% GZ1 rows, and GZ1's 424-px frames differ from GZ2's 128-px cut-outs. A score that
    learned "framed like GZ1" rather than "merger" ranks GZ1 unusual rows well against all test galaxies (most of
    which it can push down by source) but falls to chance against the GZ1 test galaxies alone. Sources with fewer
    than 10 rows on either side are left out. Returns (source, n unusual, n test, {score: (auroc, lo, hi)})."""
    out = []
    for source in sorted(set(held_source[unusual])):
        u, t = unusual & (held_source == source), test_source == source
        if u.sum() < 10 or t.sum() < 10:
            continue
        aucs = {name: auroc_interval(s["test"][t], s["other held"][u]) for name, s in scores.items()}
        out.append((source, int(u.sum()), int(t.sum()), aucs))
    return out


SCORE_KEYS = ("part", "group", "image")
"""The columns that name a --save-scores row; every other column is one score."""


def save_scores(
    path: Path,
    scores: dict[str, dict[str, np.ndarray]],
    paths: dict[str, list[str]],
    held: pd.DataFrame,
    test_source: np.ndarray,
) -> None:
    """Each test galaxy's and held-out `other` row's scores (one column per score) as a parquet, written through
    a temporary file; rows named by part (test / held), group (the test galaxy's source or the `other` group) and
    image file name, so --paired can check that two models saw the same rows."""
    frame = pd.DataFrame(
        {
            "part": ["test"] * len(paths["test"]) + ["held"] * len(held),
            "group": np.r_[test_source, held["group"].to_numpy(dtype=object)],
            "image": [Path(p).name for p in paths["test"] + paths["other held"]],
        }
    )
    for name, s in scores.items():
        frame[name] = np.r_[s["test"], s["other held"]]
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    print(f"{path.name}: {len(frame):,} rows of {len(scores)} scores")


def read_scores(path: Path) -> pd.DataFrame:
    """A --save-scores file, or a one-line error naming it."""
    if not path.is_file():
        raise UserError(f"{path.name} not found")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{path.name}: not a --save-scores parquet ({type(err).__name__})") from None
    if missing := [c for c in SCORE_KEYS if c not in frame.columns]:
        raise UserError(f"{path.name}: no column {', '.join(missing)}; expected a --save-scores parquet")
    return frame


def print_paired(a: pd.DataFrame, b: pd.DataFrame, names: list[str]) -> None:
    """AUROC of B minus A on the same held-out unusual rows against the same test galaxies, per score both
    files hold, with a paired bootstrap interval (bench_ood.paired_auroc_difference)."""
    if len(a) != len(b) or not a[list(SCORE_KEYS)].equals(b[list(SCORE_KEYS)]):
        raise UserError(f"{names[0]} and {names[1]} were not scored on the same rows (same --splits and --seed)")
    common = [c for c in a.columns if c not in SCORE_KEYS and c in b.columns]
    test = (a["part"] == "test").to_numpy()
    held = (a["part"] == "held").to_numpy()
    groups = [("all unusual", held & a["group"].isin(UNUSUAL).to_numpy())]
    groups += [(g, held & (a["group"] == g).to_numpy()) for g in UNUSUAL]
    print(f"AUROC against {test.sum():,} test galaxies, {names[1]} minus {names[0]} [95% paired bootstrap interval]")
    print(f"| rows | n | score | {names[0]} | {names[1]} | difference |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for label, rows in groups:
        if rows.sum() < 10:
            continue
        for score in common:
            ins = (a.loc[test, score].to_numpy(), b.loc[test, score].to_numpy())
            out = (a.loc[rows, score].to_numpy(), b.loc[rows, score].to_numpy())
            auc_a, auc_b, diff, lo, hi = paired_auroc_difference(ins, out)
            print(
                f"| {label} | {rows.sum()} | {score} | {auc_a:.3f} | {auc_b:.3f} | {diff:+.3f} [{lo:+.3f}, {hi:+.3f}] |"
            )


def read_splits(parser: argparse.ArgumentParser, path: str, needed: tuple[str, ...]) -> pd.DataFrame:
    """--splits as a frame with the `needed` columns, or a one-line error naming the file (never the path)."""
    name = Path(path).name
    if not Path(path).is_file():
        parser.error(f"--splits: {name} not found")
    try:
        splits = pd.read_parquet(path)
    except (OSError, ValueError) as err:  # pyarrow's errors derive from these
        parser.error(f"--splits: {name} is not a splits.parquet ({type(err).__name__})")
    if missing := [c for c in needed if c not in splits.columns]:
        parser.error(f"--splits: {name} has no column {', '.join(missing)}; expected a splits.parquet")
    return splits


def write_mode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--write-outliers: the fit half's unusual rows and/or the synthetic kinds as a train.outliers table."""
    if args.real_copies < 1 or (args.real_copies > 1 and args.only_synthetic):
        parser.error("--real-copies N needs N >= 1 and Galaxy Zoo's rows (not --only-synthetic)")
    if Path(args.write_outliers).exists() and not args.force:
        parser.error(f"--write-outliers: {Path(args.write_outliers).name} already exists (pass --force to replace it)")
    if not args.only_synthetic and not (SHARED / "galaxyzoo" / "labels.csv").is_file():
        parser.error("--write-outliers: no ../shared/galaxyzoo/labels.csv for Galaxy Zoo's unusual rows "
                     "(--only-synthetic writes the made-up kinds alone)")  # fmt: skip
    extra = None
    counts = {"blend": args.blends, "disturbed": args.disturbed, "irregular": args.irregular}
    if any(counts.values()):
        if min(counts.values()) < 0 or not (args.synthetic_dir and args.splits):
            parser.error(
                "--blends/--disturbed/--irregular N need N > 0, --synthetic-dir and --splits (whose train rows "
                "they use)"
            )
        splits = read_splits(parser, args.splits, ("image_path", "split"))
        try:  # write_kinds refuses every kind before any image is written
            extra = write_kinds(Path(args.synthetic_dir), training_galaxies(splits), counts, args.seed,
                                force=args.force)  # fmt: skip
        except UserError as err:
            parser.error(f"--synthetic-dir: {err}")
        if args.preview:
            preprocess = load_params(repo_root() / "params.yaml").preprocess
            print(f"{Path(args.preview).name}: {preview(extra, args.preview, preprocess)} tiles")
    elif args.only_synthetic or args.preview:
        parser.error("--only-synthetic and --preview need --blends, --disturbed or --irregular N")
    write_outliers(
        Path(args.write_outliers), args.seed, extra, unusual_rows=not args.only_synthetic, copies=args.real_copies
    )


def print_source_tables(
    scores: dict[str, dict[str, np.ndarray]], flags: dict[str, np.ndarray], test_source: np.ndarray, held: pd.DataFrame
) -> None:
    """A source shortcut? The unusual rows against the test galaxies of their own source only, and how often the
    test galaxies of each source are flagged (a model that keys on GZ1's framing flags GZ1 galaxies more)."""
    det, msp = scores["detector (product)"], scores["1 - max p"]
    held_source = held["dataset"].to_numpy(dtype=object)
    is_unusual = held.group.isin(UNUSUAL).to_numpy()
    print("\nthe unusual rows against the test galaxies of the same source only: AUROC [95% interval]")
    print("| source | n unusual | n test | " + " | ".join(scores) + " |")
    print("| --- | ---: | ---: |" + " ---: |" * len(scores))
    for source, n_u, n_t, aucs in same_source_aurocs(scores, test_source, held_source, is_unusual):
        cells = [f"{auc:.3f} [{lo:.3f}, {hi:.3f}]" for auc, lo, hi in aucs.values()]
        print(f"| {source} | {n_u} | {n_t} | " + " | ".join(cells) + " |")
    print("\n| test source | n | detector flags | unlike or uncertain | mean 1 - max p |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for source in sorted(set(test_source)):
        t = test_source == source
        print(f"| {source or '(not in labels.csv)'} | {t.sum()} | {np.mean(det['test'][t] > 1):.1%} | "
              f"{np.mean(flags['test'][t]):.1%} | {np.mean(msp['test'][t]):.3f} |")  # fmt: skip


def per_source_scores(
    feats: dict[str, np.ndarray], src: dict[str, np.ndarray], y_train: np.ndarray, pooled: np.ndarray, quantile: float
) -> np.ndarray:
    """`pooled`'s rows re-scored by a detector fitted on the train and val rows of their own source alone (what a
    survey team fitting on its own images gets), each in units of its own validation quantile so sources compare;
    rows of a source with too few train or val images to fit keep the pooled detector's score. `feats` and `src`
    hold "train", "val" and "score" (the rows `pooled` scored)."""
    out = pooled.astype(np.float64).copy()
    for s in np.unique(src["score"]):
        tr, va, sc = (src[k] == s for k in ("train", "val", "score"))
        if np.bincount(y_train[tr], minlength=2).min() < 50 or va.sum() < 50:
            continue
        out[sc] = fit_detector(feats["train"][tr], y_train[tr], feats["val"][va], quantile).scores(feats["score"][sc])
    return out


def print_refitted_detectors(
    layers: dict[str, dict[str, np.ndarray]],
    y_train: np.ndarray,
    unusual: np.ndarray,
    src: dict[str, np.ndarray],
    quantile: float,
) -> None:
    """The detector refitted on other layers (ood_features.py's variants), and on layer4 once per source (`src`:
    each split's and the held-out rows' sources): does any find the unusual rows better?"""
    train_l, val_l = layers["train"], layers["val"]
    mean_l = {k: v.mean(0) for k, v in train_l.items()}
    std_l = {k: v.std(0) + 1e-6 for k, v in train_l.items()}
    print(
        "\n| detector features (refitted) | AUROC, all unusual | AUROC, all `other` rows | test flagged | unusual flagged |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")

    def row(name: str, test: np.ndarray, held_s: np.ndarray) -> None:
        auc_u, lo_u, hi_u = auroc_interval(test, held_s[unusual])
        auc_all = auroc_interval(test, held_s)[0]
        print(f"| {name} | {auc_u:.3f} [{lo_u:.3f}, {hi_u:.3f}] | {auc_all:.3f} | {np.mean(test > 1):.1%} | "
              f"{np.mean(held_s[unusual] > 1):.1%} |")  # fmt: skip

    pooled: dict[str, np.ndarray] = {}
    for name, (keys, standardise) in VARIANTS.items():

        def stack(f: dict[str, np.ndarray], keys=keys, standardise=standardise) -> np.ndarray:
            return np.hstack([(f[k] - mean_l[k]) / std_l[k] if standardise else f[k] for k in keys])

        refit = fit_detector(stack(train_l), y_train, stack(val_l), quantile)
        scored = {g: refit.scores(stack(layers[g])) for g in ("test", "other held")}
        if keys == ["l4"] and not standardise:
            pooled = scored  # the product's features: the per-source row below falls back to these scores
        row(name, scored["test"], scored["other held"])
    l4 = {k: layers[k]["l4"] for k in ("train", "val")}
    per_source = {
        g: per_source_scores({**l4, "score": layers[g]["l4"]}, {**src, "score": src[g]}, y_train, pooled[g], quantile)
        for g in ("test", "other held")
    }
    row("layer4, one detector per source", per_source["test"], per_source["other held"])


def score_mode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--model and --splits: every score's AUROC on the held-out half, by group and by source, and the detector
    refitted on other layers."""
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")  # LogisticRegressionCV's 1.10 notices
    torch.set_num_threads(2)
    for what, path in (
        ("--model", args.model),
        ("--splits", args.splits),
        ("labels", SHARED / "galaxyzoo" / "labels.csv"),
    ):
        if not Path(path).is_file():
            parser.error(f"{what}: {Path(path).name} not found")
    try:
        loaded = load_model(args.model)
    except UserError as err:
        parser.error(f"--model: {err}")
    abstain = load_params(repo_root() / "params.yaml").evaluate.abstain_threshold
    if loaded.outputs != LOGITS:  # 1 - max p below is the softmax of logits
        parser.error(
            f"--model: outputs {loaded.outputs!r}; this script scores models trained with train.loss ce or soft"
        )
    net = prepare_for_inference(loaded.model, torch.device("cpu"))
    splits = read_splits(parser, args.splits, ("image_path", "split", "label_id"))
    other, fit_half, held = halves(args.seed)
    counts = other["group"].value_counts()
    print(f"{len(other):,} `other` rows: " + "; ".join(f"{g} {n:,}" for g, n in counts.items()))

    root = repo_root()
    paths = {
        name: [str(resolve_path(str(p), root)) for p in splits.loc[splits.split == name, "image_path"]]
        for name in ("train", "val", "test")
    }
    paths["other fit"] = [str(SHARED / "galaxyzoo" / f) for f in fit_half["filename"]]
    paths["other held"] = [str(SHARED / "galaxyzoo" / f) for f in held["filename"]]
    start = time.time()
    layers = {name: layer_features(net, loaded.preprocess, p) for name, p in paths.items()}
    feats = {name: f["l4"] for name, f in layers.items()}
    print(f"pooled layer2-4 features of {sum(map(len, paths.values())):,} images in {time.time() - start:.0f} s")

    y_train = label_ids(splits[splits.split == "train"])
    detector = loaded.ood or fit_detector(feats["train"], y_train, feats["val"], 0.99)
    with torch.inference_mode():
        logits = {
            g: net.head(torch.from_numpy(feats[g])).float() / loaded.temperature for g in ("val", "test", "other held")
        }
    msp = {g: 1 - torch.softmax(v, 1).max(1).values.numpy().astype(np.float64) for g, v in logits.items()}
    det = {g: detector.scores(feats[g]) for g in ("test", "other held")}
    msp_val = msp.pop("val")

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    knn = NearestNeighbors(n_neighbors=args.k).fit(unit(feats["train"]))
    mean, std = feats["train"].mean(0), feats["train"].std(0) + 1e-6
    probe = LogisticRegressionCV(Cs=[0.001, 0.01, 0.1, 1.0], cv=3, scoring="roc_auc", class_weight="balanced",
                                 max_iter=3000)  # fmt: skip
    x_fit = np.vstack([feats["train"], feats["other fit"]])
    probe.fit((x_fit - mean) / std, np.r_[np.zeros(len(feats["train"])), np.ones(len(feats["other fit"]))])
    scores = {
        "detector (product)": det,
        "1 - max p": msp,
        "max(detector, 1 - max p)": combined_scores(det, msp, msp_val, detector.quantile),
        f"kNN, k = {args.k}": {g: knn.kneighbors(unit(feats[g]))[0][:, -1] for g in ("test", "other held")},
        "probe (told half the rows)": {
            g: probe.decision_function((feats[g] - mean) / std) for g in ("test", "other held")
        },
    }
    flags = {g: flagged_rows(det[g], msp[g], abstain) for g in det}
    if args.save_scores:
        save_scores(Path(args.save_scores), scores, paths, held, sources(splits[splits.split == "test"]))
    msp_scale = float(np.quantile(msp_val, detector.quantile))
    print(f"probe C = {probe.C_[0]:g} (3-fold CV on the fit half); test galaxies flagged by the detector: "
          f"{np.mean(det['test'] > 1):.1%}; `unlike` or `uncertain` (top p < {abstain:g}): "
          f"{np.mean(flags['test']):.1%}; 1 - max p scale (val {detector.quantile:g} quantile) {msp_scale:.3f}")  # fmt: skip

    held = held.assign(row=np.arange(len(held)))
    # groups too small for an interval (the two GZ2 rows without debiased votes) count only in the totals
    rows = [
        (g, idx) for g in sorted(held.group.unique()) if len(idx := held.loc[held.group == g, "row"].to_numpy()) >= 10
    ]
    rows.append(("all unusual (" + ", ".join(UNUSUAL) + ")", held.loc[held.group.isin(UNUSUAL), "row"].to_numpy()))
    rows.append(("all `other` rows", held["row"].to_numpy()))
    print(f"\nheld-out half ({len(held):,} rows; {len(fit_half):,} in the probe's fit half) against "
          f"{len(feats['test']):,} test galaxies: AUROC [95% interval]")  # fmt: skip
    print("| `other` group | n (held out) | " + " | ".join(scores) + " | detector flags | unlike or uncertain |")
    print("| --- | ---: |" + " ---: |" * (len(scores) + 2))
    for name, idx in rows:
        cells = []
        for s in scores.values():
            auc, lo, hi = auroc_interval(s["test"], s["other held"][idx])
            cells.append(f"{auc:.3f} [{lo:.3f}, {hi:.3f}]")
        flagged = np.mean(det["other held"][idx] > 1)
        either = np.mean(flags["other held"][idx])
        print(f"| {name} | {len(idx)} | " + " | ".join(cells) + f" | {flagged:.1%} | {either:.1%} |")

    print_source_tables(scores, flags, sources(splits[splits.split == "test"]), held)
    src = {name: sources(splits[splits.split == name]) for name in ("train", "val", "test")}
    src["other held"] = sources(held)
    print_refitted_detectors(layers, y_train, held.loc[held.group.isin(UNUSUAL), "row"].to_numpy(), src,
                             detector.quantile)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a models/model.pt trained on --splits")
    parser.add_argument("--splits", help="the data/processed/splits.parquet it was trained on")
    parser.add_argument("--k", type=int, default=50, help="neighbour whose distance is the kNN score")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--write-outliers",
        metavar="CSV",
        help="only write the fit half's unusual rows (image_path, group) for train.outliers, and stop; "
        "the tables then score the other half, which that training never saw",
    )
    parser.add_argument(
        "--blends",
        type=int,
        default=0,
        metavar="N",
        help="with --write-outliers: add N synthetic two-galaxy blends of --splits' training galaxies (two of one "
        "`dataset` each, where the split has that column), written as JPEGs into --synthetic-dir",
    )
    parser.add_argument(
        "--disturbed",
        type=int,
        default=0,
        metavar="N",
        help="with --write-outliers: add N of --splits' training galaxies made lopsided and given a tidal tail, "
        "written as JPEGs into --synthetic-dir",
    )
    parser.add_argument(
        "--irregular",
        type=int,
        default=0,
        metavar="N",
        help="with --write-outliers: add N of --splits' training galaxies made faint, coreless and clumpy, written "
        "as JPEGs into --synthetic-dir",
    )
    parser.add_argument("--synthetic-dir", "--blend-dir", help="where the synthetic kinds write their images")
    parser.add_argument(
        "--only-synthetic",
        "--only-blends",
        action="store_true",
        help="with a synthetic kind: leave Galaxy Zoo's unusual rows out of the table",
    )
    parser.add_argument(
        "--real-copies",
        type=int,
        default=1,
        metavar="N",
        help="with --write-outliers: list Galaxy Zoo's unusual rows N times (again after the synthetic ones), so "
        "each real row is drawn as often as a larger made-up kind",
    )
    parser.add_argument(
        "--preview", metavar="PNG", help="with a synthetic kind: also draw the first few of each kind (PNG)"
    )
    parser.add_argument(
        "--save-scores",
        metavar="PARQUET",
        help="also write every scored row's scores (test galaxies and the held-out half) for --paired",
    )
    parser.add_argument(
        "--paired",
        nargs=2,
        metavar=("A", "B"),
        help="only compare two --save-scores files of models scored on the same rows: AUROC of B minus A with "
        "a paired bootstrap interval, per score and unusual group, and stop",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --write-outliers file, images, --preview or --save-scores",
    )
    args = parser.parse_args()
    writer_only = [f for f, v in (("--blends", args.blends), ("--disturbed", args.disturbed),
                                  ("--irregular", args.irregular),
                                  ("--synthetic-dir", args.synthetic_dir), ("--only-synthetic", args.only_synthetic),
                                  ("--preview", args.preview), ("--real-copies", args.real_copies != 1)) if v]  # fmt: skip
    if writer_only and not args.write_outliers:  # never silently ignored
        parser.error(f"{', '.join(writer_only)} only go with --write-outliers CSV")
    for what, path in (("--preview", args.preview), ("--save-scores", args.save_scores)):
        if path and Path(path).exists() and not args.force:
            parser.error(f"{what}: {Path(path).name} already exists (pass --force to replace it)")
        if path and not Path(path).parent.is_dir():
            parser.error(f"{what}: the folder of {Path(path).name} does not exist")
    if args.write_outliers:
        write_mode(parser, args)
    elif args.paired:
        try:
            print_paired(*(read_scores(Path(p)) for p in args.paired), names=[Path(p).stem for p in args.paired])
        except UserError as err:
            parser.error(f"--paired: {err}")
    elif not (args.model and args.splits):
        parser.error("--model and --splits are required (or --write-outliers CSV, or --paired A B)")
    else:
        score_mode(parser, args)


if __name__ == "__main__":
    main()
