"""What `galmorph predict --catalogue` needs from a catalogue, and the provenance it writes back.

Catalogues are read and written through data.tables (CSV, ECSV, Parquet, FITS or VOTable by extension, RA/Dec
in degrees or sexagesimal, units from the file). Here: which columns name each row's image (a path column,
or RA/Dec with an optional size column such as petroR90_r in arcsec that sets the cut-out's pixel scale),
what each row gives (a file to score, a position to fetch, or why neither), and writing the scored table with
its provenance: FITS header keywords, VOTable INFO elements, ECSV and Parquet table metadata (Parquet:
astropy's `table_meta_yaml` key). Plain CSV has no place for it. Every input column is kept, with the input's
own metadata. A malformed RA or Dec is the file's error (row and column named); a size that is missing or
not positive (SDSS writes -9999) is that row's error, and the other rows are scored.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.io.votable import from_table
from astropy.io.votable.tree import Info
from astropy.table import MaskedColumn, Table
from astropy.utils.exceptions import AstropyWarning

from galmorph.data.cutouts import Position
from galmorph.data.tables import angle_degrees, check_new, find_column, table_format
from galmorph.errors import UserError
from galmorph.io import atomic_path

PATH_COLUMNS = ("image_path", "filename", "path", "file", "image")
"""Where an image path is looked for when no column is named (also evaluate-folder's CSV manifests)."""
RA_COLUMNS = ("ra", "raj2000", "ra_icrs", "ra_deg")
DEC_COLUMNS = ("dec", "dej2000", "decj2000", "de_icrs", "dec_deg")
ID_COLUMNS = ("objid", "object_id", "dr7objid", "id")


@dataclasses.dataclass(frozen=True)
class CatalogueColumns:
    """Which columns hold what: an image path and/or RA/Dec, optionally a size (arcsec) and an object id."""

    path: str | None = None
    ra: str | None = None
    dec: str | None = None
    size: str | None = None
    id: str | None = None


def _named(table: Table, name: str, source: str, option: str) -> str:
    """The column `name` (or the one spelled so in another case), else data.tables' one-line error + the option."""
    try:
        return find_column(table, name, source)
    except UserError as exc:
        raise UserError(f"{exc}; pass {option}") from None


def _first(table: Table, candidates: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in reversed(table.colnames)}
    return next((lower[c] for c in candidates if c in lower), None)


def find_columns(
    table: Table,
    source: str,
    *,
    path: str | None = None,
    ra: str | None = None,
    dec: str | None = None,
    size: str | None = None,
    id: str | None = None,
) -> CatalogueColumns:
    """The columns to use: those named (each must exist), else the usual names (PATH_COLUMNS, RA_COLUMNS...).

    A catalogue needs an image-path column or both RA and Dec; the size column is used only when named.
    """
    found_path = _named(table, path, source, "--path-column") if path else _first(table, PATH_COLUMNS)
    found_ra = _named(table, ra, source, "--ra-column") if ra else _first(table, RA_COLUMNS)
    found_dec = _named(table, dec, source, "--dec-column") if dec else _first(table, DEC_COLUMNS)
    if (found_ra is None) != (found_dec is None):
        have, missing = ("RA", "--dec-column") if found_ra else ("Dec", "--ra-column")
        raise UserError(f"{source}: found a {have} column but not its partner; pass {missing}")
    if found_path is None and found_ra is None:
        shown = ", ".join(table.colnames[:30])
        raise UserError(
            f"{source}: no image-path column ({', '.join(PATH_COLUMNS)}) and no RA/Dec columns "
            f"(columns: {shown}); pass --path-column, or --ra-column and --dec-column"
        )
    found_size = _named(table, size, source, "--size-column") if size else None
    if found_size is not None and found_ra is None:
        raise UserError(f"{source}: a size column ({found_size}) sets the scale of cut-outs, but there is no RA/Dec")
    found_id = _named(table, id, source, "--id-column") if id else _first(table, ID_COLUMNS)
    return CatalogueColumns(found_path, found_ra, found_dec, found_size, found_id)


def _masked(column: Any) -> np.ndarray:
    mask = getattr(column, "mask", None)
    return np.zeros(len(column), bool) if mask is None or mask is np.ma.nomask else np.asarray(mask, bool)


def _unit_factor(column: Any, target: u.Unit, what: str, source: str) -> float:
    """The factor that turns the column's values into `target` units (1 without a unit)."""
    unit = getattr(column, "unit", None)
    if unit is None:
        return 1.0
    try:
        return float((1.0 * unit).to_value(target))
    except (u.UnitConversionError, u.UnitsError, TypeError, ValueError):
        raise UserError(f"{source}: column {column.name!r} is in {unit}, which is not {what}") from None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def parse_sizes(column: Any, *, source: str) -> tuple[np.ndarray, list[str]]:
    """Arcsec of a size column (its unit when it has one), and each row's error: a size must be > 0 (SDSS
    writes -9999 for none)."""
    if column.dtype.kind not in "iuf":
        raise UserError(f"{source}: size column {column.name!r} holds {column.dtype}, expected numbers in arcsec")
    values = np.asarray(column, dtype=np.float64) * _unit_factor(column, u.arcsec, "an angle", source)
    missing = _masked(column)
    errors = [""] * len(values)
    for i, v in enumerate(values):
        if missing[i]:
            errors[i] = f"{column.name}: no size"
        elif not (math.isfinite(v) and v > 0):
            errors[i] = f"{column.name}: expected a size in arcsec > 0, got {v:g}"
    return values, errors


@dataclasses.dataclass(frozen=True)
class RowInputs:
    """Per catalogue row: the image file to score, else the position to fetch, else the reason for neither."""

    paths: list[str | None]
    positions: list[Position | None]
    errors: list[str]


def _positions_needed(table: Table, columns: CatalogueColumns, needed: np.ndarray, source: str) -> tuple:
    """RA and Dec in degrees (data.tables.angle_degrees: every value checked, row and column named) of the
    rows in `needed`; the other rows (they have an image path) are not read, so their blanks are no error."""
    ra_col, dec_col = table[columns.ra], table[columns.dec]
    if not needed.all():
        coords = Table([ra_col.copy(), dec_col.copy()], names=[columns.ra, columns.dec], masked=True)
        for name in (columns.ra, columns.dec):
            column = coords[name]
            column[~needed] = 0 if column.dtype.kind in "iuf" else "0"
            column.mask[~needed] = False
        table = coords
    ra = angle_degrees(table, columns.ra, source, ra=True)
    dec = angle_degrees(table, columns.dec, source, ra=False)
    return ra, dec


def row_inputs(
    table: Table, columns: CatalogueColumns, source: str, *, scale_per_arcsec: float | None = None
) -> RowInputs:
    """What each row gives: a path (relative ones start at the catalogue's folder) wins; a row without one
    gets its position, with the scale `scale_per_arcsec * size` when there is a size column."""
    n = len(table)
    paths: list[str | None] = [None] * n
    positions: list[Position | None] = [None] * n
    errors = [""] * n
    folder = Path(source).resolve().parent
    if columns.path is not None:
        column = table[columns.path]
        missing = _masked(column)
        for i, value in enumerate(np.asarray(column, dtype=object)):
            text = "" if missing[i] else _text(value).strip()
            if text:
                paths[i] = text if os.path.isabs(text) else str(folder / text)
    needed = np.array([p is None for p in paths])
    if columns.ra is None or columns.dec is None:
        for i in np.flatnonzero(needed):
            errors[i] = f"{columns.path}: no image path"
        return RowInputs(paths, positions, errors)
    if not needed.any():
        return RowInputs(paths, positions, errors)
    ra, dec = _positions_needed(table, columns, needed, source)
    sizes, size_errors = None, [""] * n
    if columns.size is not None:
        if scale_per_arcsec is None:
            raise UserError(f"{source}: a size column needs cutouts.scale_per_arcsec")
        sizes, size_errors = parse_sizes(table[columns.size], source=source)
    for i in np.flatnonzero(needed):
        if size_errors[i]:
            errors[i] = size_errors[i]
            continue
        scale = None if sizes is None else float(scale_per_arcsec * sizes[i])  # type: ignore[operator]
        positions[i] = Position(float(ra[i]), float(dec[i]), scale)
    return RowInputs(paths, positions, errors)


def row_label(table: Table, columns: CatalogueColumns, i: int) -> str:
    """How a message names row i: its number (1 = the first data row) and its id when there is one."""
    if columns.id is None:
        return f"row {i + 1}"
    return f"row {i + 1} ({columns.id} {_text(table[columns.id][i])})"


@dataclasses.dataclass(frozen=True)
class Provenance:
    """One metadata item of a written catalogue: `name` in ECSV/Parquet metadata and VOTable INFO,
    `fits_key` (8 characters at most) in a FITS header, with `comment` as the keyword's comment."""

    name: str
    fits_key: str
    value: str | int | float | bool
    comment: str


def _fits_safe(table: Table) -> Table:
    """FITS text is ASCII: other characters (in an error message, a name) become '?' instead of failing."""
    out = table.copy(copy_data=False)
    for name in out.colnames:
        column = out[name]
        if column.dtype.kind == "U":
            ascii_bytes = np.char.encode(np.asarray(column), "ascii", "replace")
            if isinstance(column, MaskedColumn):
                out[name] = MaskedColumn(ascii_bytes, name=name, mask=column.mask)
            else:
                out[name] = ascii_bytes
    return out


def write_catalogue(
    table: Table, out: str | os.PathLike, provenance: Sequence[Provenance] = (), *, force: bool = False
) -> None:
    """Write `table` atomically in the format of `out`'s extension (data.tables), with `provenance` in its
    metadata; an existing `out` is replaced only with `force`."""
    fmt = table_format(out, writing=True)
    check_new(out, force=force)
    out = Path(out)
    try:
        with warnings.catch_warnings(), atomic_path(out) as tmp:
            warnings.simplefilter("ignore", AstropyWarning)  # long keywords go HIERARCH, as they should
            if fmt == "fits":
                hdu = fits.table_to_hdu(_fits_safe(table))
                for item in provenance:
                    hdu.header[item.fits_key] = (item.value, item.comment)
                fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)
            elif fmt == "votable":
                votable = from_table(table)
                for item in provenance:
                    votable.resources[0].infos.append(Info(name=item.name, value=str(item.value), content=item.comment))
                votable.to_xml(str(tmp))
            else:
                copy = table.copy(copy_data=False)
                if fmt != "ascii.csv":
                    copy.meta.update({item.name: item.value for item in provenance})
                copy.write(tmp, format=fmt, overwrite=True)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UserError(f"--out {out}: cannot write the table as {fmt}: {text}") from None
