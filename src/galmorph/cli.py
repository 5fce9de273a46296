"""The `galmorph` command: one subcommand per pipeline stage plus the tools people use on a model.

Commands are imported only when they run, so `galmorph --help` stays fast (no torch import). A UserError
becomes one line on stderr and its exit code; nothing else is caught, because anything else is a bug and
its traceback is what a developer needs.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from galmorph import __version__
from galmorph.config import Params, params_from_raw, params_without_file, read_params_file
from galmorph.errors import UserError

EXIT_CODES = """exit codes:
  0    done
  1    bad input: a file, row, column or parameter (one line on stderr says which and what was expected)
  2    usage error on the command line
  3    promotion refused by the gate (galmorph promote; --force --reason overrides)
  130  interrupted (Ctrl-C)"""

ArgSpec = Callable[[argparse.ArgumentParser], None]


def _no_args(parser: argparse.ArgumentParser) -> None:
    pass


def _fetch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="download or generate again even if present; replace files in data.raw_dir that fetch did not write",
    )


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
    p.add_argument("--examples", metavar="PNG", help="also save a captioned 4x4 grid of example cut-outs there")


def _ui_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=5000, help="port to listen on (default: 5000)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1; 0.0.0.0 = network)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., a pyfunc folder or models/model.pt "
        "(default: models:/<mlflow.registered_model>@champion)",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1; 0.0.0.0 = network)")
    p.add_argument("--port", type=int, default=5001, help="port to listen on (default: 5001)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes (default: 1)")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_file", help="a models/model.pt (trained here or elsewhere)")
    p.add_argument("out", help="the MLflow model folder to write")
    p.add_argument("--force", action="store_true", help="replace OUT when it is a previously exported model")


def _plots_template_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a file there that plots-template did not write, and a plots.html_template set to another",
    )


def _register_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        metavar="FILE",
        help="register this models/model.pt (trained elsewhere) instead of the train stage's model: a new version "
        "with @challenger, not promoted (then: galmorph promote --version N --rescore)",
    )


def _registry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="registered model name (default: mlflow.registered_model)")


def _promote_args(p: argparse.ArgumentParser) -> None:
    _registry_args(p)
    p.add_argument("--version", help="the version to promote (default: @challenger); `galmorph models` lists them")
    p.add_argument("--force", action="store_true", help="promote even when the gate fails (recorded as a tag)")
    p.add_argument("--reason", help="why --force was needed (required with it; kept in the tag force_reason)")
    p.add_argument(
        "--rescore",
        action="store_true",
        help="first score @champion and the version to promote (--version, else @challenger) on the current test "
        "split (split.out): after new data, or for a model registered from a file",
    )


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., a pyfunc folder or models/model.pt "
        "(default: models:/<mlflow.registered_model>@champion)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        help="below this top probability the verdict is 'uncertain' (default: evaluate.abstain_threshold)",
    )


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths", nargs="*", metavar="PATH", help="image files (JPEG, PNG), folders or glob patterns (or --catalogue)"
    )
    _model_arg(p)
    p.add_argument(
        "--out",
        help="write .csv, .json or .parquet (default: CSV on stdout); with --catalogue .csv, .ecsv, .parquet, "
        ".fits or .vot",
    )
    p.add_argument("--tta", action="store_true", help="average over the 8 rotations and flips (8 views, 8x slower)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (default: 2; 0 = none)")
    _catalogue_args(p)
    _fits_args(p, bands=True)


def _fits_args(p: argparse.ArgumentParser, *, bands: bool = False) -> None:
    g = p.add_argument_group("FITS images (README: FITS images; stretch: params.yaml fits)")
    g.add_argument(
        "--hdu",
        help="the HDU holding the image: a number (0 = primary) or an EXTNAME (default: fits.hdu, else the first "
        "HDU with a 2-D image or a 3-plane cube)",
    )
    if bands:
        g.add_argument(
            "--bands",
            nargs=3,
            action="append",
            default=[],
            metavar=("BLUE", "GREEN", "RED"),
            help="one galaxy from three single-band FITS files, bluest first (e.g. g r i), in colour; or three "
            "patterns with one * each ('cut/*_g.fits' 'cut/*_r.fits' 'cut/*_i.fits'), paired by what * stands for "
            "(repeatable)",
        )


def _catalogue_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("catalogues (README: From a catalogue of positions)")
    g.add_argument(
        "--catalogue",
        metavar="TABLE",
        help="score the rows of a .csv, .ecsv, .parquet, .fits or .vot table: its image paths, or cut-outs fetched "
        "at its RA/Dec (params.yaml cutouts); the output keeps every column",
    )
    g.add_argument("--path-column", help="image paths (default: image_path, filename, path, file or image)")
    g.add_argument("--ra-column", help="RA in degrees or hh:mm:ss (default: ra, raj2000, ra_icrs or ra_deg)")
    g.add_argument("--dec-column", help="Dec in degrees or dd:mm:ss (default: dec, dej2000, de_icrs or dec_deg)")
    g.add_argument(
        "--size-column",
        help="a size in arcsec (e.g. petroR90_r): scale = cutouts.scale_per_arcsec * size (default: cutouts.size_column)",
    )
    g.add_argument("--id-column", help="names rows in messages (default: objid, object_id, dr7objid or id)")
    g.add_argument("--service", help="the cut-out service, a key of cutouts.services (default: cutouts.service)")
    g.add_argument("--force", action="store_true", help="replace --out when it exists")


def _web_args(p: argparse.ArgumentParser) -> None:
    _model_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1; 0.0.0.0 = network)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload (default: 10 MB)")


def _batch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "input",
        help="folder or glob of images (read as Spark binaryFile), or a .parquet/.csv table "
        "with a column of image paths (relative ones start at the table's folder), or a catalogue "
        "(.csv, .parquet, .fits, .vot, .ecsv) with RA/Dec: cut-outs fetched on the driver (params.yaml cutouts)",
    )
    p.add_argument(
        "out",
        help="Parquet folder to write: a table's own columns, then path, p_spiral, p_elliptical, label, error "
        "(pred_ in front of a name the table already has)",
    )
    _model_arg(p)
    p.add_argument(
        "--path-column", help="column of image paths in a table (default: image_path, filename, path, file or image)"
    )
    p.add_argument("--ra-column", help="a catalogue's RA, degrees or hh:mm:ss (default: ra, raj2000, ra_icrs, ra_deg)")
    p.add_argument("--dec-column", help="a catalogue's Dec, degrees or dd:mm:ss (default: dec, dej2000, de_icrs, ...)")
    p.add_argument("--size-column", help="a size in arcsec setting the cut-out scale (default: cutouts.size_column)")
    p.add_argument("--service", help="the cut-out service, a key of cutouts.services (default: cutouts.service)")
    p.add_argument("--tta", action="store_true", help="average over rotations and flips")
    p.add_argument("--master", help="Spark master when not under spark-submit, e.g. local[4] (default: local[*])")
    p.add_argument("--partitions", type=int, help="repartition the input to this many tasks")
    _fits_args(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT when it is a previous batch output (only Spark's _SUCCESS/part-* files in it)",
    )


def _crossmatch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("positions", help="your table with RA/Dec (.csv, .parquet, .fits, .vot; degrees or sexagesimal)")
    p.add_argument("reference", help="the catalogue whose columns (labels, votes) are attached, same formats")
    p.add_argument("--out", required=True, help="the labelled table to write (.csv, .parquet, .fits or .vot)")
    p.add_argument("--radius", type=float, default=1.0, help="match radius in arcsec (default: 1.0)")
    p.add_argument("--ra-column", default="ra", help="RA column of POSITIONS (default: ra; RA also found)")
    p.add_argument("--dec-column", default="dec", help="Dec column of POSITIONS (default: dec)")
    p.add_argument("--ref-ra-column", help="RA column of REFERENCE (default: as --ra-column)")
    p.add_argument("--ref-dec-column", help="Dec column of REFERENCE (default: as --dec-column)")
    p.add_argument("--columns", help="comma-separated REFERENCE columns to attach (default: all)")
    p.add_argument(
        "--ambiguous",
        choices=("drop", "nearest"),
        default="drop",
        help="two or more reference objects within the radius: attach no label (drop, default) or the nearest's",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")


def _outliers_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="folder for the images and outliers.csv (train.outliers)")
    p.add_argument(
        "--blends",
        dest="blend",
        type=int,
        default=0,
        metavar="N",
        help="N two-galaxy blends of training galaxies, the recommended kind (the README uses 274)",
    )
    p.add_argument(
        "--irregular", type=int, default=0, metavar="N", help="N training galaxies made faint, coreless and clumpy"
    )
    p.add_argument(
        "--disturbed",
        type=int,
        default=0,
        metavar="N",
        help="N training galaxies made lopsided with a tidal tail (measured worse than blends; BENCHMARKS.md)",
    )
    p.add_argument("--seed", type=int, default=0, help="one seed, the same images (default: 0)")
    p.add_argument("--splits", help="the split stage's table whose train rows are used (default: split.out)")
    p.add_argument("--preview", metavar="PNG", help="also draw the first 8 of each kind beside their source galaxies")
    p.add_argument("--force", action="store_true", help="replace OUT's images of these kinds, its table, --preview")


def _evaluate_folder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a folder with spirals/ and ellipticals/ subfolders, or a manifest CSV")
    p.add_argument(
        "--model",
        help="as for predict: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., a pyfunc folder or "
        "models/model.pt (default: models:/<mlflow.registered_model>@champion)",
    )
    p.add_argument("--out", help="report folder (default: <evaluate.out_dir>/folder-<name>)")
    p.add_argument(
        "--path-column", help="CSV: the image-path column (default: image_path, filename, path, file or image)"
    )
    p.add_argument("--label-column", default="label", help="CSV: the label column (default: label)")
    p.add_argument("--no-tta", action="store_true", help="skip the test-time-augmentation pass")
    _fits_args(p)


#: name -> (module with main(params, args), one-line help, argument adder). The pipeline's stages live in
#: galmorph.stages (one per dvc.yaml stage); the rest are the tools people use around them.
COMMANDS: dict[str, tuple[str, str, ArgSpec]] = {
    "fetch": (
        "galmorph.stages.fetch",
        "get the catalogues and images (synthetic, galaxyzoo download, local, manifest, coords: cut-outs)",
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
    "evaluate-folder": (
        "galmorph.commands.evaluate_folder",
        "KPIs and a report for labelled images from anywhere (spirals/ + ellipticals/ folders, or a CSV)",
        _evaluate_folder_args,
    ),
    "register": ("galmorph.stages.register", "register the trained model and set @challenger", _register_args),
    "synth": ("galmorph.commands.synth", "write a synthetic Galaxy Zoo data set to a folder", _synth_args),
    "outliers": (
        "galmorph.commands.outliers",
        "made-up outliers (blends, irregulars) of the training galaxies for train.outliers, when none are labelled",
        _outliers_args,
    ),
    "ui": ("galmorph.commands.ui", "open the MLflow UI on the project's tracking store", _ui_args),
    "promote": (
        "galmorph.commands.models",
        "move @champion to @challenger when the promotion gate passes",
        _promote_args,
    ),
    "models": (
        "galmorph.commands.models",
        "list the registered versions, their aliases and test metrics",
        _registry_args,
    ),
    "rollback": ("galmorph.commands.models", "move @champion back to the previous champion", _registry_args),
    "predict": (
        "galmorph.commands.predict",
        "classify image files, folders, globs or a catalogue (paths or RA/Dec); write CSV/JSON/FITS/...",
        _predict_args,
    ),
    "serve": (
        "galmorph.commands.serve",
        "the REST endpoint: mlflow models serve on the project's store (a model file is exported first)",
        _serve_args,
    ),
    "export": ("galmorph.commands.serve", "write a models/model.pt as an MLflow model folder", _export_args),
    "plots-template": (
        "galmorph.commands.plots_template",
        "make `dvc plots show/diff` pages draw offline (Vega inline, no CDN; `make venv` runs it)",
        _plots_template_args,
    ),
    "web": ("galmorph.commands.web", "a web page to upload a galaxy image and see the model's verdict", _web_args),
    "batch": ("galmorph.commands.batch", "survey-scale batch classification with Apache Spark (pyspark)", _batch_args),
    "crossmatch": (
        "galmorph.commands.crossmatch",
        "attach a reference catalogue's labels to your RA/Dec positions (nearest within a radius)",
        _crossmatch_args,
    ),
}


#: The params.yaml sections (or single keys) each command reads, validated before it starts: a stage's own
#: section, what dvc.yaml lists for it (tests/test_config.py checks that) and the outputs of the stages it reads.
#: Any other section is validated only when, and as far as, the command reads it (config.UnvalidatedSection):
#: a broken train.lr does not stop `galmorph predict`.
SECTIONS: dict[str, tuple[str, ...]] = {
    "fetch": ("data", "cutouts"),
    "join": ("data", "join"),
    "select": ("join", "select"),
    "split": ("select", "split"),
    "embed": ("model", "preprocess", "embed", "train", "split"),
    "tune": ("tune", "model", "train", "embed", "preprocess", "augment", "mlflow", "split"),
    "train": ("model", "preprocess", "train", "augment", "embed", "mlflow", "split", "tune"),
    "evaluate": ("evaluate", "preprocess", "model", "train", "augment", "embed", "mlflow", "split", "join"),
    "evaluate-folder": ("evaluate", "train", "preprocess", "mlflow", "fits"),
    "register": ("register", "mlflow", "evaluate", "split", "train", "data.source", "tune.out"),
    "synth": ("data",),
    "outliers": ("split.out", "preprocess"),
    "ui": ("mlflow",),
    "promote": ("mlflow", "register"),
    "models": ("mlflow",),
    "rollback": ("mlflow",),
    "predict": ("mlflow", "evaluate.abstain_threshold", "fits"),
    "web": ("mlflow", "serve", "evaluate.abstain_threshold", "fits"),
    "serve": ("mlflow",),
    "export": (),
    "plots-template": (),
    "batch": ("mlflow", "evaluate.abstain_threshold", "fits"),
    "crossmatch": (),
}
#: Commands that run without a params.yaml when given this argument, a model file (it carries its preprocessing):
#: they use config.DEFAULTS_WITHOUT_PARAMS_FILE.
RUN_WITHOUT_PARAMS_FILE = {"predict": "model", "export": "model_file", "crossmatch": "reference"}  # reads no params
DEFAULT_PARAMS = "params.yaml"


def _check_set_key(raw: dict, key: str) -> None:
    """A -S key that names no parameter: say so, with the closest one that exists."""
    node: Any = raw
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            return  # deeper than a value: the value's own validation says what was expected
        if part not in node:
            close = difflib.get_close_matches(part, [str(k) for k in node], n=1, cutoff=0.6)
            hint = f" (did you mean {'.'.join([*parts[:i], close[0], *parts[i + 1 :]])}?)" if close else ""
            raise UserError(f"--set {key}: no such parameter in params.yaml{hint}")
        node = node[part]


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


def resolve_params(
    path: str | None, sets: Sequence[str], required: Iterable[str] | None = None, *, missing_ok: bool = False
) -> Params:
    """params.yaml (default: ./params.yaml) with the command line's --set overrides applied; the sections and
    keys in `required` validated now (all when None), the others when read. `missing_ok`: without the default
    params.yaml, the defaults of config.params_without_file (a --params file that is absent is still an error)."""
    file = path or DEFAULT_PARAMS
    if path is None and missing_ok and not Path(file).exists():
        if sets:
            raise UserError(f"--set {sets[0]}: there is no {file} here to override (run from the repo root)")
        return params_without_file(file)
    raw = read_params_file(file)
    if sets and isinstance(raw, dict):
        for item in sets:
            key, sep, _ = item.partition("=")
            if sep and key:
                _check_set_key(raw, key)
        raw = _merge(raw, _parse_set(sets))
    return params_from_raw(raw, required, file)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="galmorph",
        description="Galaxy morphology (spiral vs elliptical): the DVC pipeline's stages and the model's tools. "
        "`dvc repro` runs the stages in order; each can also be run alone.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"galmorph {__version__}")
    parser.add_argument("--params", help="the configuration file (default: params.yaml)")
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
        sp = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_args(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        params = resolve_params(
            args.params,
            args.set,
            SECTIONS.get(args.command),
            missing_ok=bool(getattr(args, RUN_WITHOUT_PARAMS_FILE.get(args.command, ""), None)),
        )
        importlib.import_module(COMMANDS[args.command][0]).main(params, args)
    except UserError as exc:
        print(f"galmorph {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"galmorph {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
