"""`galmorph outliers OUT --blends N`: made-up outliers for train.outliers from the split's own training galaxies,
for a survey with no labelled mergers (training.synthetic_outliers makes them).

Writes OUT/<kind>_NNNNN.jpg and OUT/outliers.csv (image_path relative to OUT, group, made_from), then says which
params.yaml line turns them on. Only training-split galaxies are used: a test galaxy shown as an outlier would be
trained toward "unsure" and its score would flatter the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from galmorph.config import Params, PreprocessConfig
from galmorph.data.dataset import read_splits
from galmorph.errors import UserError
from galmorph.evaluation.galleries import display_image, gallery_figure
from galmorph.evaluation.plots import save_figure
from galmorph.io import write_csv
from galmorph.paths import repo_root, resolve_path
from galmorph.training.synthetic_outliers import SYNTHETIC, refuse_existing, write_kinds

TABLE = "outliers.csv"
MAX_COUNT = 100_000
"""The most outliers of one kind a run may ask for (~3 GB of JPEGs at 424 px): a typo of 274000 is refused."""


def main(params: Params, args: argparse.Namespace) -> None:
    counts = {kind: getattr(args, kind) for kind in SYNTHETIC}  # cli: --blends N is dest "blend"
    bad = [f"--{'blends' if k == 'blend' else k} {n}" for k, n in counts.items() if not 0 <= n <= MAX_COUNT]
    if bad:
        raise UserError(f"{bad[0]}: expected a count from 0 to {MAX_COUNT:,}")
    if args.seed < 0:
        raise UserError(f"--seed {args.seed}: expected an integer >= 0")
    if not any(counts.values()):
        raise UserError("outliers: ask for at least one kind, e.g. --blends 274 (the README's recommendation)")
    out_dir = Path(args.out)
    table_path = out_dir / TABLE
    _check_folder(out_dir, "OUT")
    if args.preview:
        if Path(args.preview).suffix.lower() != ".png":
            raise UserError(f"--preview: {Path(args.preview).name}: expected a .png file")
        _check_folder(Path(args.preview).parent, "--preview")
    if not args.force:  # every refusal before any image is written
        if table_path.exists():
            raise UserError(f"{out_dir.name}/{TABLE}: already exists (pass --force to replace it)")
        refuse_existing(out_dir, [k for k, n in counts.items() if n])
    if args.preview and Path(args.preview).exists() and not args.force:
        raise UserError(f"--preview: {Path(args.preview).name} already exists (pass --force to replace it)")
    splits_path = args.splits or params.split.out
    splits_file = resolve_path(splits_path, repo_root())
    train = training_galaxies(read_splits(splits_file), splits_file.name)
    table = write_kinds(out_dir, train, counts, args.seed, force=args.force)
    table["image_path"] = [Path(p).name for p in table["image_path"]]  # relative to the table: the folder moves
    write_csv(table_path, table)
    summary = "; ".join(f"{group} {n}" for group, n in table["group"].value_counts(sort=False).items())
    print(f"{out_dir}/{TABLE}: {len(table):,} rows ({summary}) from {len(train):,} training galaxies")
    if args.preview:
        tiles = preview(table.assign(image_path=[str(out_dir / p) for p in table["image_path"]]), args.preview,
                        params.preprocess)  # fmt: skip
        print(f"{args.preview}: {tiles} tiles; look at them before training on them")
    print(f"to train with them: set train.outliers: {table_path} in params.yaml (train.loader: cache)")


def _check_folder(folder: Path, what: str) -> None:
    """Before any image is written: `folder` is a folder or can be made one (nothing on its way is a file)."""
    for place in (folder, *folder.parents):
        if place.exists():
            if not place.is_dir():
                raise UserError(f"{what}: {place.name} is a file, not a folder")
            return


def sources(rows: pd.DataFrame) -> np.ndarray:
    """Each row's source: the manifest's `dataset` column where the split carries it (select keeps the manifest's
    columns), else one unnamed source "". Blends pair galaxies within one source; scores compare within one."""
    if "dataset" in rows.columns:
        return rows["dataset"].fillna("").astype(str).to_numpy(dtype=object)
    return np.full(len(rows), "", dtype=object)


def training_galaxies(splits: pd.DataFrame, name: str = "splits") -> pd.DataFrame:
    """The split's train rows as (image_path, dataset): paths resolved as training resolves them, `dataset` their
    `sources` (a blend never mixes two surveys)."""
    train = splits[splits["split"] == "train"]
    if train.empty:
        raise UserError(f"{name}: no train rows to make outliers of")
    paths = [str(resolve_path(str(p), repo_root())) for p in train["image_path"]]
    return pd.DataFrame({"image_path": paths, "dataset": sources(train)})


def preview(table: pd.DataFrame, out: str | Path, preprocess: PreprocessConfig, per_kind: int = 8) -> int:
    """A PNG of the first `per_kind` outliers of each group beside the galaxy each was made from, both framed as
    the model sees them (`preprocess`): look before training on them. Returns the tiles drawn."""
    images, captions = [], []
    for group, rows in table.groupby("group", sort=False):
        for _, row in rows.head(per_kind).iterrows():
            for path, text in ((row["made_from"], "made from"), (row["image_path"], group.split()[1])):
                images.append(display_image(path, preprocess, size=96))
                captions.append(text if len(text) <= 24 else text[:23] + "…")
    title = f"Synthetic outliers beside the training galaxy each was made from (first {per_kind} of each kind)"
    save_figure(gallery_figure(images, captions, title, ncols=8), Path(out), dpi=50, palette=True)
    return len(images)
