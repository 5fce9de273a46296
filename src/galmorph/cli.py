"""The `galmorph` command: one subcommand per pipeline stage plus the tools people use on a model.

Stages are imported only when their subcommand runs, so `galmorph --help` stays fast (no torch import).
A UserError becomes one line on stderr and exit code 2; nothing else is caught, because anything else is
a bug and its traceback is what a developer needs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

import yaml

from galmorph.config import Params, from_dict, load_params
from galmorph.errors import UserError

ArgSpec = Callable[[argparse.ArgumentParser], None]


def _no_args(parser: argparse.ArgumentParser) -> None:
    pass


def _fetch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="download or generate again even if present")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in train.checkpoint_dir")


def _tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="Optuna storage URL (overrides tune.storage), e.g. postgresql://user@host/db")
    p.add_argument("--n-trials", type=int, help="this worker's trial budget (the global budget is tune.n_trials)")
    p.add_argument("--show", action="store_true", help="print the best trials of the study and exit")


def _synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="folder to write GalaxyZoo1_DR_table2.csv, gz2_filename_mapping.csv, images_gz2/")
    p.add_argument("--n-galaxies", type=int, help="rows of table 2 (default: data.synthetic.n_galaxies)")
    p.add_argument("--no-images", action="store_true", help="write the catalogues only")


#: name -> (module with main(params, args), one-line help, argument adder). The pipeline's stages live in
#: galmorph.stages (one per dvc.yaml stage); the rest are the tools people use around them.
COMMANDS: dict[str, tuple[str, str, ArgSpec]] = {
    "fetch": (
        "galmorph.stages.fetch",
        "get the catalogues and images (synthetic, galaxyzoo download, local, manifest)",
        _fetch_args,
    ),
    "join": (
        "galmorph.stages.join",
        "join GZ1 table 2 with the GZ2 filename mapping, label, and drop UNCERTAIN galaxies",
        _no_args,
    ),
    "select": (
        "galmorph.stages.select",
        "keep the galaxies whose image exists and decodes; write the manifest",
        _no_args,
    ),
    "split": ("galmorph.stages.split", "stratified, seeded train/val/test split plus K repeated splits", _no_args),
    "embed": ("galmorph.stages.embed", "cache backbone features of every image and view (frozen mode)", _no_args),
    "tune": ("galmorph.stages.tune", "Optuna study; every trial a nested MLflow run", _tune_args),
    "train": ("galmorph.stages.train", "train the final model and log it to MLflow", _train_args),
    "evaluate": ("galmorph.stages.evaluate", "KPIs, calibration, stability, galleries and the report", _no_args),
    "register": ("galmorph.stages.register", "register the trained model and set @challenger", _no_args),
    "synth": ("galmorph.data.sources.synthetic", "write a synthetic Galaxy Zoo data set to a folder", _synth_args),
}


def _parse_set(items: Sequence[str]) -> dict:
    """Turn ['train.epochs=3', ...] into a nested dict of overrides (values parsed as YAML)."""
    overrides: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. train.epochs=3")
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return overrides


def _merge(base: dict, overrides: dict, where: str = "") -> dict:
    out = dict(base)
    for k, v in overrides.items():
        if k not in base:
            raise UserError(f"--set {where}{k}: no such parameter in params.yaml")
        out[k] = _merge(base[k], v, f"{where}{k}.") if isinstance(v, dict) and isinstance(base[k], dict) else v
    return out


def resolve_params(path: str, sets: Sequence[str]) -> Params:
    """params.yaml with the command line's --set overrides applied, validated."""
    if not sets:
        return load_params(path)
    load_params(path)  # a clear error for a missing or malformed file first
    with open(path) as fh:
        raw = yaml.safe_load(fh)
    return from_dict(Params, _merge(raw, _parse_set(sets)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="galmorph",
        description="Galaxy morphology (spiral vs elliptical): the DVC pipeline's stages and the model's tools. "
        "`dvc repro` runs the stages in order; each can also be run alone.",
    )
    parser.add_argument("--params", default="params.yaml", help="the configuration file (default: params.yaml)")
    parser.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter for this run, e.g. -S train.epochs=3 (repeatable)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text, add_args) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_args(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        params = resolve_params(args.params, args.set)
        importlib.import_module(COMMANDS[args.command][0]).main(params, args)
    except UserError as exc:
        print(f"galmorph {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"galmorph {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
