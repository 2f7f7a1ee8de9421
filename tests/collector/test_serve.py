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


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (A.ENV_COLLECTOR_KEEP_CONTENT, "ture"),  # was silently "redact": a typo'd switch ignored
        (A.ENV_COLLECTOR_METRICS_PORT, "9" * 5000),  # was ValueError (int's 4,300-digit limit)
        (A.ENV_COLLECTOR_METRICS_ADDR, "not an address"),  # was a gaierror traceback in rotel
    ],
)
def test_a_bad_collector_variable_is_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(A.ENV_COLLECTOR_METRICS_PORT, "0")
    monkeypatch.setenv(name, value)
    with pytest.raises(serve.ConfigError) as info:
        serve.start_tier()
    assert str(info.value).startswith(name + "=") and len(str(info.value)) < 200
