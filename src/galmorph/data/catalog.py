"""The catalogue: GZ1 table 2 joined with the GZ2 filename mapping (or a labelled manifest CSV), validated,
de-duplicated and labelled, in the table shape every later stage reads (see `CONTRACT_COLUMNS`).

The official files are big (667,944 + 355,990 rows) and come from outside the project, so they are read with
pyarrow's multi-threaded CSV reader and explicit column types (OBJIDs are 18-digit integers: read straight to
int64, never through float, which would silently merge neighbouring galaxies), and every problem a user can
cause is a one-line UserError naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import gzip
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from galmorph.config import CLASSES, JoinConfig
from galmorph.errors import UserError

TABLE2_NAME = "GalaxyZoo1_DR_table2.csv"
MAPPING_NAME = "gz2_filename_mapping.csv"
FRACTION_COLUMNS: tuple[str, ...] = (
    "P_EL",
    "P_CW",
    "P_ACW",
    "P_EDGE",
    "P_DK",
    "P_MG",
    "P_CS",
    "P_EL_DEBIASED",
    "P_CS_DEBIASED",
)
FLAG_COLUMNS: tuple[str, ...] = ("SPIRAL", "ELLIPTICAL", "UNCERTAIN")
#: column -> kind; the kind decides the arrow type it is read as and the checks it gets.
TABLE2_SCHEMA: dict[str, str] = {
    "OBJID": "id",
    "RA": "ra",
    "DEC": "dec",
    "NVOTE": "count",
    **dict.fromkeys(FRACTION_COLUMNS, "fraction"),
    **dict.fromkeys(FLAG_COLUMNS, "flag"),
}
MAPPING_SCHEMA: dict[str, str] = {"objid": "id", "sample": "text", "asset_id": "id"}
TABLE2_COLUMNS: tuple[str, ...] = tuple(TABLE2_SCHEMA)
MAPPING_COLUMNS: tuple[str, ...] = tuple(MAPPING_SCHEMA)
CONTRACT_COLUMNS: tuple[str, ...] = ("galaxy_id", "image_path", "label", "label_id", "p_spiral", "p_elliptical")
UNCERTAIN = "uncertain"
UNCERTAIN_ID = -1
"""label / label_id of the rows in join.uncertain_out: the votes did not settle them (scored by evaluate)."""
MAX_LISTED_IDS = 1000
"""Conflicting duplicate ids listed by name in the report (all are counted); keeps the DVC metric readable."""
KEPT_MANIFEST_COLUMNS: tuple[str, ...] = ("dataset", "survey")

_ARROW_TYPES = {
    "id": pa.int64(),
    "count": pa.int64(),
    "flag": pa.int64(),
    "fraction": pa.float64(),
    "text": pa.string(),
    "ra": pa.string(),
    "dec": pa.string(),
}
_EXPECTED = {
    "id": "an integer ID",
    "count": "a non-negative integer",
    "flag": "0 or 1",
    "fraction": "a vote fraction in [0, 1]",
    "ra": "a right ascension (hh:mm:ss.s or degrees in [0, 360))",
    "dec": "a declination (±dd:mm:ss.s or degrees in [-90, 90])",
}
_INT_RE = r"^\s*[+-]?\d+\s*$"


@dataclasses.dataclass
class JoinResult:
    """The labelled catalogue, the galaxies the votes left uncertain (same columns), and the JSON report."""

    joined: pd.DataFrame
    uncertain: pd.DataFrame
    report: dict[str, Any]


# --------------------------------------------------------------------------------------------------- CSV reading


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _open_text(path: Path) -> io.TextIOBase:
    """Text handle on a plain or gzipped CSV (decided by content, not by name), BOM stripped."""
    if _is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise UserError(f"{path}: {what} not found (run `galmorph fetch` or check data.source)")
    if not path.is_file():
        raise UserError(f"{path}: {what} is not a file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: {what} is empty (expected a CSV with a header row)")


def read_header(path: Path) -> list[str]:
    """The CSV's column names (stripped of surrounding spaces); UserError for an empty or undecodable file."""
    try:
        with _open_text(path) as fh:
            header = next(csv.reader(fh), None)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read the header row: {exc}") from None
    if not header or all(not h.strip() for h in header):
        raise UserError(f"{path}: is empty (expected a CSV with a header row)")
    return [h.strip() for h in header]


def check_columns(path: Path, header: Sequence[str], required: Iterable[str]) -> list[str]:
    """Raise for missing columns (suggesting the look-alike a rename left behind); return the extra columns."""
    required = list(required)
    doubled = sorted({h for h in required if header.count(h) > 1})
    if doubled:
        raise UserError(f"{path}: column(s) {', '.join(doubled)} appear more than once in the header")
    extra = [h for h in header if h not in required]
    missing = [c for c in required if c not in header]
    if missing:
        hints = []
        for col in missing:
            lower = {h.lower(): h for h in extra}
            match = difflib.get_close_matches(col.lower(), list(lower), n=1, cutoff=0.6)
            if match:
                hints.append(f"{col} (found {lower[match[0]]!r}: renamed?)")
            else:
                hints.append(col)
        raise UserError(
            f"{path}: missing column(s) {', '.join(hints)}; expected columns {', '.join(required)}, "
            f"found {', '.join(header)}"
        )
    return extra


def line_number(path: Path, row: int) -> int:
    """1-based line in the file of data row `row` (0-based), counted the way the CSV reader counts
    (blank lines skipped, quoted newlines kept). Only called on the error path, so a plain scan is fine."""
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        next(reader, None)
        i = -1
        for record in reader:
            if record:
                i += 1
                if i == row:
                    return reader.line_num
    return row + 2


def _fail(path: Path, row: int, column: str, message: str) -> UserError:
    return UserError(f"{path}: line {line_number(path, row)}, column {column}: {message}")


def _read_arrow(path: Path, header: Sequence[str], columns: Mapping[str, pa.DataType]) -> pa.Table:
    """Typed read of `columns`; the header is passed in (already stripped of stray spaces) and skipped."""
    source = pa.input_stream(str(path), compression="gzip" if _is_gzip(path) else None)
    return pacsv.read_csv(
        source,
        read_options=pacsv.ReadOptions(block_size=1 << 24, column_names=list(header), skip_rows=1),
        convert_options=pacsv.ConvertOptions(
            column_types=dict(columns), include_columns=list(columns), strings_can_be_null=False
        ),
    )


def _explain_arrow_error(path: Path, schema: Mapping[str, str], header: Sequence[str], exc: Exception) -> UserError:
    """Turn pyarrow's conversion/parse error into one line naming the file, line and column (slow path)."""
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        next(reader, None)
        try:
            for record in reader:
                if record and len(record) != len(header):
                    return UserError(
                        f"{path}: line {reader.line_num}: expected {len(header)} fields, found {len(record)}"
                    )
        except (UnicodeDecodeError, csv.Error) as err:
            return UserError(f"{path}: line {reader.line_num + 1}: cannot be read: {err}")
    try:
        raw = _read_arrow(path, header, dict.fromkeys(schema, pa.string()))
    except (pa.ArrowInvalid, OSError) as err:
        return UserError(f"{path}: not a readable CSV: {str(err).splitlines()[0]}")
    for col, kind in schema.items():
        if _ARROW_TYPES[kind] == pa.string():
            continue
        text = raw.column(col)
        trimmed = pc.utf8_trim_whitespace(text)
        empty = pc.equal(trimmed, "")
        if kind in ("id", "count", "flag"):
            bad = pc.invert(pc.match_substring_regex(text, _INT_RE))
            big = pc.greater(pc.utf8_length(trimmed), 18).to_numpy(zero_copy_only=False)
            for i in np.flatnonzero(big & ~bad.to_numpy(zero_copy_only=False)):
                if not -(2**63) <= int(text[int(i)].as_py()) < 2**63:
                    return _fail(path, int(i), col, f"integer {text[int(i)].as_py().strip()!r} is out of range")
        else:
            numbers = pd.to_numeric(pd.Series(trimmed.to_numpy(zero_copy_only=False)), errors="coerce")
            bad = pa.array(numbers.isna().to_numpy())
        bad_np = pc.or_(bad, empty).to_numpy(zero_copy_only=False)
        if bad_np.any():
            i = int(np.argmax(bad_np))
            value = text[i].as_py()
            if not value.strip():
                return _fail(path, i, col, f"missing value (expected {_EXPECTED[kind]})")
            return _fail(path, i, col, f"expected {_EXPECTED[kind]}, got {value.strip()!r}")
    return UserError(f"{path}: not a readable CSV: {str(exc).splitlines()[0]}")


def _angle_scalar(text: str, hours: bool) -> float:
    t = text.strip()
    if ":" not in t:
        return float(t)
    parts = t.split(":")
    if len(parts) != 3:
        raise ValueError(text)
    a, b, c = (float(p) for p in parts)
    if not (0 <= b < 60 and 0 <= c < 60):
        raise ValueError(text)
    mag = abs(a) + b / 60 + c / 3600
    return (-mag if t.startswith("-") else mag) * (15.0 if hours else 1.0)


def _parse_angles(path: Path, column: str, text: pa.ChunkedArray, hours: bool) -> np.ndarray:
    """Degrees from sexagesimal (`hh:mm:ss.s` for RA, `±dd:mm:ss.s` for DEC, as in the real table 2) or decimal
    strings; vectorised for the uniform cases, per value (with the exact error) otherwise."""
    kind = "ra" if hours else "dec"
    trimmed = pc.utf8_trim_whitespace(text)
    values: np.ndarray | None = None
    try:
        parts = pc.split_pattern(trimmed, ":")
        lengths = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
        if (lengths == 1).all():
            values = pc.cast(trimmed, pa.float64()).to_numpy(zero_copy_only=False)
        elif (lengths == 3).all():
            abc = pc.cast(pc.list_flatten(parts), pa.float64()).to_numpy(zero_copy_only=False).reshape(-1, 3)
            if ((abc[:, 1:] >= 0) & (abc[:, 1:] < 60)).all():
                mag = np.abs(abc[:, 0]) + abc[:, 1] / 60 + abc[:, 2] / 3600
                neg = pc.starts_with(trimmed, "-").to_numpy(zero_copy_only=False)
                values = np.where(neg, -mag, mag) * (15.0 if hours else 1.0)
    except (pa.ArrowInvalid, ValueError):
        values = None
    if values is None:
        values = np.empty(len(text))
        for i, item in enumerate(text.to_pylist()):
            try:
                values[i] = _angle_scalar(item, hours)
            except ValueError:
                raise _fail(path, i, column, f"expected {_EXPECTED[kind]}, got {item!r}") from None
    lo, hi = (0.0, 360.0) if hours else (-90.0, 90.0)
    bad = ~((values >= lo) & ((values < hi) if hours else (values <= hi)))
    if bad.any():
        i = int(np.argmax(bad))
        raise _fail(path, i, column, f"expected {_EXPECTED[kind]}, got {text[i].as_py()!r}")
    return values


def read_typed_csv(path: str | os.PathLike, schema: Mapping[str, str], what: str) -> pd.DataFrame:
    """Read the `schema` columns of a CSV with explicit types and validate every value.

    Returns a DataFrame with the schema's columns (ids/counts int64, flags int8, fractions float64, angles in
    degrees, text as str); `.attrs` holds `path`, `extra_columns` (ignored, reported) and `rows_read`.
    """
    path = Path(path)
    _check_file(path, what)
    header = read_header(path)
    extra = check_columns(path, header, schema)
    try:
        table = _read_arrow(path, header, {c: _ARROW_TYPES[k] for c, k in schema.items()})
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise _explain_arrow_error(path, schema, header, exc) from None
    if table.num_rows == 0:
        raise UserError(f"{path}: has a header but no data rows")
    frame: dict[str, Any] = {}
    for col, kind in schema.items():
        arr = table.column(col)
        if kind in ("ra", "dec"):
            frame[col] = _parse_angles(path, col, arr, hours=kind == "ra")
            continue
        if kind == "text":
            frame[col] = arr.to_numpy(zero_copy_only=False)
            continue
        if arr.null_count:
            i = int(np.argmax(arr.is_null().to_numpy(zero_copy_only=False)))
            raise _fail(path, i, col, f"missing value (expected {_EXPECTED[kind]})")
        values = arr.to_numpy()
        if kind == "fraction":
            bad = ~((values >= 0.0) & (values <= 1.0))
        elif kind == "flag":
            bad = (values != 0) & (values != 1)
        elif kind == "count":
            bad = values < 0
        else:
            bad = None
        if bad is not None and bad.any():
            i = int(np.argmax(bad))
            raise _fail(path, i, col, f"expected {_EXPECTED[kind]}, got {values[i].item()!r}")
        frame[col] = values.astype(np.int8) if kind == "flag" else values
    df = pd.DataFrame(frame, copy=False)
    df.attrs.update(path=str(path), extra_columns=extra, rows_read=len(df))
    return df


def read_table2(path: str | os.PathLike) -> pd.DataFrame:
    """GZ1 table 2 (Lintott et al. 2011), validated: all 16 columns, RA/DEC in degrees, exactly one of the
    SPIRAL/ELLIPTICAL/UNCERTAIN flags set per galaxy (the catalogue's own definition)."""
    df = read_typed_csv(path, TABLE2_SCHEMA, "GZ1 table 2")
    nflags = df["SPIRAL"].to_numpy(np.int16) + df["ELLIPTICAL"].to_numpy(np.int16) + df["UNCERTAIN"].to_numpy(np.int16)
    if (nflags != 1).any():
        i = int(np.argmax(nflags != 1))
        got = ", ".join(f"{c}={df[c].iat[i]}" for c in FLAG_COLUMNS)
        raise _fail(Path(path), i, "SPIRAL/ELLIPTICAL/UNCERTAIN", f"exactly one flag must be 1, got {got}")
    return df


def read_mapping(path: str | os.PathLike) -> pd.DataFrame:
    """The GZ2 filename mapping (objid, sample, asset_id): asset_id names the JPEG in images_gz2."""
    return read_typed_csv(path, MAPPING_SCHEMA, "GZ2 filename mapping")


# --------------------------------------------------------------------------------------------- catalogue join


def display_path(path: str | os.PathLike, root: Path) -> str:
    """A path as the catalogue stores it: relative to the repo root when inside it, else absolute.

    Not `resolve()`d: DVC may link data files into its cache, and following the link would point outside."""
    p = Path(os.path.normpath(os.path.join(root, path)))
    try:
        return p.relative_to(os.path.normpath(root)).as_posix()
    except ValueError:
        return p.as_posix()


def _prefix(directory: str | os.PathLike, root: Path) -> str:
    d = display_path(directory, root)
    return "" if d == "." else d.rstrip("/") + "/"


def _dedupe_rows(frame: pd.DataFrame, key: str, name: str) -> tuple[pd.DataFrame, dict[str, Any]]:
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


def _threshold_codes(p_spiral: np.ndarray, p_elliptical: np.ndarray, threshold: float, strict: bool) -> np.ndarray:
    """Label ids: spiral / elliptical where that vote clears the threshold (and the other does not), else
    uncertain. Integer codes, not strings, because the comparisons run over the whole catalogue."""
    sp = p_spiral > threshold if strict else p_spiral >= threshold
    el = p_elliptical > threshold if strict else p_elliptical >= threshold
    codes = np.full(len(sp), UNCERTAIN_ID, dtype=np.int64)
    codes[sp & ~el] = CLASSES.index("spiral")
    codes[el & ~sp] = CLASSES.index("elliptical")
    return codes


def _flag_codes(t2: pd.DataFrame) -> np.ndarray:
    codes = np.full(len(t2), UNCERTAIN_ID, dtype=np.int64)
    codes[t2["SPIRAL"].to_numpy() == 1] = CLASSES.index("spiral")
    codes[t2["ELLIPTICAL"].to_numpy() == 1] = CLASSES.index("elliptical")
    return codes


def _code_names() -> dict[int, str]:
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
    names = _code_names()
    k = len(names)
    counts = np.bincount((stored - UNCERTAIN_ID) * k + (rule - UNCERTAIN_ID), minlength=k * k)
    for a in names:
        for b in names:
            if a != b:
                out[f"{stored_name}_{names[a]}_{rule_name}_{names[b]}"] = int(
                    counts[(a - UNCERTAIN_ID) * k + b - UNCERTAIN_ID]
                )
    return out


def _require_rows(n: int, message: str) -> None:
    if n == 0:
        raise UserError(message)


def _finish(
    columns: Callable[[np.ndarray], dict[str, np.ndarray]], codes: np.ndarray, report: dict[str, Any], empty: str
) -> JoinResult:
    """Build the labelled and the uncertain table, each straight from `columns(rows)` (one take per column,
    no intermediate frame), with label/label_id after galaxy_id and image_path; error when no labelled row."""
    names = np.array([_code_names()[c] for c in range(UNCERTAIN_ID, len(CLASSES))], dtype=object)
    codes = np.asarray(codes, dtype=np.int64)

    def table(rows: np.ndarray) -> pd.DataFrame:
        cols = columns(rows)
        head = {"galaxy_id": cols.pop("galaxy_id"), "image_path": cols.pop("image_path")}
        return pd.DataFrame({**head, "label": names[codes[rows] - UNCERTAIN_ID], "label_id": codes[rows], **cols})

    labelled = np.flatnonzero(codes != UNCERTAIN_ID)
    _require_rows(len(labelled), empty.format(n=len(codes)))
    uncertain = np.flatnonzero(codes == UNCERTAIN_ID)
    report["classes"] = {name: int((codes == i).sum()) for i, name in enumerate(CLASSES)}
    report["uncertain"] = len(uncertain)
    report["rows_out"] = len(labelled)
    return JoinResult(table(labelled), table(uncertain), report)


def _int_strings(values: np.ndarray, prefix: str = "", suffix: str = "") -> np.ndarray:
    """Integers as exact decimal strings with a prefix/suffix (object array), via arrow: ~2x numpy's astype."""
    text = pc.cast(pa.array(values, type=pa.int64()), pa.string())
    if prefix or suffix:
        text = pc.binary_join_element_wise(prefix, text, suffix, "")
    return text.to_numpy(zero_copy_only=False)


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
    _require_rows(len(table2), f"{t2_name}: table 2 has no rows")
    _require_rows(len(mapping), f"{map_name}: the mapping has no rows")
    table2, dup_t2 = _dedupe_rows(table2, "OBJID", "table2")
    mapping, dup_map = _dedupe_mapping(mapping)
    report["duplicates"] = {**dup_t2, **dup_map}
    _require_rows(len(table2), f"{t2_name}: every OBJID has conflicting duplicate rows; nothing left to join")
    _require_rows(len(mapping), f"{map_name}: every asset_id is claimed by several rows; nothing left to join")

    flags = _flag_codes(table2)
    p_sp, p_el = table2["P_CS_DEBIASED"].to_numpy(), table2["P_EL_DEBIASED"].to_numpy()
    by_threshold = _threshold_codes(p_sp, p_el, cfg.threshold, strict=True)
    report["disagreement"] = disagreement(flags, by_threshold, "flags", "threshold")

    where = pd.Index(mapping["objid"].to_numpy()).get_indexer(table2["OBJID"].to_numpy())
    matched = where >= 0
    report["matched"] = int(matched.sum())
    report["unmatched"] = {"table2": int((~matched).sum()), "mapping": len(mapping) - int(matched.sum())}
    _require_rows(
        report["matched"],
        f"no OBJID of {t2_name} appears in the objid column of {map_name} "
        f"({len(table2)} and {len(mapping)} rows): are these GZ1 table 2 and the GZ2 filename mapping?",
    )
    t2_rows = np.flatnonzero(matched)
    map_rows = where[t2_rows]
    prefix = _prefix(images_dir, root)
    extras = {"ra": "RA", "dec": "DEC", "nvote": "NVOTE", **{c: c for c in FRACTION_COLUMNS}}

    def columns(rows: np.ndarray) -> dict[str, np.ndarray]:
        t, m = t2_rows[rows], map_rows[rows]
        objid, asset = table2["OBJID"].to_numpy()[t], mapping["asset_id"].to_numpy()[m]
        return {
            "galaxy_id": _int_strings(objid),
            "image_path": _int_strings(asset, prefix, ".jpg"),
            "p_spiral": p_sp[t],
            "p_elliptical": p_el[t],
            "objid": objid,
            "asset_id": asset,
            "sample": mapping["sample"].to_numpy()[m],
            **{name: table2[col].to_numpy()[t] for name, col in extras.items()},
        }

    codes = (flags if cfg.label_rule == "flags" else by_threshold)[t2_rows]
    rule = "the SPIRAL/ELLIPTICAL flags" if cfg.label_rule == "flags" else f"debiased votes > {cfg.threshold}"
    return _finish(columns, codes, report, f"all {{n}} matched galaxies are UNCERTAIN under {rule} (join.label_rule)")


# ------------------------------------------------------------------------------------------------- manifests


def check_threshold(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{name}: expected a vote fraction in [0, 1], got {value}")


def _manifest_schema(source: Mapping[str, Any]) -> dict[str, str]:
    """Check the manifest settings and return the columns to read (all as text: checked per column below)."""
    label_col, votes = source.get("label_column"), source.get("vote_columns") or None
    check_threshold(float(source.get("vote_threshold", 0.8)), "data.manifest.vote_threshold")
    if label_col is None and votes is None:
        raise UserError("data.manifest: set label_column or vote_columns (both are null)")
    if votes is not None and set(votes) != set(CLASSES):
        raise UserError(f"data.manifest.vote_columns: expected keys {', '.join(CLASSES)}, got {', '.join(votes)}")
    if label_col is not None:
        allowed = (*CLASSES, UNCERTAIN)
        for key, value in (source.get("label_map") or {}).items():
            if value not in allowed:
                raise UserError(
                    f"data.manifest.label_map: {key!r} maps to {value!r}; expected one of {', '.join(allowed)}"
                )
    columns = [source["path_column"], source.get("id_column"), label_col, *(votes or {}).values()]
    return dict.fromkeys((c for c in columns if c is not None), "text")


def _manifest_ids(path: Path, df: pd.DataFrame, path_col: str, id_col: str | None) -> pd.Series:
    """Galaxy ids: the id column, or the image path itself (labels.csv's objid lost digits to float)."""
    ids = df[id_col].str.strip() if id_col is not None else None
    if ids is not None:
        # before the empty-cell check: a float-mangled column is the likelier mistake and needs a different fix
        mangled = ids.str.fullmatch(r"[+-]?\d(\.\d+)?[eE][+-]?\d+").to_numpy()
        if mangled.any():
            i = int(np.argmax(mangled))
            raise _fail(
                path, i, id_col, f"ID {ids.iat[i]!r} was written as a float and lost digits; set id_column: null"
            )
    for col in (path_col, id_col):
        if col is not None:
            empty = (df[col].str.strip() == "").to_numpy()
            if empty.any():
                raise _fail(path, int(np.argmax(empty)), col, "missing value (expected an image path or ID)")
    return ids if ids is not None else df[path_col].str.strip()


def _vote_fractions(path: Path, df: pd.DataFrame, column: str) -> np.ndarray:
    """A vote column as floats; empty cells are NaN (unknown), anything else must be a fraction."""
    text = df[column].str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)  # "" -> NaN
    bad = (np.isnan(values) & (text != "").to_numpy()) | (values < 0) | (values > 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise _fail(path, i, column, f"expected {_EXPECTED['fraction']}, got {text.iat[i]!r}")
    return values


def read_manifest_catalogue(source: Mapping[str, Any], *, root: str | os.PathLike | None = None) -> JoinResult:
    """Any labelled image set as a catalogue: a CSV with an image-path column and either a label column
    (mapped through label_map; values it does not name are dropped and counted) or vote-fraction columns
    (spiral / elliptical when the vote reaches vote_threshold, else uncertain).

    `source` is source.json's manifest entry; its paths are relative to `root` (default: working directory).
    """
    root = Path(root or os.getcwd())
    path = Path(os.path.join(root, source["path"]))
    path_col, id_col, label_col = source["path_column"], source.get("id_column"), source.get("label_column")
    votes: dict[str, str] = source.get("vote_columns") or {}
    threshold = float(source.get("vote_threshold", 0.8))
    schema = _manifest_schema(source)
    _check_file(path, "manifest")
    # carried along for per-dataset breakdowns downstream (labels.csv mixes four image sets)
    kept = [c for c in KEPT_MANIFEST_COLUMNS if c in read_header(path) and c not in schema]
    df = read_typed_csv(path, {**schema, **dict.fromkeys(kept, "text")}, "manifest")
    report: dict[str, Any] = {
        "kind": "manifest",
        "label_rule": "label_column" if label_col is not None else "vote_columns",
        "threshold": threshold,
        "rows_read": {"manifest": len(df)},
        "extra_columns": {"manifest": [c for c in df.attrs["extra_columns"] if c not in kept]},
        "dropped_labels": {},
        "missing_votes": 0,
        "disagreement": None,
    }
    rel = df[path_col].str.strip()
    ids = _manifest_ids(path, df, path_col, id_col)
    nan = np.full(len(df), np.nan)
    p_sp = _vote_fractions(path, df, votes["spiral"]) if votes else nan
    p_el = _vote_fractions(path, df, votes["elliptical"]) if votes else nan
    has_votes = ~(np.isnan(p_sp) | np.isnan(p_el))
    by_votes = _threshold_codes(p_sp, p_el, threshold, strict=False)

    if label_col is not None:
        raw = df[label_col].str.strip()
        code_of = {name: code for code, name in _code_names().items()}
        mapped = raw.map({k: code_of[v] for k, v in (source.get("label_map") or {}).items()})
        keep = mapped.notna().to_numpy()
        counts = raw[~keep].value_counts().sort_index()
        report["dropped_labels"] = {(k or "(empty)"): int(v) for k, v in counts.items()}
        found = ", ".join(repr(v) for v in sorted(raw.unique())[:10])
        _require_rows(
            int(keep.sum()),
            f"{path}: no value of column {label_col} is in label_map ({', '.join(source.get('label_map') or {})}); "
            f"found {found}",
        )
        codes = mapped.fillna(UNCERTAIN_ID).to_numpy(np.int64)
        if votes:
            both = keep & has_votes
            report["disagreement"] = disagreement(codes[both], by_votes[both], "label", "votes")
    else:
        keep = has_votes
        report["missing_votes"] = int((~has_votes).sum())
        _require_rows(int(keep.sum()), f"{path}: every row misses a value in {', '.join(votes.values())}")
        codes = by_votes

    prefix = _prefix(source.get("image_root") or path.parent, root)
    image_path = (prefix + rel).to_numpy(dtype=object)
    absolute = rel.map(os.path.isabs).to_numpy()
    if absolute.any():
        image_path[absolute] = [display_path(p, root) for p in rel[absolute]]
    frame = pd.DataFrame(
        {
            "galaxy_id": ids.to_numpy(dtype=object),
            "image_path": image_path,
            "label_id": codes,
            "p_spiral": p_sp,
            "p_elliptical": p_el,
            "source_path": rel.to_numpy(dtype=object),
            **({"label_raw": df[label_col].to_numpy(dtype=object)} if label_col is not None else {}),
            **{c: df[c].to_numpy(dtype=object) for c in kept},
        }
    )[keep]
    frame, report["duplicates"] = _dedupe_rows(frame, "galaxy_id", "manifest")
    codes = frame.pop("label_id").to_numpy()
    rule = "label_map" if label_col is not None else f"vote_columns >= {threshold}"
    return _finish(
        lambda rows: {c: frame[c].to_numpy()[rows] for c in frame.columns},
        codes,
        report,
        f"all {{n}} kept rows of {path} are uncertain under {rule}",
    )


# ---------------------------------------------------------------------------------------------- source.json

_SOURCE_KEYS = {
    "catalogue": ("table2", "mapping", "images_dir"),
    "manifest": ("path", "path_column", "label_column", "label_map", "vote_columns", "vote_threshold"),
}


def read_source(raw_dir: str | os.PathLike) -> dict[str, Any]:
    """`<raw_dir>/source.json`, written by `fetch`: where the raw inputs are and how to read them."""
    path = Path(raw_dir) / "source.json"
    if not path.is_file():
        raise UserError(f"{path}: not found (run `galmorph fetch` first)")
    try:
        source = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(source, dict) or source.get("kind") not in _SOURCE_KEYS:
        raise UserError(f"{path}: expected an object with kind 'catalogue' or 'manifest'")
    missing = [k for k in _SOURCE_KEYS[source["kind"]] if k not in source]
    if missing:
        raise UserError(f"{path}: missing key(s) {', '.join(missing)} for kind {source['kind']!r}")
    return source


def build_catalogue(source: Mapping[str, Any], cfg: JoinConfig, *, root: str | os.PathLike | None = None) -> JoinResult:
    """The join stage's work for either kind of source (see source.json); `root` as in join_catalogues."""
    root = Path(root or os.getcwd())
    if source["kind"] == "manifest":
        result = read_manifest_catalogue(source, root=root)
    else:
        table2 = read_table2(Path(os.path.join(root, source["table2"])))
        mapping = read_mapping(Path(os.path.join(root, source["mapping"])))
        result = join_catalogues(table2, mapping, Path(os.path.join(root, source["images_dir"])), cfg, root=root)
    result.report = {"source": source.get("source", source["kind"]), **result.report}
    return result


def summary_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The few numbers a person checks after a join, as (what, value) rows for the terminal."""
    rows = [(f"rows read: {name}", f"{n:,}") for name, n in report["rows_read"].items()]
    dups = report.get("duplicates", {})
    rows += [
        (f"dropped: {k.replace('_', ' ')}", f"{v:,}")
        for k, v in dups.items()
        if k.endswith("_rows") and v  # rows, not the id counts and lists
    ]
    if "matched" in report:
        rows.append(("joined (in both files)", f"{report['matched']:,}"))
    rows += [(f"unmatched: {k}", f"{v:,}") for k, v in report.get("unmatched", {}).items()]
    rows += [(f"dropped label: {k}", f"{v:,}") for k, v in report.get("dropped_labels", {}).items()]
    if report.get("missing_votes"):
        rows.append(("dropped: missing votes", f"{report['missing_votes']:,}"))
    rows += [(name, f"{n:,}") for name, n in report["classes"].items()]
    rows.append((f"{UNCERTAIN} (→ uncertain_out)", f"{report['uncertain']:,}"))
    if report.get("disagreement"):
        d = report["disagreement"]
        rows.append(("labels vs threshold rule: disagree", f"{d['rows']:,} of {d['of_rows']:,} ({d['fraction']:.1%})"))
    n_extra = sum(len(v) for v in report.get("extra_columns", {}).values())
    if n_extra:
        rows.append(("extra columns ignored", f"{n_extra}"))
    return rows
