"""One loopback HTTP server for the tests' stand-ins (model servers, webhooks, OTLP receivers): a
threading server on a free 127.0.0.1 port, served from a daemon thread, with a handler base that
logs nothing and reads and sends bodies."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs no request lines (the tests' output stays readable)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def body(self) -> bytes:
        """The request's body (empty without a Content-Length)."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_body(self, data: bytes, content_type: str, status: int = 200) -> None:
        """A whole response with its Content-Type and Content-Length."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_stream(self, events: Iterable[bytes]) -> None:
        """A server-sent-event stream without a length (each event given whole), then the
        connection closes, as a streaming API does."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for event in events:
            self.wfile.write(event)
        self.wfile.flush()
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # (the default 5 resets a burst of parallel calls)

    def __init__(self, handler: type[BaseHTTPRequestHandler], quiet_errors: bool) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.quiet_errors = quiet_errors

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not self.quiet_errors:
            super().handle_error(request, client_address)


class Serving:
    """``handler`` served on a free loopback port from ``start()`` to ``stop()`` (or for a
    ``with`` block); with
    ``quiet_errors``, a client that hangs up mid-answer prints no traceback. A stand-in server
    subclasses it, giving its handler class to ``__init__``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], *, quiet_errors: bool = False) -> None:
        self.httpd = _Server(handler, quiet_errors)
        self.port: int = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._serving = False

    def start(self) -> Self:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self._serving = True
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._serving:
            self.httpd.shutdown()
            self._serving = False
        self.httpd.server_close()
