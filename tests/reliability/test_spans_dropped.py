"""Spans the exporter pipeline loses are counted: export failures (endpoint down, HTTP 500) and a
full batch queue, as ``budgetspan_spans_dropped_total{reason}``. Real OTLP/HTTP exporter, real
loopback endpoints; the application never sees an exception."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import budgetspan
from budgetspan.processors.export_watch import watch_provider
from tests.conftest import events_to
from tests.reliability._support import OtlpEndpoint
from tests.reliability.conftest import Lean


class Drops:
    def __init__(self) -> None:
        self.by_reason: dict[str, int] = {}
        self._lock = threading.Lock()

    def on_spans_dropped(self, reason: str, count: int) -> None:
        with self._lock:
            self.by_reason[reason] = self.by_reason.get(reason, 0) + count


@pytest.fixture
def drops() -> Iterator[Drops]:
    with events_to(Drops()) as d:
        yield d


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1/traces"


def _three_spans() -> None:
    @budgetspan.tool
    def lookup() -> int:
        return 1

    with budgetspan.run("drops"):
        assert lookup() == 1
        assert lookup() == 1


@pytest.mark.parametrize("where", ["down", "error"])
def test_failed_exports_are_counted(lean: Lean, drops: Drops, where: str) -> None:
    endpoint = OtlpEndpoint("error") if where == "error" else None
    if endpoint is not None:
        endpoint.__enter__()
    try:
        url = endpoint.url if endpoint else _closed_port_url()
        batch = BatchSpanProcessor(OTLPSpanExporter(endpoint=url, timeout=0.3))
        lean.provider.add_span_processor(batch)
        watch_provider(lean.provider)
        _three_spans()
        batch.shutdown()
    finally:
        if endpoint is not None:
            endpoint.__exit__(None, None, None)
    assert drops.by_reason == {"export_failed": 3}  # the run span and two tool spans


def test_processors_added_after_watching_are_counted(lean: Lean, drops: Drops) -> None:
    watch_provider(lean.provider)
    batch = BatchSpanProcessor(OTLPSpanExporter(endpoint=_closed_port_url(), timeout=0.3))
    lean.provider.add_span_processor(batch)
    _three_spans()
    batch.shutdown()
    assert drops.by_reason == {"export_failed": 3}


class Stuck(SpanExporter):
    """An exporter that blocks until released: the batch queue fills behind it."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        return SpanExportResult.SUCCESS


def test_full_queue_is_counted(lean: Lean, drops: Drops) -> None:
    stuck = Stuck()
    batch = BatchSpanProcessor(stuck, max_queue_size=4, max_export_batch_size=1, schedule_delay_millis=1)
    lean.provider.add_span_processor(batch)
    watch_provider(lean.provider)

    @budgetspan.tool
    def lookup() -> int:
        return 1

    with budgetspan.run("queue"):
        for _ in range(20):
            assert lookup() == 1
    stuck.release.set()
    batch.shutdown()
    # 21 spans: at most 4 queued + 1 in the stuck export; the rest were dropped and counted
    assert drops.by_reason.get("queue_full", 0) >= 21 - 4 - 2


def test_the_metric_counts_them(lean: Lean) -> None:
    from prometheus_client import generate_latest

    from budgetspan.processors import metrics_endpoint as endpoint

    endpoint.install(None)
    batch = BatchSpanProcessor(OTLPSpanExporter(endpoint=_closed_port_url(), timeout=0.3))
    lean.provider.add_span_processor(batch)
    watch_provider(lean.provider)
    _three_spans()
    batch.shutdown()
    text = generate_latest(endpoint.exposition_registry()).decode()
    line = [
        x for x in text.splitlines() if x.startswith('budgetspan_spans_dropped_total{reason="export_failed"}')
    ]
    assert line and float(line[0].split()[-1]) >= 3
