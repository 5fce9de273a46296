"""One self-contained HTML page per evaluation: the numbers with their intervals, the figures and the galleries.

Images are embedded (base64), so the page can be mailed, attached to an MLflow run or opened from an
artifact store without its folder. It is rendered from the evaluation's summary (the same dict that goes
to summary.json), so every number on the page is one that was measured and written down.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from galmorph.config import CLASSES
from galmorph.evaluation.metrics import Interval, metric_names
from galmorph.io import write_text

MAX_LISTED_SKIPS = 50

_LABELS = {
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
    "roc_auc": "ROC-AUC",
    "log_loss": "log loss (NLL)",
    "brier": "Brier score",
    "ece": "ECE",
}

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1180px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-top: 1.4em; } .meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; } th { background: #f4f6f8; }
td:first-child, th:first-child { text-align: left; } .ci { color: #777; font-size: 0.88em; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; } .figs figure { margin: 0; flex: 0 1 370px; }
figure img { width: 100%; border: 1px solid #eee; } figcaption { font-size: 0.85em; color: #555; }
.gallery img { max-width: 100%; border: 1px solid #eee; margin: 0.3em 0 1.2em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.5em 0.8em; margin: 0.8em 0; }
.headline { font-size: 1.15em; } code { background: #f4f6f8; padding: 0 0.25em; }
"""


def jsonable(obj: Any) -> Any:
    """The summary with Intervals as {value, ci_low, ci_high} and NaN as null, for summary.json."""
    if isinstance(obj, Interval):
        return jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return format(value, fmt)


def _iv(iv: Interval | None, fmt: str = ".3f") -> str:
    if iv is None:
        return "n/a"
    if not math.isfinite(iv.low):
        return _num(iv.value, fmt)
    return f"{_num(iv.value, fmt)} <span class='ci'>[{_num(iv.low, fmt)}, {_num(iv.high, fmt)}]</span>"


def _label(name: str) -> str:
    if name in _LABELS:
        return _LABELS[name]
    for kind in ("precision", "recall", "f1"):
        if name.startswith(f"{kind}_"):
            return f"{kind} ({name.removeprefix(f'{kind}_')})"
    if name.startswith("confusion_"):
        a, _, b = name.removeprefix("confusion_").partition("_as_")
        return f"{a}s called {b}"
    return name


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(path: str | os.PathLike | None, alt: str) -> str:
    if not path or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' alt='{_e(alt)}'>"


def _figure(path: str | None, caption: str) -> str:
    img = _img(path, caption)
    return f"<figure>{img}<figcaption>{_e(caption)}</figcaption></figure>" if img else ""


_FIGURE_CAPTIONS = {
    "confusion": "Confusion matrix (calibrated probabilities; the call is the most probable class).",
    "roc": "ROC curve of P(spiral).",
    "reliability": "Reliability diagram before and after temperature scaling; bars: share of galaxies per bin.",
    "coverage": "Accuracy of the galaxies the model labels as the abstention threshold rises.",
    "votes": "The model's P(spiral) against the Galaxy Zoo vote fraction for spiral.",
}


def set_html(section: Mapping[str, Any], level: int = 2) -> str:
    """One scored set: headline, KPI table (one view and TTA), calibration, abstention, figures, galleries."""
    h, h3 = f"h{level}", f"h{level + 1}"
    kpis, raw, tta = section["kpis"], section["kpis_uncalibrated"], section.get("kpis_tta")
    classes = ", ".join(f"{n:,} {c}" for c, n in section["classes"].items())
    parts = [f"<{h}>{_e(section['name'])}</{h}>"]
    parts.append(
        f"<p class='headline'>{section['n']:,} galaxies ({classes}). Accuracy <b>{_iv(kpis['accuracy'])}</b>, "
        f"macro F1 <b>{_iv(kpis['macro_f1'])}</b>, ROC-AUC {_iv(kpis['roc_auc'])}; "
        f"ECE {_num(raw['ece'].value)} &rarr; {_num(kpis['ece'].value)} after temperature scaling "
        f"(T = {section['temperature']:.3f}). Brackets: 95% bootstrap intervals.</p>"
    )
    header = ["KPI", "one view"] + ([f"TTA (mean logits over {section.get('tta_views', 'all')} views)"] if tta else [])
    rows = [
        [_label(name), _iv(kpis[name])] + ([_iv(tta[name])] if tta else [])
        for name in metric_names(CLASSES)
        if name in kpis
    ]
    parts.append(f"<{h3}>KPIs</{h3}>" + _table(header, rows))
    parts.append(f"<{h3}>Calibration</{h3}>")
    parts.append(
        _table(
            ["", "T = 1 (raw network)", f"T = {section['temperature']:.3f} (calibrated)"],
            [[_label(n), _iv(raw[n]), _iv(kpis[n])] for n in ("ece", "brier", "log_loss")],
        )
    )
    ab = section["abstention"]
    ab_tta = section.get("abstention_tta")
    rows = [
        ["galaxies labelled (coverage)", f"{ab['n_kept']:,} ({_num(ab['coverage'], '.1%')})"],
        ["left uncertain", f"{ab['n_uncertain']:,}"],
        ["accuracy of the labelled", _num(ab["accuracy"])],
        ["macro F1 of the labelled", _num(ab["macro_f1"])],
    ]
    if ab_tta:
        rows[0].append(f"{ab_tta['n_kept']:,} ({_num(ab_tta['coverage'], '.1%')})")
        rows[1].append(f"{ab_tta['n_uncertain']:,}")
        rows[2].append(_num(ab_tta["accuracy"]))
        rows[3].append(_num(ab_tta["macro_f1"]))
    parts.append(
        f"<{h3}>Abstention (top probability &lt; {ab['threshold']:.2f} = 'uncertain')</{h3}>"
        + _table(["", "one view"] + (["TTA"] if ab_tta else []), rows)
    )
    ood = section.get("ood")
    if ood:
        parts.append(
            f"<p>Out-of-distribution score above 1 ('unlike training data'): {ood['n_flagged']:,} of "
            f"{section['n']:,} images ({_num(ood['flagged'], '.1%')}); accuracy of the others "
            f"{_num(ood['accuracy_kept'])}; median score {ood['median_score']:.2f}.</p>"
        )
    if math.isfinite(section.get("vote_spearman", math.nan)):
        parts.append(
            f"<p>Rank correlation of the model's P(spiral) with the volunteers' vote fraction: "
            f"Spearman &rho; = {section['vote_spearman']:.3f}.</p>"
        )
    parts.append(subsets_html(section, h3))
    parts.append(votes_html(section.get("votes"), h3))
    figs = "".join(_figure(section["figures"].get(k), c) for k, c in _FIGURE_CAPTIONS.items())
    parts.append(f"<div class='figs'>{figs}</div>")
    parts.append(galleries_html(section.get("galleries", []), h3))
    parts.append(mistakes_html(section.get("mistakes"), h3))
    parts.append(skipped_html(section.get("skipped")))
    return "\n".join(parts)


def subsets_html(section: Mapping[str, Any], tag: str = "h3") -> str:
    """KPIs per value of the subset column (evaluate.subset_column, e.g. each image set of the manifest)."""
    subsets = section.get("subsets")
    if not subsets:
        return ""
    rows = [
        [_e(name), f"{s['n']:,}", ", ".join(f"{n:,} {c}" for c, n in s["classes"].items()), _iv(s["accuracy"]),
         _iv(s["macro_f1"])]
        for name, s in subsets.items()
    ]  # fmt: skip
    header = [_e(section.get("subset_column") or "subset"), "galaxies", "classes", "accuracy", "macro F1"]
    return f"<{tag}>By {_e(section.get('subset_column'))}</{tag}>" + _table(header, rows)


def votes_html(votes: Mapping[str, Any] | None, tag: str = "h3") -> str:
    """Accuracy against how sure the volunteers were: the confident-label figure the literature reports, and
    the mistakes on confident labels apart from those on labels the volunteers split on."""
    if not votes:
        return ""
    rows = []
    for b in votes["bins"]:
        rng = f"{b['low']:.2f} – {b['high']:.2f}"
        rows.append([rng, f"{b['n']:,}", _iv(b["accuracy"]) if "accuracy" in b else "–"])
    conf = votes.get("confident") or {}
    sure = votes["confident_fraction"]
    text = (
        f"<p class='headline'>{votes['n_with_votes']:,} galaxies have vote fractions. On confident labels (the "
        f"galaxy's own class has &ge; {sure:.2f} of the votes, {votes['n_confident']:,} galaxies): accuracy "
        f"<b>{_iv(conf.get('accuracy'))}</b>, macro F1 {_iv(conf.get('macro_f1'))}. Mistakes: "
        f"{votes['mistakes_confident']:,} on confident labels, {votes['mistakes_split']:,} on labels the volunteers "
        f"split on, {votes['mistakes_without_votes']:,} without votes.</p>"
    )
    table = _table(["vote fraction of the galaxy's own class", "galaxies", "accuracy"], rows)
    return f"<{tag}>By the volunteers' confidence</{tag}>" + text + table


def _thumb(path: str | None, alt: str) -> str:
    if not path or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"<img class='thumb' src='data:image/jpeg;base64,{data}' alt='{_e(alt)}'>"


def mistakes_html(mistakes: Mapping[str, Any] | None, tag: str = "h3") -> str:
    """Every mistake with its full id and path beside its thumbnail, most confident first."""
    if not mistakes or not mistakes["rows"]:
        return ""
    rows = [
        [_thumb(m["thumbnail"], m["galaxy_id"]), _e(m["galaxy_id"]), f"<code>{_e(m['image_path'])}</code>",
         _e(m["label"]), f"{_e(m['predicted'])} ({m['p_predicted']:.2f})", _num(m["votes_own_class"], ".2f"),
         _e(m["kind"])]
        for m in mistakes["rows"]
    ]  # fmt: skip
    more = (
        f" (the {mistakes['listed']:,} most confident of {mistakes['n']:,} are listed)"
        if mistakes["listed"] < mistakes["n"]
        else ""
    )
    header = ["", "galaxy", "image", "label", "called (probability)", "votes for its label", "kind"]
    return (
        f"<details><summary><{tag} style='display:inline'>Every mistake: {mistakes['n']:,}{more}</{tag}></summary>"
        + _table(header, rows)
        + "</details>"
    )


def galleries_html(entries: Sequence[Mapping[str, Any]], tag: str = "h3") -> str:
    if not entries:
        return ""
    parts = [f"<{tag}>Galleries</{tag}>"]
    for entry in entries:
        if entry.get("tiles"):
            parts.append(f"<div class='gallery'>{_img(entry['file'], entry['title'])}</div>")
        else:
            parts.append(f"<p class='note'>{_e(entry['title'])}: none in this set.</p>")
    return "\n".join(parts)


def skipped_html(skipped: Sequence[Mapping[str, Any]] | None) -> str:
    if not skipped:
        return ""
    rows = [[_e(s.get("image_path", "")), _e(s.get("reason", ""))] for s in skipped[:MAX_LISTED_SKIPS]]
    more = f"<p>... and {len(skipped) - MAX_LISTED_SKIPS:,} more.</p>" if len(skipped) > MAX_LISTED_SKIPS else ""
    return (
        f"<p class='note'>{len(skipped):,} image(s) could not be read and were left out:</p>"
        + _table(["image", "reason"], rows)
        + more
    )


def uncertain_html(u: Mapping[str, Any]) -> str:
    parts = ["<h2>Galaxies the volunteers left UNCERTAIN</h2>"]
    if u.get("skipped_reason"):
        return parts[0] + f"<p class='note'>{_e(u['skipped_reason'])}</p>"
    a = u["agreement"]
    sampled = ""
    if u.get("n_sampled", 0) < u.get("n_catalogue", 0):
        sampled = f"A seeded sample of {u['n_sampled']:,} of the catalogue's {u['n_catalogue']:,}: "
    parts.append(
        f"<p>{sampled}{a['n_scored']:,} galaxies scored ({u.get('n_missing_image', 0):,} without an image file left out). "
        f"Compared with the vote majority (P(spiral) vs P(elliptical); {a['n_vote_ties']:,} ties and "
        f"{a['n_without_votes']:,} without votes left out): the model agrees on "
        f"<b>{_num(a['agreement'], '.1%')}</b> of {a['n_compared']:,}. Its confident calls (top probability "
        f"&ge; {a['threshold']:.2f}), {a['n_confident']:,} ({_num(a['confident_share'], '.1%')}), agree on "
        f"<b>{_num(a['confident_agreement'], '.1%')}</b> ({a['n_confident_agree']:,}): "
        f"{a['called_spiral']:,} called spiral, {a['called_elliptical']:,} called elliptical.</p>"
    )
    parts.append(
        "<div class='figs'>"
        + _figure(u.get("figure"), "Model P(spiral) against the vote fraction for the uncertain galaxies.")
        + "</div>"
    )
    parts.append(galleries_html(u.get("galleries", [])))
    return "\n".join(parts)


def stability_html(s: Mapping[str, Any]) -> str:
    parts = ["<h2>Stability across repeated splits</h2>"]
    if s.get("skipped_reason"):
        return parts[0] + f"<p class='note'>{_e(s['skipped_reason'])}</p>"
    rows = [
        [_e(r["split"]), f"{r['n_test']:,}", _num(r["accuracy"]), _num(r["macro_f1"]), _e(r.get("best_epoch", ""))]
        for r in s["per_split"]
    ]
    parts.append(
        "<p>The same training configuration fitted on each of the repeated, differently seeded splits; "
        "the spread is how much the choice of split alone moves the KPIs.</p>"
        + _table(["split", "test galaxies", "accuracy", "macro F1", "best epoch"], rows)
        + f"<p class='headline'>accuracy {_num(s['accuracy_mean'])} &plusmn; {_num(s['accuracy_std'])}, "
        f"macro F1 {_num(s['macro_f1_mean'])} &plusmn; {_num(s['macro_f1_std'])} (mean &plusmn; std, "
        f"{len(rows)} splits)</p>"
    )
    parts.append("<div class='figs'>" + _figure(s.get("figure"), "Test KPIs per repeated split.") + "</div>")
    return "\n".join(parts)


def model_html(model: Mapping[str, Any]) -> str:
    rows = [[_e(k), _e(v)] for k, v in model.items()]
    return "<h2>Model</h2>" + _table(["", ""], rows)


def render(summary: Mapping[str, Any]) -> str:
    """The page for an evaluation summary (see the stage and evaluate-folder for its keys)."""
    title = summary.get("title", "galmorph evaluation")
    when = summary.get("generated") or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>{_e(title)}</h1><p class='meta'>{_e(when)} · {_e(summary.get('subtitle', ''))}</p>"]
    body += [f"<p class='note'>{_e(n)}</p>" for n in summary.get("notes", [])]
    for i, section in enumerate(summary.get("sets", [])):
        body.append(set_html(section))
        if i == 0 and summary.get("uncertain"):
            body.append(uncertain_html(summary["uncertain"]))
        if i == 0 and summary.get("stability"):
            body.append(stability_html(summary["stability"]))
    if summary.get("model"):
        body.append(model_html(summary["model"]))
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


def write_report(summary: Mapping[str, Any], path: str | os.PathLike) -> Path:
    write_text(path, render(summary))
    return Path(path)
