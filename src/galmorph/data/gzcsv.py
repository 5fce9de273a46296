"""The official Galaxy Zoo files: their names, the one definition of GZ1 table 2's and the GZ2 mapping's
columns (the reader here and the synthetic writer both use it), and a typed, validating CSV reader.

The official files are big (667,944 + 355,990 rows) and come from outside the project, so they are read with
pyarrow's multi-threaded CSV reader and explicit column types (OBJIDs are 18-digit integers: read straight to
int64, never through float, which would silently merge neighbouring galaxies), and every problem a user can
cause is a one-line UserError naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from galmorph.errors import UserError

TABLE2_NAME = "GalaxyZoo1_DR_table2.csv"
MAPPING_NAME = "gz2_filename_mapping.csv"
IMAGES_SUBDIR = Path("images_gz2") / "images"
"""Where the GZ2 cut-outs, <asset_id>.jpg, live below the folder that holds the two CSVs."""
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

_ARROW_TYPES = {
    "id": pa.int64(),
    "count": pa.int64(),
    "flag": pa.int64(),
    "fraction": pa.float64(),
    "text": pa.string(),
    "ra": pa.string(),
    "dec": pa.string(),
}
EXPECTED = {
    "id": "an integer ID",
    "count": "a non-negative integer",
    "flag": "0 or 1",
    "fraction": "a vote fraction in [0, 1]",
    "ra": "a right ascension (hh:mm:ss.s or degrees in [0, 360))",
    "dec": "a declination (±dd:mm:ss.s or degrees in [-90, 90])",
}
_INT_RE = r"^\s*[+-]?\d+\s*$"


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _open_text(path: Path) -> io.TextIOBase:
    """Text handle on a plain or gzipped CSV (decided by content, not by name), BOM stripped."""
    if _is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def check_file(path: Path, what: str) -> None:
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


def fail_at(path: Path, row: int, column: str, message: str) -> UserError:
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
                    return fail_at(path, int(i), col, f"integer {text[int(i)].as_py().strip()!r} is out of range")
        else:
            numbers = pd.to_numeric(pd.Series(trimmed.to_numpy(zero_copy_only=False)), errors="coerce")
            bad = pa.array(numbers.isna().to_numpy())
        bad_np = pc.or_(bad, empty).to_numpy(zero_copy_only=False)
        if bad_np.any():
            i = int(np.argmax(bad_np))
            value = text[i].as_py()
            if not value.strip():
                return fail_at(path, i, col, f"missing value (expected {EXPECTED[kind]})")
            return fail_at(path, i, col, f"expected {EXPECTED[kind]}, got {value.strip()!r}")
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
                raise fail_at(path, i, column, f"expected {EXPECTED[kind]}, got {item!r}") from None
    lo, hi = (0.0, 360.0) if hours else (-90.0, 90.0)
    bad = ~((values >= lo) & ((values < hi) if hours else (values <= hi)))
    if bad.any():
        i = int(np.argmax(bad))
        raise fail_at(path, i, column, f"expected {EXPECTED[kind]}, got {text[i].as_py()!r}")
    return values


def read_typed_csv(path: str | os.PathLike, schema: Mapping[str, str], what: str) -> pd.DataFrame:
    """Read the `schema` columns of a CSV with explicit types and validate every value.

    Returns a DataFrame with the schema's columns (ids/counts int64, flags int8, fractions float64, angles in
    degrees, text as str); `.attrs` holds `path`, `extra_columns` (ignored, reported) and `rows_read`.
    """
    path = Path(path)
    check_file(path, what)
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
            raise fail_at(path, i, col, f"missing value (expected {EXPECTED[kind]})")
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
            raise fail_at(path, i, col, f"expected {EXPECTED[kind]}, got {values[i].item()!r}")
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
        raise fail_at(Path(path), i, "SPIRAL/ELLIPTICAL/UNCERTAIN", f"exactly one flag must be 1, got {got}")
    return df


def read_mapping(path: str | os.PathLike) -> pd.DataFrame:
    """The GZ2 filename mapping (objid, sample, asset_id): asset_id names the JPEG in images_gz2."""
    return read_typed_csv(path, MAPPING_SCHEMA, "GZ2 filename mapping")
