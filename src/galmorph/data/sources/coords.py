"""A catalogue of sky positions with labels or votes (GZ1 table 2, a GZ DECaLS vote table, a survey's own
classes) plus a cut-out service: the training images are fetched by position (data.cutouts) into raw_dir,
where DVC versions them with the rest of fetch's output.

fetch writes, in raw_dir:
- `cutouts/<key>.jpg`: one file per distinct request, hard links to the cut-out cache's files (copies across
  file systems), so a re-run takes them from the cache without a request;
- `coords.csv`: the catalogue as a manifest (`cutout_file`, `catalogue_row` and the catalogue columns the
  labels are read from), less the rows whose cut-out failed. Only rows the labels keep (a class, or votes
  that leave them uncertain: evaluate scores those) are fetched; the others stay in coords.csv, so join drops
  and counts them as for any manifest (`dropped_labels`, `missing_votes`), without a request for their image;
- `cutouts_failed.csv`: the fetched rows without a usable cut-out (off the footprint, a failed request, no
  size), with why;
- `source.json` of kind manifest over coords.csv, so join labels the rows exactly as a manifest
  (read_manifest_catalogue) and copies the cut-out counts into its report.

Everything that can be wrong with the catalogue and the label settings is checked, and the labels read the
way join will read them, before raw_dir is touched and before the first request.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from astropy.table import Table

from galmorph.config import CoordsConfig, CutoutsConfig
from galmorph.data.catalogue import parse_sizes
from galmorph.data.cutouts import Cutout, Position, cache_path, fetch_cutouts, service_of
from galmorph.data.sources.manifest import KEPT_MANIFEST_COLUMNS, read_manifest_catalogue
from galmorph.data.sources.rawdir import COORDS_CSV, CUTOUTS_FAILED, CUTOUTS_ROOT, check_outside
from galmorph.data.tables import find_column, read_table, sky_coords
from galmorph.errors import UserError
from galmorph.io import file_md5, write_csv
from galmorph.paths import portable_path

PATH_COLUMN = "cutout_file"
ROW_COLUMN = "catalogue_row"
"""1-based data row of the catalogue: the id when data.coords.id_column is null, and how a row is found again."""
FAILED_COLUMNS = (ROW_COLUMN, "id", "ra", "dec", "error")
#: How a cut-out error is counted in source.json (by the start of data.cutouts' message); the row's own
#: message, in cutouts_failed.csv, says more. tests/test_coords.py meets each against the fake service.
FAILURE_KINDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"outside the survey footprint or blank"), "blank or off the footprint"),
    (re.compile(r"cut-out request failed"), "request failed"),
    (re.compile(r"the \S+ service did not send a usable image"), "not an image"),
)


@dataclasses.dataclass(frozen=True)
class CoordsPlan:
    """A checked catalogue, ready to fetch: per row whether its labels keep it (`wanted`), its position (None:
    its error), its cut-out's file name, the text of the columns the labels need, and the manifest settings
    join will read them with."""

    catalogue: Path
    service: str
    wanted: np.ndarray
    positions: list[Position | None]
    errors: list[str]
    files: list[str]
    labels: pd.DataFrame
    settings: dict[str, Any]
    ids: list[str]
    ra: np.ndarray
    dec: np.ndarray


def _text_column(table: Table, name: str, path: Path) -> np.ndarray:
    """A column as the text a CSV cell would hold: masked and NaN cells empty, numbers at full precision."""
    col = table[name]
    if col.ndim != 1:
        raise UserError(f"{path}: column {name}: expected one value per row, found shape {col.shape[1:]}")
    data = np.asarray(col)
    if data.dtype.kind == "S":
        text = np.char.decode(data, "utf-8", "replace").astype(object)
    elif data.dtype.kind == "f":
        text = np.where(np.isnan(data), "", data.astype(str)).astype(object)
    else:
        text = data.astype(str).astype(object)
    mask = getattr(col, "mask", None)
    if mask is not None and np.any(mask):
        text[np.asarray(mask, bool)] = ""
    return np.array([t.strip() for t in text], dtype=object)


def _settings(cfg: CoordsConfig, table: Table, path: Path) -> dict[str, Any]:
    """data.coords' label settings with the catalogue's own spelling of each column (find_column)."""

    def col(name: str | None) -> str | None:
        return None if name is None else find_column(table, name, path)

    def cols(mapping: dict[str, str] | None) -> dict[str, str] | None:
        return {k: find_column(table, v, path) for k, v in mapping.items()} if mapping else None

    if cfg.label_column is None and not cfg.vote_columns:
        raise UserError("data.coords: set label_column or vote_columns (both are null)")
    return {
        "path_column": PATH_COLUMN,
        "id_column": col(cfg.id_column) or ROW_COLUMN,
        "label_column": col(cfg.label_column),
        "label_map": dict(cfg.label_map),
        "vote_columns": cols(cfg.vote_columns),
        "vote_threshold": cfg.vote_threshold,
        "count_columns": cols(cfg.count_columns),
        "total_votes_column": col(cfg.total_votes_column),
    }


def _label_columns(settings: dict[str, Any], table: Table) -> list[str]:
    named = [
        settings["id_column"],
        settings["label_column"],
        *(settings["vote_columns"] or {}).values(),
        *(settings["count_columns"] or {}).values(),
        settings["total_votes_column"],
        *(c for c in KEPT_MANIFEST_COLUMNS if c in table.colnames),
    ]
    return list(dict.fromkeys(c for c in named if c is not None and c != ROW_COLUMN))


def _check_labels(plan_labels: pd.DataFrame, settings: dict[str, Any], catalogue: Path) -> np.ndarray:
    """Read the labels as join will (read_manifest_catalogue), now: a bad vote or an empty label_map costs no
    request. Returns which rows join keeps (labelled or uncertain). Its errors name a line of a temporary CSV
    with the catalogue's rows in order: said as the catalogue's row."""
    with tempfile.TemporaryDirectory(prefix="galmorph-coords-") as tmp:
        csv = Path(tmp) / COORDS_CSV
        write_csv(csv, plan_labels)
        try:
            read = read_manifest_catalogue(
                {"kind": "manifest", "path": str(csv), "image_root": tmp, **settings}, root=tmp
            )
        except UserError as exc:
            message = str(exc).replace("data.manifest", "data.coords")
            message = re.sub(
                rf"^{re.escape(str(csv))}: line (\d+),", lambda m: f"{catalogue}: row {int(m[1]) - 1},", message
            )
            raise UserError(message.replace(str(csv), str(catalogue))) from None
    kept = set(read.joined["source_path"]) | set(read.uncertain["source_path"])
    return plan_labels[PATH_COLUMN].isin(kept).to_numpy()


def plan_coords(cfg: CoordsConfig, cutouts: CutoutsConfig, raw_dir: str | os.PathLike) -> CoordsPlan:
    """Read and check the catalogue (data.coords.path, any format of data.tables) and the label settings;
    nothing is written and nothing requested. Malformed RA/Dec or labels are UserErrors naming the row; a row
    without a usable size is that row's failure, counted when fetched."""
    path = Path(cfg.path)
    check_outside(path, raw_dir, "data.coords.path")
    if cfg.max_rows is not None and cfg.max_rows < 1:
        raise UserError(f"params: data.coords.max_rows: expected a whole number >= 1 or blank, got {cfg.max_rows}")
    service = service_of(cutouts, cfg.service)
    table = read_table(path, "data.coords.path catalogue")
    if cfg.max_rows is not None:
        table = table[: cfg.max_rows]
    settings = _settings(cfg, table, path)
    coords = sky_coords(table, cfg.ra_column, cfg.dec_column, path)
    ra, dec = coords.ra.deg, coords.dec.deg
    n = len(table)
    errors = [""] * n
    scales: Sequence[float | None] = [None] * n
    if cfg.size_column is not None:
        sizes, errors = parse_sizes(table[find_column(table, cfg.size_column, path)], source=str(path))
        scales = [cutouts.scale_per_arcsec * float(s) for s in sizes]
    positions = [
        None if errors[i] else Position(float(ra[i]), float(dec[i]), scales[i]) for i in range(n)
    ]  # a position the service cannot take (no size) is that row's failure
    files = [
        "" if p is None else cache_path(cutouts.cache_dir, service, p).name for p in positions
    ]  # the cache's content address is the file's name in raw_dir too
    columns = _label_columns(settings, table)
    clash = [c for c in columns if c in (PATH_COLUMN, ROW_COLUMN)]
    if clash:
        raise UserError(f"{path}: column {clash[0]} is a name the coords source writes; rename it in the catalogue")
    labels = pd.DataFrame(
        {
            PATH_COLUMN: [f or f"(row {i + 1}: {errors[i]})" for i, f in enumerate(files)],
            ROW_COLUMN: np.arange(1, n + 1),
            **{c: _text_column(table, c, path) for c in columns},
        }
    )
    wanted = _check_labels(labels, settings, path)
    id_col = settings["id_column"]
    ids = [str(v) for v in (labels[id_col] if id_col != ROW_COLUMN else labels[ROW_COLUMN])]
    return CoordsPlan(path, service.name, wanted, positions, errors, files, labels, settings, ids, ra, dec)


def _failure_kind(error: str) -> str:
    for pattern, kind in FAILURE_KINDS:
        if pattern.match(error):
            return kind
    return "no usable position or size"


def _place(source: Path, target: Path) -> None:
    """`target` becomes the cached file: a hard link (no second copy on disk), or a copy across file systems."""
    if target.exists() and (os.path.samefile(source, target) or source.read_bytes() == target.read_bytes()):
        return
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def fetch_coords(
    plan: CoordsPlan, cutouts: CutoutsConfig, raw_dir: str | os.PathLike, *, progress: bool = True
) -> dict[str, Any]:
    """Fetch (or take from the cache) every row's cut-out, put them in raw_dir, write coords.csv and
    cutouts_failed.csv; returns the source.json description (kind manifest) with the counts."""
    raw = Path(raw_dir)
    asked = [i for i, p in enumerate(plan.positions) if p is not None and plan.wanted[i]]
    got: list[Cutout | None] = [None] * len(plan.positions)
    if asked:
        fetched = fetch_cutouts([plan.positions[i] for i in asked], cutouts, service=plan.service, progress=progress)
        for i, cutout in zip(asked, fetched, strict=True):
            got[i] = cutout
    errors = [plan.errors[i] if c is None else c.error for i, c in enumerate(got)]
    ok = np.array([c is not None and c.path is not None for c in got], bool)
    failed = np.flatnonzero(plan.wanted & ~ok)

    images = raw / CUTOUTS_ROOT
    images.mkdir(parents=True, exist_ok=True)
    keep: dict[str, Path] = {plan.files[i]: got[i].path for i in np.flatnonzero(ok)}  # type: ignore[union-attr]
    for name, cached in keep.items():
        _place(cached, images / name)
    for stale in images.iterdir():  # rows no longer in the catalogue: raw_dir holds the current set only
        if stale.name in keep:
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
        else:
            stale.unlink()

    write_csv(raw / COORDS_CSV, plan.labels.drop(index=plan.labels.index[failed]))
    write_csv(
        raw / CUTOUTS_FAILED,
        pd.DataFrame(
            {
                ROW_COLUMN: failed + 1,
                "id": [plan.ids[i] for i in failed],
                "ra": np.round(plan.ra[failed], 7),
                "dec": np.round(plan.dec[failed], 7),
                "error": [errors[i] for i in failed],
            },
            columns=list(FAILED_COLUMNS),
        ),
    )
    requested = {id(c) for c in got if c is not None and c.requested}  # a repeated position: one Cutout
    by_kind: dict[str, int] = {}
    for i in failed:
        kind = _failure_kind(errors[i])
        by_kind[kind] = by_kind.get(kind, 0) + 1
    svc = cutouts.services[plan.service]
    return {
        "source": "coords",
        "kind": "manifest",
        "path": portable_path(raw / COORDS_CSV),
        "image_root": portable_path(images),
        **plan.settings,
        "md5": {"catalogue": file_md5(plan.catalogue)},
        "catalogue": portable_path(plan.catalogue),
        "service": {"name": plan.service, "url": svc.url, "pixscale": svc.pixscale, "size": svc.size},
        "cutouts": {
            "rows": len(plan.positions),
            "unlabelled_not_fetched": int((~plan.wanted).sum()),
            "with_image": int(ok.sum()),
            "failed": len(failed),
            "failed_by_kind": dict(sorted(by_kind.items())),
            "failed_rows": portable_path(raw / CUTOUTS_FAILED),
            "images": len(keep),
            "requested": len(requested),
        },
    }
