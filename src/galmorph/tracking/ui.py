"""The MLflow UI on the project's store: `mlflow server` with the store's own artifact folder.

The server runs as a child of galmorph in its own process group. A stop signal to galmorph (Ctrl-C, the
SIGTERM of `kill` or a process manager, SIGHUP when the terminal goes) is forwarded to it and galmorph waits
until the server and every process it started (uvicorn, MLflow's job runner) have gone, so the port is free
when galmorph exits; on Linux the server is also told to stop if galmorph itself is killed outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from urllib.parse import urlparse

from galmorph.config import MlflowConfig
from galmorph.errors import UserError
from galmorph.tracking import store

STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
"""What a person, `kill`, systemd, docker or a closing terminal sends to stop galmorph."""
GRACE_S = 20.0
"""How long a stopping server may take before its process group is killed."""


def ui_command(cfg: MlflowConfig, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow server` command line that shows the project's store (artifacts served from mlruns/)."""
    uri = store.tracking_uri(cfg)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    root = store.artifact_root(uri)
    if root:
        cmd += ["--artifacts-destination", root]
    return cmd + ["--workers", "1"]


def is_server(uri: str) -> bool:
    """Whether the runs live on a tracking server, which already serves its own UI."""
    return urlparse(uri).scheme in ("http", "https")


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: a function for the child to run before exec, so that it gets SIGTERM when the galmorph that
    started it dies, even by SIGKILL (prctl PR_SET_PDEATHSIG); None elsewhere."""
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGTERM), 0, 0, 0)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed user: it exists
        return True
    return True


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def stop_process_group(proc: subprocess.Popen, grace_s: float = GRACE_S, signum: int = signal.SIGTERM) -> None:
    """Stop `proc` (the leader of its own process group) and everything in that group: `signum` to the leader,
    then to the rest of the group once the leader has gone, SIGKILL for whatever is left after `grace_s`."""
    pgid = proc.pid
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
    deadline = time.monotonic() + grace_s
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _signal_group(pgid, signal.SIGKILL)
        proc.wait()
    if _group_alive(pgid):  # workers the leader left behind (uvicorn, job runners)
        _signal_group(pgid, signal.SIGTERM)
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
            end = time.monotonic() + 5.0  # zombies nobody reaps still count; do not wait for them forever
            while _group_alive(pgid) and time.monotonic() < end:
                time.sleep(0.1)


def run_foreground(
    cmd: Sequence[str], grace_s: float = GRACE_S, env: Mapping[str, str] | None = None
) -> tuple[int, int | None]:
    """Run a server until it exits or galmorph is asked to stop; returns (its exit status, the stop signal
    galmorph received or None).

    The server gets its own process group, so a stop signal reaches it once, from here; galmorph forwards
    it, waits for the server and then for the rest of its group (SIGKILL after `grace_s`)."""
    proc: subprocess.Popen | None = None
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    previous: dict[int, object] = {}
    try:
        for s in STOP_SIGNALS:
            previous[s] = signal.signal(s, forward)
    except ValueError:  # not the main thread: signals are not ours to handle
        pass
    gave_up = False
    try:
        if received:  # asked to stop before the server started
            return 0, received[0]
        proc = subprocess.Popen(list(cmd), process_group=0, preexec_fn=_parent_death_signal(), env=env)
        deadline: float | None = None
        while True:
            try:
                proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if received and deadline is None:
                    deadline = time.monotonic() + grace_s
                if deadline is not None and time.monotonic() > deadline:
                    gave_up = True  # the server ignored the stop signal for grace_s: killed below
                    break
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        if proc is not None:  # also when the server ended on its own but left workers behind
            stop_process_group(proc, 0.0 if gave_up else grace_s, received[0] if received else signal.SIGTERM)
    return proc.returncode, (received[0] if received else None)


def serve(cfg: MlflowConfig, host: str = "127.0.0.1", port: int = 5000) -> int | None:
    """Run the UI in the foreground until it is stopped; returns the stop signal galmorph received (None
    when the server ended on its own, which is an error unless it exited 0)."""
    uri = store.tracking_uri(cfg)
    if uri.startswith("sqlite:") and (db := store.sqlite_path(uri)) is not None:
        (db.parent / "artifacts").mkdir(parents=True, exist_ok=True)
    rc, stopped_by = run_foreground(ui_command(cfg, host, port))
    if stopped_by is None and rc != 0:
        raise UserError(f"mlflow server exited with status {rc} (see its messages above)")
    return stopped_by
