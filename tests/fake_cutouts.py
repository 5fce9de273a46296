"""A local imitation of the two cut-out services (SDSS SkyServer ImgCutout and the Legacy Surveys viewer) on
127.0.0.1, for the tests, the README's catalogue example and the cut-out benchmark. The real endpoints are
never called by any of them.

    /sdss/getjpeg?ra=..&dec=..&scale=..&width=..&height=..    (as skyserver.sdss.org/dr18/SkyServerWS/ImgCutout)
    /legacy/cutout.jpg?ra=..&dec=..&layer=..&pixscale=..&size=..  (as www.legacysurvey.org/viewer)

Each answer is a JPEG of a synthetic galaxy (tests.serving_utils.galaxy_image, seeded by the position). Like
the real services it answers off its footprint too (here: Dec < -30) with a flat black square. Per RA
(rounded to 1e-6 deg, as the client sends it) a test can ask for statuses to answer first (`fail`: a 500,
then the image), a delay (`slow`), or an HTML error page (`html`); `delay_s` slows every answer.

    .venv/bin/python -m tests.fake_cutouts --port 8765 --catalogue targets.csv   # README "From a catalogue..."
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from tests.http_utils import QuietHTTPServer
from tests.serving_utils import galaxy_image

OFF_FOOTPRINT_DEC = -30.0
"""South of this Dec the fake services answer with a flat black square, as the real ones do off their footprint."""


def template(base: str, service: str) -> str:
    """The URL template (params.yaml cutouts.services.<service>.url) of the fake service at `base`."""
    if service == "sdss":
        return f"{base}/sdss/getjpeg?ra={{ra}}&dec={{dec}}&scale={{scale}}&width={{size}}&height={{size}}"
    return f"{base}/legacy/cutout.jpg?ra={{ra}}&dec={{dec}}&layer=ls-dr10&pixscale={{scale}}&size={{size}}"


def seed_of(ra: float, dec: float) -> int:
    return int(round(ra * 1000 + dec * 7)) % 100_000


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stall per answer

    def log_message(self, *args) -> None:  # keep the output clean
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        srv: FakeCutoutService = self.server.owner  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        service = url.path.strip("/").split("/", 1)[0]
        size_key = "width" if service == "sdss" else "size"
        if service not in ("sdss", "legacy") or not {"ra", "dec", size_key} <= set(query):
            self._send(400, b"bad request", "text/plain")
            return
        ra, dec, size = float(query["ra"]), float(query["dec"]), int(query[size_key])
        key = round(ra, 6)
        with srv.lock:
            srv.requests.append((time.monotonic(), service, query))
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            status = srv.fail[key].pop(0) if srv.fail.get(key) else None
        try:
            time.sleep(srv.delay_s + srv.slow.get(key, 0.0))
            if status is not None:
                self._send(status, b"<html><body>Internal Server Error</body></html>", "text/html")
            elif key in srv.html:
                self._send(200, b"<!DOCTYPE html><html><body>Service unavailable</body></html>", "text/html")
            elif dec < OFF_FOOTPRINT_DEC:
                self._send(200, srv.image(None, size), "image/jpeg")
            else:
                self._send(200, srv.image(seed_of(ra, dec), size), "image/jpeg")
        finally:
            with srv.lock:
                srv.in_flight -= 1


class FakeCutoutService:
    """Both fake services on one 127.0.0.1 port; `requests` holds (time, service, query) of every request."""

    def __init__(self, port: int = 0) -> None:
        self.fail: dict[float, list[int]] = {}
        self.slow: dict[float, float] = {}
        self.html: set[float] = set()
        self.delay_s = 0.0
        self.requests: list[tuple[float, str, dict[str, str]]] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self._images: dict[tuple[int | None, int], bytes] = {}
        self.httpd = QuietHTTPServer(("127.0.0.1", port), _Handler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, service: str) -> str:
        return template(self.base, service)

    def image(self, seed: int | None, size: int) -> bytes:
        """The JPEG for a seed (None: the flat off-footprint square), encoded once per seed and size."""
        size = min(size, 1024)
        key = (seed, size)
        if key not in self._images:
            im = Image.new("RGB", (size, size)) if seed is None else galaxy_image(seed, size)
            self._images[key] = jpeg(im)
        return self._images[key]

    def start(self) -> FakeCutoutService:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


#: The README's 20-row catalogue: SDSS-style sexagesimal positions, an 18-digit objid, petroR90_r in arcsec
#: and a column of the user's own (z). Row 19 lies off the footprint; row 20 has SDSS's -9999 for no radius.
EXAMPLE_COLUMNS = ("objid", "ra", "dec", "petroR90_r", "z")


def example_rows(n: int = 20) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for i in range(n):
        ra_s = 10 * 3600 + 17 * i * 60 + 3.5 * i  # seconds of time: 10h00m00s onwards
        h, rem = divmod(ra_s, 3600)
        m, s = divmod(rem, 60)
        dec = -45.0 if i == n - 2 else 2.0 + 1.5 * i
        d_sign = "-" if dec < 0 else "+"
        d_abs = abs(dec)
        dd, dm = int(d_abs), int((d_abs % 1) * 60)
        radius = "-9999" if i == n - 1 else f"{6.0 + 0.75 * i:.2f}"
        rows.append(
            (
                str(587722981736120347 + i),
                f"{int(h):02d}:{int(m):02d}:{s:05.2f}",
                f"{d_sign}{dd:02d}:{dm:02d}:{(d_abs * 3600) % 60:04.1f}",
                radius,
                f"{0.02 + 0.003 * i:.3f}",
            )
        )
    return rows


def write_example_catalogue(path: str | Path, n: int = 20) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(EXAMPLE_COLUMNS)
        writer.writerows(example_rows(n))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--catalogue", help="also write the README's 20-row example catalogue here")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every answer (a remote service)")
    args = parser.parse_args()
    if args.catalogue:
        write_example_catalogue(args.catalogue)
    service = FakeCutoutService(args.port)
    service.delay_s = args.delay
    print(f"fake cut-out services on {service.base} (sdss: {service.url('sdss')})", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, or `kill %1` from the README
        service.httpd.serve_forever(0.05)


if __name__ == "__main__":
    main()
