"""Where the repository is, even when DVC runs a stage in a temporary copy of it."""

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
