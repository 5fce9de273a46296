"""`galmorph join`: raw catalogues (or a manifest) -> the labelled catalogue, the uncertain galaxies and a report.

Reads only `<data.raw_dir>/source.json` (and the files it names) and the `join` params, as dvc.yaml declares.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from galmorph.config import Params
from galmorph.data.join import build_catalogue
from galmorph.data.labels import UNCERTAIN
from galmorph.data.sources.rawdir import read_source
from galmorph.io import write_json, write_parquet


def summary_rows(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The few numbers a person checks after a join, as (what, value) rows for the terminal."""
    rows = [(f"rows read: {name}", f"{n:,}") for name, n in report["rows_read"].items()]
    if "cutouts" in report:  # coords: catalogue rows that fetch found no usable cut-out for
        rows.append(("catalogue rows without a cut-out (fetch)", f"{report['cutouts']['failed']:,}"))
    dups = report.get("duplicates", {})
    rows += [
        (f"dropped: {k.replace('_', ' ')}", f"{v:,}")
        for k, v in dups.items()
        if k.endswith("_rows") and v  # rows, not the id counts and lists
    ]
    if "matched" in report:
        rows.append(("joined (in both files)", f"{report['matched']:,}"))
    rows += [(f"unmatched: {k}", f"{v:,}") for k, v in report.get("unmatched", {}).items()]
    rows += [(f"dropped label: {k}", f"{v:,}") for k, v in report.get("dropped_labels", {}).items()]
    if report.get("missing_votes"):
        rows.append(("dropped: missing votes", f"{report['missing_votes']:,}"))
    rows += [(name, f"{n:,}") for name, n in report["classes"].items()]
    rows.append((f"{UNCERTAIN} (→ uncertain_out)", f"{report['uncertain']:,}"))
    if report.get("disagreement"):
        d = report["disagreement"]
        rows.append(("labels vs threshold rule: disagree", f"{d['rows']:,} of {d['of_rows']:,} ({d['fraction']:.1%})"))
    n_extra = sum(len(v) for v in report.get("extra_columns", {}).values())
    if n_extra:
        rows.append(("extra columns ignored", f"{n_extra}"))
    return rows


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
