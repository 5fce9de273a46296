"""Score one labelled set of galaxies and write everything people look at for it.

Shared by the `evaluate` stage (the test split, plus an optional set from another telescope) and by
`galmorph evaluate-folder`: the model's logits (one view, and the mean over the dihedral views for
test-time augmentation) become KPIs with bootstrap intervals before (T = 1) and after temperature
scaling, the DVC plot tables, the figures, the galleries of successes and failures with Grad-CAM over the
failures, and a per-galaxy predictions table.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from galmorph.config import CLASSES, EvaluateConfig, FitsConfig, PreprocessConfig
from galmorph.data.images import ImageError, load_rgb
from galmorph.data.transforms import EvalPreset
from galmorph.evaluation import plots
from galmorph.evaluation.calibration import reliability_curve
from galmorph.evaluation.galleries import GallerySpec, render_gallery, select_galleries
from galmorph.evaluation.metrics import (
    abstention,
    classification_metrics,
    confusion_matrix,
    confusion_table,
    coverage_curve,
    flat_metrics,
    roc_curve_table,
    vote_correlation,
)
from galmorph.evaluation.saliency import cam_layer, grad_cam
from galmorph.evaluation.subsets import check_vote_bins, flat_subsets, subset_kpis, vote_confidence, winning_fraction
from galmorph.io import write_csv
from galmorph.models.inference import predict_logits, predict_outputs, softmax_t
from galmorph.models.ood import OOD_COLUMN, OodDetector
from galmorph.paths import repo_root, resolve_path

LEVEL = 0.95


@dataclasses.dataclass
class ScoredSet:
    """A labelled set and the model's logits for it (rows in catalogue order)."""

    name: str
    catalogue: pd.DataFrame
    logits: np.ndarray
    logits_tta: np.ndarray | None
    temperature: float
    fits: FitsConfig | None = None  # how its FITS images were read: galleries and thumbnails read them the same way
    ood_scores: np.ndarray | None = None  # (N,) the model's out-of-distribution score (models.ood), when it has one

    @property
    def labels(self) -> np.ndarray:
        return self.catalogue["label_id"].to_numpy(dtype=np.int64)

    @property
    def probs_raw(self) -> np.ndarray:
        """T = 1: what the network says before calibration."""
        return softmax_t(self.logits)

    @property
    def probs(self) -> np.ndarray:
        """Temperature-scaled: what the registered model and every prediction report."""
        return softmax_t(self.logits, self.temperature)

    @property
    def probs_tta(self) -> np.ndarray | None:
        return None if self.logits_tta is None else softmax_t(self.logits_tta, self.temperature)


def check_readable(
    catalogue: pd.DataFrame, *, root: Path | None = None, workers: int = 4, fits: FitsConfig | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a catalogue into the rows whose image decodes and a table of the others with the reason.

    Decoding is done in threads (PIL releases the GIL), so checking a folder costs little next to the model.
    """
    root = root or repo_root()
    paths = [resolve_path(str(p), root) for p in catalogue["image_path"]]

    def reason(path: Path) -> str | None:
        try:
            load_rgb(path, fits=fits)
        except FileNotFoundError:
            return "file not found"
        except ImageError as exc:  # the one loader's reason: what the file is, what is accepted
            return f"cannot decode: {exc}"
        except Image.DecompressionBombError as exc:  # > 2x PIL's MAX_IMAGE_PIXELS: refuse rather than exhaust memory
            return f"too large to decode safely: {exc}"
        except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            return f"cannot decode: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(tqdm(pool.map(reason, paths), total=len(paths), desc="check images", unit="img", leave=False))
    bad = np.array([r is not None for r in reasons], dtype=bool)
    skipped = pd.DataFrame(
        {
            "galaxy_id": catalogue["galaxy_id"].to_numpy()[bad],
            "image_path": catalogue["image_path"].to_numpy()[bad],
            "reason": [r for r in reasons if r is not None],
        }
    )
    return catalogue[~bad].reset_index(drop=True), skipped


def score(
    model: torch.nn.Module,
    catalogue: pd.DataFrame,
    preprocess: PreprocessConfig,
    cfg: EvaluateConfig,
    temperature: float,
    *,
    name: str,
    fits: FitsConfig | None = None,
    ood: OodDetector | None = None,
) -> ScoredSet:
    """Run the model on every row: one view, and the mean logits over cfg.tta_views when cfg.tta is on; with
    `ood` (the model's detector) each row's ood_score from the one-view pass, as predict measures it."""

    kwargs: dict[str, Any] = {
        "batch_size": cfg.batch_size,
        "num_workers": cfg.num_workers,
        "device": cfg.device,
        "progress": True,
        "fits": fits,
    }
    catalogue = catalogue.reset_index(drop=True)
    logits, features = predict_outputs(model, catalogue, preprocess, features=ood is not None, **kwargs)
    logits = logits.astype(np.float64)
    ood_scores = ood.scores(features) if ood is not None and features is not None else None
    logits_tta = None
    if cfg.tta and len(cfg.tta_views) > 1:
        logits_tta = predict_logits(model, catalogue, preprocess, tta_views=cfg.tta_views, **kwargs).astype(np.float64)
    return ScoredSet(name, catalogue, logits, logits_tta, float(temperature), fits=fits, ood_scores=ood_scores)


def kpi_section(scored: ScoredSet, cfg: EvaluateConfig) -> dict[str, Any]:
    """KPIs with intervals (calibrated, T = 1, and with TTA), confusion counts and the abstention summary."""
    labels = scored.labels
    kw = {"n_bins": cfg.ece_bins, "n_resamples": cfg.bootstrap, "seed": cfg.seed, "level": LEVEL}
    calibrated = classification_metrics(scored.probs, labels, **kw)
    raw = classification_metrics(scored.probs_raw, labels, **kw)
    tta = classification_metrics(scored.probs_tta, labels, **kw) if scored.probs_tta is not None else None
    counts = np.bincount(labels, minlength=len(CLASSES))
    p_votes = scored.catalogue["p_spiral"].to_numpy(dtype=np.float64) if "p_spiral" in scored.catalogue else None
    column = cfg.subset_column if cfg.subset_column and cfg.subset_column in scored.catalogue else None
    subset_kw = {"n_resamples": cfg.bootstrap, "seed": cfg.seed}
    check_vote_bins(cfg.vote_bins, cfg.confident_fraction)
    winning = winning_fraction(scored.catalogue, labels)
    return {
        "subset_column": column,
        "subsets": subset_kpis(scored.probs, labels, scored.catalogue[column], **subset_kw) if column else None,
        "votes": vote_confidence(
            scored.probs, labels, winning, edges=cfg.vote_bins, confident=cfg.confident_fraction, **subset_kw
        ),
        "n": len(labels),
        "classes": {c: int(counts[i]) for i, c in enumerate(CLASSES)},
        "temperature": scored.temperature,
        "tta_views": len(cfg.tta_views) if tta is not None else 0,
        "kpis": calibrated,
        "kpis_uncalibrated": raw,
        "kpis_tta": tta,
        "confusion": confusion_matrix(scored.probs, labels).tolist(),
        "abstention": abstention(scored.probs, labels, cfg.abstain_threshold),
        "abstention_tta": abstention(scored.probs_tta, labels, cfg.abstain_threshold) if tta is not None else None,
        "vote_spearman": vote_correlation(scored.probs, p_votes) if p_votes is not None else float("nan"),
        "ood": ood_summary(scored),
    }


def ood_summary(scored: ScoredSet) -> dict[str, float] | None:
    """What the out-of-distribution detector does to a labelled set: the share it calls "unlike training data"
    (for ordinary galaxies: the share wrongly flagged) and the accuracy on the rest."""
    if scored.ood_scores is None:
        return None
    flagged = scored.ood_scores > 1.0
    kept = ~flagged
    correct = scored.probs.argmax(axis=1) == scored.labels
    return {
        "flagged": float(flagged.mean()) if len(flagged) else float("nan"),
        "n_flagged": int(flagged.sum()),
        "accuracy_kept": float(correct[kept].mean()) if kept.any() else float("nan"),
        "median_score": float(np.median(scored.ood_scores)) if len(flagged) else float("nan"),
    }


def flat_kpis(prefix: str, section: dict[str, Any]) -> dict[str, float]:
    """The flat metric keys of a set: `<prefix>_accuracy` ... (calibrated probabilities), `<prefix>_ece` at
    T = 1 and `<prefix>_ece_calibrated`, `_uncalibrated` log loss and Brier, `<prefix>_tta_*`, abstention."""

    kpis = dict(section["kpis"])
    raw = section["kpis_uncalibrated"]
    kpis["ece_calibrated"] = kpis.pop("ece")
    kpis["ece"] = raw["ece"]
    kpis["log_loss_uncalibrated"] = raw["log_loss"]
    kpis["brier_uncalibrated"] = raw["brier"]
    flat = flat_metrics(prefix, kpis)
    if section["kpis_tta"] is not None:
        flat.update(flat_metrics(f"{prefix}_tta", section["kpis_tta"]))
    ab = section["abstention"]
    flat.update(
        {
            f"{prefix}_n": float(section["n"]),
            f"{prefix}_abstain_threshold": ab["threshold"],
            f"{prefix}_abstain_coverage": ab["coverage"],
            f"{prefix}_abstain_accuracy": ab["accuracy"],
            f"{prefix}_abstain_macro_f1": ab["macro_f1"],
            f"{prefix}_abstain_n_uncertain": float(ab["n_uncertain"]),
            f"{prefix}_vote_spearman": section["vote_spearman"],
        }
    )
    flat.update(flat_subsets(prefix, section.get("subsets"), section.get("votes")))
    if section.get("ood"):
        flat.update({f"{prefix}_ood_{k}": float(v) for k, v in section["ood"].items()})
    return flat


def write_plot_tables(scored: ScoredSet, cfg: EvaluateConfig, out: Path) -> dict[str, str]:
    """The CSVs `dvc plots` draws: confusion (actual, predicted), ROC, reliability before/after, coverage."""
    probs, labels = scored.probs, scored.labels
    tables = {
        "confusion.csv": confusion_table(probs, labels),
        "roc.csv": roc_curve_table(probs, labels),
        "reliability_uncalibrated.csv": pd.DataFrame(
            reliability_curve(scored.probs_raw, labels, cfg.ece_bins).to_rows()
        ),
        "reliability_calibrated.csv": pd.DataFrame(reliability_curve(probs, labels, cfg.ece_bins).to_rows()),
        "coverage.csv": coverage_curve(probs, labels),
    }
    written = {}
    for name, table in tables.items():
        write_csv(out / name, table)
        written[name] = str(out / name)
    return written


def write_figures(scored: ScoredSet, section: dict[str, Any], cfg: EvaluateConfig, out: Path) -> dict[str, str]:
    """PNG figures of the set; returns {key: path}."""
    probs, labels = scored.probs, scored.labels
    kpis, raw = section["kpis"], section["kpis_uncalibrated"]
    title = scored.name
    figures = {
        "confusion": plots.confusion_figure(np.asarray(section["confusion"]), title=f"Confusion matrix: {title}"),
        "roc": plots.roc_figure(roc_curve_table(probs, labels), kpis["roc_auc"], title=f"ROC: {title}"),
        "reliability": plots.reliability_figure(
            {
                "T = 1 (raw)": (reliability_curve(scored.probs_raw, labels, cfg.ece_bins), raw["ece"]),
                f"T = {scored.temperature:.2f} (calibrated)": (
                    reliability_curve(probs, labels, cfg.ece_bins),
                    kpis["ece"],
                ),
            },
            title=f"Reliability diagram: {title}",
        ),
        "coverage": plots.coverage_figure(
            coverage_curve(probs, labels), section["abstention"], title=f"Abstention: {title}"
        ),
    }
    if "p_spiral" in scored.catalogue and np.isfinite(scored.catalogue["p_spiral"].to_numpy(dtype=float)).sum() >= 3:
        figures["votes"] = plots.vote_fraction_figure(
            probs[:, 0],
            scored.catalogue["p_spiral"].to_numpy(dtype=np.float64),
            labels,
            f"Model vs volunteers: {title}",
            section["vote_spearman"],
        )
    paths = {}
    for key, fig in figures.items():
        path = out / f"{key}.png"
        plots.save_figure(fig, path)
        paths[key] = str(path)
    return paths


def write_galleries(
    scored: ScoredSet,
    model: torch.nn.Module,
    preprocess: PreprocessConfig,
    cfg: EvaluateConfig,
    out: Path,
    *,
    root: Path | None = None,
) -> list[dict[str, Any]]:
    """Galleries of successes, failures and doubts; Grad-CAM over the failures when cfg.saliency is on."""
    root = root or repo_root()
    probs = scored.probs
    entries = []
    for spec in select_galleries(probs, scored.labels, cfg.gallery_size):
        path = out / f"{spec.name}.png"
        tiles = render_gallery(scored.catalogue, probs, spec, path, preprocess, root=root, fits=scored.fits)
        entries.append({"name": spec.name, "title": spec.title, "file": str(path) if tiles else None, "tiles": tiles})
        if cfg.saliency and spec.name.startswith("wrong_") and tiles:
            entries.append(_saliency_gallery(scored, spec, model, preprocess, out, root))
    return entries


MAX_MISTAKES_LISTED = 2000
THUMB_PX = 96


def write_mistakes(scored: ScoredSet, out: Path, *, root: Path | None = None, confident: float = 0.8) -> dict[str, Any]:
    """Every mistake (most confident first, up to MAX_MISTAKES_LISTED) with its full id and path and a 96-px
    thumbnail under `out`: the galleries show a few per kind, a reader checking labels needs all of them. Each
    is marked confident-label, split-label (the volunteers' own class fraction under `confident`) or no votes."""
    root = root or repo_root()
    probs = scored.probs
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != scored.labels)
    order = wrong[np.argsort(-probs[wrong].max(axis=1), kind="stable")]
    winning = winning_fraction(scored.catalogue, scored.labels)
    if out.is_dir():
        shutil.rmtree(out)  # this stage's own thumbnails of an earlier run
    out.mkdir(parents=True, exist_ok=True)
    names = np.asarray(CLASSES)
    rows = []
    for i in order[:MAX_MISTAKES_LISTED]:
        row = scored.catalogue.iloc[i]
        thumb: Path | None = out / f"{i:06d}.jpg"
        try:
            image = load_rgb(resolve_path(str(row["image_path"]), root), fits=scored.fits)
            image.thumbnail((THUMB_PX, THUMB_PX))
            image.save(thumb, quality=85)
        except (OSError, ValueError):
            thumb = None
        vote = float(winning[i])
        kind = "no votes" if not np.isfinite(vote) else ("confident label" if vote >= confident else "split label")
        rows.append(
            {
                "galaxy_id": str(row["galaxy_id"]),
                "image_path": str(row["image_path"]),
                "label": str(names[scored.labels[i]]),
                "predicted": str(names[predicted[i]]),
                "p_predicted": float(probs[i].max()),
                "votes_own_class": vote if np.isfinite(vote) else None,
                "kind": kind,
                "thumbnail": str(thumb) if thumb else None,
            }
        )
    return {"n": int(len(wrong)), "listed": len(rows), "rows": rows}


def _saliency_gallery(
    scored: ScoredSet, spec: GallerySpec, model: torch.nn.Module, preprocess: PreprocessConfig, out: Path, root: Path
) -> dict[str, Any]:
    transform = EvalPreset(preprocess)
    rows = scored.catalogue.iloc[spec.indices]
    tensors, keep = [], []
    for pos, p in enumerate(rows["image_path"]):
        try:
            tensors.append(transform(load_rgb(resolve_path(str(p), root), fits=scored.fits, draft=transform.draft)))
            keep.append(pos)
        except (OSError, ValueError):
            continue
    overlays: list[np.ndarray | None] = [None] * len(spec.indices)
    if tensors:
        maps = grad_cam(model.cpu().float(), torch.stack(tensors))
        for pos, heat in zip(keep, maps, strict=True):
            overlays[pos] = heat
    layer, _ = cam_layer(model, preprocess.image_size)
    saliency = GallerySpec(
        f"saliency_{spec.name}", f"Grad-CAM ({layer}) of the model's call: {spec.title.lower()}", spec.indices
    )
    path = out / f"{saliency.name}.png"
    tiles = render_gallery(
        scored.catalogue, scored.probs, saliency, path, preprocess, root=root, overlays=overlays, fits=scored.fits
    )
    return {"name": saliency.name, "title": saliency.title, "file": str(path), "tiles": tiles}


def predictions_table(scored: ScoredSet, threshold: float) -> pd.DataFrame:
    """One row per galaxy: id, image, catalogue class and votes, the model's calibrated probabilities (and
    with TTA), its call, and `uncertain` where the top probability is under the abstention threshold."""
    cat = scored.catalogue
    probs = scored.probs
    table = pd.DataFrame({"galaxy_id": cat["galaxy_id"].astype(str), "image_path": cat["image_path"].astype(str)})
    table["label"] = np.asarray(CLASSES)[scored.labels]
    for c in CLASSES:
        table[f"votes_p_{c}"] = cat[f"p_{c}"].to_numpy(dtype=np.float64) if f"p_{c}" in cat else np.nan
    for i, c in enumerate(CLASSES):
        table[f"p_{c}"] = probs[:, i]
    table["predicted"] = np.asarray(CLASSES)[probs.argmax(axis=1)]
    table["uncertain"] = probs.max(axis=1) < threshold
    if scored.probs_tta is not None:
        for i, c in enumerate(CLASSES):
            table[f"p_{c}_tta"] = scored.probs_tta[:, i]
    table["correct"] = table["predicted"] == table["label"]
    if scored.ood_scores is not None:
        table[OOD_COLUMN] = scored.ood_scores
        table["unlike_training_data"] = scored.ood_scores > 1.0
    table["votes_own_class"] = winning_fraction(cat, scored.labels)
    # the catalogue's own columns (the manifest's dataset/survey; evaluate-folder: every column of the CSV)
    internal = {"label_id", "label_raw", "source_path", "split", *(f"p_{c}" for c in CLASSES)}
    for col in cat.columns:
        if col not in table.columns and col not in internal and not str(col).startswith(("count_", "split_")):
            table[col] = cat[col].to_numpy()
    return table


def write_set(
    scored: ScoredSet,
    model: torch.nn.Module,
    preprocess: PreprocessConfig,
    cfg: EvaluateConfig,
    out_dir: str | os.PathLike,
    *,
    root: Path | None = None,
    plot_tables: bool = True,
) -> dict[str, Any]:
    """Everything for one set under out_dir (plots/, figures/, galleries/, predictions.csv); returns its
    summary section with the paths of what it wrote."""
    out = Path(out_dir)
    section = kpi_section(scored, cfg)
    section["name"] = scored.name
    section["plot_tables"] = write_plot_tables(scored, cfg, out / "plots") if plot_tables else {}
    section["figures"] = write_figures(scored, section, cfg, out / "figures")
    section["galleries"] = write_galleries(scored, model, preprocess, cfg, out / "galleries", root=root)
    section["mistakes"] = write_mistakes(
        scored, out / "galleries" / "mistakes", root=root, confident=cfg.confident_fraction
    )
    write_csv(out / "predictions.csv", predictions_table(scored, cfg.abstain_threshold))
    section["predictions"] = str(out / "predictions.csv")
    return section


def uncertain_rows(uncertain: pd.DataFrame, root: Path | None = None) -> tuple[pd.DataFrame, int]:
    """The catalogue's UNCERTAIN galaxies whose image file exists (and how many have none)."""
    root = root or repo_root()
    exists = np.array([resolve_path(str(p), root).is_file() for p in uncertain["image_path"]], dtype=bool)
    return uncertain[exists].reset_index(drop=True), int((~exists).sum())
