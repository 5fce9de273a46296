"""`galmorph evaluate-folder PATH`: KPIs and a report for labelled images from anywhere."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console

from galmorph.config import Params, replace
from galmorph.evaluation.folder import evaluate_folder
from galmorph.serving.resolve import local_checkpoint, resolve_model


def main(params: Params, args: argparse.Namespace) -> None:
    cfg = params.evaluate if not args.no_tta else replace(params.evaluate, tta=False)
    src = Path(args.path)
    out = Path(args.out or Path(cfg.out_dir) / f"folder-{src.stem or 'images'}")
    fits = params.fits.with_hdu(args.hdu)  # FITS images: params.yaml's stretch, the HDU --hdu names
    ref = resolve_model(args.model, params.mlflow)  # the same default and forms as predict and web
    with tempfile.TemporaryDirectory(prefix="galmorph-model-") as tmp:
        model_file = local_checkpoint(ref, params.mlflow, tmp)
        section, report = evaluate_folder(
            src,
            str(model_file),
            cfg,
            out,
            path_column=args.path_column,
            label_column=args.label_column,
            model_name=ref.display,
            fits=fits,
        )
    k = section["kpis"]
    Console().print(
        f"{section['n']:,} images scored, {len(section['skipped']):,} unreadable: accuracy {k['accuracy']:.3f}, "
        f"macro F1 {k['macro_f1']:.3f}, ROC-AUC {k['roc_auc']:.3f} (95% CI in brackets)\nreport: {report}"
    )
