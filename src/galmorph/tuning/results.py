"""What a study leaves behind: the best trial's values in tune.out (what `galmorph train` applies), the
comparison of its trials in tune.plots_dir (PNGs for `dvc plots show`, one self-contained study.html), the
study's plots, trials table and counts in its MLflow run, and the rows the command line shows."""

from __future__ import annotations

import base64
import html
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from galmorph.config import Params
from galmorph.errors import UserError
from galmorph.io import atomic_path, palette_png, write_text
from galmorph.tracking import runs
from galmorph.tuning.study import RUN_ATTR, StudyOutcome, redact, trial_counts


def epochs_summary(study: optuna.Study, epochs: int) -> dict[str, float]:
    """Epochs the finished trials ran against tune.epochs each: the pruner's (and early stopping's) saving."""
    finished = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    ran = sum(len(t.intermediate_values) for t in finished)
    budget = epochs * len(finished)
    return {
        "epochs_run": float(ran),
        "epochs_budget": float(budget),
        "epochs_saved": 1 - ran / budget if budget else 0.0,
    }


COMPARISON = ("parallel_coordinate", "param_importances", "optimization_history")
"""The plots of the study's comparison in tune.plots_dir: DVC image plots, so every one is always written."""
COMPARISON_PAGE = "study.html"


def log_study(
    study: optuna.Study, params: Params, *, plots: bool = True, plots_dir: str | os.PathLike | None = None
) -> dict[str, str]:
    """Into the active (parent) run: Optuna's plots (unless `plots` is false, for a quick check; then nothing
    is written to `plots_dir` either) with the comparison files that write_comparison leaves in `plots_dir` (a
    temporary folder when None), the trials table, the counts and the best value. Returns the plots it
    skipped, each with the reason."""
    counts = trial_counts(study)
    metrics: dict[str, float] = {f"trials_{k}": float(v) for k, v in counts.items()}
    metrics |= epochs_summary(study, params.tune.epochs)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        metrics[f"best_{params.tune.metric}"] = float(best.value)
        runs.set_tags({"optuna.best_trial": best.number, "optuna.best_run_id": best.user_attrs.get(RUN_ATTR)})
    runs.log_metrics(metrics)
    figures, skipped = study_figures(study, params.tune.seed) if plots else ({}, {})
    with tempfile.TemporaryDirectory(prefix="galmorph-tune-") as tmp:
        try:
            for name, fig in figures.items():
                if name not in COMPARISON:  # those are logged as the files write_comparison leaves
                    runs.log_figure(fig, f"optuna/{name}.png")
            if plots:
                folder = Path(tmp) / "comparison" if plots_dir is None else Path(plots_dir)
                for path in write_comparison(folder, study, figures, skipped):
                    runs.log_artifact(path, "optuna")
        finally:
            _close(figures)
        if skipped:
            runs.log_dict(skipped, "optuna/skipped_plots.json")
        path = Path(tmp) / "trials.csv"
        study.trials_dataframe().to_csv(path, index=False)
        runs.log_artifact(path, "optuna")
    return skipped


def study_figures(study: optuna.Study, seed: int = 0) -> tuple[dict[str, Any], dict[str, str]]:
    """Optuna's matplotlib plots of the study by name, and the reasons for those it could not draw."""
    import matplotlib  # here: choosing the Agg backend is process-wide, wanted only when plots are drawn

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as vis  # imports pyplot: after the backend is chosen

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    plots: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: vis.plot_optimization_history(study),
        "intermediate_values": lambda: vis.plot_intermediate_values(study),
        "param_importances": lambda: vis.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed)
        ),
        "parallel_coordinate": lambda: vis.plot_parallel_coordinate(study),
        "slice": lambda: vis.plot_slice(study),
        "timeline": lambda: vis.plot_timeline(study),
    }
    needs = {"optimization_history": 1, "param_importances": 2, "parallel_coordinate": 2, "slice": 1}
    figures: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, draw in plots.items():
        if len(complete) < needs.get(name, 0):
            skipped[name] = f"needs {needs[name]} complete trial(s), the study has {len(complete)}"
            continue
        if name == "intermediate_values" and not any(t.intermediate_values for t in finished):
            skipped[name] = "no trial reported an epoch"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning of the matplotlib backend
                axes = draw()
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            skipped[name] = f"{type(exc).__name__}: {exc}"
            continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        fig = first.figure
        n = len(axes.flat) if hasattr(axes, "flat") else 1
        fig.set_size_inches(max(8.0, 3.2 * n), 5.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # colour bars are not tight_layout's: harmless
            fig.tight_layout()
        figures[name] = fig
    return figures, skipped


def write_comparison(
    folder: str | os.PathLike, study: optuna.Study | None, figures: Mapping[str, Any], skipped: Mapping[str, str]
) -> list[Path]:
    """The study's trials compared in `folder`: a PNG per COMPARISON plot (from `figures`, or a small image
    saying why it was not drawn: DVC needs every declared output) and COMPARISON_PAGE, those images and
    a table of every trial in one self-contained page. `study` None: no study was run. Returns the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes] = {}
    for name in COMPARISON:
        fig = figures.get(name)
        if fig is None:
            fig = _note_figure(f"{name}: not drawn ({skipped.get(name, 'no study')})")
        images[name] = palette_png(fig, dpi=100)  # git keeps one per tuning run
        with atomic_path(folder / f"{name}.png") as tmp:
            tmp.write_bytes(images[name])
    write_text(folder / COMPARISON_PAGE, comparison_page(study, images, skipped))
    return [folder / f"{name}.png" for name in COMPARISON] + [folder / COMPARISON_PAGE]


def _note_figure(text: str) -> Any:
    """A small figure holding one line of text (a Figure without pyplot: nothing to close, no backend chosen)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 1.0))
    fig.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=11)
    return fig


def comparison_page(study: optuna.Study | None, images: Mapping[str, bytes], skipped: Mapping[str, str]) -> str:
    """COMPARISON_PAGE: the images inline (base64) and every trial as a row, best first, so one file opened
    anywhere (a PR, an MLflow artifact) shows the whole study."""
    esc = html.escape
    if study is None:
        title, summary, trials = "No study", "no study was run", []
    else:
        counts = trial_counts(study)
        title = f"Study {study.study_name}"
        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no trials yet"
        everything = study.get_trials(deepcopy=False)
        ranked = best_trials(study, top=len(everything))
        shown = {t.number for t in ranked}
        trials = ranked + [t for t in everything if t.number not in shown]
        if ranked:
            direction = study.direction.name.lower()
            summary += f"; best: trial {ranked[0].number}, value {ranked[0].value:.4f} ({direction})"
    names: list[str] = []
    for t in trials:
        names += [k for k in t.params if k not in names]
    head = "".join(f"<th>{esc(c)}</th>" for c in ("trial", "state", "value", "epochs", "seconds", *names, "MLflow run"))
    rows = []
    for t in trials:
        seconds = f"{t.duration.total_seconds():.1f}" if t.duration else ""
        cells = [str(t.number), t.state.name, "" if t.value is None else f"{t.value:.4f}"]
        cells += [str(len(t.intermediate_values)), seconds]
        cells += [format_value(t.params[n]) if n in t.params else "-" for n in names]
        cells.append(str(t.user_attrs.get(RUN_ATTR, "")))
        rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    figures = []
    for name, data in images.items():
        note = f"<p>not drawn: {esc(skipped[name])}</p>" if name in skipped else ""
        src = "data:image/png;base64," + base64.b64encode(data).decode()
        figures.append(f'<h2>{esc(name)}</h2>{note}<img id="{esc(name)}" alt="{esc(name)}" src="{src}">')
    style = (
        "body{font-family:sans-serif;margin:1.5em}img{max-width:100%}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
    )
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{esc(title)}</title><style>{style}</style></head>'
        f"<body><h1>{esc(title)}</h1><p>{esc(summary)}</p>{''.join(figures)}"
        f'<h2>trials</h2><table id="trials"><tr>{head}</tr>{"".join(rows)}</table></body></html>\n'
    )


def _close(figures: Mapping[str, Any]) -> None:
    import matplotlib.pyplot as plt  # only after study_figures chose the backend

    for fig in figures.values():
        plt.close(fig)


def best_params_document(outcome: StudyOutcome, metric: str) -> dict[str, Any]:
    """tune.out's content: the best trial's values under `params` (what `galmorph train` applies), and
    where they came from."""
    study = outcome.study
    counts = trial_counts(study)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise UserError(
            f"study {study.study_name}: no trial completed ({', '.join(f'{v} {k}' for k, v in counts.items() if v)}); "
            "see the failed trials' error tags in MLflow"
        )
    best = study.best_trial
    return {
        "params": dict(best.params),
        "study": study.study_name,
        "storage": redact(outcome.storage),
        "metric": metric,
        "direction": study.direction.name.lower(),
        "value": float(best.value),
        "trial": best.number,
        "mlflow_run_id": best.user_attrs.get(RUN_ATTR),
        "mlflow_study_run_id": outcome.parent_run_id,
        "trials": {k: v for k, v in counts.items() if k in ("complete", "pruned", "fail", "skipped")},
    }


def write_best_params(path: str | os.PathLike, document: Mapping[str, Any]) -> None:
    header = (
        "# Written by `galmorph tune`: the best trial's values, applied by `galmorph train` (params.yaml is\n"
        "# never rewritten). Re-running tune with the same params resumes the study named below.\n"
    )
    write_text(path, header + yaml.safe_dump(dict(document), sort_keys=False))


def describe_trial(trial: FrozenTrial, metric: str, epochs: int) -> str:
    """The one line a worker prints per trial."""
    ran = len(trial.intermediate_values)
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    value = f"{metric} {trial.value:.4f}" if trial.value is not None else ""
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        value = f"{metric} {trial.intermediate_values[max(trial.intermediate_values)]:.4f}"
    shown = " ".join(f"{k}={format_value(v)}" for k, v in trial.params.items())
    error = f" ({trial.user_attrs['error']})" if "error" in trial.user_attrs else ""
    return f"trial {trial.number:>3} {trial.state.name:<8} {value} after {ran}/{epochs} epochs, {seconds:.1f} s | {shown}{error}"


def format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_trials(study: optuna.Study, top: int = 10) -> list[FrozenTrial]:
    """The `top` complete trials, best first."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(complete, key=lambda t: t.value, reverse=reverse)[:top]
