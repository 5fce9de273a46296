"""Astronomers' catalogue tables in and out, and sky positions from their RA/Dec columns.

Survey teams keep catalogues as CSV, Parquet, FITS or VOTable; astropy.table reads and writes all four, so the
format is chosen by the file's extension and nothing else. Positions are read from two columns in degrees
(numbers, or a unit from the file's metadata) or sexagesimal text (RA in hours: `12:30:49.4`, `12h30m49.4s`,
`12 30 49.4`; Dec in degrees), the way GZ1 table 2 and most survey catalogues write them. Shared by
`galmorph crossmatch` and the coords data source.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from astropy.coordinates import Angle, SkyCoord
from astropy.io.votable.exceptions import VOWarning
from astropy.table import Table

from galmorph.data.gzcsv import check_columns
from galmorph.errors import UserError

#: extension -> astropy.table format; a `.gz` after the CSV, ECSV, FITS and VOTable ones is read too.
FORMATS: dict[str, str] = {
    ".csv": "ascii.csv",
    ".ecsv": "ascii.ecsv",
    ".parquet": "parquet",
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".vot": "votable",
    ".votable": "votable",
    ".xml": "votable",
}
_GZIP_READABLE = frozenset({"ascii.csv", "ascii.ecsv", "fits", "votable"})
EXPECTED_ANGLE = {
    True: "a right ascension in degrees or hh:mm:ss.s (hours)",
    False: "a declination in degrees in [-90, 90] or ±dd:mm:ss.s",
}
_DECIMAL = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_COLON = r"^(?P<sign>[+-]?)(?P<a>\d+):(?P<b>\d+):(?P<c>\d+(?:\.\d*)?)$"
#: The exceptions astropy's readers raise on a file that is not what its extension says.
_READ_ERRORS = (ValueError, TypeError, KeyError, IndexError, OSError, UnicodeDecodeError, EOFError)


def table_format(path: str | os.PathLike, *, writing: bool = False) -> str:
    """The astropy.table format of `path`, by extension; UserError naming the extensions it knows."""
    name = Path(path).name.lower()
    gz = name.endswith(".gz") and not writing
    suffix = Path(name[:-3] if gz else name).suffix
    fmt = FORMATS.get(suffix)
    if fmt is None or (gz and fmt not in _GZIP_READABLE):
        known = ", ".join(FORMATS) + ("" if writing else " (also .csv.gz, .fits.gz, .vot.gz)")
        raise UserError(f"{path}: unknown table format {suffix or '(no extension)'!r}; expected one of {known}")
    return fmt


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_table(path: str | os.PathLike, what: str = "table") -> Table:
    """A catalogue as an astropy Table (format from the extension); one-line UserError for a missing, empty or
    unreadable file, or one without rows."""
    path = Path(path)
    fmt = table_format(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: {what} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VOWarning)  # real services' VOTables bend the standard; harmless
            table = Table.read(path, format=fmt)
    except _READ_ERRORS as exc:
        raise UserError(f"{path}: cannot read the {what} as {fmt}: {_first_line(exc)}") from None
    if len(table) == 0:
        raise UserError(f"{path}: {what} has no rows")
    return table


def check_new(path: str | os.PathLike, *, force: bool) -> None:
    """Before any work: an output of a known format, not replacing a file unless `force` (data.catalogue's
    write_catalogue writes it)."""
    table_format(path, writing=True)
    if Path(path).exists() and not force:
        raise UserError(f"{path}: already exists (pass --force to replace it)")


def require_columns(path: str | os.PathLike, table: Table, columns: Sequence[str]) -> None:
    """UserError naming the missing columns (and a look-alike a rename left behind)."""
    check_columns(Path(path), list(table.colnames), columns)


def find_column(table: Table, name: str, path: str | os.PathLike) -> str:
    """`name`, or the one column spelled so in another case (`RA` for `ra`, as in GZ1 table 2); else UserError."""
    if name in table.colnames:
        return name
    same = [c for c in table.colnames if c.lower() == name.lower()]
    if len(same) == 1:
        return same[0]
    require_columns(path, table, [name])  # raises, with a look-alike when there is one
    return name


def _fail(path: str | os.PathLike, row: int, column: str, message: str) -> UserError:
    return UserError(f"{path}: row {row + 1}, column {column}: {message}")


def _arrow_text(col: Any, mask: np.ndarray) -> pa.Array:
    """A text column (str, bytes from FITS, or objects) as trimmed arrow strings, masked cells empty."""
    data = np.asarray(col)
    if data.dtype.kind == "S":
        arr = pc.cast(pa.array(data, type=pa.binary()), pa.string())
    elif data.dtype.kind == "U":
        arr = pa.array(data, type=pa.string())
    else:
        arr = pa.array([v.decode() if isinstance(v, bytes) else "" if v is None else str(v) for v in data], pa.string())
    if mask.any():
        arr = pc.if_else(pa.array(mask), "", arr)
    return pc.utf8_trim_whitespace(arr)


def _text_degrees(path: str | os.PathLike, column: str, text: pa.Array, ra: bool) -> np.ndarray:
    """Degrees from text: decimal numbers as degrees, sexagesimal as hours (RA) or degrees (Dec); empty or
    "nan" is NaN (missing). Vectorised (arrow's regex kernels) for decimals and `a:b:c`, so a 667,944-row GZ1
    table 2 takes a second or two; astropy's Angle parser, value by value, for other spellings (`12h30m49s`)."""
    values = np.full(len(text), np.nan)
    decimal = pc.match_substring_regex(text, _DECIMAL).to_numpy(zero_copy_only=False)
    if decimal.any():
        values[decimal] = pc.cast(pc.filter(text, pa.array(decimal)), pa.float64()).to_numpy(zero_copy_only=False)
    blank = pc.equal(pc.utf8_lower(text), "nan").to_numpy(zero_copy_only=False) | pc.equal(text, "").to_numpy(
        zero_copy_only=False
    )
    todo = np.flatnonzero(~decimal & ~blank)
    if len(todo):
        parts = pc.extract_regex(text.take(pa.array(todo)), _COLON)
        colon = parts.is_valid().to_numpy(zero_copy_only=False)
        if colon.any():
            found = parts.filter(pa.array(colon))
            a, b, c = (pc.cast(found.field(k), pa.float64()).to_numpy(zero_copy_only=False) for k in "abc")
            sign = np.where(pc.equal(found.field("sign"), "-").to_numpy(zero_copy_only=False), -1.0, 1.0)
            rows = todo[colon]
            bad = ~((b < 60) & (c < 60))
            if bad.any():  # astropy would carry 60 over with a warning; GZ1 table 2's reader refuses it too
                i = int(rows[np.argmax(bad)])
                raise _fail(path, i, column, f"expected {EXPECTED_ANGLE[ra]}, got {text[i].as_py()!r}")
            values[rows] = sign * (a + b / 60 + c / 3600) * (15.0 if ra else 1.0)
        for i in todo[np.isnan(values[todo])]:
            value = text[int(i)].as_py()
            try:
                values[i] = Angle(value, unit=u.hourangle if ra else u.deg).degree
            except (ValueError, TypeError, u.UnitsError):
                raise _fail(path, int(i), column, f"expected {EXPECTED_ANGLE[ra]}, got {value!r}") from None
    return values


def angle_degrees(table: Table, column: str, path: str | os.PathLike, *, ra: bool) -> np.ndarray:
    """One RA (`ra=True`) or Dec column in degrees, every value checked: a missing or unreadable value, a Dec
    outside [-90, 90] or an RA outside [-180, 360] is a UserError naming the row. RA comes back in [0, 360)."""
    col = table[column]
    mask = np.asarray(getattr(col, "mask", np.zeros(len(col), bool)), bool).reshape(len(col), -1).any(axis=1)
    if col.ndim != 1:
        raise UserError(f"{path}: column {column}: expected one value per row, found shape {col.shape[1:]}")
    if col.dtype.kind in "iuf":
        values = np.asarray(col.filled(np.nan) if mask.any() else col, np.float64)
        unit = getattr(col, "unit", None)
        if unit is not None and unit != u.dimensionless_unscaled:
            try:
                values = (values * unit).to_value(u.deg)
            except u.UnitConversionError:
                raise UserError(f"{path}: column {column}: unit {unit} is not an angle") from None
    elif col.dtype.kind in "USO":
        values = _text_degrees(path, column, _arrow_text(col, mask), ra)
    else:
        raise UserError(f"{path}: column {column}: expected {EXPECTED_ANGLE[ra]}, found values of type {col.dtype}")
    missing = mask | np.isnan(values)
    if missing.any():
        i = int(np.argmax(missing))
        raise _fail(path, i, column, f"missing value (expected {EXPECTED_ANGLE[ra]})")
    lo, hi = (-180.0, 360.0) if ra else (-90.0, 90.0)
    bad = ~((values >= lo) & (values <= hi))
    if bad.any():
        i = int(np.argmax(bad))
        shown = col[i].decode() if isinstance(col[i], bytes) else str(col[i]).strip()
        raise _fail(path, i, column, f"expected {EXPECTED_ANGLE[ra]}, got {shown!r}")
    return np.mod(values, 360.0) if ra else values


def sky_coords(table: Table, ra_column: str, dec_column: str, path: str | os.PathLike) -> SkyCoord:
    """The rows' positions (ICRS) from the RA and Dec columns (found as in find_column), each value checked."""
    ra = angle_degrees(table, find_column(table, ra_column, path), path, ra=True)
    dec = angle_degrees(table, find_column(table, dec_column, path), path, ra=False)
    return SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs")
