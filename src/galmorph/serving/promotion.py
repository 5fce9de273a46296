"""Model Registry policy: which version is @champion, and why.

MLflow keeps the versions; this module decides. `register` adds a version (tagged with its test metrics,
the test split's digest, git and DVC provenance) and points @challenger at it; `promote` moves @champion to
a version (the one the register stage just registered, or @challenger) when the gate passes: on the same
test split, macro F1 no more than `register.promote_margin` below the champion's and calibrated ECE under
`register.max_ece`, and never a version that was rolled back (that takes --force with a reason). The first
model becomes champion (there is nothing to compare it with). Aliases only, never the deprecated stages:
everything loads by `models:/<name>@champion`.

The champion history is not one shared tag (two processes rewriting it lose entries): each version carries
its own stamps (`promoted_at`, `restored_at`, `champion_seen_at`, `rolled_back_at`, `previous_champion`), and
`rollback` rebuilds the history from them, so it still works when a champion's version was deleted. Every
registration and alias change holds the registry lock (tracking.registry.alias_lock), and promote reads
@champion again right before moving it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from galmorph.config import CLASSES, MlflowConfig, RegisterConfig
from galmorph.errors import UserError
from galmorph.evaluation.headline import EVALUATION_KEYS
from galmorph.evaluation.metrics import PairedDifference, paired_f1_difference
from galmorph.tracking import provenance, runs, store
from galmorph.tracking import registry as mlflow_registry
from galmorph.tracking.registry import VersionInfo

CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTED_AT = "promoted_at"
RESTORED_AT = "restored_at"
SEEN_AT = "champion_seen_at"
"""Stamped on a champion set by hand (outside galmorph) when it is replaced, so rollback can return to it."""
ROLLED_BACK_AT = "rolled_back_at"
PREVIOUS = "previous_champion"
BECAME_CHAMPION = (PROMOTED_AT, RESTORED_AT, SEEN_AT)
F1_KEY = "test_macro_f1"
ECE_KEY = "test_ece_calibrated"
SPLIT_KEY = "test_split_digest"
MODEL_DIGEST = "model_digest"
"""Tag: resnet.model_digest of the version's model file; a model already registered is not registered again."""
PREDICTIONS_ARTIFACT = "evaluation/predictions.csv"
"""The evaluate stage's per-galaxy test predictions, logged to the training run: what the paired test reads."""


def rescored_predictions_artifact(split_digest: str) -> str:
    """Where `promote --rescore` leaves a version's predictions on another test split, in its training run."""
    return f"rescore/{split_digest[:16]}/predictions.csv"


DATA_SOURCE = "data_source"
"""Tag: data.source of the training data (synthetic, galaxyzoo, manifest, local), shown by `galmorph models`."""
SHOWN_METRICS = (F1_KEY, ECE_KEY, "test_accuracy", "test_ece")
_RECHECKS = 5  # promote re-gates when @champion moved meanwhile; after this many moves it gives up


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
    paired: PairedDifference | None = None
    """The paired test behind the F1 rule, when both versions had test predictions."""


def number_tag(tags: Mapping[str, str], key: str) -> float | None:
    try:
        value = float(tags[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def fmt_metric(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def gate(
    challenger: Mapping[str, str],
    champion: Mapping[str, str] | None,
    cfg: RegisterConfig,
    *,
    label: str = "challenger",
    paired: PairedDifference | None = None,
) -> Decision:
    """Apply the promotion rules to two versions' tags.

    With no champion the first model passes (there must be a model to serve) and a failed ECE rule
    becomes a warning; missing metrics still fail, because then evaluate has not run. With `paired` (both
    versions' predictions on the same test galaxies) the F1 rule is a paired non-inferiority test: the
    lower end of the 95% interval of F1(challenger) - F1(champion) must be at least -promote_margin. A
    difference within the test split's own noise is then neither promoted on luck nor refused on bad luck.
    Without it the point estimates are compared, and the table says so.
    """
    checks: list[Check] = []
    reasons: list[str] = []
    warnings: list[str] = []
    new_f1, new_ece = number_tag(challenger, F1_KEY), number_tag(challenger, ECE_KEY)
    old_f1 = number_tag(champion, F1_KEY) if champion is not None else None
    old_ece = number_tag(champion, ECE_KEY) if champion is not None else None

    if new_f1 is None:
        reasons.append(f"the {label} has no {F1_KEY} tag (did evaluate run before register?)")
    if champion is None:
        checks.append(Check(F1_KEY, "—", fmt_metric(new_f1), "no champion yet: the first model becomes champion", None))
    elif old_f1 is None:
        checks.append(Check(F1_KEY, "—", fmt_metric(new_f1), "champion has no F1: nothing to compare", None))
    elif new_f1 is not None and paired is not None:
        ok = paired.low >= -cfg.promote_margin
        interval = f"{paired.diff:+.4f} [{paired.low:+.4f}, {paired.high:+.4f}]"
        checks.append(
            Check(
                f"{F1_KEY} paired ΔF1, 95% CI (n={paired.n})",
                fmt_metric(old_f1),
                f"{fmt_metric(new_f1)}; Δ {interval}",
                f"CI low >= -{cfg.promote_margin}",
                ok,
            )
        )
        if not ok:
            reasons.append(
                f"{F1_KEY}: the {label} may be worse than the champion by more than {cfg.promote_margin}: paired "
                f"bootstrap ΔF1 {interval} on {paired.n} test galaxies"
            )
    elif new_f1 is not None:
        floor = old_f1 - cfg.promote_margin
        ok = new_f1 >= floor
        checks.append(
            Check(
                F1_KEY, fmt_metric(old_f1), fmt_metric(new_f1), f">= {floor:.4f} (champion - {cfg.promote_margin})", ok
            )
        )
        if not ok:
            reasons.append(f"{F1_KEY} {new_f1:.4f} is more than {cfg.promote_margin} below the champion's {old_f1:.4f}")
        warnings.append(
            "no per-galaxy test predictions for both versions on this split: point estimates compared, "
            "without the paired test (`galmorph promote --rescore` scores both)"
        )

    if new_ece is None:
        reasons.append(f"the {label} has no {ECE_KEY} tag (did evaluate run before register?)")
        checks.append(Check(ECE_KEY, fmt_metric(old_ece), "—", f"< {cfg.max_ece}", False))
    else:
        ok = new_ece < cfg.max_ece
        checks.append(Check(ECE_KEY, fmt_metric(old_ece), fmt_metric(new_ece), f"< {cfg.max_ece}", ok))
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
    if (when := rolled_back_at(challenger)) is not None:
        stamp = when.strftime("%Y-%m-%d %H:%M UTC")
        checks.append(Check("rolled back", "", stamp, "never rolled back (or --force --reason)", False))
        reasons.append(f"the {label} was rolled back at {stamp}; promote it again only with --force --reason")
    for key in SHOWN_METRICS[2:]:
        old = number_tag(champion, key) if champion is not None else None
        checks.append(Check(key, fmt_metric(old), fmt_metric(number_tag(challenger, key)), "shown only", None))
    return Decision(
        passed=not reasons, checks=tuple(checks), reasons=tuple(reasons), warnings=tuple(warnings), paired=paired
    )


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


def _test_predictions(version: VersionInfo, cfg: MlflowConfig, dest: str) -> pd.DataFrame | None:
    """The version's per-galaxy test predictions (galaxy_id index; label and predicted as class indices),
    when its run has them for the test split its tags name; else None."""
    run_id = version.run_id or version.tags.get("training_run_id")
    if not run_id or run_id == "unknown" or not version.tags.get(SPLIT_KEY):
        return None
    digest = version.tags[SPLIT_KEY]
    path = runs.download_run_file(run_id, rescored_predictions_artifact(digest), f"{dest}/rescore", cfg=cfg)
    if path is None:
        path = runs.download_run_file(run_id, PREDICTIONS_ARTIFACT, dest, cfg=cfg)
    if path is None:
        return None
    try:
        frame = pd.read_csv(path, dtype={"galaxy_id": str})
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    columns = [f"p_{c}" for c in CLASSES]
    if not {"galaxy_id", "label", *columns} <= set(frame.columns) or frame.empty:
        return None
    if not frame["label"].isin(CLASSES).all():
        return None
    if test_split_digest(frame.assign(split="test")) != digest:
        return None  # predictions of another split (e.g. before a rescore): not comparable
    return pd.DataFrame(
        {
            "label": frame["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(),
            "predicted": np.nan_to_num(frame[columns].to_numpy(dtype=np.float64), nan=-1.0).argmax(axis=1),
        },
        index=frame["galaxy_id"],
    )


def paired_comparison(challenger: VersionInfo, champion: VersionInfo, cfg: MlflowConfig) -> PairedDifference | None:
    """F1(challenger) - F1(champion) with its paired-bootstrap interval, on the test galaxies both were
    scored on; None when either version lacks predictions for the same test split."""
    if challenger.tags.get(SPLIT_KEY) != champion.tags.get(SPLIT_KEY):
        return None
    with tempfile.TemporaryDirectory(prefix="galmorph-paired-") as tmp:
        new = _test_predictions(challenger, cfg, f"{tmp}/challenger")
        old = _test_predictions(champion, cfg, f"{tmp}/champion")
    if new is None or old is None:
        return None
    both = old.join(new, how="inner", lsuffix="_old", rsuffix="_new")
    if both.empty:
        return None
    return paired_f1_difference(
        both["label_old"].to_numpy(), both["predicted_old"].to_numpy(), both["predicted_new"].to_numpy()
    )


# -------------------------------------------------------------------------------------------- registry


def version_tags(
    eval_metrics: Mapping[str, Any],
    splits: pd.DataFrame,
    *,
    run_id: str | None,
    model_uri: str,
    data_source: str | None = None,
) -> dict[str, str]:
    """The tags a new version carries: a handful of test metrics (the headline's and what the gate and
    `galmorph models` read), the test split's digest, the data source, the training run, and git + DVC
    provenance (the inputs' md5 as in dvc.lock). Every metric lives on the LoggedModel and the training run."""
    tags: dict[str, str] = {}
    for key in dict.fromkeys((*EVALUATION_KEYS, *SHOWN_METRICS)):
        value = eval_metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            tags[key] = repr(float(value))
    tags[SPLIT_KEY] = test_split_digest(splits)
    tags["training_run_id"] = run_id or "unknown"
    tags["model_uri"] = model_uri
    if data_source:
        tags[DATA_SOURCE] = data_source
    tags.update(provenance.git_tags())
    tags.update(provenance.dvc_dep_tags("register"))
    return tags


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------ history from version tags


def time_tag(tags: Mapping[str, str], key: str) -> dt.datetime | None:
    """A timestamp tag (ISO 8601, seconds or microseconds) as an aware datetime; None when absent or bad."""
    try:
        when = dt.datetime.fromisoformat(tags[key])
    except (KeyError, TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def champion_since(tags: Mapping[str, str]) -> dt.datetime | None:
    """When this version last became @champion (promoted, restored, or found there set by hand)."""
    times = [t for key in BECAME_CHAMPION if (t := time_tag(tags, key)) is not None]
    return max(times, default=None)


def rolled_back_at(tags: Mapping[str, str]) -> dt.datetime | None:
    """When this version was rolled back, unless it became champion again since (a forced promotion)."""
    when, since = time_tag(tags, ROLLED_BACK_AT), champion_since(tags)
    return when if when is not None and (since is None or when > since) else None


def _timeline(versions: list[VersionInfo]) -> list[VersionInfo]:
    """The surviving versions that held @champion, ordered by when they last took it (oldest first)."""
    held = [(since, int(v.version), v) for v in versions if (since := champion_since(v.tags)) is not None]
    return [v for _, _, v in sorted(held, key=lambda t: (t[0], t[1]))]


def _stamp(versions: list[VersionInfo]) -> str:
    """Now, to the microsecond, and strictly after every stamp already on the versions (so the order of
    events made under the lock is the order of their stamps, even on a clock that steps back)."""
    stamps = [t for v in versions for key in (*BECAME_CHAMPION, ROLLED_BACK_AT) if (t := time_tag(v.tags, key))]
    when = dt.datetime.now(dt.UTC)
    if stamps and when <= max(stamps):
        when = max(stamps) + dt.timedelta(microseconds=1)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def champion_history(name: str, cfg: MlflowConfig) -> list[str]:
    """The versions that held @champion, oldest first, rebuilt from each version's own tags (a deleted
    version drops out; a version that took @champion twice appears where it last took it)."""
    return [v.version for v in _timeline(mlflow_registry.model_versions(name, cfg=cfg))]


# -------------------------------------------------------------------------------------------- the moves


def _require_model(name: str, cfg: MlflowConfig) -> dict[str, str]:
    aliases = mlflow_registry.registered_model_aliases(name, cfg=cfg)
    if aliases is None:
        raise UserError(
            f"no registered model {name!r} in {store.tracking_uri(cfg)} "
            "(run `dvc repro` or `galmorph register` first, or check --name)"
        )
    return aliases


def version_by_alias(name: str, alias: str, cfg: MlflowConfig) -> VersionInfo | None:
    """The version behind models:/name@alias; None when the alias is unset, UserError when the model is absent."""
    version = _require_model(name, cfg).get(alias)
    return mlflow_registry.model_version(name, version, cfg=cfg) if version is not None else None


@dataclasses.dataclass(frozen=True)
class Registered:
    """What register_version did: the version that holds the model, and whether it was created now (False:
    a version with the same model digest already existed, e.g. after an interrupted rerun)."""

    version: VersionInfo
    new: bool


def register_version(
    name: str,
    model_uri: str,
    tags: Mapping[str, Any],
    cfg: MlflowConfig,
    *,
    alias: str = CHALLENGER,
    digest: str | None = None,
) -> Registered:
    """Register a logged model as a new version with `tags` and point @challenger (or `alias`) at it.

    With `digest` (resnet.model_digest of the model file) a model that an existing version already holds is
    not registered again: that version gets the alias instead. Callers that go on to promote pass the
    returned version to `promote`: by then another process may have moved @challenger to its own version.
    """
    with mlflow_registry.alias_lock(cfg):
        existing = None
        if digest is not None:
            same = [v for v in mlflow_registry.model_versions(name, cfg=cfg) if v.tags.get(MODEL_DIGEST) == digest]
            existing = min(same, key=lambda v: int(v.version)) if same else None
        if existing is not None:
            version = existing.version
        else:
            values = {k: str(v) for k, v in tags.items()} | ({MODEL_DIGEST: digest} if digest else {})
            version = mlflow_registry.register_model(model_uri, name, values, cfg=cfg)
        mlflow_registry.set_alias(name, alias, version, cfg=cfg)
        info = mlflow_registry.model_version(name, version, cfg=cfg)
    assert info is not None  # just created, or found under the lock
    return Registered(info, existing is None)


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


def _candidate(name: str, version: str | int | None, cfg: MlflowConfig) -> VersionInfo:
    if version is None:
        challenger = version_by_alias(name, CHALLENGER, cfg)
        if challenger is None:
            raise UserError(
                f"registered model {name!r} has no @{CHALLENGER} (register a model first: `galmorph register`)"
            )
        return challenger
    _require_model(name, cfg)
    info = mlflow_registry.model_version(name, version, cfg=cfg)
    if info is None:
        raise UserError(f"registered model {name!r} has no version {version!r} (`galmorph models` lists them)")
    return info


def promote(
    name: str,
    cfg: RegisterConfig,
    mlflow_cfg: MlflowConfig,
    *,
    version: str | int | None = None,
    force: bool = False,
    reason: str | None = None,
) -> Promotion:
    """Gate `version` (default: @challenger) against @champion and move @champion to it when the gate passes
    (or `force`, which needs a `reason`).

    The whole decision holds the registry lock, and @champion is read again right before it moves: if it
    moved meanwhile (another machine, the UI), the gate runs again against the new champion. A refusal is
    returned, not raised: the register stage records it and carries on, the CLI exits non-zero.
    """
    if force and not (reason or "").strip():
        raise UserError("--force needs --reason: say why the gate is overridden (kept in the tag force_reason)")
    with mlflow_registry.alias_lock(mlflow_cfg):
        challenger = _candidate(name, version, mlflow_cfg)
        for _ in range(_RECHECKS):
            champion = version_by_alias(name, CHAMPION, mlflow_cfg)
            if champion is not None and champion.version == challenger.version:
                decision = Decision(passed=True, checks=(), reasons=())
                note = f"version {challenger.version} is already champion"
                return Promotion(challenger, champion, decision, False, False, note)
            paired = paired_comparison(challenger, champion, mlflow_cfg) if champion is not None else None
            decision = gate(challenger.tags, champion.tags if champion else None, cfg, paired=paired)
            if not decision.passed and not force:
                return Promotion(
                    challenger, champion, decision, False, False, "refused: " + "; ".join(decision.reasons)
                )
            # compare-and-set by hand (MLflow has none for aliases): is @champion still what was gated against?
            if _require_model(name, mlflow_cfg).get(CHAMPION) == (champion.version if champion else None):
                break
        else:
            raise UserError(f"registered model {name!r}: @{CHAMPION} kept moving while promoting; try again")

        forced = force and not decision.passed
        versions = mlflow_registry.model_versions(name, cfg=mlflow_cfg)
        timeline = _timeline(versions)
        if champion is not None and (
            not timeline or timeline[-1].version != champion.version or rolled_back_at(champion.tags) is not None
        ):
            # @champion was set by hand: stamp that it held it, so rollback can return to it
            mlflow_registry.set_version_tags(name, champion.version, {SEEN_AT: _stamp(versions)}, cfg=mlflow_cfg)
            versions = mlflow_registry.model_versions(name, cfg=mlflow_cfg)
        stamp = _stamp(versions)
        mlflow_registry.set_alias(name, CHAMPION, challenger.version, cfg=mlflow_cfg)
        tags = {PROMOTED_AT: stamp, PREVIOUS: champion.version if champion else "none"}
        if forced:
            tags.update(forced="true", forced_reasons="; ".join(decision.reasons)[:4000], force_reason=reason or "")
        mlflow_registry.set_version_tags(name, challenger.version, tags, cfg=mlflow_cfg)
    before = f"from version {champion.version}" if champion else "(first champion)"
    note = f"@{CHAMPION} -> version {challenger.version} {before}" + (" (forced)" if forced else "")
    return Promotion(challenger, champion, decision, True, forced, note)


def rollback(name: str, mlflow_cfg: MlflowConfig) -> tuple[VersionInfo | None, VersionInfo]:
    """Point @champion back at the version that held it before; returns (from, to).

    `from` is None when @champion is unset because its version was deleted: then the most recent earlier
    champion that still exists is restored. Versions rolled back before are never restored.
    """
    with mlflow_registry.alias_lock(mlflow_cfg):
        current = version_by_alias(name, CHAMPION, mlflow_cfg)
        versions = mlflow_registry.model_versions(name, cfg=mlflow_cfg)
        candidates = [
            v
            for v in _timeline(versions)
            if (current is None or v.version != current.version) and rolled_back_at(v.tags) is None
        ]
        if not candidates:
            if current is None:
                raise UserError(f"registered model {name!r} has no @{CHAMPION} to roll back")
            raise UserError(f"registered model {name!r}: no previous champion to roll back to (history is empty)")
        target = candidates[-1]
        stamp = _stamp(versions)
        mlflow_registry.set_alias(name, CHAMPION, target.version, cfg=mlflow_cfg)
        if current is not None:
            mlflow_registry.set_version_tags(name, current.version, {ROLLED_BACK_AT: stamp}, cfg=mlflow_cfg)
        mlflow_registry.set_version_tags(name, target.version, {RESTORED_AT: stamp}, cfg=mlflow_cfg)
        restored = mlflow_registry.model_version(name, target.version, cfg=mlflow_cfg)
    assert restored is not None  # held the lock: nothing deleted it meanwhile through galmorph
    return current, restored


def list_versions(name: str, mlflow_cfg: MlflowConfig) -> list[VersionInfo]:
    _require_model(name, mlflow_cfg)
    return mlflow_registry.model_versions(name, cfg=mlflow_cfg)


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
        # the paired test of the F1 rule (None: no champion, or point estimates compared)
        "paired_f1_diff": promotion.decision.paired.diff if promotion.decision.paired else None,
        "paired_f1_diff_ci_low": promotion.decision.paired.low if promotion.decision.paired else None,
        "paired_f1_diff_ci_high": promotion.decision.paired.high if promotion.decision.paired else None,
        "paired_n": promotion.decision.paired.n if promotion.decision.paired else None,
        **{k: number_tag(promotion.challenger.tags, k) for k in SHOWN_METRICS},
    }


def model_card(
    version: VersionInfo, headline: Mapping[str, Any], recipe: Mapping[str, Any], tuned: Mapping[str, Any]
) -> str:
    """A version's description in the registry (Markdown): what it was trained on, how, how good it is with
    intervals, off-survey accuracy, and what it is not good for."""

    def kpi(key: str) -> str:
        value, low, high = (headline.get(k) for k in (key, f"{key}_ci_low", f"{key}_ci_high"))
        if not isinstance(value, int | float):
            return "—"
        interval = (
            f" (95% CI {low:.3f}–{high:.3f})" if isinstance(low, int | float) and isinstance(high, int | float) else ""
        )
        return f"{value:.3f}{interval}"

    source = version.tags.get(DATA_SOURCE, "unknown")
    lines = [
        f"# galmorph v{version.version}: spiral vs elliptical",
        "",
        f"- **Data:** `{source}` source"
        + (" — a synthetic set for offline runs, **not a model for real images**" if source == "synthetic" else "")
        + f"; test split digest `{version.tags.get(SPLIT_KEY, '?')[:16]}`.",
        "- **Recipe:** "
        + ", ".join(f"{k} {v}" for k, v in recipe.items())
        + (f"; tuned: {', '.join(f'{k}={v}' for k, v in tuned.items())}" if tuned else "")
        + ".",
        f"- **Test accuracy:** {kpi('test_accuracy')}; **macro F1:** {kpi('test_macro_f1')}; "
        f"**calibrated ECE:** {kpi('test_ece_calibrated')}.",
        "- **Other telescopes:** "
        + (
            f"accuracy {kpi('ood_accuracy')} on evaluate.ood_manifest."
            if "ood_accuracy" in headline
            else "not measured (set evaluate.ood_manifest)."
        ),
        f"- **Training run:** `{version.tags.get('training_run_id', '?')}`; git `{version.tags.get('git.commit', '?')[:12]}`.",
        "",
        "Known limitations: two classes only (no mergers, edge-on or irregular classes); trained on SDSS-like "
        "cut-outs, so other telescopes' framing, colours and depth lower accuracy (see the evaluation report); "
        "labels below the Galaxy Zoo vote threshold were left out, so uncertain galaxies are outside its range.",
    ]
    return "\n".join(lines)
