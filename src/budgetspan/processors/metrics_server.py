"""The /metrics HTTP server: one thread, bounded connections and idle time, paced work.

Why not prometheus-client's ``start_http_server``: its ``ThreadingHTTPServer`` starts a thread
per connection with no limit and no timeout. In the application's process, 16 scrapers in a loop
rendered 16 expositions at once and took the interpreter from the application's threads (its
call p99 went from under a millisecond to 362 ms), and 400 half-open connections were 400
threads that all woke when the peers hung up (one application call stalled 15 s).

Here one thread serves every connection from a selector, and what it may cost is bounded:

- connections: at most ``max_connections`` open; at the limit the oldest connection still
  waiting for its request is closed to make room (the oldest of all when every one is sending a
  response), so idle, half-open or never-reading connections can never lock out a scraper (a
  scraper sends its request as soon as it connects);
- time: a request must arrive, and a response be taken, within ``idle_timeout_s``; keep-alive
  connections idle longer are closed; a request head over ``MAX_REQUEST_BYTES`` is refused;
- rendering: one at a time (this thread), through ``Exposition``, which reuses a rendering for
  ``RENDER_REUSE`` times the time it took (at least ``MIN_REUSE_S``, at most ``MAX_REUSE_S``): however many scrapers ask,
  rendering uses about 1% of the process's time (more only for an exposition that takes over
  0.1 s to render), and the body served is at most that old;
- the thread's own work: after each round it pauses ``PAUSE_FACTOR`` times the CPU time the
  round took, so the server holds the interpreter at most 1/(PAUSE_FACTOR + 1) of the time.
  Scrapers wait in the kernel's queue instead of the application waiting for the interpreter.

Query strings (prometheus-client's ``name[]=`` filter) are ignored: the whole exposition is
served on every path but ``/favicon.ico``.
"""

from __future__ import annotations

import gzip
import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Final, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from budgetspan import events

log = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 32
IDLE_TIMEOUT_S: Final = 10.0
MAX_REQUEST_BYTES: Final = 16384
RENDER_REUSE: Final = 100.0  # a rendering is served again for 100x the time it took,
MIN_REUSE_S: Final = 1.0  # and at least this long (Prometheus scrapes every 15 s by default),
MAX_REUSE_S: Final = 10.0  # but never for longer than this (a body at most 10 s old)
PAUSE_FACTOR: Final = 19.0  # the server thread works at most 1/20 of the time
_ACCEPTS_PER_ROUND: Final = 64
_RECV_BYTES: Final = 65536
_In = TypeVar("_In")
_Out = TypeVar("_Out")


class Exposition:
    """The registry's exposition, rendered at most once per reuse window per format."""

    def __init__(self, registry: CollectorRegistry, reuse: float = RENDER_REUSE) -> None:
        self.registry = registry
        self.reuse = reuse
        self._cache: dict[tuple[str, bool], tuple[float, bytes]] = {}
        self.renders = 0  # for tests and the benchmark

    def body(self, accept: str, gzipped: bool) -> tuple[str, bytes]:
        """(content type, body) for a request's ``Accept``; raises if a collector fails."""
        try:
            encoder, content_type = choose_encoder(accept)
        except Exception:  # a header it cannot read ("version=abc": TypeError) is the client's fault
            encoder, content_type = choose_encoder("")  # the text format, as for no header
        key = (content_type, gzipped)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now < hit[0]:
            return content_type, hit[1]
        started = time.perf_counter()
        data = encoder(self.registry)
        if gzipped:
            data = gzip.compress(data, compresslevel=6)
        took = time.perf_counter() - started
        self.renders += 1
        self._cache[key] = (now + self.reuse_window(took), data)
        return content_type, data

    def reuse_window(self, took: float) -> float:
        """How long a rendering that took ``took`` seconds is served again: ``reuse`` times its
        cost, at least ``MIN_REUSE_S`` (0 when ``reuse`` is 0: every scrape renders), at most
        ``MAX_REUSE_S``. However many scrapers loop, the application's threads compete with one
        rendering per window, not one per request.

        Measured gain of the 1 s floor (bench/bench_metrics_endpoint.py --rounds, 16 scrapers in a
        loop during 300 app runs): a 171-line exposition rendered 2 times per round instead of 2-5;
        a 4,142-line one: 0-1 per round with or without it. The app's p99 moved within
        this shared machine's noise."""
        if self.reuse <= 0:
            return 0.0
        return min(max(took * self.reuse, MIN_REUSE_S), MAX_REUSE_S)


class _Conn:
    """One client connection: bytes read so far, bytes still to send, its deadline."""

    __slots__ = ("close_after", "deadline", "inbuf", "out", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.inbuf = b""
        self.out: memoryview | None = None  # a response being sent
        self.close_after = False
        self.deadline = deadline


class MetricsServer:
    """Serves ``Exposition`` over HTTP/1.1 from one daemon thread (see the module docstring)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        reuse: float = RENDER_REUSE,
        pause_factor: float = PAUSE_FACTOR,
    ) -> None:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        self._listener = socket.create_server((host, port), family=family, backlog=128)
        self._listener.setblocking(False)
        self.server_address: tuple[str, int] = self._listener.getsockname()[:2]
        self.exposition = Exposition(registry, reuse)
        self.max_connections = max(1, max_connections)
        self.idle_timeout_s = idle_timeout_s
        self.pause_factor = pause_factor
        self._conns: dict[socket.socket, _Conn] = {}  # oldest first
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="budgetspan-metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def open_connections(self) -> int:
        return len(self._conns)

    def shutdown(self) -> None:
        """Stop serving and close every socket; returns once the thread is gone."""
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    def server_close(self) -> None:
        """Kept for callers of the ``socketserver`` API; ``shutdown`` closes everything."""

    # --- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                ready = self._sel.select(self._select_timeout())
                cpu = time.thread_time()
                try:
                    self._round(ready)
                except Exception:  # never let the endpoint die, never raise into the app
                    events.internal_error("metrics_server")
                spent = time.thread_time() - cpu
                if spent > 0 and self.pause_factor > 0:
                    self._stop.wait(spent * self.pause_factor)
        finally:
            self._close_all()

    def _round(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, mask in ready:
            sock = key.fileobj
            if sock is self._listener:
                self._accept()
            elif sock is self._wake_r:
                self._wake_r.recv(64)
            else:
                conn = self._conns.get(sock)  # type: ignore[call-overload]
                if conn is not None:
                    self._service(conn, mask)
        self._expire(time.monotonic())

    def _select_timeout(self) -> float:
        if not self._conns:
            return 1.0
        soonest = min(c.deadline for c in self._conns.values())
        return min(1.0, max(0.0, soonest - time.monotonic()))

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self._close(conn)

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_ROUND):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of file descriptors: try again next round
                log.debug("budgetspan: metrics accept failed", exc_info=True)
                return
            if len(self._conns) >= self.max_connections:
                self._evict_one()
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + self.idle_timeout_s)
            self._conns[sock] = conn
            self._sel.register(sock, selectors.EVENT_READ, None)

    def _evict_one(self) -> None:
        """Close the oldest connection that is waiting for its request; when every one is sending
        a response, the oldest of all: peers that pipeline requests and never read would
        otherwise hold every slot, and turn away every scraper, for the whole idle timeout."""
        waiting = next((c for c in self._conns.values() if c.out is None), None)
        self._close(waiting if waiting is not None else next(iter(self._conns.values())))

    def _close(self, conn: _Conn) -> None:
        self._conns.pop(conn.sock, None)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _close_all(self) -> None:
        for conn in list(self._conns.values()):
            self._close(conn)
        self._sel.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    # --- one connection ---------------------------------------------------------------------
    def _io(self, conn: _Conn, op: Callable[[_In], _Out], arg: _In) -> _Out | None:
        """``op(arg)`` on the connection's socket; None when it would block (the selector says
        when to try again) or failed (then the connection is closed)."""
        try:
            return op(arg)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self._close(conn)
            return None

    def _service(self, conn: _Conn, mask: int) -> None:
        if conn.out is not None:
            self._send(conn)
            return
        data = self._io(conn, conn.sock.recv, _RECV_BYTES)
        if data is None:
            return
        if not data:  # the peer hung up
            self._close(conn)
            return
        conn.inbuf += data
        self._respond_if_complete(conn)

    def _respond_if_complete(self, conn: _Conn) -> None:
        if self._next_response(conn):
            self._send(conn)  # most responses fit in the socket's buffer at once

    def _next_response(self, conn: _Conn) -> bool:
        """Make the response to the next request head in ``conn.inbuf`` the one to send; False
        while no whole head has arrived."""
        split = _head_end(conn.inbuf)
        if split is None:
            if len(conn.inbuf) <= MAX_REQUEST_BYTES:
                return False
            response, keep_alive = _simple(431, "Request Header Fields Too Large"), False
        else:
            head, conn.inbuf = conn.inbuf[: split[0]], conn.inbuf[split[1] :]
            response, keep_alive = self._answer(head)
        conn.out = memoryview(response)
        conn.close_after = not keep_alive
        conn.deadline = time.monotonic() + self.idle_timeout_s
        self._sel.modify(conn.sock, selectors.EVENT_WRITE, None)
        return True

    def _send(self, conn: _Conn) -> None:
        """Send what the socket takes; a finished response is followed by the one to a pipelined
        request already read, in this loop (answering it by recursion, 3,000 pipelined requests
        ended in RecursionError after 660 answers)."""
        while (out := conn.out) is not None:
            sent = self._io(conn, conn.sock.send, out)
            if sent is None:
                return
            if sent < len(out):
                conn.out = out[sent:]
                return
            conn.out = None
            if conn.close_after:
                self._close(conn)
                return
            conn.deadline = time.monotonic() + self.idle_timeout_s
            self._sel.modify(conn.sock, selectors.EVENT_READ, None)
            self._next_response(conn)

    def _answer(self, head: bytes) -> tuple[bytes, bool]:
        """The whole response to one request head, and whether to keep the connection."""
        lines = [line.removesuffix("\r") for line in head.decode("latin-1").split("\n")]
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _simple(400, "Bad Request"), False
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            keep = False  # a body we do not read: the connection cannot be reused
        if method not in ("GET", "HEAD"):
            return _simple(405, "Method Not Allowed", b"Allow: GET, HEAD\r\n"), False
        if target.split("?", 1)[0] == "/favicon.ico":
            return _simple(404, "Not Found"), False
        gzipped = accepts_gzip(headers.get("accept-encoding", ""))
        try:
            content_type, body = self.exposition.body(headers.get("accept", ""), gzipped)
        except Exception:
            events.internal_error("metrics_exposition")
            return _simple(500, "Internal Server Error"), False
        extra = b"Content-Encoding: gzip\r\n" if gzipped else b""
        head_out = _head(200, "OK", content_type, len(body), keep, extra)
        return (head_out if method == "HEAD" else head_out + body), keep


_QVALUE = re.compile(r"q=(0(\.[0-9]{0,3})?|1(\.0{0,3})?)", re.IGNORECASE)


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` header names gzip (or x-gzip) with a weight above 0.

    ``gzip;q=0`` means "not acceptable" (RFC 9110, 12.4.2): it was served gzip because the
    header held the word. A weight that is no qvalue (``q=abc``, ``q=1.5``) counts as a refusal:
    the plain body is one every client can read. ``*`` is not read as gzip, for the same reason."""
    for item in header.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if coding.lower() not in ("gzip", "x-gzip"):
            continue
        weights = [p.replace(" ", "") for p in params if p[:1] in ("q", "Q")]
        if not weights:
            return True
        found = _QVALUE.fullmatch(weights[-1])
        return found is not None and float(found[1]) > 0
    return False


def _head_end(buf: bytes) -> tuple[int, int] | None:
    """Where the first request head in ``buf`` ends and what follows it starts; None while it has
    no empty line yet. Lines end with CRLF or a bare LF (HTTP allows it; ``nc`` users send it)."""
    lf = buf.find(b"\n\n")
    crlf = buf.find(b"\n\r\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 3
    return None if lf < 0 else (lf, lf + 2)


def _head(status: int, reason: str, content_type: str, length: int, keep: bool, extra: bytes = b"") -> bytes:
    return (
        (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\nConnection: {'keep-alive' if keep else 'close'}\r\n"
        ).encode("latin-1")
        + extra
        + b"\r\n"
    )


def _simple(status: int, reason: str, extra: bytes = b"") -> bytes:
    body = f"{reason}\n".encode()
    return _head(status, reason, "text/plain; charset=utf-8", len(body), False, extra) + body
