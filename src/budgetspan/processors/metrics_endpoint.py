"""The process's metrics and their Prometheus endpoint: created once, served once, closed with
the tracer provider.

Exposition: ``BUDGETSPAN_METRICS_PORT`` on 127.0.0.1 (``BUDGETSPAN_METRICS_ADDR`` to change),
served by ``metrics_server.MetricsServer`` (one thread, bounded connections and idle time, paced
rendering) rather than prometheus-client's thread-per-connection server.
A port already in use is logged as an error and the program goes on.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from prometheus_client import REGISTRY, CollectorRegistry

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.config_numbers import count_at_most
from budgetspan.processors.metrics import BudgetspanMetrics, multiprocess_mode
from budgetspan.processors.metrics_server import MetricsServer
from budgetspan.processors.scope_metrics import ScopeMetrics

if TYPE_CHECKING:
    from opentelemetry.context import Context

log = logging.getLogger(__name__)

# --- process-wide installation ---------------------------------------------------------------

_lock = threading.Lock()
_metrics: BudgetspanMetrics | None = None
_server: MetricsServer | None = None  # the server serving /metrics, if any
_scope_metrics: list[ScopeMetrics] = []  # budgets above the run: made with _metrics


def get_metrics() -> BudgetspanMetrics:
    """The process's metrics on the default registry, created and subscribed on first use."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = BudgetspanMetrics(REGISTRY)
            _scope_metrics.append(ScopeMetrics(REGISTRY))
        events.add_listener(_metrics)  # again if it was removed (add_listener ignores repeats)
        events.add_listener(_scope_metrics[0])
        return _metrics


def exposition_registry() -> CollectorRegistry:
    """What /metrics serves: the default registry, or the workers' sum in multiprocess mode."""
    if not multiprocess_mode():
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    registry.register(_Reaping(multiprocess.MultiProcessCollector(None)))  # type: ignore[no-untyped-call]
    return registry


class _Reaping:
    """The workers' sum, less the live gauges (``budgetspan_live_runs``) of processes that are
    gone. Why: a worker killed mid-run (a Celery pool process, an OOM kill) left its live runs
    counted for ever unless someone called ``mark_process_dead``, which no Celery hook does."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def collect(self) -> Any:
        try:
            forget_dead_processes(os.environ[A.ENV_PROMETHEUS_MULTIPROC_DIR])
        except Exception:
            events.internal_error("metrics.reap")
        return self.inner.collect()


def forget_dead_processes(path: str) -> list[int]:
    """``mark_process_dead`` for every process with live-gauge files in ``path`` that no longer
    exists (on this host); the pids forgotten."""
    from prometheus_client import multiprocess

    gone = []
    for name in os.listdir(path):
        if not (name.startswith("gauge_live") and name.endswith(".db")):
            continue
        pid_text = name[: -len(".db")].rsplit("_", 1)[-1]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        multiprocess.mark_process_dead(int(pid_text), path)  # type: ignore[no-untyped-call]
        gone.append(int(pid_text))
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def port_from_env() -> int | None:
    """``BUDGETSPAN_METRICS_PORT`` as a port number; unset or empty: None (no endpoint)."""
    raw = os.environ.get(A.ENV_METRICS_PORT, "").strip()
    if not raw:
        return None
    port = count_at_most(raw, 65535)  # (configure() refused a bad one already: the same grammar)
    if port < 0:
        log.error(
            "budgetspan: %s=%r is not a port number (0-65535); the metrics endpoint is off",
            A.ENV_METRICS_PORT,
            raw,
        )
        return None
    return port


def serve(port: int, addr: str | None = None) -> tuple[str, int] | None:
    """Serve /metrics on ``addr:port`` (once per process). Returns the bound address, or None.

    Port 0 picks a free port. A port in use (say, a second worker of a pre-forking server) is
    logged as an error and the program goes on without its own endpoint.
    """
    global _server
    host = addr or os.environ.get(A.ENV_METRICS_ADDR, "").strip() or "127.0.0.1"
    with _lock:
        if _server is not None:
            return server_address()
        try:
            server = MetricsServer(exposition_registry(), host, port).start()
        except OSError as e:
            hint = (
                " In multiprocess mode another worker may be serving every worker's metrics."
                if multiprocess_mode()
                else ""
            )
            log.error(
                "budgetspan: cannot serve Prometheus metrics on %s:%d (%s: %s); set %s to a free "
                "port. The program goes on without a metrics endpoint.%s",
                host,
                port,
                type(e).__name__,
                e.strerror or e,
                A.ENV_METRICS_PORT,
                hint,
            )
            return None
        _server = server
    bound = server_address()
    log.info("budgetspan: Prometheus metrics on http://%s:%d/metrics", *(bound or (host, port)))
    return bound


def server_address() -> tuple[str, int] | None:
    server = _server
    if server is None:
        return None
    host, port = server.server_address
    return str(host), int(port)


def stop_server() -> None:
    global _server
    with _lock:
        server, _server = _server, None
    if server is not None:
        server.shutdown()


def _after_fork_in_child() -> None:
    """A child forked from a process that serves /metrics (a Celery prefork pool, a pre-forking
    web server, ``multiprocessing``) counts in its own copy of the registry, which nothing serves:
    without multiprocess mode the parent's endpoint never shows what the child does. Said once
    per child, not silently."""
    server = _server
    if server is None or multiprocess_mode():
        return
    host, port = server.server_address[:2]
    log.warning(
        "budgetspan: process %d was forked from one serving Prometheus metrics on %s:%s: its "
        "metrics (the runs, calls and jobs it runs) are not on that endpoint. Set "
        "PROMETHEUS_MULTIPROC_DIR to a writable directory before start to serve every process's sum.",
        os.getpid(),
        host,
        port,
    )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class MetricsSpanProcessor(SpanProcessor):
    """No-op for spans (metrics come from events); closes the endpoint when the provider shuts down."""

    def __init__(self, metrics: BudgetspanMetrics, address: tuple[str, int] | None) -> None:
        self.metrics = metrics
        self.address = address

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        if self.address is not None and self.address == server_address():
            stop_server()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def install(port: int | None = None, addr: str | None = None) -> MetricsSpanProcessor:
    """Subscribe the metrics to budgetspan's events and, with a port (argument or
    ``BUDGETSPAN_METRICS_PORT``), serve them. Called by ``budgetspan.setup.install_processors``."""
    metrics = get_metrics()
    if port is None:
        port = port_from_env()
    address = serve(port, addr) if port is not None else None
    return MetricsSpanProcessor(metrics, address)
