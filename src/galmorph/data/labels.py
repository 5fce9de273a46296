"""Labelling a catalogue, whichever source it comes from: the columns every later stage reads, the vote and
flag label rules, de-duplication, and the labelled and uncertain tables a source's rows end as."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from galmorph.config import CLASSES
from galmorph.errors import UserError
from galmorph.paths import portable_path

CONTRACT_COLUMNS: tuple[str, ...] = ("galaxy_id", "image_path", "label", "label_id", "p_spiral", "p_elliptical")
UNCERTAIN = "uncertain"
UNCERTAIN_ID = -1
"""label / label_id of the rows in join.uncertain_out: the votes did not settle them (scored by evaluate)."""
MAX_LISTED_IDS = 1000
"""Conflicting duplicate ids listed by name in the report (all are counted); keeps the DVC metric readable."""


@dataclasses.dataclass
class JoinResult:
    """The labelled catalogue, the galaxies the votes left uncertain (same columns), and the JSON report."""

    joined: pd.DataFrame
    uncertain: pd.DataFrame
    report: dict[str, Any]


def path_prefix(directory: str | os.PathLike, root: str | os.PathLike) -> str:
    """What goes before an image's file name in `image_path`: the folder as data files store it, plus "/"."""
    d = portable_path(directory, root)
    return "" if d == "." else d.rstrip("/") + "/"


def check_threshold(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{name}: expected a vote fraction in [0, 1], got {value}")


def dedupe_rows(frame: pd.DataFrame, key: str, name: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Identical repeats of a row are dropped (one kept); ids whose rows disagree are dropped entirely,
    because no rule can say which set of votes (or labels) is right. Counts go to `<name>_...` keys."""
    stats: dict[str, Any] = {
        f"{name}_identical_rows": 0,
        f"{name}_conflicting_rows": 0,
        f"{name}_conflicting_id_count": 0,
        f"{name}_conflicting_ids": [],
    }
    repeated = frame[key].duplicated(keep=False).to_numpy()
    if not repeated.any():  # the usual case: one cheap hash of the key column, no full-row comparison
        return frame, stats
    sub = frame[repeated]
    copy = sub.duplicated(keep="first")
    distinct = sub.loc[~copy, key]
    conflicting_ids = np.unique(distinct[distinct.duplicated(keep=False)].to_numpy())
    in_conflict = sub[key].isin(conflicting_ids)
    drop = np.zeros(len(frame), dtype=bool)
    drop[np.flatnonzero(repeated)] = (copy | in_conflict).to_numpy()
    stats[f"{name}_identical_rows"] = int((copy & ~in_conflict).sum())
    stats[f"{name}_conflicting_rows"] = int(in_conflict.sum())
    stats[f"{name}_conflicting_id_count"] = len(conflicting_ids)
    stats[f"{name}_conflicting_ids"] = [str(i) for i in conflicting_ids[:MAX_LISTED_IDS]]
    return frame[~drop], stats


def dedupe_images(
    frame: pd.DataFrame, images: Sequence[str], label: str, name: str
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows whose images are the same file (`images`: each row's resolved path) under different ids: kept
    once (the first row) when their `label` agrees, dropped all when it does not. Otherwise one picture would
    count as two galaxies and could land in train and in test. Counts go to `<name>_same_image_...` keys."""
    stats = {f"{name}_same_image_rows": 0, f"{name}_same_image_conflicting_rows": 0, f"{name}_same_image_files": 0}
    keys = pd.Series(np.asarray(images, dtype=object), index=frame.index)
    repeated = keys.duplicated(keep=False).to_numpy()
    if not repeated.any():
        return frame, stats
    sub = keys[repeated]
    labels = frame.loc[repeated, label].groupby(sub.to_numpy()).transform("nunique")
    conflict = (labels > 1).to_numpy()
    later = sub.duplicated(keep="first").to_numpy() & ~conflict
    drop = np.zeros(len(frame), dtype=bool)
    drop[np.flatnonzero(repeated)] = conflict | later
    stats[f"{name}_same_image_rows"] = int(later.sum())
    stats[f"{name}_same_image_conflicting_rows"] = int(conflict.sum())
    stats[f"{name}_same_image_files"] = int(sub.nunique())
    return frame[~drop], stats


def threshold_codes(p_spiral: np.ndarray, p_elliptical: np.ndarray, threshold: float, strict: bool) -> np.ndarray:
    """Label ids: spiral / elliptical where that vote clears the threshold (and the other does not), else
    uncertain. Integer codes, not strings, because the comparisons run over the whole catalogue."""
    sp = p_spiral > threshold if strict else p_spiral >= threshold
    el = p_elliptical > threshold if strict else p_elliptical >= threshold
    codes = np.full(len(sp), UNCERTAIN_ID, dtype=np.int64)
    codes[sp & ~el] = CLASSES.index("spiral")
    codes[el & ~sp] = CLASSES.index("elliptical")
    return codes


def code_names() -> dict[int, str]:
    return {**dict(enumerate(CLASSES)), UNCERTAIN_ID: UNCERTAIN}


def disagreement(stored: np.ndarray, rule: np.ndarray, stored_name: str, rule_name: str) -> dict[str, Any]:
    """How often two labelings (label-id arrays) of the same galaxies differ, with every direction counted."""
    differ = stored != rule
    out: dict[str, Any] = {
        "rows": int(differ.sum()),
        "of_rows": len(stored),
        "fraction": float(differ.mean()) if len(stored) else 0.0,
    }
    # one bincount over (stored, rule) pairs instead of a mask per direction
    names = code_names()
    k = len(names)
    counts = np.bincount((stored - UNCERTAIN_ID) * k + (rule - UNCERTAIN_ID), minlength=k * k)
    for a in names:
        for b in names:
            if a != b:
                out[f"{stored_name}_{names[a]}_{rule_name}_{names[b]}"] = int(
                    counts[(a - UNCERTAIN_ID) * k + b - UNCERTAIN_ID]
                )
    return out


def require_rows(n: int, message: str) -> None:
    if n == 0:
        raise UserError(message)


def labelled_tables(
    columns: Callable[[np.ndarray], dict[str, np.ndarray]], codes: np.ndarray, report: dict[str, Any], empty: str
) -> JoinResult:
    """Build the labelled and the uncertain table, each straight from `columns(rows)` (one take per column,
    no intermediate frame), with label/label_id after galaxy_id and image_path; error when no labelled row."""
    names = np.array([code_names()[c] for c in range(UNCERTAIN_ID, len(CLASSES))], dtype=object)
    codes = np.asarray(codes, dtype=np.int64)

    def table(rows: np.ndarray) -> pd.DataFrame:
        cols = columns(rows)
        head = {"galaxy_id": cols.pop("galaxy_id"), "image_path": cols.pop("image_path")}
        return pd.DataFrame({**head, "label": names[codes[rows] - UNCERTAIN_ID], "label_id": codes[rows], **cols})

    labelled = np.flatnonzero(codes != UNCERTAIN_ID)
    require_rows(len(labelled), empty.format(n=len(codes)))
    uncertain = np.flatnonzero(codes == UNCERTAIN_ID)
    report["classes"] = {name: int((codes == i).sum()) for i, name in enumerate(CLASSES)}
    report["uncertain"] = len(uncertain)
    report["rows_out"] = len(labelled)
    return JoinResult(table(labelled), table(uncertain), report)
