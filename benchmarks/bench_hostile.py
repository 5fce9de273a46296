"""Peak memory of the serving path under hostile images: a decompression bomb, and 16 concurrent requests
each carrying the worst image the limits still accept.

Every case runs in a fresh Python process (peak RSS, ru_maxrss, is per process and never goes down), which
first imports torch and builds a tiny classifier so that the baseline is the same in each; the figure is the
peak RSS and its growth over that baseline.

1. The issue's bomb: a ~160 KB PNG declaring 9000x9000 16-bit pixels.
   - "PIL as before": Image.open(...).load() and the old float64 conversion to 8-bit RGB;
   - "the loader": galmorph.data.images.load_rgb, which refuses it from the header.
2. 16 concurrent requests (threads) through the web page's API (Flask test client, one decode per upload)
   and through the REST model's input decoding (GalaxyClassifier.predict on base64 rows), each with a
   4999x5000 16-bit RGBA PNG of zeros (~25 Mpx, just under the limit; a few hundred KB on the wire):
   - max_decodes 16 (no semaphore in effect) against the default 2, and the default again with glibc's
     mmap threshold fixed (MALLOC_MMAP_THRESHOLD_=131072): decoding threads otherwise keep freed image
     buffers in their own malloc arenas, which about doubles the peak (README "Security").

    .venv/bin/python benchmarks/bench_hostile.py           # about a minute on 2 cores
    .venv/bin/python benchmarks/bench_hostile.py --quick   # a 3000x3000 worst image instead

Target: the bomb refused in under 0.1 s with under 50 MB of growth, and 16 concurrent worst-case requests
with the default limits under 1.5 GB of growth (exit status 1 when missed).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_BOMB_S = 0.1
TARGET_BOMB_MB = 50
TARGET_CONCURRENT_MB = 1536
MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def png_of_zeros(width: int, height: int, bit_depth: int = 16, colour: int = 0) -> bytes:
    """A valid PNG of zeros: colour 0 greyscale, 6 RGBA."""
    channels = {0: 1, 2: 3, 6: 4}[colour]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = bytes(1 + width * channels * bit_depth // 8)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


PRELUDE = textwrap.dedent(
    """
    import base64, io, json, resource, sys, threading, time
    import numpy as np
    from torch import nn
    from galmorph.config import PreprocessConfig
    from galmorph.data.images import InputLimits
    from galmorph.models.inference import GalaxyClassifier

    def rss_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def classifier(limits=None):
        net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
        clf = GalaxyClassifier(net, PreprocessConfig(424, 256, 64), device="cpu", limits=limits)
        small = io.BytesIO()
        from PIL import Image
        Image.new("RGB", (64, 64)).save(small, "PNG")
        clf.predict([small.getvalue()])  # warm: every import and allocator pool in place
        return clf

    data = open(sys.argv[1], "rb").read()
    """
)

BOMB_BEFORE = PRELUDE + textwrap.dedent(
    """
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = None  # as a server that silenced PIL's warning would; 81 Mpx is under 2x the limit anyway
    import warnings; warnings.simplefilter("ignore")
    clf = classifier(); base = rss_mb(); t0 = time.perf_counter()
    im = Image.open(io.BytesIO(data)); im.load()
    arr = np.asarray(im, dtype=np.float64)  # the old to_rgb
    scaled = (arr - arr.min()) / max(arr.max() - arr.min(), 1) * 255.0
    Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    print(json.dumps({"seconds": time.perf_counter() - t0, "base_mb": base, "peak_mb": rss_mb(), "outcome": "decoded"}))
    """
)

BOMB_LOADER = PRELUDE + textwrap.dedent(
    """
    from galmorph.data.images import ImageError, load_rgb
    clf = classifier(); base = rss_mb(); t0 = time.perf_counter()
    try:
        load_rgb(data); outcome = "decoded"
    except ImageError as exc:
        outcome = f"refused: {exc}"
    print(json.dumps({"seconds": time.perf_counter() - t0, "base_mb": base, "peak_mb": rss_mb(), "outcome": outcome}))
    """
)

CONCURRENT = PRELUDE + textwrap.dedent(
    """
    surface, max_decodes, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    limits = InputLimits(max_decodes=max_decodes, max_request_bytes=16 * 2**20)
    clf = classifier(limits)
    if surface == "web":
        from galmorph.serving.resolve import ModelRef
        from galmorph.serving.web import create_app
        app = create_app(clf, ModelRef("bench"), threshold=0.7, max_upload_bytes=16 * 2**20, limits=limits)
        def one(out):
            with app.test_client() as client:
                r = client.post("/api/predict", data={"image": (io.BytesIO(data), "worst.png")},
                                content_type="multipart/form-data")
                out.append(r.status_code)
    else:
        row = base64.b64encode(data).decode()
        def one(out):
            label = clf.predict([row])["label"].iloc[0]
            out.append(200 if not label.startswith("error") else label)
    base = rss_mb(); t0 = time.perf_counter(); results = []
    threads = [threading.Thread(target=one, args=(results,)) for _ in range(n)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(json.dumps({"seconds": time.perf_counter() - t0, "base_mb": base, "peak_mb": rss_mb(),
                      "outcome": sorted(set(map(str, results)))}))
    """
)


def run(script: str, *args: str, env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        return {"seconds": float("nan"), "base_mb": 0, "peak_mb": 0, "outcome": f"died ({proc.returncode})"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 3000x3000 worst image instead of 4999x5000")
    parser.add_argument("--requests", type=int, default=16)
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="galmorph-hostile-") as tmp:
        bomb = Path(tmp) / "bomb.png"
        bomb.write_bytes(png_of_zeros(9000, 9000, 16))
        side = (3000, 3000) if args.quick else (4999, 5000)
        worst = Path(tmp) / "worst.png"
        worst.write_bytes(png_of_zeros(*side, 16, colour=6))
        print(f"bomb: {bomb.stat().st_size / 1e3:.0f} KB declaring 9000x9000 16-bit grey")
        print(f"worst accepted: {worst.stat().st_size / 1e3:.0f} KB declaring {side[0]}x{side[1]} 16-bit RGBA")
        rows = [
            ("bomb, PIL as before", run(BOMB_BEFORE, str(bomb))),
            ("bomb, the loader", run(BOMB_LOADER, str(bomb))),
        ]
        for surface in ("web", "rest"):
            for max_decodes in (args.requests, 2):
                name = f"{args.requests} concurrent worst, {surface}, max_decodes {max_decodes}"
                rows.append((name, run(CONCURRENT, str(worst), surface, str(max_decodes), str(args.requests))))
            name = f"{args.requests} concurrent worst, {surface}, max_decodes 2, mmap"
            rows.append((name, run(CONCURRENT, str(worst), surface, "2", str(args.requests), env=MMAP)))
    print(f"\n{'case':<54} {'seconds':>8} {'base MB':>8} {'peak MB':>8} {'growth':>7}  outcome")
    for name, r in rows:
        growth = r["peak_mb"] - r["base_mb"]
        outcome = r["outcome"] if isinstance(r["outcome"], str) else ", ".join(r["outcome"])
        print(f"{name:<54} {r['seconds']:8.2f} {r['base_mb']:8.0f} {r['peak_mb']:8.0f} {growth:7.0f}  {outcome[:70]}")
    loader = rows[1][1]
    ok = loader["seconds"] < TARGET_BOMB_S and loader["peak_mb"] - loader["base_mb"] < TARGET_BOMB_MB
    ok = ok and str(loader["outcome"]).startswith("refused")
    for name, r in rows[2:]:
        if "max_decodes 2" in name:
            ok = ok and r["peak_mb"] - r["base_mb"] < TARGET_CONCURRENT_MB and r["outcome"] == ["200"]
    print(
        f"\ntargets (bomb < {TARGET_BOMB_S} s and < {TARGET_BOMB_MB} MB; defaults < {TARGET_CONCURRENT_MB} MB):",
        "met" if ok else "MISSED",
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
