"""`galmorph select`: join's catalogue -> the manifest of rows whose image exists and decodes.

Reads `join.out` and the `select` params. Writes the manifest (every catalogue column plus width, height,
mode), the list of dropped rows with their reason, and a report (a DVC metric); optionally an ImageFolder
tree of symlinks (select.class_folders). Images are never copied.
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from galmorph.config import Params
from galmorph.data.select import REQUIRED_COLUMNS, build_class_folders, select_catalogue
from galmorph.io import read_stage_table, write_csv, write_json, write_parquet


def main(params: Params, args: argparse.Namespace) -> None:
    cfg = params.select
    catalogue = read_stage_table(params.join.out, REQUIRED_COLUMNS, "join")
    start = time.perf_counter()
    result = select_catalogue(catalogue, cfg)
    seconds = time.perf_counter() - start
    if cfg.class_folders:
        build_class_folders(result.manifest, cfg.class_folders)
    write_csv(cfg.dropped, result.dropped)
    write_parquet(cfg.out, result.manifest)
    write_json(cfg.report, result.report)

    report = result.report
    table = Table(title=f"select (verify: {cfg.verify})")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("rows in", f"{report['rows_in']:,}")
    table.add_row("kept", f"{report['kept']:,}")
    for reason, n in report["dropped_by_reason"].items():
        if n:
            table.add_row(f"dropped: {reason}", f"{n:,}")
    for mode, n in report["converted_by_mode"].items():
        table.add_row(f"converted from {mode}", f"{n:,}")
    for cls, n in report["classes"].items():
        table.add_row(f"kept {cls}", f"{n:,}")
    Console().print(table)
    folders = f", {cfg.class_folders}/" if cfg.class_folders else ""
    Console().print(
        f"checked in {seconds:.1f} s; wrote {cfg.out} ({report['kept']:,} rows), {cfg.dropped}, {cfg.report}{folders}"
    )
