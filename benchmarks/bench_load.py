"""Load on the two serving surfaces: the REST model (`mlflow models serve`) and the web page under gunicorn.

16 client threads send a mix of good, corrupt, truncated, oversized (a 9000x9000 16-bit PNG) and non-image
uploads to a server on 127.0.0.1 started here with a tiny model, and report requests/s, p50/p99 latency, the
answers by kind and status, and the peak resident memory of the server's whole process tree, each against a
baseline measured on the same server just before: the same load of good images only. Everything runs on
loopback, in bounded loops, and stops by itself.

    .venv/bin/python benchmarks/bench_load.py --clients 16 --requests 200
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import dataclasses
import io
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
REAL_JPEGS = REPO.parent / "shared" / "galaxyzoo" / "images" / "kaggle_gz2"
STARTUP_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def payloads(tmp: Path) -> dict[str, bytes]:
    """One upload of each kind a public endpoint meets."""
    real = sorted(REAL_JPEGS.glob("*.jpg"))[:1]
    if real:
        good = real[0].read_bytes()
    else:
        rng = np.random.default_rng(0)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (424, 424, 3), dtype=np.uint8)).save(buf, "JPEG")
        good = buf.getvalue()
    bomb = io.BytesIO()
    Image.new("I;16", (9000, 9000)).save(bomb, "PNG")  # small on disk, 162 MB of pixels (2 bytes each)
    return {
        "good": good,
        "corrupt": np.random.default_rng(1).bytes(20_000),
        "truncated": good[: len(good) // 2],
        "oversized": bomb.getvalue(),
        "not_image": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n",
    }


def log_tiny_model(tmp: Path) -> Path:
    """A random ResNet-18 at 64 px logged as galmorph's pyfunc; returns its local model folder."""
    import mlflow
    import torch

    from galmorph.config import MlflowConfig, ModelConfig, PreprocessConfig
    from galmorph.models.inference import build_network
    from galmorph.tracking import logged_model, runs

    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    cfg = MlflowConfig(experiment="bench-load", tracking_uri=uri, registered_model="bench")
    model_cfg = ModelConfig(arch="resnet18", weights="none", head="linear", hidden=0, dropout=0.0)
    preprocess = PreprocessConfig(resize=424, crop=256, image_size=64)
    torch.manual_seed(0)
    example = tmp / "example.jpg"
    Image.new("RGB", (64, 64), (40, 40, 60)).save(example)
    with runs.start_run(cfg, "bench", None):
        model_uri = logged_model.log_classifier(
            build_network(model_cfg).eval(), model_cfg, preprocess, input_example=example
        )
    return Path(mlflow.get_logged_model(model_uri.removeprefix("models:/")).artifact_location.removeprefix("file://"))


@contextlib.contextmanager
def server(cmd: list[str], url: str, env: dict[str, str], log: Path) -> Iterator[psutil.Process]:
    """Start a server in its own process group, wait for `url`, and stop the whole group at the end."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        try:
            deadline = time.monotonic() + STARTUP_S
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[2]} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
                with contextlib.suppress(requests.RequestException):
                    if requests.get(url, timeout=2).status_code < 500:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no answer on {url} after {STARTUP_S} s:\n{log.read_text()[-3000:]}")
                time.sleep(1)
            yield psutil.Process(proc.pid)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def tree_rss(root: psutil.Process) -> int:
    total = 0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


@dataclasses.dataclass
class Result:
    seconds: float
    latencies: list[float]
    kinds: collections.Counter
    peak_rss: int
    idle_rss: int


def hammer(send, kinds: list[str], clients: int, per_client: int, proc: psutil.Process) -> Result:
    """`clients` threads, `per_client` requests each, cycling through the payload kinds."""
    latencies: list[float] = []
    counted: collections.Counter = collections.Counter()
    lock = threading.Lock()
    idle = tree_rss(proc)
    peak = [idle]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc))
            time.sleep(0.1)

    def client(k: int) -> None:
        for kind in itertools.islice(itertools.cycle(kinds[k % len(kinds) :] + kinds[: k % len(kinds)]), per_client):
            t0 = time.perf_counter()
            try:
                outcome = send(kind)
            except requests.RequestException as exc:
                outcome = f"client error {type(exc).__name__}"
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                counted[(kind, outcome)] += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    return Result(seconds, latencies, counted, peak[0], idle)


def p99(r: Result) -> float:
    lat = sorted(r.latencies)
    return lat[min(len(lat) - 1, int(0.99 * len(lat)))]


def rate(r: Result) -> float:
    return len(r.latencies) / r.seconds


def report(name: str, baseline: Result, r: Result) -> None:
    """The mixed load against the baseline measured on the same server just before: good images only."""
    print(f"\n### {name}")
    for what, x in (("baseline, good images only", baseline), ("mixed good and hostile uploads", r)):
        print(
            f"- {what}: {len(x.latencies)} requests in {x.seconds:.1f} s, {rate(x):.1f} requests/s, latency p50 "
            f"{statistics.median(x.latencies) * 1000:.0f} ms, p99 {p99(x) * 1000:.0f} ms; server RSS idle "
            f"{x.idle_rss / 2**20:.0f} MiB, peak {x.peak_rss / 2**20:.0f} MiB"
        )
    print(
        f"- mixed / baseline: requests/s {rate(r) / rate(baseline):.2f}x, p99 {p99(r) / p99(baseline):.2f}x, "
        f"peak RSS {r.peak_rss / baseline.peak_rss:.2f}x"
    )
    print("\n| upload | answer | count |\n| --- | --- | ---: |")
    for (kind, outcome), n in sorted(r.kinds.items()):
        print(f"| {kind} | {outcome} | {n} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=200, help="requests per client")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp_name:
        tmp = Path(tmp_name)
        body = payloads(tmp)
        kinds = list(body)
        model_dir = log_tiny_model(tmp)
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
        print(
            f"{args.clients} clients x {args.requests} requests, uploads cycling through {', '.join(kinds)}; "
            f"{args.workers} server workers; {os.cpu_count()} CPUs; model: ResNet-18, 64 px"
        )

        port = free_port()
        rest = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir), "--env-manager", "local"]
        cmd += ["-h", "127.0.0.1", "-p", str(port), "-w", str(args.workers)]
        encoded = {k: base64.b64encode(v).decode("ascii") for k, v in body.items()}

        def send_rest(kind: str) -> str:
            r = requests.post(
                f"{rest}/invocations",
                json={"dataframe_records": [{"image": encoded[kind]}]},
                timeout=120,
            )
            if r.status_code != 200:
                return f"HTTP {r.status_code}"
            label = r.json()["predictions"][0]["label"]
            return "HTTP 200, row error" if str(label).startswith("error") else "HTTP 200, scored"

        with server(cmd, f"{rest}/ping", env, tmp / "rest.log") as proc:
            baseline = hammer(send_rest, ["good"], args.clients, args.requests, proc)
            report(
                "REST (`mlflow models serve`)", baseline, hammer(send_rest, kinds, args.clients, args.requests, proc)
            )

        port = free_port()
        web = f"http://127.0.0.1:{port}"
        web_env = {**env, "GALMORPH_MODEL": str(model_dir)}
        cmd = [sys.executable, "-m", "gunicorn", "-w", str(args.workers), "--threads", "4", "-b", f"127.0.0.1:{port}"]
        cmd += ["--timeout", "60", "--limit-request-line", "4094", "--limit-request-fields", "50"]
        cmd += ["galmorph.serving.web:app_from_env()"]

        def send_web(kind: str) -> str:
            r = requests.post(f"{web}/api/predict", files={"image": (f"{kind}.bin", body[kind])}, timeout=120)
            return f"HTTP {r.status_code}"

        with server(cmd, f"{web}/healthz", web_env, tmp / "web.log") as proc:
            baseline = hammer(send_web, ["good"], args.clients, args.requests, proc)
            report("web page API under gunicorn", baseline, hammer(send_web, kinds, args.clients, args.requests, proc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
