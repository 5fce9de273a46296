"""`galmorph crossmatch MINE REFERENCE --radius R --out OUT`: attach a reference catalogue's labels to a user's
positions (galmorph.data.crossmatch) and say how many matched, were ambiguous or found nothing."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from galmorph.config import Params
from galmorph.data.catalogue import Provenance, write_catalogue
from galmorph.data.crossmatch import crossmatch_tables
from galmorph.data.tables import check_new, read_table


def main(params: Params, args: argparse.Namespace) -> None:
    check_new(args.out, force=args.force)
    mine = read_table(args.positions, "positions table")
    reference = read_table(args.reference, "reference catalogue")
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    out, report = crossmatch_tables(
        mine,
        reference,
        radius_arcsec=args.radius,
        mine_path=args.positions,
        reference_path=args.reference,
        ra_column=args.ra_column,
        dec_column=args.dec_column,
        ref_ra_column=args.ref_ra_column,
        ref_dec_column=args.ref_dec_column,
        columns=columns,
        ambiguous=args.ambiguous,
    )
    provenance = [
        Provenance("crossmatch_reference", "XMREF", Path(args.reference).name, "catalogue the labels come from"),
        Provenance("crossmatch_radius_arcsec", "XMRADIUS", float(args.radius), "match radius (arcsec)"),
        Provenance("crossmatch_ambiguous", "XMAMBIG", args.ambiguous, "2+ within the radius: drop or nearest"),
    ]
    write_catalogue(out, args.out, provenance, force=args.force)

    table = Table(title=f"crossmatch within {report['radius_arcsec']:g} arcsec (ambiguous: {args.ambiguous})")
    table.add_column("what")
    table.add_column("rows", justify="right")
    table.add_row("positions", f"{report['rows']:,}")
    table.add_row("reference objects", f"{report['reference_rows']:,}")
    table.add_row("matched (one within the radius)", f"{report['matched']:,}")
    verb = "labelled with the nearest" if args.ambiguous == "nearest" else "left unlabelled"
    table.add_row(f"ambiguous (two or more; {verb})", f"{report['ambiguous']:,}")
    table.add_row("unmatched (none within the radius)", f"{report['unmatched']:,}")
    table.add_row("labelled", f"{report['labelled']:,}")
    if report["shared_references"]:
        table.add_row("reference objects labelling several rows", f"{report['shared_references']:,}")
    sep = report["separation_arcsec"]
    if sep["median"] is not None:
        table.add_row("separation of the labelled: median / max (arcsec)", f"{sep['median']:.3f} / {sep['max']:.3f}")
    Console().print(table)
    Console().print(f"wrote {args.out} ({report['rows']:,} rows; see its match_status column)")
