"""Model Registry policy: which version is @champion, and why.

MLflow keeps the versions; this module decides. `register` adds a version (tagged with its test metrics,
the test split's digest, git and DVC provenance) and points @challenger at it; `promote` moves @champion to
the challenger when the gate passes: on the same test split, macro F1 no more than `register.promote_margin`
below the champion's and calibrated ECE under `register.max_ece`. The first model becomes champion (there
is nothing to compare it with). Every move of @champion is appended to the registered model's tag
`champion_history`, so `rollback` can step back. Aliases only, never the deprecated stages: everything
loads by `models:/<name>@champion`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from galmorph import tracking
from galmorph.config import MlflowConfig, Params, RegisterConfig
from galmorph.errors import UserError
from galmorph.tracking import VersionInfo

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
"""Registered-model tag: JSON list of the versions that held @champion, oldest first."""
F1_KEY = "test_macro_f1"
ECE_KEY = "test_ece_calibrated"
SPLIT_KEY = "test_split_digest"
SHOWN_METRICS = (F1_KEY, ECE_KEY, "test_accuracy", "test_ece")
_HISTORY_LIMIT = 200  # a tag value has a size limit; older moves are dropped first


# ------------------------------------------------------------------------------------------------- gate


@dataclasses.dataclass(frozen=True)
class Check:
    """One row of the comparison: passed is None for rows shown for information only."""

    metric: str
    champion: str
    challenger: str
    rule: str
    passed: bool | None


@dataclasses.dataclass(frozen=True)
class Decision:
    passed: bool
    checks: tuple[Check, ...]
    reasons: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def _number(tags: Mapping[str, str], key: str) -> float | None:
    try:
        value = float(tags[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def gate(
    challenger: Mapping[str, str], champion: Mapping[str, str] | None, cfg: RegisterConfig, *, label: str = "challenger"
) -> Decision:
    """Apply the promotion rules to two versions' tags.

    With no champion the first model passes (there must be a model to serve) and a failed ECE rule
    becomes a warning; missing metrics still fail, because then evaluate has not run.
    """
    checks: list[Check] = []
    reasons: list[str] = []
    warnings: list[str] = []
    new_f1, new_ece = _number(challenger, F1_KEY), _number(challenger, ECE_KEY)
    old_f1 = _number(champion, F1_KEY) if champion is not None else None
    old_ece = _number(champion, ECE_KEY) if champion is not None else None

    if new_f1 is None:
        reasons.append(f"the {label} has no {F1_KEY} tag (did evaluate run before register?)")
    if champion is None:
        checks.append(Check(F1_KEY, "—", _fmt(new_f1), "no champion yet: the first model becomes champion", None))
    elif old_f1 is None:
        checks.append(Check(F1_KEY, "—", _fmt(new_f1), "champion has no F1: nothing to compare", None))
    elif new_f1 is not None:
        floor = old_f1 - cfg.promote_margin
        ok = new_f1 >= floor
        checks.append(
            Check(F1_KEY, _fmt(old_f1), _fmt(new_f1), f">= {floor:.4f} (champion - {cfg.promote_margin})", ok)
        )
        if not ok:
            reasons.append(f"{F1_KEY} {new_f1:.4f} is more than {cfg.promote_margin} below the champion's {old_f1:.4f}")

    if new_ece is None:
        reasons.append(f"the {label} has no {ECE_KEY} tag (did evaluate run before register?)")
        checks.append(Check(ECE_KEY, _fmt(old_ece), "—", f"< {cfg.max_ece}", False))
    else:
        ok = new_ece < cfg.max_ece
        checks.append(Check(ECE_KEY, _fmt(old_ece), _fmt(new_ece), f"< {cfg.max_ece}", ok))
        if not ok:
            message = f"{ECE_KEY} {new_ece:.4f} is not under register.max_ece {cfg.max_ece}"
            (warnings if champion is None else reasons).append(message)

    if champion is not None:
        old_split, new_split = champion.get(SPLIT_KEY), challenger.get(SPLIT_KEY)
        same = old_split is not None and old_split == new_split
        checks.append(Check("test split", (old_split or "—")[:12], (new_split or "—")[:12], "the same", same))
        if not same:
            reasons.append(
                "the two versions were not evaluated on the same test split "
                f"({SPLIT_KEY} {old_split or 'missing'} vs {new_split or 'missing'}); "
                "their metrics are not comparable (`galmorph promote --rescore` scores both on the current one)"
            )
    for key in SHOWN_METRICS[2:]:
        old = _number(champion, key) if champion is not None else None
        checks.append(Check(key, _fmt(old), _fmt(_number(challenger, key)), "shown only", None))
    return Decision(passed=not reasons, checks=tuple(checks), reasons=tuple(reasons), warnings=tuple(warnings))


def test_split_digest(splits: pd.DataFrame, split_column: str = "split") -> str:
    """sha256 of the test split's sorted (galaxy_id, label) pairs: equal digests, comparable test metrics."""
    for column in ("galaxy_id", "label", split_column):
        if column not in splits.columns:
            raise UserError(f"splits table: missing column {column!r} (expected the split stage's output)")
    test = splits.loc[splits[split_column] == "test", ["galaxy_id", "label"]].astype(str)
    if test.empty:
        raise UserError(f"splits table: no rows with {split_column} == 'test'")
    lines = sorted(f"{g}\t{lbl}" for g, lbl in test.itertuples(index=False))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# -------------------------------------------------------------------------------------------- registry


def version_tags(
    eval_metrics: Mapping[str, Any], splits: pd.DataFrame, *, run_id: str | None, model_uri: str
) -> dict[str, str]:
    """The tags a new version carries: every numeric evaluate metric (flat keys, e.g. test_macro_f1), the
    test split's digest, the training run, and git + DVC provenance (the inputs' md5 as in dvc.lock)."""
    tags: dict[str, str] = {}

    def walk(obj: Mapping[str, Any], prefix: str) -> None:
        for key, value in obj.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                tags[f"{prefix}{key}"] = repr(float(value))

    walk(eval_metrics, "")
    tags[SPLIT_KEY] = test_split_digest(splits)
    tags["training_run_id"] = run_id or "unknown"
    tags["model_uri"] = model_uri
    tags.update(tracking.git_tags())
    tags.update(tracking.dvc_dep_tags("register"))
    return tags


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _require_model(name: str, cfg: MlflowConfig) -> dict[str, str]:
    aliases = tracking.registered_model_aliases(name, cfg=cfg)
    if aliases is None:
        raise UserError(
            f"no registered model {name!r} in {tracking.tracking_uri(cfg)} "
            "(run `dvc repro` or `galmorph register` first, or check --name)"
        )
    return aliases


def version_by_alias(name: str, alias: str, cfg: MlflowConfig) -> VersionInfo | None:
    """The version behind models:/name@alias; None when the alias is unset, UserError when the model is absent."""
    version = _require_model(name, cfg).get(alias)
    return tracking.model_version(name, version, cfg=cfg) if version is not None else None


def champion_history(name: str, cfg: MlflowConfig) -> list[str]:
    raw = tracking.registered_model_tags(name, cfg=cfg).get(HISTORY_TAG, "[]")
    try:
        history = json.loads(raw)
    except json.JSONDecodeError:
        raise UserError(f"registered model {name!r}: tag {HISTORY_TAG} is not a JSON list: {raw[:80]!r}") from None
    return [str(v) for v in history] if isinstance(history, list) else []


def _set_champion(name: str, version: VersionInfo, history: list[str], cfg: MlflowConfig) -> None:
    tracking.set_alias(name, CHAMPION, version.version, cfg=cfg)
    tracking.set_registered_model_tags(name, {HISTORY_TAG: json.dumps(history[-_HISTORY_LIMIT:])}, cfg=cfg)


def register_version(
    name: str, model_uri: str, tags: Mapping[str, Any], cfg: MlflowConfig, *, alias: str = CHALLENGER
) -> VersionInfo:
    """Register a logged model as a new version with `tags` and point @challenger (or `alias`) at it."""
    version = tracking.register_model(model_uri, name, {k: str(v) for k, v in tags.items()}, cfg=cfg)
    tracking.set_alias(name, alias, version, cfg=cfg)
    info = tracking.model_version(name, version, cfg=cfg)
    assert info is not None  # just created
    return info


@dataclasses.dataclass(frozen=True)
class Promotion:
    challenger: VersionInfo
    champion_before: VersionInfo | None
    decision: Decision
    promoted: bool
    forced: bool
    note: str

    @property
    def refused(self) -> bool:
        return not self.promoted and not self.decision.passed


def promote(
    name: str, cfg: RegisterConfig, mlflow_cfg: MlflowConfig, *, force: bool = False, reason: str | None = None
) -> Promotion:
    """Compare @challenger with @champion and move @champion when the gate passes (or `force`).

    A refusal is returned, not raised: the register stage records it and carries on, the CLI exits non-zero.
    """
    challenger = version_by_alias(name, CHALLENGER, mlflow_cfg)
    if challenger is None:
        raise UserError(f"registered model {name!r} has no @{CHALLENGER} (register a model first: `galmorph register`)")
    champion = version_by_alias(name, CHAMPION, mlflow_cfg)
    if champion is not None and champion.version == challenger.version:
        decision = Decision(passed=True, checks=(), reasons=())
        return Promotion(
            challenger, champion, decision, False, False, f"version {challenger.version} is already champion"
        )
    decision = gate(challenger.tags, champion.tags if champion else None, cfg)
    if not decision.passed and not force:
        return Promotion(challenger, champion, decision, False, False, "refused: " + "; ".join(decision.reasons))

    forced = force and not decision.passed
    history = champion_history(name, mlflow_cfg)
    if champion is not None and (not history or history[-1] != champion.version):
        history.append(champion.version)  # @champion was moved by hand: keep it in the history
    history.append(challenger.version)
    _set_champion(name, challenger, history, mlflow_cfg)
    tags = {"promoted_at": _now(), "previous_champion": champion.version if champion else "none"}
    if forced:
        tags.update(forced="true", forced_reasons="; ".join(decision.reasons)[:4000], force_reason=reason or "")
    tracking.set_version_tags(name, challenger.version, tags, cfg=mlflow_cfg)
    before = f"from version {champion.version}" if champion else "(first champion)"
    note = f"@{CHAMPION} -> version {challenger.version} {before}" + (" (forced)" if forced else "")
    return Promotion(challenger, champion, decision, True, forced, note)


def rescore(
    name: str,
    versions: list[VersionInfo],
    splits: pd.DataFrame,
    mlflow_cfg: MlflowConfig,
    *,
    n_bins: int = 15,
    batch_size: int = 64,
    workers: int = 2,
) -> dict[str, dict[str, float]]:
    """Score versions on the current test split and store the results as their test tags.

    For comparing a challenger with a champion that was evaluated on an older split (new data arrived):
    both are run over the same images here, so the gate compares like with like. The probabilities come
    from the pyfunc, temperature included, so the ECE is the calibrated one.
    """
    from galmorph.evaluation.metrics import classification_metrics, flat_metrics
    from galmorph.serving import predict

    digest = test_split_digest(splits)
    test = splits[splits["split"] == "test"]
    labels = test["label_id"].to_numpy()
    results = {}
    for version in versions:
        classifier = predict.load_model(predict.ModelRef(version.uri, name, version.version), mlflow_cfg)
        scored = predict.score_files(classifier, test["image_path"].tolist(), batch_size=batch_size, workers=workers)
        ok = (scored["error"] == "").to_numpy()
        if not ok.any():
            raise UserError(
                f"rescoring version {version.version}: no test image could be read (first: {scored['error'].iloc[0]})"
            )
        probs = scored[[f"p_{c}" for c in classifier.classes]].to_numpy()[ok]
        flat = flat_metrics("test", classification_metrics(probs, labels[ok], n_bins=n_bins, n_resamples=0))
        metrics = {F1_KEY: flat["test_macro_f1"], ECE_KEY: flat["test_ece"], "test_accuracy": flat["test_accuracy"]}
        tags = {k: repr(v) for k, v in metrics.items()}
        tags.update({SPLIT_KEY: digest, "rescored_at": _now(), "rescored_unreadable": str(int((~ok).sum()))})
        if version.tags.get(SPLIT_KEY) not in (None, digest):
            tags["previous_test_split_digest"] = version.tags[SPLIT_KEY]
        tracking.set_version_tags(name, version.version, tags, cfg=mlflow_cfg)
        results[version.version] = metrics
    return results


def rollback(name: str, mlflow_cfg: MlflowConfig) -> tuple[VersionInfo, VersionInfo]:
    """Point @champion back at the version that held it before; returns (from, to)."""
    current = version_by_alias(name, CHAMPION, mlflow_cfg)
    if current is None:
        raise UserError(f"registered model {name!r} has no @{CHAMPION} to roll back")
    history = champion_history(name, mlflow_cfg)
    while history and history[-1] == current.version:
        history.pop()
    while history:
        target = tracking.model_version(name, history[-1], cfg=mlflow_cfg)
        if target is not None:
            break
        history.pop()  # that version was deleted from the registry: skip it
    else:
        raise UserError(f"registered model {name!r}: no previous champion to roll back to (history is empty)")
    _set_champion(name, target, history, mlflow_cfg)
    tracking.set_version_tags(name, current.version, {"rolled_back_at": _now()}, cfg=mlflow_cfg)
    tracking.set_version_tags(name, target.version, {"restored_at": _now()}, cfg=mlflow_cfg)
    return current, target


def list_versions(name: str, mlflow_cfg: MlflowConfig) -> list[VersionInfo]:
    _require_model(name, mlflow_cfg)
    return tracking.model_versions(name, cfg=mlflow_cfg)


# ---------------------------------------------------------------------------------------------- output


def decision_table(promotion: Promotion) -> Table:
    champ = f"champion v{promotion.champion_before.version}" if promotion.champion_before else "champion (none)"
    table = Table(title=f"{promotion.challenger.name}: challenger v{promotion.challenger.version} vs {champ}")
    for column in ("metric", "champion", "challenger", "rule", "ok"):
        table.add_column(column, justify="right" if column in ("champion", "challenger") else "left")
    marks = {True: "[green]yes[/]", False: "[red]NO[/]", None: ""}
    for c in promotion.decision.checks:
        table.add_row(c.metric, c.champion, c.challenger, c.rule, marks[c.passed])
    return table


def versions_table(name: str, versions: list[VersionInfo]) -> Table:
    table = Table(title=f"registered model {name}")
    for column in ("version", "aliases", "created (UTC)", *SHOWN_METRICS, "training run", "notes"):
        table.add_column(column, justify="right" if column in SHOWN_METRICS else "left")
    for v in versions:
        created = dt.datetime.fromtimestamp(v.created_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")
        notes = ", ".join(k for k in ("forced", "rolled_back_at") if k in v.tags)
        table.add_row(
            v.version,
            " ".join(f"@{a}" for a in v.aliases),
            created,
            *(_fmt(_number(v.tags, k)) for k in SHOWN_METRICS),
            (v.run_id or v.tags.get("training_run_id", ""))[:12],
            notes,
        )
    return table


def promotion_report(promotion: Promotion) -> dict[str, Any]:
    """What happened, as the register stage's JSON report (numbers and booleans are DVC metrics)."""
    champion = promotion.challenger if promotion.promoted else promotion.champion_before
    return {
        "registered_model": promotion.challenger.name,
        "version": int(promotion.challenger.version),
        "champion_version": int(champion.version) if champion else None,
        "promoted": promotion.promoted,
        "forced": promotion.forced,
        "gate_passed": promotion.decision.passed,
        "reasons": list(promotion.decision.reasons),
        "warnings": list(promotion.decision.warnings),
        "note": promotion.note,
        **{k: _number(promotion.challenger.tags, k) for k in SHOWN_METRICS},
    }


# ------------------------------------------------------------------------------------------------- CLI


def _rescore_pair(name: str, params: Params) -> None:
    split_path = Path(params.split.out)
    if not split_path.is_file():
        raise UserError(f"{split_path}: splits table not found; --rescore scores both versions on its test rows")
    pair = [v for v in (version_by_alias(name, a, params.mlflow) for a in (CHAMPION, CHALLENGER)) if v is not None]
    rescore(name, pair, pd.read_parquet(split_path), params.mlflow, n_bins=params.evaluate.ece_bins)


def main(params: Params, args: argparse.Namespace) -> None:
    """`galmorph promote`, `galmorph models` and `galmorph rollback` (dispatched on the subcommand)."""
    name = getattr(args, "name", None) or params.mlflow.registered_model
    console = Console(width=None if sys.stdout.isatty() else 140)  # piped: do not squash the tables
    if args.command == "models":
        console.print(versions_table(name, list_versions(name, params.mlflow)))
    elif args.command == "rollback":
        before, after = rollback(name, params.mlflow)
        console.print(
            f"{name}: @{CHAMPION} moved back from version {before.version} to version {after.version}", markup=False
        )
    elif args.command == "promote":
        if args.rescore:
            _rescore_pair(name, params)
        result = promote(name, params.register, params.mlflow, force=args.force, reason=args.reason)
        console.print(decision_table(result))
        for warning in result.decision.warnings:
            console.print(f"warning: {warning}", style="yellow", markup=False)
        if result.refused:
            raise UserError(f"{name}: promotion of version {result.challenger.version} {result.note}")
        console.print(f"{name}: {result.note}", markup=False)
    else:
        raise ValueError(f"galmorph.serving.registry has no command {args.command!r}")
