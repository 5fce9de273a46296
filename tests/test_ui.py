"""`galmorph ui`: the MLflow UI on the project's store."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from galmorph.commands import ui as commands_ui
from galmorph.config import MlflowConfig
from galmorph.errors import UserError
from galmorph.tracking import ui

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
    monkeypatch.setattr(ui.subprocess, "call", lambda cmd: pytest.fail(f"started {cmd}"))
    _ui(params)
    assert "http://mlflow.team:5000" in capsys.readouterr().err


def test_ui_runs_mlflow_server_on_the_store(monkeypatch, tmp_path, capsys, params):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    started = []
    monkeypatch.setattr(ui.subprocess, "call", lambda cmd: started.append(cmd) or 130)  # Ctrl-C: a normal stop
    _ui(params, "127.0.0.1", _free_port())
    assert started[0][1:4] == ["-m", "mlflow", "server"]
    assert (tmp_path / "artifacts").is_dir()
    assert f"for sqlite:///{tmp_path}/mlflow.db" in capsys.readouterr().err
    monkeypatch.setattr(ui.subprocess, "call", lambda cmd: 1)
    with pytest.raises(UserError, match="exited with status 1"):
        _ui(params, "127.0.0.1", _free_port())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ui_serves_the_store(mlflow_uri, tmp_path):
    """`galmorph ui` really starts a server on the store; stopped right after its /health answers."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "galmorph.cli", "--params", str(REPO / "params.yaml"), "ui", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    assert resp.read() == b"OK"
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.5)
        else:
            pytest.fail("the MLflow UI did not answer within 120 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
