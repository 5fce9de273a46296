"""Does each catalogue row's image exist and decode completely? The `select` stage's checks: the folder
listing is ours (fast on folders of a quarter of a million files), the decoding is the one loader's
(data.images.read_image), so "usable" means exactly "load_rgb, predict, REST and the web page will accept it".
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from galmorph.data.images import REASONS, ImageError, open_file, read_image
from galmorph.errors import UserError

#: Why `select` drops a row (the loader's reasons for a file). Kept rows have no reason.
DROP_REASONS: tuple[str, ...] = tuple(r for r in REASONS if r not in ("refused", "no_image"))
VERIFY_MODES: tuple[str, ...] = ("exists", "decode")

CheckResult = tuple[str | None, str | None, int | None, int | None, str | None]
"""(reason, detail, width, height, mode) of one file; reason None means the image is usable."""


def _not_a_file(entry: os.DirEntry | None) -> tuple[str, str]:
    """Why a name in a folder listing is not a readable regular file."""
    if entry is None:
        return "missing", "no such file"
    try:
        if entry.is_dir():
            return "unreadable", "is a directory"
        if entry.is_symlink() and not os.path.exists(entry.path):
            return "missing", "broken symlink"
    except OSError as exc:
        return "unreadable", exc.strerror or type(exc).__name__
    return "unreadable", "not a regular file"


def find_files(paths: Sequence[str | None], *, sizes: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(reason, detail) per absolute, normalised path; None where a regular file is there (and, with
    `sizes`, is not empty).

    Lists each folder once with os.scandir instead of a stat per row: GZ2's 243,434 cut-outs share one folder,
    and on network file systems a stat per file is what makes a naive check take minutes. `sizes` costs a
    stat per found file; decode verification does not need it because it reads every file anyway.
    """
    n = len(paths)
    reasons = np.full(n, None, dtype=object)
    details = np.full(n, None, dtype=object)
    names: list[str] = [""] * n
    by_folder: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        if not isinstance(path, str) or not path:
            reasons[i], details[i] = "missing", "no image_path"
            continue
        folder, _, names[i] = path.rpartition(os.sep)  # os.path.split's work at a fifth of its cost
        by_folder.setdefault(folder or os.sep, []).append(i)
    for folder, rows in by_folder.items():
        try:
            with os.scandir(folder) as it:
                entries = {entry.name: entry for entry in it}
        except (FileNotFoundError, NotADirectoryError):
            reasons[rows], details[rows] = "missing", f"folder {folder} does not exist"
            continue
        except OSError as exc:
            reasons[rows], details[rows] = "unreadable", f"folder {folder} cannot be listed ({exc.strerror})"
            continue
        for i in rows:
            entry = entries.get(names[i])
            try:
                # is_file() answers from the listing's d_type; it stats only symlinks
                if entry is None or not entry.is_file():
                    reasons[i], details[i] = _not_a_file(entry)
                elif sizes and os.stat(paths[i]).st_size == 0:
                    reasons[i], details[i] = "zero_bytes", "empty file"
            except OSError as exc:  # a symlink into a folder we may not enter, or a file removed meanwhile
                reasons[i], details[i] = "unreadable", exc.strerror or type(exc).__name__
    return reasons, details


def absolute_paths(paths: Sequence[str | None], root: str | os.PathLike | None = None) -> list[str | None]:
    """Catalogue paths made absolute against `root` (default: the working directory) and normalised.

    A string join for the common case; os.path.normpath only for the paths that need it (`.`, `..`, `//`)."""
    base = os.path.abspath(root if root is not None else os.curdir).rstrip(os.sep) + os.sep
    series = pd.Series(list(paths), dtype=object)
    valid = series.map(lambda p: isinstance(p, str) and p != "").to_numpy(dtype=bool)
    text = series[valid].astype(str)
    joined = text.where(text.str.startswith(os.sep), base + text)
    odd = joined.str.contains(f"{os.sep}{os.sep}|{os.sep}\\.\\.?(?:{os.sep}|$)|{os.sep}$", regex=True)
    joined[odd] = joined[odd].map(os.path.normpath)
    out = np.full(len(series), None, dtype=object)
    out[valid] = joined.to_numpy(dtype=object)
    return out.tolist()


def check_image_file(path: str | os.PathLike) -> CheckResult:
    """Decode one file completely with the one loader and say why it is unusable (reason None: usable).

    The original mode is returned so select can count how many images the loader converts. PIL reads the
    open file itself: decoding from an in-memory copy (BytesIO) measured 15-20% slower.
    """
    try:
        fh, size = open_file(path)
    except FileNotFoundError:
        return "missing", "no such file", None, None, None
    except ImageError as exc:
        return exc.reason, str(exc), None, None, None
    except OSError as exc:
        return "unreadable", exc.strerror or type(exc).__name__, None, None, None
    with fh:
        try:
            loaded = read_image(fh, size)
        except ImageError as exc:
            return exc.reason, str(exc), None, None, None
        except OSError as exc:  # the file system, not the decoder (EIO, EISDIR...)
            return "unreadable", exc.strerror or type(exc).__name__, None, None, None
    return None, None, loaded.width, loaded.height, loaded.mode


def _check_chunk(paths: list[str]) -> list[CheckResult]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF and palette warnings, one per file, would flood the terminal
        return [check_image_file(p) for p in paths]


def _pool_context() -> multiprocessing.context.BaseContext:
    """forkserver: workers are forked from a clean server process, not from one that may hold pyarrow or torch
    threads; the server imports this module once, so each worker starts in milliseconds, not seconds."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def decode_images(
    paths: Sequence[str], workers: int = 1, *, chunk_size: int = 64, progress: bool = True
) -> list[CheckResult]:
    """check_image_file over `paths` in order; workers > 1 spreads chunks of files over that many processes."""
    bar = tqdm(total=len(paths), desc="select: decode", unit="img", disable=not progress, smoothing=0.05)
    with bar:
        if workers <= 1 or len(paths) <= chunk_size:
            results = []
            for i in range(0, len(paths), chunk_size):
                results.extend(_check_chunk(list(paths[i : i + chunk_size])))
                bar.update(len(results) - bar.n)
            return results
        chunks = [list(paths[i : i + chunk_size]) for i in range(0, len(paths), chunk_size)]
        results = []
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context())
        try:
            for chunk_results in pool.map(_check_chunk, chunks):
                results.extend(chunk_results)
                bar.update(len(chunk_results))
        finally:
            pool.shutdown(cancel_futures=True)  # on Ctrl-C, do not decode the remaining chunks first
        return results


def check_images(
    paths: Sequence[str | None],
    verify: str = "decode",
    workers: int = 1,
    *,
    root: str | os.PathLike | None = None,
    progress: bool = True,
    chunk_size: int = 64,
) -> pd.DataFrame:
    """One row per path (same order): reason (None = usable), detail, width, height, mode.

    Relative paths are relative to `root` (default: the working directory, as join wrote them). verify
    "exists" only looks for a non-empty file; "decode" also decodes every found file in `workers` processes.
    """
    if verify not in VERIFY_MODES:
        raise UserError(f"select.verify: expected one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    if workers < 0:
        raise UserError(f"select.workers: expected 0 or more decoding processes, got {workers}")
    absolute = absolute_paths(paths, root)
    reasons, details = find_files(absolute, sizes=verify == "exists")
    n = len(absolute)
    width = np.full(n, None, dtype=object)
    height = np.full(n, None, dtype=object)
    mode = np.full(n, None, dtype=object)
    if verify == "decode":
        found = np.flatnonzero(pd.isna(reasons))
        results = decode_images([absolute[i] for i in found], workers, chunk_size=chunk_size, progress=progress)
        for i, (reason, detail, w, h, m) in zip(found, results, strict=True):
            reasons[i], details[i], width[i], height[i], mode[i] = reason, detail, w, h, m
    kept = pd.isna(reasons)
    return pd.DataFrame(
        {
            "reason": reasons,
            "detail": details,
            "width": pd.array(np.where(kept, width, None), dtype="Int64"),
            "height": pd.array(np.where(kept, height, None), dtype="Int64"),
            "mode": pd.array(np.where(kept, mode, None), dtype="string"),
        }
    )
