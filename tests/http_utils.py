"""Local servers for the tests: the HTTP server the fake download and cut-out services run on, and a free port."""

from __future__ import annotations

import socket
import sys
from http.server import ThreadingHTTPServer


class QuietHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that lets a client hang up without a traceback on the test output.

    The timeout, drop and retry tests make clients give up mid-answer on purpose; the default `handle_error`
    printed each BrokenPipe or ConnectionReset from a handler thread, outside any test's captured output.
    """

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick, so parallel test workers differ)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
