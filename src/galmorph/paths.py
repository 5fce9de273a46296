"""Where the repository is, even when DVC runs a stage in a temporary copy of it, and the one rule for the
paths that data files (source.json, the catalogues) store."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The project's root folder.

    `dvc exp run --temp/--queue` runs stages in `<repo>/.dvc/tmp/exps/...`; anything that must land in
    the real repository (the MLflow store, the Optuna study) resolves against the folder above `.dvc/`.
    """
    here = Path(start or os.getcwd()).resolve()
    parts = here.parts
    if ".dvc" in parts:
        return Path(*parts[: parts.index(".dvc")])
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file() or (candidate / ".git").exists():
            return candidate
    return here


def portable_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """`path` as data files store it: relative to `root` when inside it, else absolute; POSIX separators.

    `root` defaults to the working directory: params.yaml's paths are relative to it, and a stage run in a
    temporary copy of the repository must point into that copy, not into the real one (which repo_root names).
    Not resolve()d: a DVC cache link or a mounted data disk stays as the user wrote it.
    """
    base = os.path.abspath(root if root is not None else os.curdir)
    absolute = Path(os.path.abspath(os.path.join(base, path)))
    try:
        return absolute.relative_to(base).as_posix()
    except ValueError:
        return absolute.as_posix()


def resolve_path(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """The inverse of portable_path: a stored path, absolute as it is or relative to `root`."""
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p
