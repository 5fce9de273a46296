"""Tags that tie a run to the exact code and data it used: git commit and dirtiness, the md5 of each DVC
input of the stage (as dvc.lock records it) and the DVC experiment the process runs under."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import galmorph
from galmorph.io import file_md5

_MAX_DIRTY_PATHS = 20
_DVC_BOOKKEEPING = {"dvc.lock", ".gitignore"}


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
