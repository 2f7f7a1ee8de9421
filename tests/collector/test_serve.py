"""The tier's own /metrics endpoint (collector/serve.py), started as inside rotel: review11."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest

from budgetspan import attributes as A
from budgetspan.collector import serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_tiers_endpoint_bounds_its_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """prometheus-client's ``start_http_server`` served the tier's metrics with a thread per
    connection, no limit and no timeout: 200 clients that connect and send nothing were 200
    threads in rotel's process (issue 15's half-open connections, at the collector). Now the
    in-process endpoint's server: one thread, at most 32 connections, and a scrape still served."""
    port = _free_port()
    monkeypatch.setenv(A.ENV_COLLECTOR_METRICS_PORT, str(port))
    before = threading.active_count()
    serve.start_tier()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    try:
        time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert resp.status == 200 and b"budgetspan_" in resp.read()
        assert threading.active_count() - before <= 3  # the server's thread and the sweeper
    finally:
        for s in idle:
            s.close()
