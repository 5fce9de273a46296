"""`galmorph split`: select's manifest -> the same rows with `split` (train/val/test) and `split_1..split_K`.

Reads `select.out` and the `split` params; writes `split.out` and the report (a DVC metric) with the counts
per part and class, so a skewed split shows up in `dvc metrics diff`.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from galmorph.config import CLASSES, Params
from galmorph.data.splits import MANIFEST_COLUMNS, PARTS, make_splits, split_report
from galmorph.io import read_stage_table, write_json, write_parquet


def main(params: Params, args: argparse.Namespace) -> None:
    cfg = params.split
    splits = make_splits(read_stage_table(params.select.out, MANIFEST_COLUMNS, "select"), cfg)
    report = split_report(splits, cfg)
    write_parquet(cfg.out, splits)
    write_json(cfg.report, report)

    table = Table(title=f"split (seed {cfg.seed}, {cfg.repeats} repeated)")
    for column in ("part", "galaxies", "images", *CLASSES, "fraction"):
        table.add_column(column, justify="left" if column == "part" else "right")
    for part in PARTS:
        classes = [f"{report['classes'][part][c]:,}" for c in CLASSES]
        table.add_row(
            part,
            f"{report['galaxies'][part]:,}",
            f"{report['images'][part]:,}",
            *classes,
            f"{report['fractions'][part]:.3f} ({report['requested'][part]:g})",
        )
    Console().print(table)
    Console().print(f"wrote {cfg.out} ({len(splits):,} rows), {cfg.report}")
