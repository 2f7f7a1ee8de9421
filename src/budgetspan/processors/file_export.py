"""A span exporter writing OTLP JSON lines, the OpenTelemetry Collector file exporter's format.

Each line is one ``ExportTraceServiceRequest`` in OTLP/JSON: lowerCamelCase field names, trace
and span ids as hex, enums as integers, 64-bit integers as strings. ``budgetspan report`` reads
these files, and so does anything that reads the Collector's ``file`` exporter output.

Lines are appended with one ``write`` on an ``O_APPEND`` descriptor, so several processes can
share a file without interleaving lines.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

log = logging.getLogger(__name__)

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _hex_ids(node: Any) -> None:
    """Protobuf's JSON mapping writes bytes as base64; OTLP/JSON wants ids as hex."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)


def encode_request(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """The OTLP/JSON ``ExportTraceServiceRequest`` for ``spans`` (as a dict)."""
    message = encode_spans(spans)
    data: dict[str, Any] = MessageToDict(message, use_integers_for_enums=True)
    _hex_ids(data)
    return data


def encode_line(spans: Sequence[ReadableSpan]) -> str:
    """One JSON line (with its newline) for ``spans``."""
    return json.dumps(encode_request(spans), separators=(",", ":"), ensure_ascii=False) + "\n"


class FileSpanExporter(SpanExporter):
    """Appends one OTLP/JSON line per export batch to ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            data = encode_line(spans).encode("utf-8")
            with self._lock:
                if self._fd is None:
                    return SpanExportResult.FAILURE
                os.write(self._fd, data)
        except Exception:
            log.warning("budgetspan: cannot write spans to %s", self.path, exc_info=True)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # every export is written straight through

    def shutdown(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def file_span_processor(path: str | os.PathLike[str]) -> SpanProcessor:
    """A batching processor writing to ``path`` (used when BUDGETSPAN_TRACES_FILE is set).

    Batches are flushed on ``force_flush``/``shutdown`` (the SDK provider shuts down at exit).
    """
    return BatchSpanProcessor(FileSpanExporter(path), schedule_delay_millis=500)


__all__ = ["FileSpanExporter", "encode_line", "encode_request", "file_span_processor"]
