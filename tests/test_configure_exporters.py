"""``configure()`` honours the standard OTEL_* exporter variables when it creates the provider.

Each case runs in a fresh interpreter (the global tracer provider can be set once per process):
a run with one tool call, then the process exits (the SDK flushes at exit). With
``OTEL_TRACES_EXPORTER=otlp`` and an endpoint, the spans must reach a loopback OTLP receiver;
with nothing set, one log line must say the spans go nowhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

SCRIPT = r"""
import budgetspan

@budgetspan.tool
def lookup(x):
    return x

budgetspan.configure(instrument=False)
with budgetspan.run("cfg_wf") as run:
    lookup(1)
print("DONE", flush=True)
"""


def _launch(extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUDGETSPAN_", "OTEL_"))}
    env.update(extra)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stderr[-3000:]
    return proc


def test_otlp_variables_give_an_exporter_and_spans_arrive(otlp_server: Any) -> None:
    proc = _launch(
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_server.url,
            "OTEL_SERVICE_NAME": "cfg-test",
        }
    )
    names, services = [], set()
    for body in otlp_server.bodies.get("/v1/traces", []):
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for rs in request.resource_spans:
            services |= {kv.value.string_value for kv in rs.resource.attributes if kv.key == "service.name"}
            names += [s.name for ss in rs.scope_spans for s in ss.spans]
    assert sorted(names) == ["execute_tool lookup", "invoke_agent cfg_wf"]
    assert services == {"cfg-test"}  # the resource variables are honoured too
    assert "spans go nowhere" not in proc.stderr


def test_an_endpoint_alone_means_otlp(otlp_server: Any) -> None:
    _launch({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_server.url})
    assert otlp_server.bodies.get("/v1/traces")


def test_no_exporter_says_so_in_one_line() -> None:
    proc = _launch({})
    assert proc.stderr.count("spans go nowhere") == 1
    proc = _launch({"OTEL_TRACES_EXPORTER": "none"})  # asked for: nothing to say
    assert proc.stderr.count("spans go nowhere") == 0
