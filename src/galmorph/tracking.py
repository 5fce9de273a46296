"""MLflow, in one place: the store's URI, one run per stage execution, tags that tie a run to git and DVC,
the dataset, the logged pyfunc classifier, the Model Registry and the UI. No other module imports mlflow.

The store is SQLite at <repo>/mlruns/mlflow.db with artifacts under <repo>/mlruns/artifacts (absolute paths,
so `dvc exp run --temp/--queue`, which runs in <repo>/.dvc/tmp/exps/..., still logs to the repo's store);
`mlflow.tracking_uri` in params.yaml or MLFLOW_TRACKING_URI (a team server) override it.

Looking at runs:
    galmorph ui                     # then open http://127.0.0.1:5000 (Ctrl-C stops it)
    galmorph ui --port 5001 --host 0.0.0.0
In the experiment's table, tick two or more runs and press "Compare": parameters side by side (the dotted
keys of params.yaml, e.g. train.lr, model.arch), per-epoch curves (step = epoch), scatter plots. Useful
searches: `tags.dvc.exp_name = 'bally-tans'`, `params.model.arch = 'resnet50'`, `tags.git.dirty = 'false'`,
`metrics.test_macro_f1 > 0.9`. The tags `git.commit` and `dvc.dep.<path>` (md5 of each input, as in
dvc.lock) say exactly which code and data a run used.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

import galmorph
from galmorph.config import CLASSES, MlflowConfig, ModelConfig, Params, PreprocessConfig
from galmorph.errors import UserError
from galmorph.paths import repo_root

if typing.TYPE_CHECKING:
    import torch

STORE_DIR = "mlruns"
"""The local store's folder under the repo root: mlflow.db plus artifacts/."""

PIP_REQUIREMENTS = ("torch", "torchvision", "pillow", "pandas", "numpy", "pyyaml", "tqdm")
"""What the logged pyfunc needs besides mlflow (pinned to the versions it was logged with)."""

_MAX_DIRTY_PATHS = 20
_SCHEMA_SAMPLE = 10_000
_DVC_BOOKKEEPING = {"dvc.lock", ".gitignore"}


# --------------------------------------------------------------------------------------------------- store


def tracking_uri(cfg: MlflowConfig) -> str:
    """MLFLOW_TRACKING_URI > mlflow.tracking_uri > sqlite:///<repo>/mlruns/mlflow.db (always absolute)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return _check_uri(env, "MLFLOW_TRACKING_URI")
    if cfg.tracking_uri:
        return _check_uri(cfg.tracking_uri, "params: mlflow.tracking_uri")
    return f"sqlite:///{repo_root() / STORE_DIR / 'mlflow.db'}"


def _check_uri(uri: str, where: str) -> str:
    """Refuse file stores (MLflow 3 does) and anchor a relative SQLite path at the repo root."""
    scheme = urlparse(uri).scheme
    if scheme in ("", "file"):
        raise UserError(
            f"{where}: {uri!r} is a file store, which MLflow 3 refuses; use sqlite:///path/to/mlflow.db "
            "or a tracking server URL such as http://host:5000"
        )
    if scheme == "sqlite":
        db = _sqlite_path(uri)
        if db is not None and not db.is_absolute():
            # `dvc exp run --temp` runs in .dvc/tmp/exps/...: a cwd-relative database would be lost there
            return f"sqlite:///{repo_root() / db}"
    return uri


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (None for an in-memory database)."""
    rest = uri[len("sqlite://") :]
    if rest in ("", "/", "/:memory:"):
        return None
    return Path(rest[1:]) if rest.startswith("/") else Path(rest)


def artifact_root(uri: str) -> str | None:
    """Where experiments created on a SQLite store keep artifacts: <db folder>/artifacts (a file URI).

    None for a tracking server, whose own artifact settings apply.
    """
    db = _sqlite_path(uri) if uri.startswith("sqlite:") else None
    if db is None:
        return None
    return (db.parent / "artifacts").as_uri()


def use_store(cfg: MlflowConfig) -> str:
    """Point the mlflow client (runs and registry) at the project's store; returns the URI."""
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:") and (db := _sqlite_path(uri)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(cfg: MlflowConfig) -> str:
    """The project's one experiment (mlflow.experiment), created on first use with its artifact location."""
    uri = use_store(cfg)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise UserError(
                f"mlflow.experiment {cfg.experiment!r} is deleted in {uri}; restore it in the UI "
                "(or `mlflow experiments restore`) or choose another name"
            )
        return exp.experiment_id
    root = artifact_root(uri)
    folder = re.sub(r"[^\w.-]", "_", cfg.experiment)
    location = f"{root}/{folder}" if root else None
    try:
        return client.create_experiment(cfg.experiment, artifact_location=location)
    except MlflowException:
        # another process (a queued `dvc exp`, a parallel tuning worker) created it first
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            raise
        return exp.experiment_id


# ----------------------------------------------------------------------------------------------- params


def _section_names() -> dict[type, str]:
    hints = typing.get_type_hints(Params)
    return {tp: name for name, tp in hints.items() if dataclasses.is_dataclass(tp)}


def _param_value(value: Any) -> str:
    # spelled as in params.yaml, so a value can be pasted back into it
    if value is None or isinstance(value, bool | list | tuple):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def flatten_params(params: Any, prefix: str = "") -> dict[str, str]:
    """Params as MLflow wants them: dotted keys (train.lr, tune.space.lr.low) to strings.

    Accepts the whole Params, one section (named after its field in Params: TrainConfig -> train.*),
    a sequence of sections, or a mapping of name -> section/value.
    """
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        if not prefix and not isinstance(params, Params):
            prefix = _section_names().get(type(params), "")
        params = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    elif isinstance(params, Sequence) and not isinstance(params, str | bytes):
        out: dict[str, str] = {}
        for section in params:
            out.update(flatten_params(section, prefix))
        return out
    if not isinstance(params, Mapping):
        raise TypeError(f"cannot flatten {type(params).__name__} into MLflow params")
    out = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if (dataclasses.is_dataclass(value) and not isinstance(value, type)) or isinstance(value, Mapping):
            out.update(flatten_params(value, name))
        else:
            out[name] = _param_value(value)
    return out


# ---------------------------------------------------------------------------------------- provenance tags


def _git(args: Sequence[str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_tags(cwd: str | os.PathLike | None = None) -> dict[str, str]:
    """git.commit, git.dirty (true/false) and the first dirty paths, for the tree the stage runs in
    (in a `dvc exp run --temp` copy: the experiment's own tree)."""
    where = Path(cwd or os.getcwd())
    commit = _git(["rev-parse", "HEAD"], where)
    status = _git(["status", "--porcelain"], where)
    if commit is None or status is None:
        return {"git.commit": "unavailable (not a git repository or no commit)"}
    # dvc.lock and .gitignore are rewritten by `dvc repro` itself as upstream stages finish: not a change
    # to the code or params, so they would otherwise mark every pipeline run dirty
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    dirty = [p for p in changed if Path(p.split(" -> ")[-1].strip('"')).name not in _DVC_BOOKKEEPING]
    tags = {
        "git.commit": commit.strip(),
        "mlflow.source.git.commit": commit.strip(),  # what the UI shows in its Source column
        "git.dirty": "true" if dirty else "false",
    }
    if dirty:
        shown = ", ".join(dirty[:_MAX_DIRTY_PATHS])
        more = len(dirty) - _MAX_DIRTY_PATHS
        tags["git.dirty_paths"] = shown + (f" (+{more} more)" if more > 0 else "")
    return tags


def dvc_exp_tags(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The DVC experiment this process runs under.

    `dvc exp run` (dvc/repo/experiments/queue/base.py) sets DVC_EXP_NAME and DVC_EXP_BASELINE_REV, and
    DVC_ROOT to the parent repo even in a --temp/--queue copy; `dvc repro` sets DVC_STAGE and DVC_ROOT.
    """
    env = os.environ if env is None else env
    names = {
        "DVC_EXP_NAME": "dvc.exp_name",
        "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev",
        "DVC_STAGE": "dvc.stage",
        "DVC_ROOT": "dvc.root",
    }
    return {tag: env[var] for var, tag in names.items() if env.get(var)}


def file_md5(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """md5 of a file's bytes: the hash DVC 3 records in dvc.lock and .dvc files (`hash: md5`)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _tag_key(prefix: str, path: str) -> str:
    # MLflow keys allow [/\w.\- :] and must be normalised relative paths ("../x" is refused)
    parts = [re.sub(r"[^\w.\- ]", "_", p) for p in path.replace("\\", "/").split("/")]
    parts = ["_" * len(p) if p in (".", "..") else p for p in parts if p]
    return f"{prefix}{'/'.join(parts)}"[:250]


def dvc_dep_tags(stage: str, cwd: str | os.PathLike | None = None) -> dict[str, str]:
    """The md5 of every input of `stage` (its deps in dvc.yaml, params.yaml aside) plus `dvc.lock`'s status.

    While a stage runs, its own dvc.lock entry is the previous execution's, but the upstream stages that
    just ran have already written their outs, so a dep's hash is taken from the stage (or .dvc file)
    that produces it, then from the stage's own entry. Files are hashed now and compared: `dvc.lock` is
    `ok` when every recorded hash matches, `stale: <paths>` when some input changed since it was
    written (the tags then hold the current hashes), `missing` without a dvc.lock. Folders keep the
    recorded hash (hashing every image again would cost minutes). Never raises: a run is still worth
    logging without them.
    """
    try:
        from dvc.dependency.param import ParamsDependency
        from dvc.repo import Repo
    except ImportError:  # pragma: no cover - dvc is a dependency, but the pyfunc may run without it
        return {"dvc.lock": "unavailable: dvc is not installed"}
    try:
        root = Repo.find_root(os.fspath(cwd or os.getcwd()))
    except Exception:
        return {"dvc.lock": "unavailable: not inside a DVC repository"}
    lock_file = Path(root) / "dvc.lock"
    try:
        with Repo(root) as repo:
            try:
                (dvc_stage,) = repo.stage.collect(stage)
            except Exception:
                return {"dvc.lock": f"unavailable: no stage {stage!r} in dvc.yaml"}
            produced = {
                out.fs_path: out.hash_info.value
                for st in repo.index.stages
                if st.addressing != dvc_stage.addressing
                for out in st.outs
                if out.hash_info and out.hash_info.value
            }
            deps = [
                (dep.def_path, dep.fs_path, dep.hash_info.value if dep.hash_info else None)
                for dep in dvc_stage.deps
                if not isinstance(dep, ParamsDependency)
            ]
    except Exception as exc:  # a broken dvc.yaml must not lose the run
        return {"dvc.lock": f"unavailable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}

    tags: dict[str, str] = {}
    stale: list[str] = []
    unknown: list[str] = []
    for def_path, fs_path, own_hash in deps:
        recorded = produced.get(fs_path) or own_hash
        current = file_md5(fs_path) if os.path.isfile(fs_path) else None
        if current is not None and recorded is not None and current != recorded:
            stale.append(def_path)
        if current is None and recorded is None:
            unknown.append(def_path)
        tags[_tag_key("dvc.dep.", def_path)] = current or recorded or "unknown"
    if not lock_file.is_file():
        tags["dvc.lock"] = "missing: no dvc.lock (hashes of files computed now; `dvc repro` records the rest)"
    elif stale:
        tags["dvc.lock"] = "stale: changed since dvc.lock was written: " + ", ".join(stale)
    elif unknown:
        tags["dvc.lock"] = "incomplete: no recorded hash for " + ", ".join(unknown)
    else:
        tags["dvc.lock"] = "ok"
    return tags


def provenance_tags(stage: str) -> dict[str, str]:
    """Everything that ties a run to its code and data: git, the DVC inputs and the DVC experiment."""
    return {
        "galmorph.stage": stage,
        "galmorph.version": galmorph.__version__,
        **git_tags(),
        **dvc_dep_tags(stage),
        **dvc_exp_tags(),
    }


# ------------------------------------------------------------------------------------------------- runs


@contextlib.contextmanager
def start_run(
    cfg: MlflowConfig,
    stage: str,
    params: Any = None,
    *,
    run_name: str | None = None,
    nested: bool = False,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run per stage execution, with the stage's params and the provenance tags.

    `params`: see flatten_params. `run_id` reopens an existing run (evaluate and register attach to the
    training run): params already there with the same value are skipped, a different value is logged as
    `<stage>/<key>` (MLflow params are immutable), and the provenance tags go under `<stage>.` so the
    training run's own stay intact. An exception inside the block marks the run FAILED.
    """
    exp_id = experiment_id(cfg)
    flat = flatten_params(params) if params is not None else {}
    run_tags = provenance_tags(stage)
    exp_name = os.environ.get("DVC_EXP_NAME")
    if run_id is None and run_name is None:
        run_name = f"{stage}@{exp_name}" if exp_name else stage
    if run_id is not None:
        client = mlflow.MlflowClient()
        try:
            existing = client.get_run(run_id)
        except MlflowException:
            raise UserError(f"MLflow run {run_id} not found in {mlflow.get_tracking_uri()}") from None
        old_params = existing.data.params
        flat = {(k if k not in old_params else f"{stage}/{k}"): v for k, v in flat.items() if old_params.get(k) != v}
        if existing.data.tags.get("galmorph.stage") != stage:
            attached = existing.data.tags.get("galmorph.attached_stages", "")
            run_tags = {f"{stage}.{k}": v for k, v in run_tags.items() if not k.startswith("mlflow.")}
            run_tags["galmorph.attached_stages"] = ",".join(filter(None, [*attached.split(","), stage]))
    run_tags.update({k: str(v) for k, v in (tags or {}).items()})
    with mlflow.start_run(
        run_id=run_id, experiment_id=exp_id if run_id is None else None, run_name=run_name, nested=nested
    ) as run:
        mlflow.set_tags(run_tags)
        if flat:
            mlflow.log_params(flat)
        yield run


def _active_run() -> mlflow.ActiveRun:
    run = mlflow.active_run()
    if run is None:
        # the fluent API would silently open a run in the Default experiment instead
        raise RuntimeError("no active MLflow run: call this inside `with galmorph.tracking.start_run(...)`")
    return run


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Numbers of the active run; the trainer passes step=epoch so the UI draws curves per epoch."""
    _active_run()
    values = {}
    for key, value in metrics.items():
        try:
            if isinstance(value, str | bytes):
                raise TypeError
            values[key] = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"metric {key!r}: expected a number, got {value!r}") from None
    mlflow.log_metrics(values, step=step)


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """A file or a whole folder (reports, plots) into the active run's artifacts."""
    _active_run()
    p = Path(path)
    if p.is_dir():
        mlflow.log_artifacts(str(p), artifact_path=artifact_path)
    elif p.is_file():
        mlflow.log_artifact(str(p), artifact_path=artifact_path)
    else:
        raise FileNotFoundError(f"{p}: no such file or folder to log")


def log_figure(fig: Any, artifact_file: str) -> None:
    """A matplotlib figure as an image artifact (the caller still owns and closes the figure)."""
    _active_run()
    mlflow.log_figure(fig, artifact_file)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def log_dict(obj: Any, artifact_file: str) -> None:
    """A JSON (or .yaml) artifact; numpy values, paths and dataclasses are converted first."""
    _active_run()
    mlflow.log_dict(json.loads(json.dumps(obj, default=_plain)), artifact_file)


def set_tags(tags: Mapping[str, Any]) -> None:
    _active_run()
    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_dataset(df: pd.DataFrame, source_path: str | os.PathLike, *, name: str, context: str) -> None:
    """Record the catalogue a run read (mlflow.log_input); the digest is the file's md5, the same hash
    dvc.lock records, so the UI's dataset and DVC's point at the same bytes."""
    _active_run()
    digest = file_md5(source_path)
    path = Path(source_path).resolve()
    root = repo_root()
    source = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)  # as catalogues spell paths
    targets = "label" if "label" in df.columns else None
    with warnings.catch_warnings():
        # MLflow registers two equivalent local-file source classes and warns that it picked one; its
        # integer-column hint is about model signatures, not a record of which rows a run read
        warnings.filterwarnings("ignore", "The specified dataset source can be interpreted", UserWarning)
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer column", UserWarning)
        dataset = mlflow.data.from_pandas(df, source=source, name=name, digest=digest, targets=targets)
        if len(df) > _SCHEMA_SAMPLE:
            # MLflow infers the schema value by value in Python (~20 s for 600k rows); a sample says the same.
            # PandasDataset.schema is a cached_property, so the instance's dict answers first.
            sample = df.sample(n=_SCHEMA_SAMPLE, random_state=0)
            dataset.__dict__["schema"] = mlflow.data.from_pandas(sample, source=source, digest=digest).schema
    mlflow.log_input(dataset, context=context)


# ------------------------------------------------------------------------------------------ logged model


class GalaxyPyfunc(mlflow.pyfunc.PythonModel):
    """The pyfunc face of galmorph.serving.pyfunc.GalaxyClassifier (kept here: the one mlflow module).

    Logged as a model from code (_MODEL_CODE), which imports galmorph from the model's code/ folder.
    """

    def load_context(self, context: Any) -> None:
        from galmorph.serving.pyfunc import GalaxyClassifier

        options = dict(context.model_config or {})
        self.classifier = GalaxyClassifier.from_artifacts(context.artifacts["model"], **options)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        # a DataFrame hint: MLflow validates against the explicit signature instead of inferring one
        params = params or {}
        return self.classifier.predict(
            model_input, tta=bool(params.get("tta", False)), threshold=float(params.get("threshold", 0.0))
        )


_MODEL_CODE = """\
# galmorph's classifier as an MLflow model from code: MLflow runs this file when the model loads.
import mlflow

from galmorph.tracking import GalaxyPyfunc

mlflow.models.set_model(GalaxyPyfunc())
"""


def classifier_signature(classes: Sequence[str] = CLASSES) -> ModelSignature:
    """Input: column `image` (path, base64 or bytes); output: p_<class>..., label; params tta, threshold."""
    outputs = [ColSpec("double", f"p_{c}") for c in classes] + [ColSpec("string", "label")]
    return ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("tta", "boolean", False), ParamSpec("threshold", "double", 0.0)]),
    )


def _pip_requirements() -> list[str]:
    reqs = []
    for dist in PIP_REQUIREMENTS:
        version = importlib.metadata.version(dist).split("+")[0]  # torch's "+cpu" is not on PyPI
        reqs.append(f"{dist}=={version}")
    return reqs


def log_classifier(
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    preprocess: PreprocessConfig,
    *,
    temperature: float = 1.0,
    input_example: str | os.PathLike | None = None,
    name: str = "model",
    tta_views: Sequence[str] | None = None,
    batch_size: int = 64,
) -> str:
    """Log the network as a self-contained pyfunc in the active run and return its model URI.

    The artifact is the model file of galmorph.models.resnet.save_model (weights, model and preprocess
    configs, classes, calibration temperature); the galmorph package rides along in code/ and the pip
    requirements are pinned, so `mlflow.pyfunc.load_model(uri)` works in any environment without this
    repository. `input_example`: a JPEG, stored base64-encoded so the example runs anywhere.
    `tta_views` (default: all eight, as evaluate.tta_views) are what predict(params={"tta": True}) averages.
    """
    from galmorph.serving.pyfunc import DEFAULT_TTA_VIEWS, save_artifacts
    from galmorph.training.features import check_views

    _active_run()
    views = check_views(tta_views or DEFAULT_TTA_VIEWS, "tta_views")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    example = None
    if input_example is not None:
        example = {"image": [base64.b64encode(Path(input_example).read_bytes()).decode("ascii")]}
    with tempfile.TemporaryDirectory(prefix="galmorph-pyfunc-") as tmp:
        artifacts = save_artifacts(model, model_cfg, preprocess, temperature, Path(tmp) / "artifacts")
        code = Path(tmp) / "code" / "galmorph"
        shutil.copytree(Path(galmorph.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # a model from code, not a pickle: loading runs this file, nothing is unpickled
        model_code = Path(tmp) / "galmorph_model.py"
        model_code.write_text(_MODEL_CODE)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(model_code),
            artifacts=artifacts,
            code_paths=[str(code)],
            pip_requirements=_pip_requirements(),
            signature=classifier_signature(),
            input_example=pd.DataFrame(example) if example else None,
            model_config={"tta_views": views, "batch_size": batch_size},
            metadata={"classes": list(CLASSES), "temperature": temperature, "galmorph_version": galmorph.__version__},
        )
    return info.model_uri


def load_classifier(uri: str, *, cfg: MlflowConfig | None = None) -> Any:
    """mlflow.pyfunc.load_model (e.g. of `models:/galmorph@champion`), for callers that must not import mlflow."""
    _client(cfg)
    return mlflow.pyfunc.load_model(uri)


# --------------------------------------------------------------------------------------------- registry
# Each helper takes the project's MlflowConfig so it talks to the right store even outside start_run.


def register_model(
    model_uri: str, name: str, tags: Mapping[str, Any] | None = None, *, cfg: MlflowConfig | None = None
) -> str:
    """Register a logged model under `name` and return the new version as a string (as VersionInfo has it)."""
    _client(cfg)
    version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in (tags or {}).items()})
    return str(version.version)


def set_alias(name: str, alias: str, version: str | int, *, cfg: MlflowConfig | None = None) -> None:
    """Point `models:/<name>@<alias>` at a version (aliases, never the deprecated stages)."""
    _client(cfg).set_registered_model_alias(name, alias, str(version))


def delete_alias(name: str, alias: str, *, cfg: MlflowConfig | None = None) -> None:
    _client(cfg).delete_registered_model_alias(name, alias)


def get_version_by_alias(name: str, alias: str, *, cfg: MlflowConfig | None = None) -> ModelVersion | None:
    """The version an alias points at, or None when the model or the alias does not exist yet."""
    try:
        return _client(cfg).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def alias_uri(name: str, alias: str) -> str:
    return f"models:/{name}@{alias}"


def run_metrics(run_id: str, *, cfg: MlflowConfig | None = None) -> dict[str, float]:
    """The latest value of every metric of a run (e.g. to compare a challenger with the champion)."""
    return dict(_client(cfg).get_run(run_id).data.metrics)


def _client(cfg: MlflowConfig | None) -> mlflow.MlflowClient:
    if cfg is not None:
        use_store(cfg)
    return mlflow.MlflowClient()


# ---------------------------------------------------------------------------------------------------- UI


def ui_command(cfg: MlflowConfig, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow server` command line that shows the project's store (artifacts served from mlruns/)."""
    uri = tracking_uri(cfg)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    root = artifact_root(uri)
    if root:
        cmd += ["--artifacts-destination", root]
    return cmd + ["--workers", "1"]


def run_ui(cfg: MlflowConfig, host: str = "127.0.0.1", port: int = 5000) -> None:
    """Serve the MLflow UI on the local store until Ctrl-C; for a tracking server, say where it is."""
    uri = tracking_uri(cfg)
    if urlparse(uri).scheme in ("http", "https"):
        print(f"runs are on the tracking server {uri}: open it in a browser", file=sys.stderr)
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port") from None
    if uri.startswith("sqlite:") and (db := _sqlite_path(uri)) is not None:
        (db.parent / "artifacts").mkdir(parents=True, exist_ok=True)
    print(f"MLflow UI on http://{host}:{port} for {uri} (Ctrl-C stops it)", file=sys.stderr, flush=True)
    rc = subprocess.call(ui_command(cfg, host, port))
    if rc not in (0, -2, 130):
        raise UserError(f"mlflow server exited with status {rc} (see its messages above)")


# ======================================================================================================
# Registry reads and tags for promotion, rollback and batch scoring (added by helper "serve"; the policy
# itself lives in galmorph.serving.registry, which calls only these and the helpers above).


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    """A registered model version as plain data, so callers never handle mlflow entities."""

    name: str
    version: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    run_id: str | None
    source: str
    created_ms: int

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _version_info(mv: ModelVersion, aliases: Mapping[str, str]) -> VersionInfo:
    return VersionInfo(
        name=mv.name,
        version=str(mv.version),
        aliases=tuple(sorted(a for a, v in aliases.items() if str(v) == str(mv.version))),
        tags=dict(mv.tags or {}),
        run_id=mv.run_id or None,
        source=mv.source or "",
        created_ms=int(mv.creation_timestamp or 0),
    )


def registered_model_aliases(name: str, *, cfg: MlflowConfig | None = None) -> dict[str, str] | None:
    """alias -> version of a registered model; None when no model of that name exists."""
    try:
        model = _client(cfg).get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def model_versions(name: str, *, cfg: MlflowConfig | None = None) -> list[VersionInfo]:
    """Every version of a registered model, newest first ([] when the model does not exist)."""
    aliases = registered_model_aliases(name, cfg=cfg)
    if aliases is None:
        return []
    quoted = name.replace("'", "\\'")
    found = _client(cfg).search_model_versions(f"name = '{quoted}'", max_results=10_000)
    return sorted((_version_info(mv, aliases) for mv in found), key=lambda v: int(v.version), reverse=True)


def model_version(name: str, version: str | int, *, cfg: MlflowConfig | None = None) -> VersionInfo | None:
    """One version with its aliases and tags; None when the model or the version does not exist."""
    aliases = registered_model_aliases(name, cfg=cfg)
    if aliases is None:
        return None
    try:
        mv = _client(cfg).get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return _version_info(mv, aliases)


def set_version_tags(
    name: str, version: str | int, tags: Mapping[str, Any], *, cfg: MlflowConfig | None = None
) -> None:
    client = _client(cfg)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def registered_model_tags(name: str, *, cfg: MlflowConfig | None = None) -> dict[str, str]:
    """Tags of the registered model itself (where the champion history lives); {} when it does not exist."""
    try:
        return dict(_client(cfg).get_registered_model(name).tags or {})
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise


def set_registered_model_tags(name: str, tags: Mapping[str, Any], *, cfg: MlflowConfig | None = None) -> None:
    client = _client(cfg)
    for key, value in tags.items():
        client.set_registered_model_tag(name, key, str(value))


def spark_udf(
    spark: Any,
    model_uri: str,
    *,
    result_type: str,
    params: Mapping[str, Any] | None = None,
    cfg: MlflowConfig | None = None,
) -> Any:
    """The pyfunc as a Spark pandas UDF, run in the executors' own Python (env_manager="local": a cluster's
    executors need galmorph's requirements installed, as with spark-submit --py-files or a cluster image)."""
    _client(cfg)
    return mlflow.pyfunc.spark_udf(
        spark, model_uri, result_type=result_type, env_manager="local", params=dict(params or {})
    )


# ======================================================================================================
# Nested trial runs of Optuna studies (added by helper "tune"; galmorph.tuning drives them).


@contextlib.contextmanager
def start_child_run(
    run_name: str,
    params: Any = None,
    *,
    tags: Mapping[str, Any] | None = None,
    killed_on: tuple[type[BaseException], ...] = (),
) -> Iterator[mlflow.ActiveRun]:
    """A run nested under the active run (an Optuna trial under its study's run).

    No provenance tags: the parent holds them, and recomputing git status and DVC hashes would cost
    seconds per trial. The run ends FINISHED, KILLED when one of `killed_on` escapes (a pruned trial),
    FAILED on any other exception.
    """
    parent = _active_run()
    run = mlflow.start_run(
        experiment_id=parent.info.experiment_id,  # else MLflow files the child under the Default experiment
        run_name=run_name,
        nested=True,
        tags={k: str(v) for k, v in (tags or {}).items()},
    )
    try:
        if params is not None and (flat := flatten_params(params)):
            mlflow.log_params(flat)
        yield run
    except killed_on:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def run_exists(run_id: str, *, cfg: MlflowConfig | None = None) -> bool:
    """Whether the store has this run (a resumed study's parent may live in another tracking store)."""
    try:
        run = _client(cfg).get_run(run_id)
    except MlflowException:
        return False
    return run.info.lifecycle_stage != "deleted"
