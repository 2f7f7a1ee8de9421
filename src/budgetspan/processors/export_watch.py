"""Count the spans an exporter pipeline loses: a full batch queue, or an export that failed.

The SDK's batch processor drops silently (a log line) when its queue is full, and an exporter's
FAILURE (an endpoint that is down, or answers 500) loses the whole batch. Neither is visible to the
application; both are emitted here as ``on_spans_dropped(reason, count)`` for the metrics.

This reads SDK internals (the batch processor's queue and exporter), so every step is guarded:
when the SDK's shape differs, nothing is watched and nothing breaks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from budgetspan import events

log = logging.getLogger(__name__)

QUEUE_FULL = "queue_full"
EXPORT_FAILED = "export_failed"


class CountingExporter(SpanExporter):
    """Delegates to the real exporter; a FAILURE or an exception counts the batch as dropped."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            events.emit("on_spans_dropped", EXPORT_FAILED, len(spans))
            raise
        if result is not SpanExportResult.SUCCESS:
            events.emit("on_spans_dropped", EXPORT_FAILED, len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.inner.force_flush(timeout_millis))

    def __getattr__(self, name: str) -> Any:  # anything else the SDK or user reads from it
        return getattr(self.inner, name)


def _watch_batch(proc: BatchSpanProcessor) -> None:
    batch = getattr(proc, "_batch_processor", None)
    if batch is None or not hasattr(batch, "_exporter") or not hasattr(batch, "_queue"):
        return
    if not isinstance(batch._exporter, CountingExporter):
        batch._exporter = CountingExporter(batch._exporter)
    if getattr(batch, "_budgetspan_watched", False):
        return
    emit = batch.emit

    def counting_emit(data: Any) -> None:
        try:
            if len(batch._queue) >= batch._max_queue_size:
                events.emit("on_spans_dropped", QUEUE_FULL, 1)
        except Exception:
            pass
        emit(data)

    batch.emit = counting_emit
    batch._budgetspan_watched = True


def watch(processor: Any) -> None:
    """Start counting what ``processor`` (a batch or simple span processor) loses."""
    try:
        if isinstance(processor, BatchSpanProcessor):
            _watch_batch(processor)
        elif isinstance(processor, SimpleSpanProcessor):
            exporter = getattr(processor, "span_exporter", None)
            if exporter is not None and not isinstance(exporter, CountingExporter):
                processor.span_exporter = CountingExporter(exporter)
    except Exception:
        log.debug("budgetspan: cannot watch %r for dropped spans", processor, exc_info=True)


def watch_provider(provider: Any) -> None:
    """Watch the provider's exporting processors, now and those added later."""
    try:
        for proc in tuple(provider._active_span_processor._span_processors):
            watch(proc)
        if getattr(provider, "_budgetspan_add_watched", False):
            return
        add = provider.add_span_processor

        def add_and_watch(span_processor: Any) -> None:
            add(span_processor)
            watch(span_processor)

        provider.add_span_processor = add_and_watch
        provider._budgetspan_add_watched = True
    except Exception:
        log.debug("budgetspan: cannot watch the provider's exporters", exc_info=True)
