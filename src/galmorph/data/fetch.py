"""The fetch stage's work: make `data.raw_dir` hold the current `data.source` and describe it in source.json.

join reads only source.json and the files it names, so the sources (galaxyzoo, local, manifest, coords, synthetic)
may differ in everything else. raw_dir is the stage's DVC output, so another source's files are removed from
it, and source.json is written last: it exists only when the files it names are complete.

Only what fetch wrote is ever removed or replaced (rawdir's ownership record, `.owned.json`): a folder that
already holds files of the names fetch would write, which it did not write (a user's own download), makes
fetch stop with one line naming the folder and the files, unless `--force`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from galmorph.config import CutoutsConfig, DataConfig
from galmorph.data.gzcsv import MAPPING_NAME, TABLE2_NAME
from galmorph.data.sources import local, manifest
from galmorph.data.sources.coords import fetch_coords, plan_coords
from galmorph.data.sources.galaxyzoo import fetch_galaxyzoo, table2_name
from galmorph.data.sources.local import describe_local
from galmorph.data.sources.manifest import describe_manifest
from galmorph.data.sources.rawdir import (
    COORDS_CSV,
    CUTOUTS_FAILED,
    CUTOUTS_ROOT,
    DOWNLOADS_JSON,
    IMAGE_HASHES,
    IMAGES_ROOT,
    OWNED_JSON,
    SOURCE_JSON,
    ZIP_NAME,
    clean,
    foreign,
    owner,
    owning_name,
    present,
    read_owned,
    read_previous,
    write_image_hashes,
    write_owned,
    write_source,
)
from galmorph.data.sources.synthetic import fetch_synthetic
from galmorph.errors import UserError


def _writes(cfg: DataConfig) -> set[str]:
    """The names in raw_dir that the current source writes."""
    if cfg.source == "synthetic":
        return {SOURCE_JSON, TABLE2_NAME, MAPPING_NAME, IMAGES_ROOT}
    if cfg.source == "galaxyzoo":
        return {SOURCE_JSON, DOWNLOADS_JSON, table2_name(cfg.galaxyzoo.table2_url), MAPPING_NAME, IMAGES_ROOT, ZIP_NAME}
    if cfg.source == "coords":  # the cut-outs are in raw_dir, so DVC hashes them itself
        return {SOURCE_JSON, COORDS_CSV, CUTOUTS_ROOT, CUTOUTS_FAILED}
    return {SOURCE_JSON, IMAGE_HASHES}  # local, manifest: the images stay where they are; their md5s come here


def fetch_data(
    cfg: DataConfig, *, force: bool = False, progress: bool = True, cutouts: CutoutsConfig | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Make raw_dir hold the current source; returns (the source.json written, the names removed). The coords
    source fetches its images with `cutouts` (params.yaml `cutouts:`).

    Raises UserError, before anything is written, when raw_dir holds files this source would replace that
    fetch did not write; `force` takes them over (and regenerates or downloads everything again).
    """
    raw = Path(cfg.raw_dir)
    # local and manifest check their inputs before anything in raw_dir is removed
    source = describe_local(cfg.local, raw) if cfg.source == "local" else None
    source = describe_manifest(cfg.manifest, raw) if cfg.source == "manifest" else source
    plan = None
    if cfg.source == "coords":  # the catalogue and its labels are checked before anything is removed or requested
        if cutouts is None:
            raise UserError("data.source coords: needs the cutouts section of params.yaml (its services)")
        plan = plan_coords(cfg.coords, cutouts, raw)
    previous = read_previous(raw)
    owned, writes = read_owned(raw), _writes(cfg)
    theirs = foreign(raw, writes, owned)
    if theirs and not force:
        raise UserError(
            f"{raw}: holds {', '.join(theirs)}, which fetch did not write (they are not in its record "
            f"{OWNED_JSON}) and would replace; move them out of data.raw_dir (data.source=local reads the "
            "official files where they are) or run `galmorph fetch --force` to let fetch replace them"
        )
    owned |= {str(owning_name(name)[0]) for name in theirs}  # --force: fetch's from now on
    raw.mkdir(parents=True, exist_ok=True)
    write_owned(raw, owned | writes)  # before anything is written: a killed run leaves nothing unclaimed
    removed = clean(raw, owned - {SOURCE_JSON}) if force or owner(raw) != cfg.source else []
    (raw / SOURCE_JSON).unlink(missing_ok=True)  # until the new one is written, nothing is described
    if cfg.source == "synthetic":
        source = fetch_synthetic(cfg.synthetic, raw, previous, force=force, progress=progress)
    elif cfg.source == "galaxyzoo":
        source = fetch_galaxyzoo(cfg.galaxyzoo, raw, progress=progress)
    elif plan is not None and cutouts is not None:  # coords (the checks above: both are set)
        source = fetch_coords(plan, cutouts, raw, progress=progress)
    else:  # local, manifest: pin the pixels of images outside raw_dir (and so outside DVC's view)
        listing = local.listed_images if cfg.source == "local" else manifest.listed_images
        source["image_hashes"] = write_image_hashes(raw, *listing(source), progress=progress)
    removed += clean(raw, owned - writes)
    write_source(raw, source)
    write_owned(raw, present(raw, writes))
    return source, removed
