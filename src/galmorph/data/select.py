"""The `select` stage's work: keep the catalogue rows whose image is usable (verify.py), report why the
others were dropped, and optionally lay the kept images out as an ImageFolder tree of symlinks."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from galmorph.config import CLASSES, SelectConfig
from galmorph.data.verify import DROP_REASONS, absolute_paths, check_images
from galmorph.errors import UserError
from galmorph.io import file_md5
from galmorph.paths import resolve_path

REQUIRED_COLUMNS: tuple[str, ...] = ("galaxy_id", "image_path", "label")
IMAGE_COLUMNS: tuple[str, ...] = ("width", "height", "mode")
#: Why select drops a row whose image is usable: its file holds the same bytes as another kept row's.
SAME_IMAGE, SAME_IMAGE_CONFLICT = "same_image", "same_image_other_label"
SELECT_REASONS: tuple[str, ...] = (*DROP_REASONS, SAME_IMAGE, SAME_IMAGE_CONFLICT)


@dataclasses.dataclass
class SelectResult:
    manifest: pd.DataFrame  # the catalogue's kept rows, every column, plus width, height, mode
    dropped: pd.DataFrame  # galaxy_id, image_path, reason, detail of every dropped row
    report: dict[str, Any]


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
    if cfg.same_content and keep.any():
        paths = absolute_paths(catalogue["image_path"].tolist(), root)
        for row, (reason, detail) in same_content(catalogue, paths, keep, progress).items():
            checks.loc[row, ["reason", "detail"]] = [reason, detail]
        keep = checks["reason"].isna().to_numpy()
    if not keep.any():  # after the comparison too: copies with two labels can leave nothing
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
        "dropped_by_reason": {r: int((dropped["reason"] == r).sum()) for r in SELECT_REASONS},
        "classes": {c: int((labels[keep] == c).sum()) for c in CLASSES},
        "dropped_by_class": {c: int((labels[~keep] == c).sum()) for c in CLASSES},
        "modes": {str(m): int(k) for m, k in modes.value_counts().sort_index().items()},
        "converted": int((modes != "RGB").sum()),
        "converted_by_mode": {str(m): int(k) for m, k in modes[modes != "RGB"].value_counts().sort_index().items()},
    }
    return SelectResult(manifest=manifest, dropped=dropped, report=report)


def same_content(
    catalogue: pd.DataFrame, paths: list[str | None], keep: np.ndarray, progress: bool
) -> dict[int, tuple[str, str]]:
    """The kept rows to drop because their file has the same bytes (md5) as another kept row's: {row: (reason,
    detail)}. A picture filed twice under two names and two ids (161 GZ2 cut-outs in ../shared/galaxyzoo) is one
    galaxy; as two it could land in train and in test. The first row of each group stays when the labels agree;
    all go when they do not. Reads each kept file once more (from the page cache after a decode check)."""
    drops: dict[int, tuple[str, str]] = {}
    hashes: dict[int, str] = {}
    for i in tqdm(np.flatnonzero(keep), desc="select: same bytes", unit="img", disable=not progress):
        try:
            hashes[int(i)] = file_md5(paths[i])
        except OSError as exc:  # removed or made unreadable since the check a moment ago: dropped, not a traceback
            reason = "missing" if isinstance(exc, FileNotFoundError) else "unreadable"
            drops[int(i)] = (reason, f"{exc.strerror or type(exc).__name__} (while comparing contents)")
    ids, labels = catalogue["galaxy_id"].astype(str).to_numpy(), catalogue["label"].astype(str).to_numpy()
    digests = pd.Series(hashes, dtype=object)
    copies = digests[digests.duplicated(keep=False)]
    for group in copies.groupby(copies).groups.values():
        first, *later = same = [int(i) for i in group]
        if len(set(labels[same])) == 1:
            drops.update({i: (SAME_IMAGE, f"the same file content as galaxy {ids[first]}, kept") for i in later})
        else:
            named = ", ".join(f"{ids[i]} ({labels[i]})" for i in same)
            drops.update({i: (SAME_IMAGE_CONFLICT, f"one file, labels that disagree: {named}") for i in same})
    return drops


#: Subfolder of each class in torchvision's ImageFolder layout, which notebooks and other tools read.
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
                target = resolve_path(path, base)
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
