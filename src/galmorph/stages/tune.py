"""`galmorph tune`: an Optuna study over tune.space, every trial a fit() and a nested MLflow run; writes the
best trial's values to tune.out for `galmorph train` and the trials' comparison (parallel coordinates,
importances: PNG + study.html) to tune.plots_dir. Re-running resumes the study; more workers join it
with `galmorph tune --storage postgresql://...` on any machine (same params and splits).
`galmorph tune --show` prints the study's best trials."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from galmorph.config import Params
from galmorph.data.dataset import read_splits
from galmorph.training.features import load_feature_cache, read_meta
from galmorph.tuning import results, space, study, worker


def main(params: Params, args: argparse.Namespace) -> None:
    cfg = params.tune
    catalogue = read_splits(params.split.out)
    storage = study.storage_url(cfg.storage, args.storage)
    frozen = space.needs_features(params)
    if cfg.n_trials == 0 and not args.show:
        # tuning switched off: train then uses params.yaml as it is (DVC needs the outputs all the same)
        note = "tune.n_trials is 0: no study was run"
        results.write_best_params(cfg.out, {"params": {}, "note": note})
        results.write_comparison(cfg.plots_dir, None, {}, dict.fromkeys(results.COMPARISON, note))
        print(
            f"tune: skipped (tune.n_trials is 0); wrote {cfg.out} with no tuned values, {cfg.plots_dir} with no plots"
        )
        return
    if args.show:
        show(params, catalogue, storage, read_meta(params.embed.out) if frozen else None)
        return
    features = None
    if frozen:
        features = load_feature_cache(params.embed.out, model_cfg=params.model, preprocess=params.preprocess)
    outcome = worker.run_study(
        catalogue,
        params,
        features=features,
        storage=storage,
        worker_trials=args.n_trials,
        dataset_path=params.split.out,
        plots_dir=cfg.plots_dir,
        echo=tqdm.write,  # above the progress bar, not through it
    )
    if outcome.skipped_plots:
        print("tune: plots skipped: " + "; ".join(f"{k} ({v})" for k, v in outcome.skipped_plots.items()))
    document = results.best_params_document(outcome, cfg.metric)
    results.write_best_params(cfg.out, document)
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in document["params"].items())
    print(
        f"tune: best trial {document['trial']} {cfg.metric} {document['value']:.4f} ({shown}); this worker ran "
        f"{outcome.ran} trial(s); wrote {cfg.out} and {Path(cfg.plots_dir) / results.COMPARISON_PAGE}; "
        f"MLflow run {outcome.parent_run_id}; "
        f"optuna-dashboard {study.redact(storage)}"
    )


def show(params: Params, catalogue: pd.DataFrame, storage: str, features_meta: Mapping[str, Any] | None) -> None:
    """`galmorph tune --show`: the current params' study, or the studies in the storage when it has none."""
    console = _console()
    name = study.study_name(params, catalogue, features_meta)
    found, summaries = study.find_study(name, storage)
    if found is not None:
        show_study(found, params.tune.metric, console=console)
        return
    console.print(f"no study {name} (the one these params and splits would use) in {study.redact(storage)}")
    for s in summaries:
        console.print(f"  {s.study_name}: {s.n_trials} trials, started {s.datetime_start:%Y-%m-%d %H:%M}")


def show_study(found: optuna.Study, metric: str, *, top: int = 10, console: Console | None = None) -> None:
    """The best trials as a table, then the counts by state."""
    console = console or _console()
    ranked = results.best_trials(found, top)
    counts = study.trial_counts(found)
    names: list[str] = []
    for t in ranked:
        names += [k for k in t.params if k not in names]
    table = Table(title=f"{found.study_name}: best {len(ranked)} of {counts['complete']} complete trials ({metric})")
    for col in ("rank", "trial", metric, "epochs", "seconds", *names):
        table.add_column(col, justify="right" if col not in names else "left", overflow="fold")
    for rank, t in enumerate(ranked, 1):
        seconds = t.duration.total_seconds() if t.duration else float("nan")
        cells = [str(rank), str(t.number), f"{t.value:.4f}", str(len(t.intermediate_values)), f"{seconds:.1f}"]
        table.add_row(*cells, *(results.format_value(t.params[n]) if n in t.params else "-" for n in names))
    console.print(table)
    console.print(", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no trials yet")


def _console() -> Console:
    """A rich console; piped or captured output is not cut at 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=200)
