"""The front of a scaled-out tier, for the test: an OTLP/HTTP (protobuf) router that sends each
span to one of several collectors chosen by its trace id, so that one run's spans meet in one
processor.

rotel has no load-balancing exporter (its exporters: otlp, blackhole, datadog, clickhouse,
aws-xray, kafka), and no OpenTelemetry Collector binary runs here; in production the front is the
OpenTelemetry Collector's ``loadbalancing`` exporter with ``routing_key: traceID``
(``budgetspan collector-config --load-balance``). This stands in for it, with the same contract:
spans of one trace always go to the same collector; the resource and scope travel with them.
"""

from __future__ import annotations

import gzip
import http.client
import http.server
import threading
import urllib.parse
import zlib
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def split_by_trace(body: bytes, n: int) -> list[ExportTraceServiceRequest]:
    """One request per collector: each span under a copy of its resource and scope."""
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = [ExportTraceServiceRequest() for _ in range(n)]
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            groups: dict[int, Any] = {}
            for span in ss.spans:
                i = zlib.crc32(span.trace_id) % n
                if i not in groups:
                    new_rs = out[i].resource_spans.add()
                    new_rs.resource.CopyFrom(rs.resource)
                    new_rs.schema_url = rs.schema_url
                    groups[i] = new_rs.scope_spans.add()
                    groups[i].scope.CopyFrom(ss.scope)
                    groups[i].schema_url = ss.schema_url
                groups[i].spans.add().CopyFrom(span)
    return out


class TraceRouter:
    """Listens on loopback; answers 200 only once every collector it forwarded to accepted."""

    def __init__(self, collectors: list[str]) -> None:
        self.collectors = [urllib.parse.urlsplit(c) for c in collectors]
        self.sent = [0] * len(collectors)  # spans forwarded to each
        lock = threading.Lock()
        router = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                status = 200
                for i, part in enumerate(split_by_trace(body, len(router.collectors))):
                    count = sum(len(ss.spans) for rs in part.resource_spans for ss in rs.scope_spans)
                    if count == 0:
                        continue
                    if router.forward(i, part.SerializeToString()) != 200:
                        status = 503
                    with lock:
                        router.sent[i] += count
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forward(self, i: int, body: bytes) -> int:
        target = self.collectors[i]
        conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=10)
        try:
            conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
