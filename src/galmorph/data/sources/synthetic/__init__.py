"""A synthetic Galaxy Zoo, written in the official file formats (GZ1 table 2, the GZ2 filename mapping and
SDSS-like JPEG cut-outs), so every later stage runs, and is tested, exactly as on the real 3 GB download.

Each JPEG is written through a temporary file and a rename, and all of them before the CSVs: a killed run
leaves no half-written file, and a folder that has the CSVs has all their images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from galmorph.config import SyntheticConfig
from galmorph.data import gzcsv
from galmorph.data.gzcsv import IMAGES_SUBDIR, MAPPING_COLUMNS, MAPPING_NAME, TABLE2_COLUMNS, TABLE2_NAME
from galmorph.data.sources.rawdir import catalogue_source
from galmorph.data.sources.synthetic import population, render
from galmorph.data.sources.synthetic.population import REFERENCE_SIZE, STREAM_MISSING, mapping_rows, sample_population
from galmorph.data.sources.synthetic.render import RENDER_KEYS, render_galaxy, render_seed
from galmorph.errors import UserError
from galmorph.io import atomic_path, file_md5, write_csv

JPEG_QUALITY = 88


def _render_task(task: tuple[dict[str, Any], int, float, int, int, str]) -> int:
    galaxy, asset_id, depth, size, seed, path = task
    pixels = render_galaxy(galaxy, size, render_seed(seed, asset_id), depth=depth)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels, mode="RGB").save(tmp, format="JPEG", quality=JPEG_QUALITY)
    return asset_id


def image_tasks(
    pop: pd.DataFrame, mapping: pd.DataFrame, image_dir: str | os.PathLike, *, size: int, seed: int
) -> list[tuple]:
    """One picklable render task per mapping row (`galaxy_row`, `asset_id`, `depth` columns) for render_many."""
    records = pop[[k for k in pop.columns if k in RENDER_KEYS]].to_dict("records")
    return [
        (records[row], int(asset), float(depth), size, seed, str(Path(image_dir) / f"{asset}.jpg"))
        for row, asset, depth in zip(mapping["galaxy_row"], mapping["asset_id"], mapping["depth"], strict=True)
    ]


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def render_many(tasks: list[tuple], workers: int | None = None, *, progress: bool = True) -> int:
    """Render and write the tasks' JPEGs in a pool of `workers` processes; returns how many were written.

    workers=None: every CPU this process may use, unless the job is so small (under ~16 full-size
    cut-outs' work) that starting the processes would cost more than it saves.
    """
    if workers is None:
        work = sum((task[3] / REFERENCE_SIZE) ** 2 for task in tasks)
        workers = default_workers() if work >= 16 else 1
    workers = max(1, workers)
    bar = tqdm(total=len(tasks), desc="synthetic images", unit="img", disable=not progress, leave=False)
    done = 0
    with bar:
        if workers == 1 or len(tasks) < 2:
            for task in tasks:
                _render_task(task)
                done += 1
                bar.update()
        else:
            # spawn, not fork: the caller may hold threads (torch, pyarrow) that fork would copy half-locked.
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                chunk = max(1, min(16, len(tasks) // (workers * 8)))
                for _ in pool.imap_unordered(_render_task, tasks, chunksize=chunk):
                    done += 1
                    bar.update()
    return done


def check_config(cfg: SyntheticConfig) -> None:
    where = "data.synthetic"
    if cfg.n_galaxies < 1:
        raise UserError(f"{where}.n_galaxies: expected at least 1, got {cfg.n_galaxies}")
    if not 0.0 < cfg.mapping_fraction <= 1.0:
        raise UserError(f"{where}.mapping_fraction: expected a share in (0, 1], got {cfg.mapping_fraction}")
    if not 0.0 <= cfg.missing_image_fraction < 1.0:
        raise UserError(f"{where}.missing_image_fraction: expected a share in [0, 1), got {cfg.missing_image_fraction}")
    if not 16 <= cfg.image_size <= 4096:
        raise UserError(f"{where}.image_size: expected 16 to 4096 pixels, got {cfg.image_size}")


def generate(
    cfg: SyntheticConfig,
    out_dir: str | os.PathLike,
    *,
    images: bool = True,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write GalaxyZoo1_DR_table2.csv, gz2_filename_mapping.csv and images_gz2/images/<asset_id>.jpg.

    A share `missing_image_fraction` of the mapping rows gets no JPEG (as on the real Zenodo record, where a
    few hundred are absent), and JPEGs left in the folder by an earlier run that this one did not write are
    removed, so the folder always matches the mapping. Returns the counts.
    """
    check_config(cfg)
    out = Path(out_dir)
    pop = sample_population(cfg.n_galaxies, cfg.seed)
    mapping = mapping_rows(pop, cfg.mapping_fraction, cfg.seed)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, STREAM_MISSING]))
    n_missing = int(round(len(mapping) * cfg.missing_image_fraction))
    missing = np.zeros(len(mapping), dtype=bool)
    missing[rng.choice(len(mapping), n_missing, replace=False)] = True

    written = removed = 0
    if images:
        # The CSVs go last; drop old ones first so an interrupted run never pairs them with new images.
        for name in (TABLE2_NAME, MAPPING_NAME):
            (out / name).unlink(missing_ok=True)
        image_dir = out / IMAGES_SUBDIR
        image_dir.mkdir(parents=True, exist_ok=True)
        rendered = mapping.loc[~missing]
        tasks = image_tasks(pop, rendered, image_dir, size=cfg.image_size, seed=cfg.seed)
        wanted = {f"{asset}.jpg" for asset in rendered["asset_id"]}
        for old in image_dir.iterdir():
            # JPEGs of an earlier run with other settings, and temporary files of a killed one
            if old.is_file() and (old.suffix == ".tmp" or (old.suffix == ".jpg" and old.name not in wanted)):
                old.unlink()
                removed += 1
        written = render_many(tasks, workers, progress=progress)
    write_csv(out / MAPPING_NAME, mapping.loc[:, list(MAPPING_COLUMNS)])
    write_csv(out / TABLE2_NAME, pop.loc[:, list(TABLE2_COLUMNS)])

    flags = gzcsv.FLAG_COLUMNS
    imaged = pop.iloc[mapping.loc[~missing, "galaxy_row"].to_numpy()] if images else pop.iloc[:0]
    return {
        "rows": len(pop),
        "mapping_rows": len(mapping),
        "mapping_duplicate_rows": int(mapping["objid"].duplicated().sum()),
        "mapping_rows_not_in_table2": int((~mapping["objid"].isin(pop["OBJID"])).sum()),
        "images_written": written,
        "images_missing": n_missing if images else 0,
        "stale_files_removed": removed,
        "classes": {f.lower(): int(pop[f].sum()) for f in flags},
        "images_by_class": {f.lower(): int(imaged[f].sum()) for f in flags},
    }


def generator_md5() -> str:
    """One MD5 over the code that decides the data set's bytes: this package's generator and the schema it writes."""
    digest = hashlib.md5()
    for module_file in (__file__, population.__file__, render.__file__, gzcsv.__file__):
        digest.update(file_md5(module_file).encode())
    return digest.hexdigest()


def fetch_synthetic(
    cfg: SyntheticConfig,
    raw_dir: str | os.PathLike,
    previous: Mapping[str, Any] | None,
    *,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate the synthetic data set into raw_dir, unless the `previous` fetch (its source.json) generated
    it with the same settings and generator code and its catalogues are unchanged: the generator is
    deterministic, so that is the same data, and re-rendering thousands of JPEGs would only cost time."""
    raw = Path(raw_dir)
    settings = {**dataclasses.asdict(cfg), "generator_md5": generator_md5()}
    table2, mapping, images = raw / TABLE2_NAME, raw / MAPPING_NAME, raw / IMAGES_SUBDIR
    previous = previous or {}
    current = (
        not force
        and previous.get("source") == "synthetic"
        and previous.get("settings") == settings
        and table2.is_file()
        and mapping.is_file()
        and images.is_dir()
        and previous.get("md5") == {"table2": file_md5(table2), "mapping": file_md5(mapping)}
    )
    if current:
        md5 = previous["md5"]
    else:
        generate(cfg, raw, progress=progress)
        md5 = {"table2": file_md5(table2), "mapping": file_md5(mapping)}
    return catalogue_source("synthetic", table2, mapping, images, md5, settings=settings)
