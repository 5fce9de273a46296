"""`galmorph ui`: the MLflow UI on the project's store."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from galmorph.commands import ui as commands_ui
from galmorph.config import MlflowConfig
from galmorph.errors import UserError
from galmorph.tracking import ui
from tests.http_utils import free_port

REPO = Path(__file__).resolve().parents[1]


def _cfg(tracking_uri: str | None = None, experiment: str = "galmorph-test") -> MlflowConfig:
    return MlflowConfig(experiment=experiment, tracking_uri=tracking_uri, registered_model="galmorph-test")


def test_ui_help_and_command(monkeypatch, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "galmorph.cli", "ui", "--help"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    assert "--port" in out and "--host" in out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    cmd = ui.ui_command(_cfg(), "127.0.0.1", 5123)
    assert cmd[1:4] == ["-m", "mlflow", "server"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow.db"
    assert cmd[cmd.index("--artifacts-destination") + 1] == (tmp_path / "artifacts").as_uri()
    assert cmd[cmd.index("--port") + 1] == "5123"


def _ui(params, host: str = "127.0.0.1", port: int = 5000) -> None:
    commands_ui.main(params, argparse.Namespace(host=host, port=port))


def test_ui_port_in_use_is_a_user_error(monkeypatch, tmp_path, params):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"127.0.0.1:{port}"):
            _ui(params, "127.0.0.1", port)


def test_ui_for_a_tracking_server_starts_nothing(monkeypatch, capsys, params):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team:5000")
    monkeypatch.setattr(ui, "run_foreground", lambda cmd: pytest.fail(f"started {cmd}"))
    _ui(params)
    assert "http://mlflow.team:5000" in capsys.readouterr().err


def test_ui_runs_mlflow_server_on_the_store(monkeypatch, tmp_path, capsys, params):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    started = []
    # stopped by Ctrl-C: a normal stop, whatever the server's own status
    monkeypatch.setattr(ui, "run_foreground", lambda cmd: started.append(cmd) or (-2, signal.SIGINT))
    _ui(params, "127.0.0.1", free_port())
    assert started[0][1:4] == ["-m", "mlflow", "server"]
    assert (tmp_path / "artifacts").is_dir()
    err = capsys.readouterr().err
    assert f"for sqlite:///{tmp_path}/mlflow.db" in err and "stopped (SIGINT)" in err
    monkeypatch.setattr(ui, "run_foreground", lambda cmd: (1, None))  # it ended on its own: an error
    with pytest.raises(UserError, match="exited with status 1"):
        _ui(params, "127.0.0.1", free_port())


#: A server like `mlflow server`: a leader that starts a worker holding the port, and that dies at once on
#: SIGTERM or SIGHUP without stopping it (the worst case: the worker is orphaned). It prints the worker's pid.
FAKE_SERVER = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", (
    "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); "
    "print('listening', flush=True); time.sleep(600)"), sys.argv[1]], stdout=subprocess.PIPE, text=True)
assert worker.stdout.readline().strip() == "listening"
print(worker.pid, flush=True)
time.sleep(600)
"""
#: galmorph's way of running a server, as `galmorph ui` runs mlflow's.
RUN_FAKE = (
    "import sys; from galmorph.tracking.ui import run_foreground; "
    "rc, sig = run_foreground([sys.executable, '-c', sys.argv[1], sys.argv[2]], grace_s=10); "
    "print('stopped by', int(sig), flush=True)"
)


def _port_is_free(port: int) -> bool:
    """Whether a new server can listen there (as servers do, with SO_REUSEADDR: the connections our own
    requests left in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stopped_galmorph_stops_the_server_it_started_and_its_workers(spawn, tmp_path, signum):
    """A stop signal to galmorph alone (as `kill`, a process manager or a closing terminal sends it) reaches
    the server and the workers it started: galmorph waits for them, and the port is free when it exits."""
    port = free_port()
    log = tmp_path / "out.log"  # a file, not a pipe: a leftover server would hold a pipe open forever
    with log.open("w") as out:
        proc = spawn([sys.executable, "-c", RUN_FAKE, FAKE_SERVER, str(port)], stdout=out)
    deadline = time.monotonic() + 30
    while not log.read_text().endswith("\n") and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.05)
    worker = psutil.Process(int(log.read_text().split()[0]))
    assert not _port_is_free(port)
    proc.send_signal(signum)  # to galmorph only, not its process group
    assert proc.wait(timeout=30) == 0
    assert f"stopped by {int(signum)}" in log.read_text()
    assert not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE
    assert _port_is_free(port)


def _wait_for_health(proc: subprocess.Popen, port: int, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                assert resp.read() == b"OK"
                return
        except OSError:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.5)
    pytest.fail(f"the MLflow UI did not answer within {timeout_s:.0f} s")


@pytest.mark.slow
def test_ui_serves_the_store_and_sigterm_frees_its_port(spawn, mlflow_uri, tmp_path):
    """`galmorph ui` really starts a server on the store; SIGTERM to galmorph (as `kill` or a process manager
    sends it) stops mlflow server and its uvicorn worker too, and the port is free when galmorph exits."""
    port = free_port()
    log = tmp_path / "ui.log"  # a file, not a pipe: a leftover server would hold a pipe open forever
    with log.open("w") as out:
        proc = spawn(
            [sys.executable, "-m", "galmorph.cli", "--params", str(REPO / "params.yaml"), "ui", "--port", str(port)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _wait_for_health(proc, port, log)
    servers = psutil.Process(proc.pid).children(recursive=True)
    assert any("uvicorn" in " ".join(p.cmdline()) for p in servers), [p.cmdline() for p in servers]
    proc.terminate()  # galmorph alone, not its process group
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert "MLflow UI stopped (SIGTERM)" in log.read_text()
    _gone, alive = psutil.wait_procs(servers, timeout=2)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline() for p in alive]
    assert _port_is_free(port)
