"""The OTLP JSON lines file exporter (the Collector file exporter's format)."""

from __future__ import annotations

import base64
import json
import re
import threading
from pathlib import Path

import pytest
from google.protobuf.json_format import Parse
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import budgetspan
from budgetspan import attributes as A
from budgetspan.processors.file_export import FileSpanExporter, encode_line, file_span_processor
from budgetspan.report.load import parse_line
from budgetspan.runs.context import set_tracer_provider
from budgetspan.setup import install_processors

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")


@budgetspan.tool(read_only=True)
def lookup(x: int) -> int:
    return x * 2


@budgetspan.tool
def broken() -> None:
    raise ValueError("nope")


def _make_spans(tracing) -> list:  # type: ignore[no-untyped-def]
    with budgetspan.run("export_test", budget={"max_tool_calls": 5}) as run:
        with budgetspan.phase("tool_execution", label="Looking up"):
            lookup(1)
            with pytest.raises(ValueError):
                broken()
        run.succeed()
    return list(tracing.exporter.get_finished_spans())


def _ids_to_base64(node: object) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str):
                node[k] = base64.b64encode(bytes.fromhex(v)).decode()
            else:
                _ids_to_base64(v)
    elif isinstance(node, list):
        for x in node:
            _ids_to_base64(x)


def test_line_is_otlp_json_with_hex_ids_integer_enums_and_string_int64(tracing) -> None:
    spans = _make_spans(tracing)
    line = encode_line(spans)
    assert line.endswith("\n") and "\n" not in line[:-1]
    data = json.loads(line)
    (rs,) = data["resourceSpans"]
    assert {"key": "telemetry.sdk.language", "value": {"stringValue": "python"}} in rs["resource"][
        "attributes"
    ]
    (ss,) = rs["scopeSpans"]
    assert ss["scope"]["name"] == A.INSTRUMENTATION_SCOPE
    out = {s["name"]: s for s in ss["spans"]}
    assert set(out) == {
        "invoke_agent export_test",
        "phase tool_execution",
        "execute_tool lookup",
        "execute_tool broken",
    }
    run_span, phase_span = out["invoke_agent export_test"], out["phase tool_execution"]
    for s in ss["spans"]:
        assert HEX32.match(s["traceId"]) and HEX16.match(s["spanId"])
        assert isinstance(s["kind"], int)
        assert isinstance(s["startTimeUnixNano"], str) and s["startTimeUnixNano"].isdigit()
        assert int(s["endTimeUnixNano"]) >= int(s["startTimeUnixNano"])
    assert "parentSpanId" not in run_span
    assert phase_span["parentSpanId"] == run_span["spanId"]
    assert out["execute_tool lookup"]["parentSpanId"] == phase_span["spanId"]
    assert out["execute_tool broken"]["status"]["code"] == 2  # STATUS_CODE_ERROR
    assert any(e["name"] == "exception" for e in out["execute_tool broken"]["events"])
    attrs = {a["key"]: a["value"] for a in out["execute_tool lookup"]["attributes"]}
    assert attrs[A.READ_ONLY] == {"boolValue": True}
    assert attrs[A.GEN_AI_TOOL_NAME] == {"stringValue": "lookup"}
    run_attrs = {a["key"]: a["value"] for a in run_span["attributes"]}
    assert run_attrs[A.LIMIT_PREFIX + "max_tool_calls"] == {"intValue": "5"}
    assert "doubleValue" in run_attrs[A.RUN_WALL_S]


def test_line_is_exactly_the_protobuf_request_up_to_id_encoding(tracing) -> None:
    """OTLP/JSON differs from protobuf's JSON mapping only in hex ids: convert them back and compare."""
    spans = _make_spans(tracing)
    data = json.loads(encode_line(spans))
    _ids_to_base64(data)
    parsed = Parse(json.dumps(data), ExportTraceServiceRequest())
    assert parsed == encode_spans(spans)


def test_report_reader_reads_back_what_the_exporter_wrote(tracing) -> None:
    spans = _make_spans(tracing)
    records = {r.name: r for r in parse_line(encode_line(spans))}
    original = {s.name: s for s in spans}
    assert set(records) == set(original)
    for name, rec in records.items():
        s = original[name]
        assert rec.trace_id == format(s.context.trace_id, "032x")
        assert rec.span_id == format(s.context.span_id, "016x")
        assert rec.start_ns == s.start_time and rec.end_ns == s.end_time
        assert rec.attrs == dict(s.attributes)
    assert records["execute_tool broken"].error and not records["execute_tool lookup"].error


def test_concurrent_exports_never_interleave_lines(tmp_path: Path, tracing) -> None:
    spans = _make_spans(tracing)
    path = tmp_path / "spans.jsonl"
    exporters = [FileSpanExporter(path) for _ in range(2)]  # two writers, like two processes

    def write(exp: FileSpanExporter) -> None:
        for _ in range(200):
            exp.export(spans)

    threads = [threading.Thread(target=write, args=(e,)) for e in exporters for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in exporters:
        e.shutdown()
    lines = path.read_text().splitlines()
    assert len(lines) == 800
    assert all(len(json.loads(ln)["resourceSpans"][0]["scopeSpans"][0]["spans"]) == 4 for ln in lines)


def test_setup_writes_spans_to_budgetspan_traces_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracing
) -> None:
    path = tmp_path / "nested" / "traces.jsonl"
    monkeypatch.setenv(A.ENV_TRACES_FILE, str(path))
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    assert install_processors(provider)
    set_tracer_provider(provider)
    with budgetspan.run("from_env"):
        lookup(2)
    provider.shutdown()  # flushes the batch
    records = [r for line in path.read_text().splitlines() for r in parse_line(line)]
    assert sorted(r.name for r in records) == sorted(s.name for s in memory.get_finished_spans())
    assert {r.attrs.get(A.WORKFLOW) for r in records} == {"from_env"}


def test_processor_flushes_on_force_flush_and_appends(tmp_path: Path, tracing) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("")
    provider = TracerProvider()
    provider.add_span_processor(file_span_processor(path))
    tracer = provider.get_tracer("t")
    tracer.start_span("one").end()
    assert provider.force_flush()
    assert len(path.read_text().splitlines()) == 1
    tracer.start_span("two").end()
    provider.shutdown()
    names = [r.name for ln in path.read_text().splitlines() for r in parse_line(ln)]
    assert names == ["one", "two"]
