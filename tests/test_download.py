"""The generic downloader against a real HTTP server on 127.0.0.1: resume, servers without Range, retries,
checksums, unreachable hosts, and bytes stored exactly as served."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from galmorph.data.sources.download import download, get_json, part_path
from galmorph.errors import UserError

FAST = {"retries": 3, "timeout_s": 5.0, "backoff_s": 0.001, "progress": False}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        srv: FileServer = self.server.owner  # type: ignore[attr-defined]
        path = self.path
        with srv.lock:
            srv.requests.append((path, dict(self.headers)))
            status = srv.fail[path].pop(0) if srv.fail.get(path) else None
            drop = srv.drops[path].pop(0) if srv.drops.get(path) else None
        if status is not None:
            self._empty(status)
            return
        body = srv.files.get(path)
        if body is None:
            self._empty(404)
            return
        start = 0
        ranged = self.headers.get("Range")
        if ranged and path not in srv.no_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", ranged)[1])
            if start >= len(body):
                self._empty(416, {"Content-Range": f"bytes */{len(body)}"})
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        for key, value in srv.headers.get(path, {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if drop is not None:  # the connection breaks after `drop` bytes of this answer
            self.wfile.write(body[start : start + drop])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])


class FileServer:
    """Serves `files` (path with query -> bytes). Per path: `fail` statuses to answer first, `drops` byte
    counts after which successive answers break off, `no_range` to ignore Range, extra `headers`."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail: dict[str, list[int]] = {}
        self.drops: dict[str, list[int]] = {}
        self.no_range: set[str] = set()
        self.headers: dict[str, dict[str, str]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def requests_for(self, path: str) -> list[dict[str, str]]:
        return [headers for p, headers in self.requests if p == path]


@pytest.fixture
def server():
    srv = FileServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def closed_port_url() -> str:
    """A URL nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing.zip"


@pytest.fixture
def blob() -> bytes:
    return os.urandom(300_000)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_plain_download_returns_md5_and_leaves_no_part(server, tmp_path, blob):
    server.files["/f.bin?download=1"] = blob
    dest = tmp_path / "sub" / "f.bin"
    assert download(server.url("/f.bin?download=1"), dest, md5=md5(blob), **FAST) == md5(blob)
    assert dest.read_bytes() == blob and not part_path(dest).exists()


def test_interrupted_transfer_resumes_with_range(server, tmp_path, blob):
    server.files["/f.bin"] = blob
    server.drops["/f.bin"] = [100_000]
    dest = tmp_path / "f.bin"
    assert download(server.url("/f.bin"), dest, md5=md5(blob), **FAST) == md5(blob)
    first, second = server.requests_for("/f.bin")
    assert "Range" not in first
    assert second["Range"] == "bytes=100000-"
    assert dest.read_bytes() == blob


def test_a_part_left_by_a_killed_run_is_resumed(server, tmp_path, blob):
    server.files["/f.bin"] = blob
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(blob[:1234])
    assert download(server.url("/f.bin"), dest, md5=md5(blob), **FAST) == md5(blob)
    (only,) = server.requests_for("/f.bin")
    assert only["Range"] == "bytes=1234-" and dest.read_bytes() == blob


def test_server_without_range_support_restarts_cleanly(server, tmp_path, blob):
    server.files["/f.bin"] = blob
    server.drops["/f.bin"] = [100_000]
    server.no_range.add("/f.bin")
    dest = tmp_path / "f.bin"
    assert download(server.url("/f.bin"), dest, md5=md5(blob), **FAST) == md5(blob)
    first, second = server.requests_for("/f.bin")
    assert second["Range"] == "bytes=100000-"  # asked to resume, got the whole file, rewrote from the start
    assert dest.read_bytes() == blob


def test_part_longer_than_the_file_starts_over(server, tmp_path, blob):
    server.files["/f.bin"] = blob
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(b"x" * (len(blob) + 10))
    assert download(server.url("/f.bin"), dest, md5=md5(blob), **FAST) == md5(blob)
    assert [h.get("Range") for h in server.requests_for("/f.bin")] == [f"bytes={len(blob) + 10}-", None]


def test_retries_after_503(server, tmp_path, blob):
    server.files["/f.bin"] = blob
    server.fail["/f.bin"] = [503, 502]
    dest = tmp_path / "f.bin"
    download(server.url("/f.bin"), dest, **FAST)
    assert len(server.requests_for("/f.bin")) == 3 and dest.read_bytes() == blob


def test_too_many_503s_is_a_user_error(server, tmp_path, blob):
    server.files["/f.bin"] = blob
    server.fail["/f.bin"] = [503] * 10
    with pytest.raises(UserError, match=r"/f.bin: download failed after 3 attempt\(s\): HTTP 503"):
        download(server.url("/f.bin"), tmp_path / "f.bin", **{**FAST, "retries": 2})
    assert len(server.requests_for("/f.bin")) == 3


def test_progress_does_not_use_up_retries(server, tmp_path, blob):
    """A link that breaks every 50 kB still finishes: each attempt that grew the .part resets the count."""
    server.files["/f.bin"] = blob
    server.drops["/f.bin"] = [50_000] * 5
    dest = tmp_path / "f.bin"
    download(server.url("/f.bin"), dest, md5=md5(blob), **{**FAST, "retries": 1})
    assert len(server.requests_for("/f.bin")) == 6 and dest.read_bytes() == blob


def test_not_found_is_not_retried(server, tmp_path):
    with pytest.raises(UserError, match=r"/missing.csv: HTTP 404"):
        download(server.url("/missing.csv"), tmp_path / "m.csv", **FAST)
    assert len(server.requests_for("/missing.csv")) == 1


def test_bad_checksum_deletes_the_file(server, tmp_path, blob):
    server.files["/f.bin"] = blob
    dest = tmp_path / "f.bin"
    with pytest.raises(UserError) as err:
        download(server.url("/f.bin"), dest, md5="0" * 32, **FAST)
    message = str(err.value)
    assert str(dest) in message and "0" * 32 in message and md5(blob) in message and "\n" not in message
    assert not dest.exists() and not part_path(dest).exists()


def test_unreachable_url_fails_after_retries_with_backoff(tmp_path):
    url = closed_port_url()
    start = time.monotonic()
    with pytest.raises(UserError, match=r"nothing.zip: download failed after 3 attempt\(s\)") as err:
        download(url, tmp_path / "x.zip", **{**FAST, "retries": 2, "backoff_s": 0.05})
    assert time.monotonic() - start >= 0.05 + 0.1  # waited backoff_s, then 2 * backoff_s
    assert "\n" not in str(err.value) and not (tmp_path / "x.zip").exists()


def test_bytes_are_stored_as_served_even_with_content_encoding(server, tmp_path):
    """S3 may label a .csv.gz `Content-Encoding: gzip`; the file must stay gzipped and match its MD5."""
    gz = gzip.compress(b"OBJID,RA\n1,2\n")
    server.files["/t.csv.gz"] = gz
    server.headers["/t.csv.gz"] = {"Content-Encoding": "gzip"}
    dest = tmp_path / "t.csv.gz"
    assert download(server.url("/t.csv.gz"), dest, md5=md5(gz), **FAST) == md5(gz)
    assert dest.read_bytes() == gz
    assert server.requests_for("/t.csv.gz")[0]["Accept-Encoding"] == "identity"


def test_get_json_retries_and_rejects_non_json(server):
    server.files["/api"] = b'{"files": []}'
    server.fail["/api"] = [500]
    assert get_json(server.url("/api"), retries=2, timeout_s=5, backoff_s=0.001) == {"files": []}
    server.files["/html"] = b"<html>maintenance</html>"
    with pytest.raises(UserError, match="/html: the answer is not JSON"):
        get_json(server.url("/html"), retries=2, timeout_s=5, backoff_s=0.001)
