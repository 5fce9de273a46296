"""Reading galaxy images the same way everywhere (select, datasets, predict, serve).

Survey cut-outs are 8-bit RGB JPEGs, but people bring RGBA PNGs, greyscale, CMYK and 16-bit images;
every one of them is converted to 8-bit RGB here so the model always sees the same kind of input.
The `select` stage's checks live here too (does each catalogue row's image exist and decode completely?),
so "usable" means exactly "load_rgb will succeed".
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing
import multiprocessing.context
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from galmorph.config import CLASSES, SelectConfig
from galmorph.errors import UserError


def load_rgb(src: str | os.PathLike | bytes) -> Image.Image:
    """Decode an image (path or bytes) to 8-bit RGB; raises OSError/ValueError for non-images."""
    fh = io.BytesIO(src) if isinstance(src, bytes | bytearray) else Path(src).open("rb")  # noqa: SIM115
    with fh, Image.open(fh) as im:
        im.load()
        im = ImageOps.exif_transpose(im) or im
        return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: alpha composited on black (the sky), 16-bit rescaled to 8-bit."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = np.nanmin(arr), np.nanmax(arr)
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        im = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("RGB") if im.mode != "RGB" else im


# ------------------------------------------------------------------------------------------ verification

#: Why `select` drops a row. Kept rows have no reason.
DROP_REASONS: tuple[str, ...] = (
    "missing",  # no file at image_path (or its folder is missing, or a broken symlink)
    "unreadable",  # a directory, or permission denied
    "zero_bytes",
    "not_an_image",  # e.g. an HTML error page or a text file saved as .jpg
    "truncated",  # the data stops early: an interrupted download, or a zero-filled tail
    "corrupt",  # a decode error inside the data, or an image signature with an unreadable header
    "too_large",  # over PIL's decompression-bomb limit
    "unsupported_mode",  # decodes, but to_rgb cannot convert its pixel mode
)
VERIFY_MODES: tuple[str, ...] = ("exists", "decode")

#: Leading bytes of formats PIL reads: a file that starts like an image but does not open is corrupt,
#: anything else that does not open is not an image at all.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"RIFF", "WEBP"),
    (b"SIMPLE  =", "FITS"),
)

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


def _signature(data: bytes) -> str | None:
    for magic, name in _SIGNATURES:
        if data.startswith(magic) and (name != "WEBP" or data[8:12] == b"WEBP"):
            return name
    return None


def _jpeg_cut_short(fh: io.BufferedIOBase, size: int, tail_bytes: int = 1 << 16) -> bool:
    """True when an end-of-image marker does not follow the last start-of-scan marker. libjpeg only warns
    when the scan runs into zeros instead (a file pre-allocated and never completely written), and PIL then
    returns a half-grey image without an error. Reads the file's tail only, unless the marker is not there."""
    fh.seek(max(0, size - tail_bytes))
    data = fh.read()
    eoi = data.rfind(b"\xff\xd9")
    if eoi < 0 and size > tail_bytes:  # a long trailer after the image: look at all of it
        fh.seek(0)
        data = fh.read()
        eoi = data.rfind(b"\xff\xd9")
    return eoi < 0 or data.find(b"\xff\xda", eoi) >= 0


def check_image_file(path: str | os.PathLike) -> CheckResult:
    """Decode one file completely, the way load_rgb will, and say why it is unusable (reason None: usable).

    PIL reads a file's header lazily, so only `load()` proves the pixels are all there; PIL's
    ImageFile.LOAD_TRUNCATED_IMAGES must stay False for truncation to raise. The original mode is returned
    so select can count how many images load_rgb will convert. PIL reads the open file itself: decoding
    from an in-memory copy (BytesIO) measured 15-20% slower.
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    except FileNotFoundError:
        return "missing", "no such file", None, None, None
    except OSError as exc:
        return "unreadable", exc.strerror or type(exc).__name__, None, None, None
    with fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return "zero_bytes", "empty file", None, None, None
            with Image.open(fh) as im:
                mode, (width, height) = im.mode, im.size
                im.load()
                if im.format == "JPEG" and _jpeg_cut_short(fh, size):
                    return "truncated", "no end-of-image marker after the scan data", None, None, None
                ImageOps.exif_transpose(im, in_place=True)  # as load_rgb does; a broken EXIF block is corrupt
                try:
                    to_rgb(im)
                except (ValueError, OSError) as exc:
                    return "unsupported_mode", f"{mode}: {exc}", width, height, mode
        except Image.DecompressionBombError as exc:
            return "too_large", str(exc), None, None, None
        except UnidentifiedImageError:
            fh.seek(0)
            head = fh.read(16)
            fmt = _signature(head)
            if fmt is not None:
                return "corrupt", f"starts like a {fmt} but its header cannot be read", None, None, None
            return "not_an_image", f"not an image format PIL reads (starts with {head[:8]!r})", None, None, None
        except OSError as exc:
            if exc.errno is not None:  # the file system, not the decoder (EIO, EISDIR...)
                return "unreadable", exc.strerror or type(exc).__name__, None, None, None
            reason = "truncated" if "truncated" in str(exc) else "corrupt"
            return reason, str(exc), None, None, None
        except Exception as exc:  # PIL's plugins also raise SyntaxError, ValueError, struct.error, EOFError...
            return "corrupt", f"{type(exc).__name__}: {exc}", None, None, None
    return None, None, width, height, mode


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


# ------------------------------------------------------------------------------------------------ select

REQUIRED_COLUMNS: tuple[str, ...] = ("galaxy_id", "image_path", "label")
IMAGE_COLUMNS: tuple[str, ...] = ("width", "height", "mode")


@dataclasses.dataclass
class SelectResult:
    manifest: pd.DataFrame  # the catalogue's kept rows, every column, plus width, height, mode
    dropped: pd.DataFrame  # galaxy_id, image_path, reason, detail of every dropped row
    report: dict[str, Any]


def read_catalogue(path: str | os.PathLike) -> pd.DataFrame:
    """join's output table, with the columns select needs checked up front."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: not found (run `galmorph join` first)")
    try:
        df = pd.read_parquet(p)
    except (OSError, ValueError) as exc:
        raise UserError(f"{p}: not a readable parquet table ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{p}: missing column(s) {', '.join(missing)} (expected the join stage's catalogue)")
    return df


def _main_folder(paths: pd.Series) -> str:
    """The folder most of `paths` live in, to name in an error message."""
    folders = paths.dropna().astype(str).map(lambda p: os.path.dirname(p) or os.curdir)
    return str(folders.mode().iloc[0]) if len(folders) else "(no image_path values)"


def _nothing_kept(catalogue: pd.DataFrame, checks: pd.DataFrame) -> UserError:
    n = len(catalogue)
    absent = checks["reason"].isin(["missing"]).sum()
    if absent == n:
        where = _main_folder(catalogue["image_path"])
        return UserError(f"no image found under {where}: 0 of {n} rows have a file (check the fetch stage's images)")
    counts = checks["reason"].value_counts()
    first = checks.index[checks["reason"] != "missing"][0]
    example = f"{catalogue['image_path'].iloc[first]}: {checks['detail'].iloc[first]}"
    summary = ", ".join(f"{reason} {count}" for reason, count in counts.items())
    return UserError(f"none of the {n} rows has a usable image ({summary}); e.g. {example}")


def select_catalogue(
    catalogue: pd.DataFrame,
    cfg: SelectConfig,
    *,
    root: str | os.PathLike | None = None,
    progress: bool = True,
) -> SelectResult:
    """Keep the rows whose image exists (and, with cfg.verify == "decode", decodes completely).

    Images are never copied: the manifest points at the same files. RGBA, greyscale, CMYK and 16-bit images
    are kept (load_rgb converts them when they are used) and counted per original mode. A UserError says why
    when no row is left.
    """
    if catalogue.empty:
        raise UserError("the catalogue has no rows (nothing for select to check)")
    if cfg.class_folders:
        check_class_folders(cfg.class_folders)  # before the long decode, not after it
    checks = check_images(catalogue["image_path"].tolist(), cfg.verify, cfg.workers, root=root, progress=progress)
    keep = checks["reason"].isna().to_numpy()
    if not keep.any():
        raise _nothing_kept(catalogue.reset_index(drop=True), checks)
    manifest = catalogue.drop(columns=[c for c in IMAGE_COLUMNS if c in catalogue.columns]).reset_index(drop=True)
    manifest = pd.concat([manifest, checks[list(IMAGE_COLUMNS)]], axis=1)[keep].reset_index(drop=True)
    dropped = pd.DataFrame(
        {
            "galaxy_id": catalogue["galaxy_id"].to_numpy()[~keep],
            "image_path": catalogue["image_path"].to_numpy()[~keep],
            "reason": checks["reason"].to_numpy()[~keep],
            "detail": checks["detail"].to_numpy()[~keep],
        }
    )
    labels = catalogue["label"].astype(str).to_numpy()
    modes = manifest["mode"].dropna()
    report: dict[str, Any] = {
        "verify": cfg.verify,
        "rows_in": len(catalogue),
        "kept": int(keep.sum()),
        "dropped": int((~keep).sum()),
        "dropped_by_reason": {r: int((dropped["reason"] == r).sum()) for r in DROP_REASONS},
        "classes": {c: int((labels[keep] == c).sum()) for c in CLASSES},
        "dropped_by_class": {c: int((labels[~keep] == c).sum()) for c in CLASSES},
        "modes": {str(m): int(k) for m, k in modes.value_counts().sort_index().items()},
        "converted": int((modes != "RGB").sum()),
        "converted_by_mode": {str(m): int(k) for m, k in modes[modes != "RGB"].value_counts().sort_index().items()},
    }
    return SelectResult(manifest=manifest, dropped=dropped, report=report)


# ------------------------------------------------------------------------------------------ class folders

#: Subfolder of each class in the ImageFolder layout (torchvision's, and the seed notebook's).
CLASS_FOLDER_NAMES: dict[str, str] = {c: f"{c}s" for c in CLASSES}


def check_class_folders(dest: str | os.PathLike) -> None:
    """Only a folder build_class_folders made (class subfolders of symlinks) may be replaced: a typo in
    select.class_folders must not delete someone's data."""
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise UserError(f"select.class_folders: {dest} exists and is not a folder; choose another path")
    if not dest.exists():
        return
    allowed = set(CLASS_FOLDER_NAMES.values())
    with os.scandir(dest) as top:
        for entry in top:
            ok = entry.name in allowed and entry.is_dir(follow_symlinks=False)
            if ok:
                with os.scandir(entry.path) as inner:
                    bad = next((e.name for e in inner if not e.is_symlink()), None)
                ok = bad is None
                name = f"{entry.name}/{bad}"
            else:
                name = entry.name
            if not ok:
                raise UserError(
                    f"select.class_folders: {dest} holds {name}, which this stage did not make; "
                    "choose a new folder or empty it"
                )


def build_class_folders(
    manifest: pd.DataFrame, dest: str | os.PathLike, *, root: str | os.PathLike | None = None
) -> dict[str, int]:
    """`dest/spirals/` and `dest/ellipticals/` of symlinks to the manifest's images; returns links per class.

    Built in a temporary folder beside `dest` and renamed into place, so a reader never sees half a tree.
    Links are relative when the image path is (the repo can move), absolute otherwise; a name that two
    images share gets a `-2`, `-3`... suffix in the order of the manifest.
    """
    dest = Path(dest)
    base = Path(root) if root is not None else Path.cwd()
    check_class_folders(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the tree from everyone else on a shared machine
    counts: dict[str, int] = {}
    try:
        for cls, folder_name in CLASS_FOLDER_NAMES.items():
            folder = tmp / folder_name
            folder.mkdir()
            used: set[str] = set()
            paths = manifest.loc[manifest["label"] == cls, "image_path"].astype(str)
            for path in paths:
                target = base / path
                stem, suffix = os.path.splitext(os.path.basename(path))
                name, k = stem + suffix, 1
                while name in used:
                    k += 1
                    name = f"{stem}-{k}{suffix}"
                used.add(name)
                final_dir = dest / folder_name
                link = target if os.path.isabs(path) else os.path.relpath(target, final_dir.absolute())
                os.symlink(link, folder / name)
            counts[cls] = len(paths)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old)
        else:
            os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return counts
