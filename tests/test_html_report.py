"""The HTML report holds the measured numbers, embeds the figures and survives missing parts."""

from __future__ import annotations

import json
import math

import numpy as np

from galmorph.evaluation.html_report import jsonable, render, write_report
from galmorph.evaluation.metrics import Interval, classification_metrics
from galmorph.evaluation.plots import confusion_figure, save_figure


def section(tmp_path) -> dict:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    p = np.clip(np.where(labels == 0, 0.8, 0.25) + rng.normal(0, 0.15, 200), 0.01, 0.99)
    probs = np.stack([p, 1 - p], axis=1)
    kpis = classification_metrics(probs, labels, n_resamples=50)
    raw = classification_metrics(
        np.clip(probs * 1.1, 0, 1) / np.clip(probs * 1.1, 0, 1).sum(1, keepdims=True), labels, n_resamples=50
    )
    fig_path = tmp_path / "confusion.png"
    save_figure(confusion_figure(np.array([[90, 10], [12, 88]])), fig_path)
    return {
        "name": "Test split",
        "n": 200,
        "classes": {"spiral": int((labels == 0).sum()), "elliptical": int((labels == 1).sum())},
        "temperature": 1.234,
        "tta_views": 0,
        "kpis": kpis,
        "kpis_uncalibrated": raw,
        "kpis_tta": None,
        "confusion": [[90, 10], [12, 88]],
        "abstention": {
            "threshold": 0.7,
            "coverage": 0.8,
            "accuracy": 0.9,
            "macro_f1": 0.89,
            "n_kept": 160,
            "n_uncertain": 40,
        },
        "abstention_tta": None,
        "vote_spearman": 0.77,
        "figures": {"confusion": str(fig_path), "roc": str(tmp_path / "missing.png")},
        "galleries": [{"name": "wrong_spiral", "title": "Most confident mistakes: spirals", "file": None, "tiles": 0}],
        "skipped": [{"image_path": f"img{i}.jpg", "reason": "file not found"} for i in range(60)],
    }


def test_report_contains_the_numbers_and_embeds_figures(tmp_path):
    s = section(tmp_path)
    summary = {
        "title": "galmorph evaluation",
        "sets": [s],
        "uncertain": {"skipped_reason": "the catalogue has no UNCERTAIN galaxies"},
        "stability": {
            "per_split": [
                {"split": "split_1", "n_test": 30, "accuracy": 0.9, "macro_f1": 0.88, "best_epoch": 3},
                {"split": "split_2", "n_test": 30, "accuracy": 0.8, "macro_f1": 0.79, "best_epoch": 4},
            ],
            "accuracy_mean": 0.85,
            "accuracy_std": 0.0707,
            "macro_f1_mean": 0.835,
            "macro_f1_std": 0.0636,
        },
        "model": {"file": "models/model.pt", "temperature": 1.234},
        "notes": ["a note & <escaped>"],
    }
    html = write_report(summary, tmp_path / "report.html").read_text()
    k = s["kpis"]
    for name in ("accuracy", "macro_f1", "roc_auc", "log_loss"):
        assert f"{k[name].value:.3f}" in html
        assert f"[{k[name].low:.3f}, {k[name].high:.3f}]" in html
    assert f"{s['kpis_uncalibrated']['ece'].value:.3f} &rarr; {k['ece'].value:.3f}" in html
    assert "T = 1.234" in html
    assert html.count("data:image/png;base64,") == 1  # the missing ROC figure is skipped, not a broken link
    assert "none in this set" in html
    assert "60 image(s) could not be read" in html and "and 10 more" in html
    assert "0.850 &plusmn; 0.071" in html
    assert "no UNCERTAIN galaxies" in html
    assert "a note &amp; &lt;escaped&gt;" in html


def test_jsonable_turns_intervals_and_nan_into_plain_json():
    obj = {"a": Interval(0.5, math.nan, 0.7), "b": [np.float64(1.5), np.int64(2)], "c": float("inf")}
    assert json.loads(json.dumps(jsonable(obj))) == {
        "a": {"value": 0.5, "ci_low": None, "ci_high": 0.7},
        "b": [1.5, 2],
        "c": None,
    }


def test_render_without_sets_is_still_a_page():
    assert render({"title": "empty"}).startswith("<!doctype html>")
