"""`galmorph models`, `promote` and `rollback`: the registry policy's decisions as tables people read."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from galmorph.config import Params
from galmorph.errors import PromotionRefused, UserError
from galmorph.serving.promotion import (
    CHALLENGER,
    CHAMPION,
    DATA_SOURCE,
    SHOWN_METRICS,
    SPLIT_KEY,
    Promotion,
    fmt_metric,
    list_versions,
    number_tag,
    promote,
    rollback,
    rolled_back_at,
    version_by_alias,
)
from galmorph.serving.rescore import rescore
from galmorph.tracking.registry import VersionInfo, model_version


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
    for column in (
        "version",
        "aliases",
        "created (UTC)",
        "data",
        "test split",
        *SHOWN_METRICS,
        "training run",
        "notes",
    ):
        table.add_column(column, justify="right" if column in SHOWN_METRICS else "left")
    for v in versions:
        created = dt.datetime.fromtimestamp(v.created_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")
        notes = ", ".join(
            note
            for note, shown in (("forced", "forced" in v.tags), ("rolled back", rolled_back_at(v.tags) is not None))
            if shown
        )
        table.add_row(
            v.version,
            " ".join(f"@{a}" for a in v.aliases),
            created,
            v.tags.get(DATA_SOURCE, "?"),  # a synthetic-trained champion must not pass for a real one
            v.tags.get(SPLIT_KEY, "")[:10],
            *(fmt_metric(number_tag(v.tags, k)) for k in SHOWN_METRICS),
            (v.run_id or v.tags.get("training_run_id", ""))[:12],
            notes,
        )
    return table


def _rescore_pair(name: str, params: Params, version: str | None) -> None:
    """Score @champion and the version to promote (`--version`, else @challenger) on the current test split."""
    split_path = Path(params.split.out)
    if not split_path.is_file():
        raise UserError(f"{split_path}: splits table not found; --rescore scores both versions on its test rows")
    champion = version_by_alias(name, CHAMPION, params.mlflow)
    if version is None:
        candidate = version_by_alias(name, CHALLENGER, params.mlflow)
    elif (candidate := model_version(name, version, cfg=params.mlflow)) is None:
        raise UserError(f"registered model {name!r} has no version {version!r} (`galmorph models` lists them)")
    pair = [v for v in (champion, candidate) if v is not None]
    if len(pair) == 2 and pair[0].version == pair[1].version:
        pair = pair[:1]
    rescore(name, pair, pd.read_parquet(split_path), params.mlflow, n_bins=params.evaluate.ece_bins)


def main(params: Params, args: argparse.Namespace) -> None:
    """`galmorph promote`, `galmorph models` and `galmorph rollback` (dispatched on the subcommand)."""
    name = getattr(args, "name", None) or params.mlflow.registered_model
    console = Console(width=None if sys.stdout.isatty() else 140)  # piped: do not squash the tables
    if args.command == "models":
        console.print(versions_table(name, list_versions(name, params.mlflow)))
    elif args.command == "rollback":
        before, after = rollback(name, params.mlflow)
        source = f"from version {before.version}" if before else "(its version was deleted)"
        console.print(f"{name}: @{CHAMPION} moved back {source} to version {after.version}", markup=False)
    elif args.command == "promote":
        if args.rescore:
            _rescore_pair(name, params, args.version)
        result = promote(
            name, params.register, params.mlflow, version=args.version, force=args.force, reason=args.reason
        )
        console.print(decision_table(result))
        for warning in result.decision.warnings:
            console.print(f"warning: {warning}", style="yellow", markup=False)
        if result.refused:
            raise PromotionRefused(
                f"{name}: promotion of version {result.challenger.version} {result.note} "
                f'(to override: galmorph promote --version {result.challenger.version} --force --reason "...")'
            )
        console.print(f"{name}: {result.note}", markup=False)
    else:
        raise ValueError(f"galmorph.commands.models has no command {args.command!r}")
