"""A captioned grid of the synthetic data set's own cut-outs, to show people what the votes meant."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from galmorph.config import SyntheticConfig
from galmorph.data.gzcsv import FLAG_COLUMNS
from galmorph.data.sources.synthetic import check_config
from galmorph.data.sources.synthetic.population import FLAG_THRESHOLD, mapping_rows, sample_population
from galmorph.data.sources.synthetic.render import render_galaxy, render_seed
from galmorph.io import atomic_path


def example_grid(cfg: SyntheticConfig, path: str | os.PathLike, *, rows: int = 4, cols: int = 4) -> Path:
    """Save a captioned grid of the data set's own cut-outs (spirals, ellipticals, uncertain) as a PNG.

    The tiles are rendered exactly as `generate` writes them (same asset ids and seeds), captioned with the
    flag, the debiased vote fractions and the hidden truth, so people can see what the votes meant.
    """
    import matplotlib  # only this picture needs it: `galmorph synth` without --examples does not load it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_config(cfg)
    pop = sample_population(cfg.n_galaxies, cfg.seed)
    mapping = mapping_rows(pop, cfg.mapping_fraction, cfg.seed)
    mapping = mapping[mapping["depth"] == 1.0].drop_duplicates("objid")
    shown = pop.iloc[mapping["galaxy_row"].to_numpy()]
    flags = shown[list(FLAG_COLUMNS)].to_numpy()
    # typical examples: leave out the rows whose flag disagrees with the 0.8 rule on the final fractions
    rule = np.select([shown["P_CS_DEBIASED"] > FLAG_THRESHOLD, shown["P_EL_DEBIASED"] > FLAG_THRESHOLD], [0, 1], 2)
    flags = flags * (np.argmax(flags, axis=1) == rule)[:, None]
    n_tiles = rows * cols
    quota = {0: (n_tiles * 3 + 7) // 8, 1: (n_tiles * 5 + 15) // 16}  # spiral, elliptical; the rest uncertain
    quota[2] = n_tiles - quota[0] - quota[1]
    picks: list[int] = []
    for k, want in quota.items():
        picks.extend(np.flatnonzero(flags[:, k] == 1)[:want].tolist())
    tile_px, dpi = 168, 80  # tiles shown at about their pixel size: sharp, and a PNG small enough for a README
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.3, rows * 2.6), dpi=dpi)
    for ax, pick in zip(axes.ravel(), picks, strict=False):
        row, asset = int(mapping["galaxy_row"].iloc[pick]), int(mapping["asset_id"].iloc[pick])
        galaxy = pop.iloc[row]
        tile = Image.fromarray(render_galaxy(galaxy.to_dict(), cfg.image_size, render_seed(cfg.seed, asset)))
        ax.imshow(tile.resize((tile_px, tile_px), Image.Resampling.LANCZOS) if cfg.image_size > tile_px else tile)
        flag = ("spiral", "elliptical", "uncertain")[int(np.argmax(flags[pick]))]
        truth = galaxy["morph"] + (" + merger" if galaxy["merger"] else "")
        ax.set_title(
            f"{flag}: P_CS {galaxy['P_CS_DEBIASED']:.2f} P_EL {galaxy['P_EL_DEBIASED']:.2f}\ntruth: {truth}",
            fontsize=7,
            pad=2,
        )
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle("Synthetic Galaxy Zoo cut-outs: GZ1 flag, debiased vote fractions, hidden truth", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    # A 256-colour palette (max-coverage keeps the faint blue and yellow tints) makes it small for a README.
    with Image.open(buf) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    target = Path(path)
    with atomic_path(target) as tmp:
        small.save(tmp, format="PNG", optimize=True)
    return target
