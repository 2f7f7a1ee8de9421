"""The /metrics endpoint cannot be broken or made to slow the application
(processors/metrics_server.py, labels.py): a response with a lone surrogate in its model name,
half-open and idle connections, many scrapers at once. Real sockets, real ``openai`` SDK."""

from __future__ import annotations

import gzip
import http.client
import json
import selectors
import socket
import struct
import threading
import urllib.request
from collections.abc import Iterator

import httpx2
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

import budgetspan
from budgetspan import events
from budgetspan.processors import metrics as M
from budgetspan.processors.metrics_server import MAX_REUSE_S, MIN_REUSE_S, MetricsServer
from tests.reliability._support import chat_body, messages, openai_instrumented, sync_client, wait_until
from tests.reliability.conftest import Lean


class Served:
    def __init__(self, server: MetricsServer, registry: CollectorRegistry) -> None:
        self.server = server
        self.registry = registry
        self.host, self.port = server.server_address

    def scrape(self) -> tuple[int, str]:
        with urllib.request.urlopen(f"http://{self.host}:{self.port}/metrics", timeout=10) as resp:
            return resp.status, resp.read().decode()


@pytest.fixture
def served(lean: Lean, request: pytest.FixtureRequest) -> Iterator[Served]:
    """Metrics on a private registry, listening to events, served on a free loopback port."""
    options = getattr(request, "param", {})
    registry = CollectorRegistry()
    metrics = M.BudgetspanMetrics(registry)
    events.add_listener(metrics)
    server = MetricsServer(registry, "127.0.0.1", 0, **options).start()
    try:
        yield Served(server, registry)
    finally:
        server.shutdown()
        events.remove_listener(metrics)


@pytest.mark.parametrize("served", [{"reuse": 0.0}], indirect=True)
def test_a_lone_surrogate_in_a_model_name_never_breaks_scrapes(served: Served) -> None:
    """A provider answering ``"model": "gpt-\\ud800"`` (valid JSON): the label is cleaned, and
    every scrape after it is a 200 with the call counted (it was HTTP 500 for good)."""
    raw = json.dumps(chat_body()).replace('"gpt-4o-mini-2024-07-18"', '"gpt-\\ud800"').encode()
    assert b'"gpt-\\ud800"' in raw

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=raw, headers={"content-type": "application/json"})

    assert served.scrape()[0] == 200
    with openai_instrumented(), budgetspan.run("surrogate"):
        reply = sync_client(answer).chat.completions.create(model="gpt-4o-mini", messages=messages())
    assert reply.model == "gpt-\ud800"  # the SDK hands the application the surrogate as is
    for _ in range(3):
        status, body = served.scrape()
        assert status == 200
        assert 'model="gpt-\ufffd"' in body
        line = 'budgetspan_model_calls_total{model="gpt-\ufffd",provider="openai",status="ok",workflow="surrogate"}'
        assert f"{line} 1.0" in body


def _hang_up(sock: socket.socket) -> None:
    """Close with a reset, as a peer that vanishes does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _closed_by_server(sock: socket.socket, timeout_s: float) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            return False
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("served", [{"max_connections": 8, "idle_timeout_s": 0.5}], indirect=True)
def test_half_open_connections_are_bounded_and_never_stop_a_scrape(served: Served) -> None:
    """400 connections that send nothing or half a request: the server keeps at most 8 open
    (closing the oldest idle ones), scrapes are answered while they hang there and after they
    all hang up at once, and an idle connection is closed by the server."""
    half_open = []
    for i in range(400):
        sock = socket.create_connection((served.host, served.port), timeout=30)
        if i % 2:
            sock.sendall(b"GET /metr")  # a request that never ends
        half_open.append(sock)
    assert served.scrape()[0] == 200
    assert served.server.open_connections() <= 8
    closed = sum(_closed_by_server(s, 10) for s in half_open[:392])  # the 392 oldest: evicted or idle
    assert closed == 392
    for sock in half_open:
        _hang_up(sock)
    assert served.scrape()[0] == 200
    idle = socket.create_connection((served.host, served.port), timeout=30)
    assert _closed_by_server(idle, 10), "an idle connection was kept open past the idle timeout"
    idle.close()
    assert wait_until(lambda: served.server.open_connections() == 0, 10)
    assert served.scrape()[0] == 200


class CountingCollector(Collector):
    """Counts renderings and the most that ever ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0
        self.calls = 0

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        with self.lock:
            self.active += 1
            self.calls += 1
            self.most = max(self.most, self.active)
        try:
            yield from ()
        finally:
            with self.lock:
                self.active -= 1


@pytest.mark.parametrize("served", [{"reuse": 1e9}], indirect=True)
def test_sixteen_scrapers_at_once_share_one_rendering(served: Served) -> None:
    """16 scrapers released together, 5 scrapes each: all answered, never two renderings at the
    same time, and the exposition is rendered once for all of them (within its reuse window)."""
    counting = CountingCollector()
    served.registry.register(counting)  # type: ignore[arg-type]
    with budgetspan.run("busy"):
        pass
    start = threading.Barrier(16)
    statuses: list[int] = []

    def scraper() -> None:
        start.wait(10)
        for _ in range(5):
            status, body = served.scrape()
            assert 'workflow="busy"' in body
            statuses.append(status)

    threads = [threading.Thread(target=scraper) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * 80
    assert counting.most == 1
    assert counting.calls == served.server.exposition.renders == 1


def test_a_fast_rendering_is_still_reused_for_a_second(served: Served) -> None:
    """Default settings: a small exposition renders in well under 10 ms, yet a loop of scrapes
    within a second gets that one rendering (``MIN_REUSE_S``), not one each; a server made with
    ``reuse=0`` renders every time."""
    first = served.scrape()[1]
    with budgetspan.run("after-the-first-scrape"):
        pass
    for _ in range(20):
        assert served.scrape()[1] == first  # the same bytes: not rendered again
    assert served.server.exposition.renders == 1
    exposition = served.server.exposition
    assert exposition.reuse_window(0.0001) == MIN_REUSE_S
    assert exposition.reuse_window(0.05) == 0.05 * exposition.reuse
    assert exposition.reuse_window(60.0) == MAX_REUSE_S
    exposition.reuse = 0.0
    assert exposition.reuse_window(0.05) == 0.0


def test_keep_alive_head_gzip_and_refusals(served: Served) -> None:
    conn = http.client.HTTPConnection(served.host, served.port, timeout=10)
    try:
        for _ in range(3):  # one connection, several scrapes (Prometheus keeps it alive)
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Content-Encoding") == "gzip"
            assert b"# HELP budgetspan_runs_total" in gzip.decompress(resp.read())
        conn.request("HEAD", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"" and int(resp.getheader("Content-Length", "0")) > 0
        conn.request("POST", "/metrics", body=b"x")
        assert conn.getresponse().status == 405
    finally:
        conn.close()
    with socket.create_connection((served.host, served.port), timeout=10) as sock:
        sock.sendall(b"GET /" + b"a" * 20000)  # a request head too big to be one
        assert sock.recv(100).startswith(b"HTTP/1.1 431")


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip;q=0", False),  # q=0: "not acceptable" (RFC 9110 12.4.2); it was sent gzip
        ("gzip; q=0.000, identity", False),
        ("deflate, gzip;Q=0", False),
        ("br;q=1, gzip ; q=0.0", False),
        ("identity", False),
        ("x-gzipped", False),
        ("gzip;q=abc", False),  # no valid weight: the body every client can read
        ("gzip;q=1.5", False),
        ("gzip", True),
        ("gzip;", True),  # an empty parameter: no weight, so 1
        ("GZIP;q=0.5", True),
        ("deflate;q=1, gzip;q=0.001", True),
        ("x-gzip", True),
        ("br, gzip;q=1.000", True),
    ],
)
def test_gzip_only_when_the_client_accepts_it(served: Served, accept_encoding: str, gzipped: bool) -> None:
    conn = http.client.HTTPConnection(served.host, served.port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers={"Accept-Encoding": accept_encoding})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200 and (resp.getheader("Content-Encoding") == "gzip") is gzipped
    assert b"# HELP budgetspan_runs_total" in (gzip.decompress(body) if gzipped else body)


@pytest.mark.parametrize("served", [{"max_connections": 8, "idle_timeout_s": 30.0}], indirect=True)
def test_connections_that_never_read_their_responses_cannot_lock_out_a_scraper(served: Served) -> None:
    """Connections that pipeline requests and never read (each stuck sending a response) filled
    every slot: only a connection waiting for its request could be closed, so for the whole
    idle timeout every new scraper was closed unanswered (a reset). The oldest connection goes."""
    from prometheus_client import Counter

    big = Counter("padding", "Series that make the exposition larger than a socket's buffers.", ["k"],
                  registry=served.registry)  # fmt: skip
    for i in range(5000):
        big.labels(f"value-{i:05d}").inc()
    stuck = []
    for _ in range(12):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((served.host, served.port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 40)
        stuck.append(sock)
    assert wait_until(lambda: served.server.open_connections() == 8, 10)
    status, body = served.scrape()
    assert status == 200 and 'padding_total{k="value-04999"} 1.0' in body
    for sock in stuck:
        _hang_up(sock)


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_a_request_with_bare_newlines_is_answered(served: Served) -> None:
    """``printf 'GET /metrics HTTP/1.0\\n\\n' | nc`` (HTTP allows a bare LF as line end; the
    prometheus-client server this one replaced took it): nothing came back until the idle
    timeout closed the connection."""
    with socket.create_connection((served.host, served.port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\nAccept: text/plain\n\n")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"# HELP budgetspan_runs_total" in answer
    with socket.create_connection((served.host, served.port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\n\nHEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        answer = _read_all(sock)  # a pipelined pair, one in each style
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2


class _Errors:
    def __init__(self) -> None:
        self.where: list[str] = []

    def on_internal_error(self, where: str) -> None:
        self.where.append(where)


@pytest.mark.parametrize("served", [{"reuse": 0.0}], indirect=True)
def test_a_malformed_accept_header_gets_the_text_format_not_an_internal_error(served: Served) -> None:
    """review11: ``Accept: application/openmetrics-text; version=abc`` (prometheus-client's
    ``choose_encoder`` raises TypeError) was an HTTP 500, a budgetspan internal error and a warning
    per request: any client of the endpoint could fire the internal-errors alert and fill the log.
    A header that cannot be read is answered as one that says nothing: the text format."""
    errors = _Errors()
    events.add_listener(errors)
    try:
        conn = http.client.HTTPConnection(served.host, served.port, timeout=10)
        conn.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text; version=abc"})
        resp = conn.getresponse()
        body = resp.read().decode()
        conn.close()
    finally:
        events.remove_listener(errors)
    assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/plain; version=0.0.4")
    assert "budgetspan_" in body or body == ""
    assert errors.where == []


def test_three_thousand_pipelined_requests_are_all_answered(served: Served) -> None:
    """review11: after each response the server answered a pipelined request already read by
    calling itself: a client reading as fast as it sent 3,000 requests got 660 answers, then two
    RecursionErrors (budgetspan internal errors: any client could fire the alert) and silence."""
    errors = _Errors()
    events.add_listener(errors)
    got = bytearray()
    try:
        with socket.create_connection((served.host, served.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)

            def read() -> None:
                try:
                    while chunk := sock.recv(1 << 20):
                        got.extend(chunk)
                        if got.count(b"HTTP/1.1 200 OK\r\n") >= 3000:
                            return
                except OSError:
                    pass

            reader = threading.Thread(target=read)
            reader.start()
            sock.sendall(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 3000)
            reader.join(timeout=60)
    finally:
        events.remove_listener(errors)
    assert got.count(b"HTTP/1.1 200 OK\r\n") == 3000
    assert errors.where == []
