"""The collector tier's test stack: a loopback OTLP/HTTP receiver, ``budgetspan collector``
launched as a user runs it, and what a Prometheus scraping it must show (``empty_panels``)."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.processes import free_port, ready_line, stop_process
from tests.prometheus_server import Prometheus, expand

REPO = Path(__file__).resolve().parents[2]

#: Budgets the tier accounts against (observe mode): a support run may make 2 model calls. The
#: services that name no workflow (``foreign.py``) are accounted under their service name.
BUDGETS_TOML = """
[workflows.support]
max_model_calls = 2
max_cost_usd = 1.0

[workflows.support-node]
max_model_calls = 2
max_cost_usd = 1.0

[workflows.support-openllmetry]
max_model_calls = 2
max_cost_usd = 1.0
"""


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


@dataclass
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    parent_id: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    start_ns: int = 0
    span_id: str = ""


@dataclass
class Receiver:
    """A loopback OTLP/HTTP (protobuf) traces endpoint that keeps what it receives."""

    port: int
    spans: list[ReceivedSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        got = []
        for rs in req.resource_spans:
            res = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    got.append(
                        ReceivedSpan(
                            str(res.get("service.name", "")),
                            sp.name,
                            sp.trace_id.hex(),
                            sp.parent_span_id.hex(),
                            {kv.key: _value(kv.value) for kv in sp.attributes},
                            [(e.name, {kv.key: _value(kv.value) for kv in e.attributes}) for e in sp.events],
                            sp.start_time_unix_nano,
                            sp.span_id.hex(),
                        )
                    )
        with self.lock:
            self.spans.extend(got)

    def snapshot(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)


@contextlib.contextmanager
def running_receiver() -> Iterator[Receiver]:
    """A ``Receiver`` serving on loopback until the block ends."""
    rec = Receiver(free_port())

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":  # rotel's exporter compresses
                body = gzip.decompress(body)
            rec.add(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", rec.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Tier:
    otlp_http: str
    metrics_url: str
    metrics_port: int
    proc: subprocess.Popen[str]


def launch(
    tmp: Path, exporter: str, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], list[str]]:
    """``budgetspan collector`` as a user runs it; returns the process and its command."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    cmd = [
        sys.executable,
        "-m",
        "budgetspan.cli",
        "collector",
        "--otlp-http-endpoint",
        f"127.0.0.1:{http_port}",
        "--otlp-grpc-endpoint",
        f"127.0.0.1:{grpc_port}",
        "--exporter-endpoint",
        exporter,
        "--metrics-port",
        str(metrics_port),
        "--window-s",
        "5",
        *extra,
    ]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGETSPAN_")}
    full_env.update(env or {})
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=(tmp / "collector.err").open("w"), text=True, env=full_env
    )
    return proc, cmd


@contextlib.contextmanager
def running_tier(tmp: Path, exporter: str) -> Iterator[Tier]:
    """``budgetspan collector`` (accounting against ``BUDGETS_TOML``), up until the block ends."""
    tmp.mkdir(parents=True, exist_ok=True)
    budgets = tmp / "budgets.toml"
    budgets.write_text(BUDGETS_TOML)
    proc, _ = launch(tmp, exporter, env={"BUDGETSPAN_CONFIG": str(budgets)})
    try:
        m = ready_line(
            proc, r"READY otlp-http=(\S+) otlp-grpc=\S+ metrics=(\S+)", "collector", tmp / "collector.err"
        )
        metrics_port = int(re.search(r":(\d+)/metrics", m.group(2)).group(1))  # type: ignore[union-attr]
        yield Tier(f"http://{m.group(1)}", m.group(2), metrics_port, proc)
    finally:
        stop_process(proc)


#: The words of a panel description whose series the collector tier cannot produce.
COLLECTOR_TIER_NOTE = "not by the collector tier"


def empty_panels(prom: Prometheus, dash: dict[str, Any], variables: dict[str, str]) -> list[str]:
    """Each panel query of a dashboard with no finite value over the last 30 s: "uid / title: expr"."""
    empty = []
    end = time.time()
    for panel in dash["panels"]:
        if COLLECTOR_TIER_NOTE in panel.get("description", ""):
            continue  # e.g. background jobs' series: only the processes that run jobs count them
        for target in panel.get("targets", []):
            expr = expand(target["expr"], variables)
            if panel["type"] == "stat":
                ok = any(math.isfinite(float(r["value"][1])) for r in prom.query(expr))
            else:
                data = prom.api("query_range", query=expr, start=str(end - 30), end=str(end), step="2")
                ok = any(math.isfinite(float(v)) for r in data["result"] for _, v in r["values"])
            if not ok:
                empty.append(f"{dash['uid']} / {panel['title']}: {expr}")
    return empty
