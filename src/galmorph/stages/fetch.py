"""`galmorph fetch`: get the current data.source into data.raw_dir (galmorph.data.fetch) and say what changed."""

from __future__ import annotations

import argparse
from pathlib import Path

from galmorph.config import Params
from galmorph.data.fetch import fetch_data
from galmorph.data.sources.rawdir import SOURCE_JSON


def main(params: Params, args: argparse.Namespace) -> None:
    cfg = params.data
    force = getattr(args, "force", False)
    source, removed = fetch_data(cfg, force=force, cutouts=params.cutouts if cfg.source == "coords" else None)
    if removed:
        why = "--force" if force else f"not part of source {cfg.source}"
        print(f"removed from {cfg.raw_dir} ({why}): {', '.join(removed)}")
    if "cutouts" in source:  # coords
        n = source["cutouts"]
        unlabelled = n["unlabelled_not_fetched"]
        what = (
            f"{n['with_image']:,} of {n['rows']:,} rows of {source['catalogue']} with a cut-out from "
            f"{source['service']['name']} ({n['requested']:,} requested, the rest from the cache) in "
            f"{source['image_root']}; {n['failed']:,} without (listed in {n['failed_rows']}"
            + "".join(f"; {kind}: {k:,}" for kind, k in n["failed_by_kind"].items())
            + ")"
            + (f"; {unlabelled:,} without a label, not fetched" if unlabelled else "")
            + f"; labels in {source['path']}"
        )
    elif source["kind"] == "manifest":
        what = f"manifest {source['path']}, images under {source['image_root']}"
    else:
        what = f"table 2 {source['table2']}, mapping {source['mapping']}, images {source['images_dir']}"
    print(f"fetch ({cfg.source}): {what}; described in {Path(cfg.raw_dir) / SOURCE_JSON}")
