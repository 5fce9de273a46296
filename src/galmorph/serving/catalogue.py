"""Score a catalogue: every input row comes back with p_<class>..., label and error added.

Rows that name an image file are scored from it; rows with only a sky position get a cut-out from the
configured service first (data.cutouts: cached, rate-limited, retried). Either way the images then take the
one path `galmorph predict` takes for files (serving.predict.score_files), so a catalogue row and the same
image given as a file get the same numbers. An output column whose name the catalogue already has gets
`pred_` in front (as `galmorph batch` does), so no input column is ever replaced.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from astropy.table import Table

from galmorph import __version__
from galmorph.config import CutoutsConfig, UnvalidatedSection
from galmorph.data.catalogue import CatalogueColumns, Provenance, find_columns, row_inputs
from galmorph.data.cutouts import Position, Service, fetch_cutouts, service_of
from galmorph.data.tables import read_table
from galmorph.errors import UserError
from galmorph.models.inference import GalaxyClassifier
from galmorph.serving.predict import score_files

OUTPUT_PREFIX = "pred_"
"""Put in front of an output column's name that an input table already has (label -> pred_label)."""


def output_names(input_columns: Sequence[str], outputs: Sequence[str]) -> dict[str, str]:
    """The name of each output column: as it is, or with `pred_` in front as long as an input column (or an
    earlier output) has that name, compared without case (Spark's and FITS's rule)."""
    taken = {c.lower() for c in input_columns}
    names: dict[str, str] = {}
    for column in outputs:
        name = column
        while name.lower() in taken:
            name = OUTPUT_PREFIX + name
        names[column] = name
        taken.add(name.lower())
    return names


@dataclasses.dataclass(frozen=True)
class CatalogueResult:
    """The scored table (input columns, then the outputs), each output's name in it, and the cut-outs'
    service and counts (None and 0 when every row named a file)."""

    table: Table
    names: dict[str, str]
    service: Service | None
    cutouts: int
    cutouts_requested: int

    @property
    def errors(self) -> list[str]:
        return [str(e) for e in self.table[self.names["error"]]]

    def frame(self) -> pd.DataFrame:
        """label and error under their plain names: what serving.predict.summary counts."""
        return pd.DataFrame(
            {"label": list(self.table[self.names["label"]]), "error": list(self.table[self.names["error"]])}
        )


@dataclasses.dataclass(frozen=True)
class CatalogueRequest:
    """How to read a catalogue: column names (None: the usual ones), the cut-out service (None: cutouts.service)
    and params.yaml's `cutouts` section as the command has it (validated only if some row has a position)."""

    cutouts: Any = None
    path_column: str | None = None
    ra_column: str | None = None
    dec_column: str | None = None
    size_column: str | None = None
    id_column: str | None = None
    service: str | None = None


def open_catalogue(source: str, request: CatalogueRequest) -> tuple[Table, CatalogueColumns, CutoutsConfig | None]:
    """The catalogue's table, its columns, and the cut-out configuration when it has RA/Dec (its size column
    from --size-column, else cutouts.size_column): the one-line errors before any model loads or request."""
    table = read_table(source, "catalogue")
    pick = {"path": request.path_column, "ra": request.ra_column, "dec": request.dec_column, "id": request.id_column}
    columns = find_columns(table, source, **pick, size=request.size_column)
    if columns.ra is None:
        return table, columns, None
    cutouts = request.cutouts
    if cutouts is None:
        raise UserError(
            f"{source}: rows with RA/Dec need params.yaml's cutouts section (run from the repo or pass --params)"
        )
    if isinstance(cutouts, UnvalidatedSection):
        cutouts.raise_error()
    service_of(cutouts, request.service)  # an unknown service or a broken template: said now
    if columns.size is None and cutouts.size_column:
        columns = find_columns(table, source, **pick, size=cutouts.size_column)
    return table, columns, cutouts


@dataclasses.dataclass(frozen=True)
class CatalogueImages:
    """Per row: the image file to score (None when there is none) and the reason there is none; the cut-out
    service used (None when every row named a file), how many rows needed a cut-out and how many were fetched
    rather than found in the cache."""

    paths: list[str | None]
    errors: list[str]
    service: Service | None
    cutouts: int
    cutouts_requested: int


def catalogue_images(
    table: Table,
    columns: CatalogueColumns,
    source: str,
    *,
    cutouts: CutoutsConfig | None = None,
    service: str | None = None,
    progress: bool = True,
) -> CatalogueImages:
    """Each row's image file: its path, else its cut-out (fetched, or from the cache). `cutouts` is needed only
    when some row has a position and no image path. Shared by predict and Spark's batch."""
    inputs = row_inputs(table, columns, source, scale_per_arcsec=None if cutouts is None else cutouts.scale_per_arcsec)
    paths, errors = list(inputs.paths), list(inputs.errors)
    wanted = [i for i, p in enumerate(inputs.positions) if p is not None]
    svc, requested = None, 0
    if wanted:
        if cutouts is None:
            raise UserError(f"{source}: rows without an image path need a cut-out service (params.yaml cutouts)")
        svc = service_of(cutouts, service)
        positions: list[Position] = [inputs.positions[i] for i in wanted]  # type: ignore[misc]
        fetched = fetch_cutouts(positions, cutouts, service=svc.name, progress=progress)
        for i, cutout in zip(wanted, fetched, strict=True):
            requested += cutout.requested
            if cutout.path is not None:
                paths[i] = str(cutout.path)
            else:
                errors[i] = cutout.error
    return CatalogueImages(
        [p if not e else None for p, e in zip(paths, errors, strict=True)], errors, svc, len(wanted), requested
    )


def score_catalogue(
    classifier: GalaxyClassifier,
    table: Table,
    columns: CatalogueColumns,
    source: str,
    *,
    cutouts: CutoutsConfig | None = None,
    service: str | None = None,
    progress: bool = True,
    **score_kwargs: Any,
) -> CatalogueResult:
    """Score every row of `table` (read from `source`); `score_kwargs` go to score_files (batch_size,
    workers, tta, threshold)."""
    images = catalogue_images(table, columns, source, cutouts=cutouts, service=service, progress=progress)
    errors = images.errors
    scored_rows = [i for i, p in enumerate(images.paths) if p is not None]
    df = score_files(classifier, [images.paths[i] for i in scored_rows], progress=progress, **score_kwargs)
    outputs = [c for c in df.columns if c != "path"]
    names = output_names(table.colnames, outputs)
    out = table.copy(copy_data=False)
    for column in outputs:
        if column in ("label", "error"):
            values = np.array([""] * len(table), dtype=object)
        else:
            values = np.full(len(table), np.nan)
        values[scored_rows] = df[column].to_numpy()
        if column == "error":
            values = np.array([e or values[i] for i, e in enumerate(errors)], dtype=object)
        out[names[column]] = values.astype(str) if values.dtype == object else values
    return CatalogueResult(out, names, images.service, images.cutouts, images.cutouts_requested)


def provenance(
    model: str,
    model_uri: str,
    model_version: str | None,
    *,
    threshold: float,
    tta: bool,
    result: CatalogueResult,
    cutouts: CutoutsConfig | None,
    size_column: str | None,
) -> list[Provenance]:
    """What a scored catalogue says about how it was made: the model, the verdict's rule and, when cut-outs
    were fetched, the service, its URL template and the scale rule."""
    items = [
        Provenance("galmorph_model", "GMMODEL", model, "the model that answered"),
        Provenance("galmorph_model_uri", "GMURI", model_uri, "its MLflow URI or file"),
        Provenance("galmorph_model_version", "GMVERSN", model_version or "", "registered version ('' if none)"),
        Provenance("galmorph_threshold", "GMTHRESH", float(threshold), "label is uncertain under this top prob."),
        Provenance("galmorph_tta", "GMTTA", bool(tta), "mean over the 8 rotations and flips"),
        Provenance("galmorph_version", "GMSOFTW", __version__, "galmorph version"),
        Provenance(
            "galmorph_date",
            "GMDATE",
            datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "when it was scored (UTC)",
        ),
    ]
    if result.service is not None and cutouts is not None:
        svc = result.service
        scale = (
            f"{cutouts.scale_per_arcsec:g} * {size_column} arcsec/px" if size_column else f"{svc.pixscale:g} arcsec/px"
        )
        items += [
            Provenance("galmorph_cutout_service", "GMCUTSVC", svc.name, "cut-out service of rows without a path"),
            Provenance("galmorph_cutout_url", "GMCUTURL", svc.url, "its URL template"),
            Provenance("galmorph_cutout_size", "GMCUTPX", svc.size, "cut-out size in pixels"),
            Provenance("galmorph_cutout_scale", "GMCUTSCL", scale, "cut-out pixel scale"),
        ]
    return items
