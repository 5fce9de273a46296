"""Where the errors are: KPIs per source (a catalogue column such as the manifest's `dataset`) and by how sure
the volunteers were.

One accuracy hides that a model can be right on confident labels and near chance on labels the volunteers split
on, or strong on one survey's cut-outs and weak on another's. The literature's 97-99% is measured on confident
labels (the winning class's vote fraction >= 0.8), so that is the figure to set beside it; the mistakes on split
labels are counted apart, because no classifier can be "right" where the people were not sure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from galmorph.config import CLASSES
from galmorph.errors import UserError
from galmorph.evaluation.metrics import Interval, classification_metrics

#: The KPIs shown per subset and per vote-fraction bin (every other stays in the whole set's section).
SUBSET_KPIS = ("accuracy", "macro_f1")


def check_vote_bins(edges: Sequence[float], confident: float) -> None:
    """evaluate.vote_bins: at least two increasing edges within [0, 1]; confident_fraction within (0, 1]."""
    ok = len(edges) >= 2 and all(0 <= a < b <= 1 for a, b in zip(edges[:-1], edges[1:], strict=True))
    if not ok:
        raise UserError(f"evaluate.vote_bins: expected at least two increasing fractions in [0, 1], got {list(edges)}")
    if not 0 < confident <= 1:
        raise UserError(f"evaluate.confident_fraction: expected a fraction in (0, 1], got {confident}")


def _kpis(probs: np.ndarray, labels: np.ndarray, n_resamples: int, seed: int) -> dict[str, Interval]:
    got = classification_metrics(probs, labels, n_resamples=n_resamples, seed=seed)
    return {k: got[k] for k in SUBSET_KPIS}


def subset_kpis(
    probs: np.ndarray, labels: np.ndarray, groups: pd.Series, *, n_resamples: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Accuracy and macro F1 with 95% intervals for each value of `groups` (rows with no value: `(none)`)."""
    keys = groups.astype("string").fillna("(none)").str.strip().replace("", "(none)").to_numpy(dtype=object)
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(set(keys)):
        sel = keys == key
        counts = np.bincount(labels[sel], minlength=len(CLASSES))
        out[str(key)] = {
            "n": int(sel.sum()),
            "classes": {c: int(counts[i]) for i, c in enumerate(CLASSES)},
            **_kpis(probs[sel], labels[sel], n_resamples, seed),
        }
    return out


def winning_fraction(catalogue: pd.DataFrame, labels: np.ndarray) -> np.ndarray:
    """The vote fraction of each galaxy's own class (`p_<class>` of its label), NaN where there are no votes."""
    if not all(f"p_{c}" in catalogue.columns for c in CLASSES):
        return np.full(len(labels), np.nan)
    votes = catalogue[[f"p_{c}" for c in CLASSES]].to_numpy(dtype=np.float64, na_value=np.nan)
    return votes[np.arange(len(labels)), labels]


def vote_confidence(
    probs: np.ndarray,
    labels: np.ndarray,
    winning: np.ndarray,
    *,
    edges: Sequence[float],
    confident: float,
    n_resamples: int,
    seed: int,
) -> dict[str, Any] | None:
    """Accuracy per bin of the winning vote fraction, the confident-label KPIs (winning >= `confident`), and the
    mistakes split into confident ones and ones on labels the volunteers split on. None without votes."""
    has = np.isfinite(winning)
    if not has.any():
        return None
    wrong = probs.argmax(axis=1) != labels
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        last = hi == edges[-1]
        sel = has & (winning >= lo) & ((winning <= hi) if last else (winning < hi))
        entry: dict[str, Any] = {"low": float(lo), "high": float(hi), "n": int(sel.sum())}
        if sel.any():
            entry["accuracy"] = _kpis(probs[sel], labels[sel], n_resamples, seed)["accuracy"]
        bins.append(entry)
    sure = has & (winning >= confident)
    section: dict[str, Any] = {
        "n_with_votes": int(has.sum()),
        "confident_fraction": float(confident),
        "n_confident": int(sure.sum()),
        "bins": bins,
        "mistakes_confident": int((wrong & sure).sum()),
        "mistakes_split": int((wrong & has & ~sure).sum()),
        "mistakes_without_votes": int((wrong & ~has).sum()),
    }
    if sure.any():
        section["confident"] = _kpis(probs[sure], labels[sure], n_resamples, seed)
    return section


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_") or "none"


def flat_subsets(prefix: str, subsets: dict[str, dict[str, Any]] | None, votes: dict[str, Any] | None) -> dict:
    """The flat metric keys: `<prefix>_accuracy_by_<subset>` (+ macro F1, n, intervals), `<prefix>_confident_*`,
    `<prefix>_accuracy_votes_<lo>_<hi>` and the two kinds of mistakes."""
    flat: dict[str, float] = {}
    for name, entry in (subsets or {}).items():
        slug = _slug(name)
        flat[f"{prefix}_n_by_{slug}"] = float(entry["n"])
        for kpi in SUBSET_KPIS:
            iv = entry[kpi]
            flat[f"{prefix}_{kpi}_by_{slug}"] = iv.value
            flat[f"{prefix}_{kpi}_by_{slug}_ci_low"] = iv.low
            flat[f"{prefix}_{kpi}_by_{slug}_ci_high"] = iv.high
    if votes:
        flat[f"{prefix}_n_with_votes"] = float(votes["n_with_votes"])
        flat[f"{prefix}_confident_n"] = float(votes["n_confident"])
        for kpi, iv in (votes.get("confident") or {}).items():
            flat[f"{prefix}_confident_{kpi}"] = iv.value
            flat[f"{prefix}_confident_{kpi}_ci_low"] = iv.low
            flat[f"{prefix}_confident_{kpi}_ci_high"] = iv.high
        for b in votes["bins"]:
            if "accuracy" in b:
                flat[f"{prefix}_accuracy_votes_{b['low']:.2f}_{b['high']:.2f}"] = b["accuracy"].value
        for kind in ("confident", "split", "without_votes"):
            flat[f"{prefix}_mistakes_{kind}"] = float(votes[f"mistakes_{kind}"])
    return flat
