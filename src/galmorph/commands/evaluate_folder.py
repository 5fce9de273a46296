"""`galmorph evaluate-folder PATH`: KPIs and a report for labelled images from anywhere."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from galmorph.config import Params, replace
from galmorph.evaluation.folder import evaluate_folder


def main(params: Params, args: argparse.Namespace) -> None:
    cfg = params.evaluate if not args.no_tta else replace(params.evaluate, tta=False)
    src = Path(args.path)
    out = Path(args.out or Path(cfg.out_dir) / f"folder-{src.stem or 'images'}")
    model_file = args.model or params.train.out
    section, report = evaluate_folder(
        src, model_file, cfg, out, path_column=args.path_column, label_column=args.label_column
    )
    k = section["kpis"]
    Console().print(
        f"{section['n']:,} images scored, {len(section['skipped']):,} unreadable: accuracy {k['accuracy']:.3f}, "
        f"macro F1 {k['macro_f1']:.3f}, ROC-AUC {k['roc_auc']:.3f} (95% CI in brackets)\nreport: {report}"
    )
