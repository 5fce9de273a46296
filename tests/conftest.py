"""Shared fixtures: tiny data, an isolated MLflow store, the path of the real Galaxy Zoo folder, and
processes that are always stopped (`spawn`), with a check at the end that no process outlives the suite."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import psutil
import pytest

from galmorph.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
SHARED_GALAXYZOO = REPO.parent / "shared" / "galaxyzoo"


def benchmark_module(name: str) -> ModuleType:
    """benchmarks/<name>.py imported as a module (the folder is scripts, not a package), for its tests."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look their module up here
    spec.loader.exec_module(module)
    return module


#: Markers whose tests may skip on a developer's machine (no PostgreSQL, chromium, Java or ../shared) but
#: must run where .ci/run could install what they need (it sets GALMORPH_STRICT_SKIPS=1 when it ran
#: .ci/system-deps as root): there a skip is a failure, not a green run.
REQUIRED_WHEN_STRICT = ("realdata", "postgres", "browser", "spark")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    strict = os.environ.get("GALMORPH_STRICT_SKIPS") == "1"
    if report.skipped and strict and any(item.get_closest_marker(m) for m in REQUIRED_WHEN_STRICT):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped although GALMORPH_STRICT_SKIPS=1 (CI installed its dependencies): {reason}"


def pytest_collection_modifyitems(config, items):
    """The `slow` end-to-end tests first: `make test` spreads test files over pytest-xdist workers in this
    order, and the minutes-long pipeline test started last would run alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: files keep their order


#: Set in the environment of the test session, so every process a test starts carries it, even one that left
#: its process group or was orphaned: what the check at the end of the session looks for.
SESSION_MARKER = "GALMORPH_TEST_SESSION"
#: Processes the interpreter itself keeps until it exits (multiprocessing's forkserver and resource tracker).
INTERPRETER_HELPERS = (
    "from multiprocessing.forkserver import main",
    "from multiprocessing.resource_tracker import main",
)
LEFTOVER_GRACE_S = 15.0


def pytest_configure(config):
    # .ci/run sets its own, to check again after pytest has gone
    os.environ.setdefault(SESSION_MARKER, f"{os.getpid()}-{uuid.uuid4().hex[:12]}")
    # the dvc commands the tests run start no detached analytics daemon (nor phone home)
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def _leftover_processes() -> list[psutil.Process]:
    """The live processes started by this session's tests (not pytest, not what started pytest, no zombies)."""
    token, me = os.environ.get(SESSION_MARKER), os.getpid()
    ours = {me, *(p.pid for p in psutil.Process(me).parents())}
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid in ours or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(SESSION_MARKER) != token:
                continue
            cmdline = " ".join(proc.cmdline())
            if proc.ppid() == me and any(h in cmdline for h in INTERPRETER_HELPERS):
                continue
        except psutil.Error:  # gone meanwhile, or another user's
            continue
        found.append(proc)
    return found


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """CI's check that tests clean up: a process a test started that is still alive when the suite ends (after
    LEFTOVER_GRACE_S for those that are stopping) fails the run, and is stopped here."""
    if not os.environ.get(SESSION_MARKER) or hasattr(session.config, "workerinput"):
        return  # under pytest-xdist the controller checks, once every worker (each a marked process) is done
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (left := _leftover_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if not left:
        return
    lines = []
    for proc in left:
        try:
            lines.append(f"  pid {proc.pid}: {' '.join(proc.cmdline())[:300]}")
        except psutil.Error:
            continue
    _terminate(left)
    print(
        f"\n{len(left)} process(es) started by the tests outlived the suite (stopped now; a test must stop what it "
        "starts, e.g. with the `spawn` fixture):\n" + "\n".join(lines),
        file=sys.stderr,
    )
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """`spawn(cmd, **popen_kwargs)` starts a process in its own process group; when the test ends, passed or
    failed, each one is stopped with everything it started (SIGTERM, then SIGKILL after 20 s)."""
    started: list[subprocess.Popen] = []

    def start(cmd: Sequence[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(list(cmd), process_group=0, **kwargs)
        started.append(proc)
        return proc

    yield start
    from galmorph.tracking.ui import stop_process_group  # here: conftest is imported by every test run

    for proc in reversed(started):
        try:  # descendants that left the group (a session of their own) are found by the tree
            descendants = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        stop_process_group(proc, grace_s=20.0)
        _terminate(descendants)
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()


def _terminate(procs: list[psutil.Process], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL for those still alive after `timeout`."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


@pytest.fixture
def params() -> Params:
    """The repository's params.yaml, validated."""
    return load_params(REPO / "params.yaml")


@pytest.fixture
def real_galaxyzoo() -> Path:
    """../shared/galaxyzoo (real SDSS images); tests that need it skip when it is absent."""
    if not (SHARED_GALAXYZOO / "labels.csv").is_file():
        pytest.skip("../shared/galaxyzoo is not here")
    return SHARED_GALAXYZOO


@pytest.fixture(scope="session")
def _mlflow_empty_db(tmp_path_factory) -> Path:
    """A migrated, empty MLflow SQLite database, built once per session: a new one costs ~7 s of
    migrations, a copy ~0.1 s. Built inside its own folder so the Default experiment's artifacts
    would land there, never in the repo's mlruns/."""
    import contextlib

    import mlflow

    folder = tmp_path_factory.mktemp("mlflow-template")
    db = folder / "mlflow.db"
    with contextlib.chdir(folder):
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch, _mlflow_empty_db) -> str:
    """An isolated SQLite MLflow store per test, so tests never write to the repo's mlruns/."""
    import shutil

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    shutil.copyfile(_mlflow_empty_db, tmp_path / "mlruns" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, _mlflow_empty_db):
    """A randomly initialised resnet18 logged once per session as the galmorph pyfunc, in its own store.

    Serving tests register its artifact folder (`.source`, a file URI) as a version in their own store,
    which is cheap, instead of logging a model each. See tests/serving_utils.py.
    """
    import shutil

    from tests.serving_utils import log_tiny_model_once

    root = tmp_path_factory.mktemp("tiny-model")
    (root / "mlruns").mkdir()
    shutil.copyfile(_mlflow_empty_db, root / "mlruns" / "mlflow.db")
    return log_tiny_model_once(root)


#: Debian's chromium, driven headless by Playwright (which never downloads a browser): the browser tests' one setup.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    if not shutil.which("chromium") and not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (.ci/system-deps installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
