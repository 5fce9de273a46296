"""`galmorph join`: raw catalogues (or a manifest) -> the labelled catalogue, the uncertain galaxies and a report.

Reads only `<data.raw_dir>/source.json` (and the files it names) and the `join` params, as dvc.yaml declares.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from galmorph.config import Params
from galmorph.data.catalog import build_catalogue, read_source, summary_rows
from galmorph.io import write_json, write_parquet


def main(params: Params, args: argparse.Namespace) -> None:
    cfg = params.join
    source = read_source(params.data.raw_dir)
    result = build_catalogue(source, cfg)
    write_parquet(cfg.out, result.joined)
    write_parquet(cfg.uncertain_out, result.uncertain)
    write_json(cfg.report, result.report)

    table = Table(title=f"join ({result.report['source']}, rule: {result.report['label_rule']})")
    table.add_column("what")
    table.add_column("count", justify="right")
    for what, value in summary_rows(result.report):
        table.add_row(what, value)
    Console().print(table)
    Console().print(f"wrote {cfg.out} ({len(result.joined):,} rows), {cfg.uncertain_out}, {cfg.report}")
