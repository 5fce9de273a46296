"""A throwaway PostgreSQL cluster and an MLflow tracking server on it (tests/test_tune_postgres.py and
benchmarks/bench_tune.py): the real services many tuning workers share, started and stopped here."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.http_utils import free_port

USER = "galmorph"


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb (Debian keeps it off PATH), or PATH's."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing_requirements() -> str | None:
    """Why the PostgreSQL checks cannot run here, or None."""
    if postgres_bin() is None:
        return "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    if os.getuid() == 0 and (shutil.which("runuser") is None or not _user_exists("postgres")):
        return "running as root, and initdb refuses root: needs runuser and the postgres user"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install 'galmorph[postgres]')"
    return None


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def postgres_cluster(databases: Sequence[str]) -> Iterator[str]:
    """initdb + pg_ctl start on 127.0.0.1 and a free port, in a fresh temporary folder; yields the base URL
    (append /<database>). As root, the server runs as the `postgres` user, since initdb refuses root."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("no PostgreSQL binaries")
    root = Path(tempfile.mkdtemp(prefix="galmorph-pg-"))  # /tmp, which the postgres user can reach
    as_server: list[str] = []
    if os.getuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_server = ["runuser", "-u", "postgres", "--"]
    data, log = root / "data", root / "server.log"
    port = free_port()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    try:
        _run(
            [*as_server, str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"]
        )
        _run(
            [
                *as_server,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                "120",
                "start",
            ]
        )
        for name in databases:
            _run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", USER, name])
        yield f"postgresql://{USER}@127.0.0.1:{port}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*as_server, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)


def _run(cmd: Sequence[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, timeout_s: float = 240.0) -> Iterator[str]:
    """`mlflow server` on a free port with this backend store, artifacts proxied into `artifacts`; yields its
    URL once /health answers, and stops the server and everything it started (its process group) afterwards."""
    port = free_port()
    artifacts.mkdir(parents=True, exist_ok=True)
    log_path = artifacts.parent / f"mlflow-server-{port}.log"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_uri,
        "--artifacts-destination", artifacts.as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not up after {timeout_s:.0f} s: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        from galmorph.tracking.ui import stop_process_group  # imports mlflow: only when a server was started

        stop_process_group(proc, grace_s=30.0)  # the server, then its uvicorn, job runner and huey workers
