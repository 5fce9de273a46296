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
    source, removed = fetch_data(cfg, force=force)
    if removed:
        why = "--force" if force else f"not part of source {cfg.source}"
        print(f"removed from {cfg.raw_dir} ({why}): {', '.join(removed)}")
    if source["kind"] == "manifest":
        what = f"manifest {source['path']}, images under {source['image_root']}"
    else:
        what = f"table 2 {source['table2']}, mapping {source['mapping']}, images {source['images_dir']}"
    print(f"fetch ({cfg.source}): {what}; described in {Path(cfg.raw_dir) / SOURCE_JSON}")
