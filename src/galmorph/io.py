"""Stage files: every stage writes to a temporary file beside the target, then renames it, so a killed stage
never leaves a half-written output that a later stage would trust; reads an upstream stage's table with its
columns checked; hashes files; and checks a server's port before it starts."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from galmorph.errors import UserError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces `target` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the output the permissions a plain open() would (0666 minus umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
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
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}); pass another --port") from None
