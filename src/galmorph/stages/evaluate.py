"""`galmorph evaluate`: the trained model on the held-out test split (and the UNCERTAIN galaxies, the
repeated splits, optional images from other telescopes) -> evaluate.metrics, plots, galleries, report.html,
all logged to the training run in MLflow. The work is in galmorph.evaluation.evaluate."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from galmorph.config import Params
from galmorph.evaluation.evaluate import log_to_mlflow, run
from galmorph.evaluation.html_report import jsonable, write_report
from galmorph.io import write_json


def main(params: Params, args: argparse.Namespace) -> None:
    cfg = params.evaluate
    out = Path(cfg.out_dir)
    result = run(params)
    write_json(out / "summary.json", jsonable(result.summary))
    report = write_report(result.summary, out / "report.html")
    write_json(cfg.metrics, jsonable(result.metrics))
    run_id = log_to_mlflow(params, result.metrics, out)

    test = result.summary["sets"][0]
    table = Table(title=f"test split: {test['n']:,} galaxies (95% bootstrap CI)")
    table.add_column("KPI")
    table.add_column("value", justify="right")
    for name in ("accuracy", "macro_f1", "roc_auc", "log_loss"):
        table.add_row(name, format(test["kpis"][name], ".3f"))
    table.add_row(
        "ECE: T=1 -> calibrated", f"{test['kpis_uncalibrated']['ece'].value:.3f} -> {test['kpis']['ece'].value:.3f}"
    )
    Console().print(table)
    Console().print(f"wrote {cfg.metrics}, {report} (MLflow run {run_id})")
