"""The join stage's work: GZ1 table 2 joined with the GZ2 filename mapping (or a labelled manifest CSV, read
by its source), de-duplicated and labelled into the catalogue contract (labels.CONTRACT_COLUMNS)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from galmorph.config import CLASSES, JoinConfig
from galmorph.data.gzcsv import FRACTION_COLUMNS, read_mapping, read_table2
from galmorph.data.labels import (
    UNCERTAIN_ID,
    JoinResult,
    check_threshold,
    dedupe_rows,
    disagreement,
    labelled_tables,
    path_prefix,
    require_rows,
    threshold_codes,
)
from galmorph.data.sources.manifest import read_manifest_catalogue
from galmorph.paths import resolve_path


def _dedupe_mapping(mapping: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Identical rows: one kept. An asset_id claimed by several rows: all dropped (the image's galaxy is unknown).
    Several assets for one objid (e.g. Stripe 82 normal and coadd depth): the first in file order is kept."""
    copy = mapping.duplicated(keep="first").to_numpy() if mapping["objid"].duplicated().any() else None
    if copy is not None and copy.any():
        mapping = mapping[~copy]
    shared_asset = mapping["asset_id"].duplicated(keep=False).to_numpy()
    if shared_asset.any():
        mapping = mapping[~shared_asset]
    later_asset = mapping["objid"].duplicated(keep="first").to_numpy()
    if later_asset.any():
        mapping = mapping[~later_asset]
    return mapping, {
        "mapping_identical_rows": int(copy.sum()) if copy is not None else 0,
        "mapping_duplicate_asset_id_rows": int(shared_asset.sum()),
        "mapping_duplicate_objid_rows": int(later_asset.sum()),
    }


def _flag_codes(t2: pd.DataFrame) -> np.ndarray:
    codes = np.full(len(t2), UNCERTAIN_ID, dtype=np.int64)
    codes[t2["SPIRAL"].to_numpy() == 1] = CLASSES.index("spiral")
    codes[t2["ELLIPTICAL"].to_numpy() == 1] = CLASSES.index("elliptical")
    return codes


def _int_strings(values: np.ndarray, prefix: str = "", suffix: str = "") -> np.ndarray:
    """Integers as exact decimal strings with a prefix/suffix (object array), via arrow: ~2x numpy's astype."""
    text = pc.cast(pa.array(values, type=pa.int64()), pa.string())
    if prefix or suffix:
        text = pc.binary_join_element_wise(prefix, text, suffix, "")
    return text.to_numpy(zero_copy_only=False)


def vote_counts(table2: pd.DataFrame) -> dict[str, np.ndarray]:
    """Vote counts per class for the Dirichlet-multinomial loss: NVOTE x P_CS_DEBIASED and NVOTE x
    P_EL_DEBIASED, i.e. p_spiral / p_elliptical weighted by how many volunteers voted.

    Debiased, not the raw clicks (NVOTE x P_CS): the labels (flags or the debiased threshold) are defined on the
    debiased fractions, and the raw ones put many labelled spirals in the smooth majority (44% of the GZ2
    spirals of ../shared/galaxyzoo; trained on raw counts the model lost 7 points of accuracy, README
    "Vote-aware training"). What the volunteers' number still does is weigh a 60-vote galaxy above a 3-vote one.
    """
    nvote = table2["NVOTE"].to_numpy(np.float64)
    return {
        "spiral": table2["P_CS_DEBIASED"].to_numpy(np.float64) * nvote,
        "elliptical": table2["P_EL_DEBIASED"].to_numpy(np.float64) * nvote,
    }


def join_catalogues(
    table2: pd.DataFrame,
    mapping: pd.DataFrame,
    images_dir: str | os.PathLike,
    cfg: JoinConfig,
    *,
    root: str | os.PathLike | None = None,
) -> JoinResult:
    """Table 2 ⨝ mapping on OBJID = objid (inner), labelled by `cfg.label_rule`, in the catalogue contract.

    `images_dir` holds `<asset_id>.jpg`; `root` (default: the working directory, where params' paths are
    relative to) decides whether image paths are stored relative or absolute.
    """
    check_threshold(cfg.threshold, "join.threshold")
    root = Path(root or os.getcwd())
    report: dict[str, Any] = {
        "kind": "catalogue",
        "label_rule": cfg.label_rule,
        "threshold": cfg.threshold,
        "rows_read": {
            "table2": table2.attrs.get("rows_read", len(table2)),
            "mapping": mapping.attrs.get("rows_read", len(mapping)),
        },
        "extra_columns": {
            "table2": table2.attrs.get("extra_columns", []),
            "mapping": mapping.attrs.get("extra_columns", []),
        },
    }
    t2_name, map_name = table2.attrs.get("path", "table 2"), mapping.attrs.get("path", "the mapping")
    require_rows(len(table2), f"{t2_name}: table 2 has no rows")
    require_rows(len(mapping), f"{map_name}: the mapping has no rows")
    table2, dup_t2 = dedupe_rows(table2, "OBJID", "table2")
    mapping, dup_map = _dedupe_mapping(mapping)
    report["duplicates"] = {**dup_t2, **dup_map}
    require_rows(len(table2), f"{t2_name}: every OBJID has conflicting duplicate rows; nothing left to join")
    require_rows(len(mapping), f"{map_name}: every asset_id is claimed by several rows; nothing left to join")

    flags = _flag_codes(table2)
    p_sp, p_el = table2["P_CS_DEBIASED"].to_numpy(), table2["P_EL_DEBIASED"].to_numpy()
    by_threshold = threshold_codes(p_sp, p_el, cfg.threshold, strict=True)
    report["disagreement"] = disagreement(flags, by_threshold, "flags", "threshold")

    where = pd.Index(mapping["objid"].to_numpy()).get_indexer(table2["OBJID"].to_numpy())
    matched = where >= 0
    report["matched"] = int(matched.sum())
    report["unmatched"] = {"table2": int((~matched).sum()), "mapping": len(mapping) - int(matched.sum())}
    require_rows(
        report["matched"],
        f"no OBJID of {t2_name} appears in the objid column of {map_name} "
        f"({len(table2)} and {len(mapping)} rows): are these GZ1 table 2 and the GZ2 filename mapping?",
    )
    t2_rows = np.flatnonzero(matched)
    map_rows = where[t2_rows]
    prefix = path_prefix(images_dir, root)
    extras = {"ra": "RA", "dec": "DEC", "nvote": "NVOTE", **{c: c for c in FRACTION_COLUMNS}}
    counts = vote_counts(table2)

    def columns(rows: np.ndarray) -> dict[str, np.ndarray]:
        t, m = t2_rows[rows], map_rows[rows]
        objid, asset = table2["OBJID"].to_numpy()[t], mapping["asset_id"].to_numpy()[m]
        return {
            "galaxy_id": _int_strings(objid),
            "image_path": _int_strings(asset, prefix, ".jpg"),
            "p_spiral": p_sp[t],
            "p_elliptical": p_el[t],
            **{f"count_{c}": counts[c][t] for c in CLASSES},
            "objid": objid,
            "asset_id": asset,
            "sample": mapping["sample"].to_numpy()[m],
            **{name: table2[col].to_numpy()[t] for name, col in extras.items()},
        }

    codes = (flags if cfg.label_rule == "flags" else by_threshold)[t2_rows]
    rule = "the SPIRAL/ELLIPTICAL flags" if cfg.label_rule == "flags" else f"debiased votes > {cfg.threshold}"
    return labelled_tables(
        columns, codes, report, f"all {{n}} matched galaxies are UNCERTAIN under {rule} (join.label_rule)"
    )


def build_catalogue(source: Mapping[str, Any], cfg: JoinConfig, *, root: str | os.PathLike | None = None) -> JoinResult:
    """The join stage's work for either kind of source (see source.json); `root` as in join_catalogues."""
    root = Path(root or os.getcwd())
    if source["kind"] == "manifest":
        result = read_manifest_catalogue(source, root=root)
    else:
        table2 = read_table2(resolve_path(source["table2"], root))
        mapping = read_mapping(resolve_path(source["mapping"], root))
        result = join_catalogues(table2, mapping, resolve_path(source["images_dir"], root), cfg, root=root)
    cutouts = {"cutouts": source["cutouts"]} if "cutouts" in source else {}  # coords: rows without a cut-out
    result.report = {"source": source.get("source", source["kind"]), **cutouts, **result.report}
    return result
