"""Attach labels from a reference catalogue (Galaxy Zoo votes, a survey's classes) to a user's own positions.

Each position takes the columns of the nearest reference object (astropy's `match_to_catalog_sky`) when it
lies within the radius. Every row of the user's table is kept, with four columns saying what happened:
`match_status` (matched / ambiguous / unmatched), `match_n` (reference objects within the radius),
`match_sep_arcsec` (to the nearest one, whether or not it is within the radius: it shows what radius would
have matched) and `match_ref_row` (the 1-based data row of the reference object attached).

Ambiguous rows (two or more reference objects within the radius: a close pair, a shredded galaxy, a
duplicated catalogue entry) get no label by default (`ambiguous="drop"`): a training label copied from the
wrong neighbour is worse than one galaxy fewer. `ambiguous="nearest"` attaches the nearest one instead.
Either way they are counted, as are reference objects attached to several rows.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any, Literal

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import MaskedColumn, Table

from galmorph.data.tables import find_column, sky_coords
from galmorph.errors import UserError

AmbiguousPolicy = Literal["drop", "nearest"]
AMBIGUOUS_POLICIES: tuple[str, ...] = ("drop", "nearest")
MATCHED, AMBIGUOUS, UNMATCHED = "matched", "ambiguous", "unmatched"
MATCH_COLUMNS: tuple[str, ...] = ("match_status", "match_n", "match_sep_arcsec", "match_ref_row")
REF_PREFIX = "ref_"
"""Put before a reference column's name that the user's table (or MATCH_COLUMNS) already uses."""


@dataclasses.dataclass(frozen=True)
class Match:
    """Per position: the nearest reference row, its separation, how many lie within the radius, and whether
    the nearest one's columns are attached (see the module's ambiguity policy)."""

    nearest: np.ndarray
    sep_arcsec: np.ndarray
    n_within: np.ndarray
    attached: np.ndarray

    @property
    def status(self) -> np.ndarray:
        return np.where(self.n_within == 0, UNMATCHED, np.where(self.n_within == 1, MATCHED, AMBIGUOUS))


def check_radius(radius_arcsec: float) -> float:
    radius = float(radius_arcsec)
    if not (math.isfinite(radius) and radius > 0):
        raise UserError(f"crossmatch radius: expected a positive number of arcseconds, got {radius_arcsec}")
    return radius


def match_positions(
    positions: SkyCoord, reference: SkyCoord, radius_arcsec: float, *, ambiguous: AmbiguousPolicy = "drop"
) -> Match:
    """Nearest reference object per position and the number within `radius_arcsec` (great-circle distances:
    right at the poles and across RA 0/360)."""
    radius = check_radius(radius_arcsec)
    if ambiguous not in AMBIGUOUS_POLICIES:
        raise UserError(f"crossmatch: ambiguous policy {ambiguous!r}; expected one of {', '.join(AMBIGUOUS_POLICIES)}")
    if len(positions) == 0 or len(reference) == 0:
        raise UserError("crossmatch: both the positions and the reference catalogue need at least one row")
    nearest, sep, _ = positions.match_to_catalog_sky(reference)
    found = reference.search_around_sky(positions, radius * u.arcsec)
    n_within = np.bincount(found[0], minlength=len(positions))
    sep_arcsec = sep.to_value(u.arcsec)
    # the count decides; the nearest is within the radius whenever the count is not zero (same distances)
    attached = (n_within == 1) | ((n_within > 1) & (ambiguous == "nearest"))
    return Match(np.asarray(nearest, np.int64), sep_arcsec, n_within.astype(np.int64), attached)


def _attached_name(name: str, taken: set[str]) -> str:
    """`name`, prefixed until no column of any case has it (FITS column names ignore case: RA is ra)."""
    out = name
    while out.lower() in taken:
        out = REF_PREFIX + out
    return out


def crossmatch_tables(
    mine: Table,
    reference: Table,
    *,
    radius_arcsec: float,
    mine_path: str | os.PathLike,
    reference_path: str | os.PathLike,
    ra_column: str = "ra",
    dec_column: str = "dec",
    ref_ra_column: str | None = None,
    ref_dec_column: str | None = None,
    columns: Sequence[str] | None = None,
    ambiguous: AmbiguousPolicy = "drop",
) -> tuple[Table, dict[str, Any]]:
    """The user's table with the reference's columns (`columns`, default all) attached where matched, plus
    MATCH_COLUMNS; and a report of the counts. The reference's RA/Dec columns default to the user's names."""
    clash = [c for c in MATCH_COLUMNS if c in mine.colnames]
    if clash:
        raise UserError(
            f"{mine_path}: already has column(s) {', '.join(clash)} (a crossmatch output?); rename or drop them"
        )
    positions = sky_coords(mine, ra_column, dec_column, mine_path)
    ref_positions = sky_coords(reference, ref_ra_column or ra_column, ref_dec_column or dec_column, reference_path)
    wanted = [find_column(reference, c, reference_path) for c in columns] if columns else list(reference.colnames)
    match = match_positions(positions, ref_positions, radius_arcsec, ambiguous=ambiguous)

    out = mine.copy(copy_data=True)
    taken = {c.lower() for c in (*mine.colnames, *MATCH_COLUMNS)}
    for name in wanted:
        col = reference[name]
        values = np.asarray(col)[match.nearest]
        mask = ~match.attached.reshape((-1,) + (1,) * (values.ndim - 1)) | np.zeros(values.shape, bool)
        if getattr(col, "mask", None) is not None:
            mask = mask | np.asarray(col.mask)[match.nearest]
        new = _attached_name(name, taken)
        taken.add(new.lower())
        out[new] = MaskedColumn(values, mask=mask, unit=col.unit, description=col.description)
    out["match_status"] = match.status
    out["match_n"] = match.n_within
    out["match_sep_arcsec"] = np.round(match.sep_arcsec, 6)
    out["match_ref_row"] = MaskedColumn(match.nearest + 1, mask=~match.attached)
    return out, crossmatch_report(match, len(reference), float(radius_arcsec), ambiguous)


def crossmatch_report(match: Match, reference_rows: int, radius_arcsec: float, ambiguous: str) -> dict[str, Any]:
    """The counts a person checks: matched, ambiguous (and whether labelled), unmatched, shared references."""
    status = match.status
    used = match.nearest[match.attached]
    refs, times = np.unique(used, return_counts=True)
    sep = match.sep_arcsec[match.attached]
    return {
        "rows": len(status),
        "reference_rows": reference_rows,
        "radius_arcsec": radius_arcsec,
        "ambiguous_policy": ambiguous,
        MATCHED: int((status == MATCHED).sum()),
        AMBIGUOUS: int((status == AMBIGUOUS).sum()),
        UNMATCHED: int((status == UNMATCHED).sum()),
        "labelled": int(match.attached.sum()),
        "shared_references": int((times > 1).sum()),
        "rows_sharing_a_reference": int(times[times > 1].sum()),
        "separation_arcsec": (
            {"median": float(np.median(sep)), "max": float(sep.max())} if len(sep) else {"median": None, "max": None}
        ),
        "unused_references": int(reference_rows - len(refs)),
    }
