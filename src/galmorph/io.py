"""Stage files: every stage writes to a temporary file beside the target, then renames it, so a killed stage
never leaves a half-written output that a later stage would trust (and, with the file and its folder synced,
neither does a power cut); reads an upstream stage's table with its columns checked; hashes files; encodes a
figure as a 256-colour PNG; and checks a server's port before it starts."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from galmorph.errors import UserError

try:
    import fcntl
except ImportError:  # not on POSIX: no sweeping (nothing tells a live writer's temporary file from a leftover)
    fcntl = None  # type: ignore[assignment]

SWEEP_AFTER_S = 60.0
"""A temporary file of atomic_path is a killed write's leftover when no process holds its lock and it is at
least this old (the age covers the instant between a writer creating its file and locking it)."""
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to the disk; a file system that cannot is skipped."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def sweep_temporary(target: str | os.PathLike) -> list[Path]:
    """Remove what killed writes of `target` left beside it (`.<name>.*.tmp`); returns the paths removed.

    A writer holds an flock on its temporary file until the rename, and the kernel drops it when the process
    dies, so a file nobody holds (and older than SWEEP_AFTER_S) is a leftover; a concurrent live write is kept.
    """
    target = Path(target)
    if fcntl is None:
        return []
    prefix, now, removed = f".{target.name}.", time.time(), []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return []
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or now - entry.stat().st_mtime < SWEEP_AFTER_S:
                continue
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live writer holds it
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces `target` atomically.

    The temporary file (`.<name>.<random>.tmp`, ignored by DVC) is synced to the disk before the rename and
    the folder after it, so after a crash `target` is the old file or the whole new one. Leftovers of earlier
    writes of `target` that were killed are swept first (sweep_temporary). `durable=False` is for a cache
    whose reader checks each file (the cut-outs): no syncs (8 ms a file) and no sweep (a scan of a folder of
    thousands per file); a killed write still leaves no partial `target`, a power cut may.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if durable:
        sweep_temporary(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp_path = Path(tmp)
    if fcntl is not None:
        # held until the rename: marks the file as a live write's (where locks fail, the sweep's fails too)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
    else:
        os.close(fd)  # elsewhere an open file cannot be renamed
        fd = -1
    try:
        yield tmp_path
        # mkstemp creates 0600; give the output the permissions a plain open() would (0666 minus umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        if durable:
            _fsync(tmp_path)  # the path, not `fd`: a writer may have replaced the file it names
        os.replace(tmp_path, target)
        if durable:
            _fsync(target.parent)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp_path.exists():
            tmp_path.unlink()


def md5_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> hashlib._Hash:
    """The running md5 of a file's bytes (a resumed download continues hashing from it)."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest


def file_md5(path: str | os.PathLike) -> str:
    """md5 hex digest of a file: the hash DVC 3 records in dvc.lock (`hash: md5`) and source.json keeps."""
    return md5_digest(path).hexdigest()


def write_json(target: str | os.PathLike, obj: Any) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_parquet(target: str | os.PathLike, df: pd.DataFrame) -> None:
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)


def write_csv(target: str | os.PathLike, df: pd.DataFrame) -> None:
    with atomic_path(target) as tmp:
        df.to_csv(tmp, index=False)


def palette_png(fig: Any, dpi: int, **savefig: Any) -> bytes:
    """A matplotlib figure as a 256-colour PNG: about a third of the RGBA bytes, for the plots and image grids kept
    in git and inlined in pages. No metadata is written, so the same plot gives the same bytes."""
    from PIL import Image  # here: the base layer's other helpers need no imaging library

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **savefig)
    out = io.BytesIO()
    with Image.open(buf) as im:
        im.convert("RGB").quantize(256).save(out, format="PNG", optimize=True)
    return out.getvalue()


def read_stage_table(path: str | os.PathLike, required_columns: Sequence[str], produced_by: str) -> pd.DataFrame:
    """An upstream stage's parquet output with the columns the reader needs checked up front: a missing,
    unreadable or foreign file is one line naming the stage (`produced_by`) that writes it."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: not found (run `galmorph {produced_by}` first)")
    try:
        df = pd.read_parquet(p)
    except (OSError, ValueError) as exc:
        raise UserError(f"{p}: not a readable parquet table ({exc})") from None
    missing = [c for c in required_columns if c not in df.columns]
    if missing:
        raise UserError(f"{p}: missing column(s) {', '.join(missing)} (expected the {produced_by} stage's output)")
    return df


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths show up in reports; everything else is a bug worth seeing
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def check_port(host: str, port: int) -> None:
    """Refuse a busy port up front, before a server spends seconds starting (or exits on its own terms)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        if os.name == "posix":  # as servers bind: a stopped server's connections in TIME_WAIT are no obstacle
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port") from None
