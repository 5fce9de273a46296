"""The generic downloader against a real HTTP server on 127.0.0.1: resume, servers without Range, retries,
checksums, unreachable hosts, and bytes stored exactly as served."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from galmorph.data.sources.download import download, get_json, part_path, part_record_path
from galmorph.errors import UserError
from tests.http_utils import QuietHTTPServer

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
        validators = {srv.headers.get(path, {}).get(k) for k in ("ETag", "Last-Modified")} - {None}
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range not in validators and path not in srv.ignore_if_range:
            ranged = None  # RFC 9110: the representation changed, so the whole of it with a 200
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
    counts after which successive answers break off, `no_range` to ignore Range, extra `headers` (an `ETag` or
    `Last-Modified` there is what If-Range is compared with), `ignore_if_range` to resume regardless."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail: dict[str, list[int]] = {}
        self.drops: dict[str, list[int]] = {}
        self.no_range: set[str] = set()
        self.ignore_if_range: set[str] = set()
        self.headers: dict[str, dict[str, str]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.httpd = QuietHTTPServer(("127.0.0.1", 0), _Handler)
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


def interrupted(server, path: str, dest, at: int) -> None:
    """Leave what a killed run leaves: the first `at` bytes of `path` in `dest`'s .part, and its record."""
    server.drops[path] = [at]
    with pytest.raises(UserError, match="download failed"):
        download(server.url(path), dest, **{**FAST, "retries": 0})
    assert part_path(dest).stat().st_size == at and part_record_path(dest).is_file()


def test_a_part_left_by_a_killed_run_is_resumed(server, tmp_path, blob):
    server.files["/f.bin"] = blob
    server.headers["/f.bin"] = {"ETag": '"v1"'}
    dest = tmp_path / "f.bin"
    interrupted(server, "/f.bin", dest, 1234)
    assert json.loads(part_record_path(dest).read_text()) == {
        "url": server.url("/f.bin"),
        "etag": '"v1"',
        "last_modified": None,
        "bytes": len(blob),
    }
    assert download(server.url("/f.bin"), dest, md5=md5(blob), **FAST) == md5(blob)
    resumed = server.requests_for("/f.bin")[-1]
    assert resumed["Range"] == "bytes=1234-" and resumed["If-Range"] == '"v1"'
    assert dest.read_bytes() == blob and not part_record_path(dest).exists()


def test_a_part_of_another_url_is_not_resumed(server, tmp_path, blob):
    """A .part is a prefix of the URL it came from only: a changed URL (new params.yaml) starts from zero."""
    server.files["/old.bin"], server.files["/new.bin"] = blob[::-1], blob
    dest = tmp_path / "f.bin"
    interrupted(server, "/old.bin", dest, 1000)
    assert download(server.url("/new.bin"), dest, **FAST) == md5(blob)  # no checksum to catch a splice
    assert dest.read_bytes() == blob
    assert [h.get("Range") for h in server.requests_for("/new.bin")] == [None]


def test_a_part_without_its_record_is_not_resumed(server, tmp_path, blob):
    server.files["/f.bin"] = blob
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(b"nobody knows where these came from")
    assert download(server.url("/f.bin"), dest, **FAST) == md5(blob) and dest.read_bytes() == blob
    assert [h.get("Range") for h in server.requests_for("/f.bin")] == [None]


@pytest.mark.parametrize("validator", ["ETag", "Last-Modified"])
@pytest.mark.parametrize("honours_if_range", [True, False])
def test_a_file_changed_on_the_server_is_downloaded_again(server, tmp_path, blob, validator, honours_if_range):
    """The remote file changed between the interrupted run and the resume: its new bytes must not be spliced
    onto the old prefix. A server that honours If-Range answers 200 with the whole file; one that ignores it
    sends a 206 whose ETag (or size) gives the change away, and the download starts again."""
    old, new = blob[::-1], blob if validator == "ETag" else blob + b"longer"
    values = {
        "ETag": ('"v1"', '"v2"'),
        "Last-Modified": ("Mon, 01 Jan 2024 00:00:00 GMT", "Tue, 02 Jan 2024 00:00:00 GMT"),
    }
    server.files["/f.bin"] = old
    server.headers["/f.bin"] = {validator: values[validator][0]}
    dest = tmp_path / "f.bin"
    interrupted(server, "/f.bin", dest, 1000)
    server.files["/f.bin"] = new
    server.headers["/f.bin"] = {validator: values[validator][1]}
    if not honours_if_range:
        server.ignore_if_range.add("/f.bin")
    assert download(server.url("/f.bin"), dest, **FAST) == md5(new)
    assert dest.read_bytes() == new
    first, *rest = server.requests_for("/f.bin")[1:]
    assert first["Range"] == "bytes=1000-" and first["If-Range"] == values[validator][0]
    assert [h.get("Range") for h in rest] == ([] if honours_if_range else [None])


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
    part_record_path(dest).write_text(json.dumps({"url": server.url("/f.bin")}))
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
