"""``budgetspan collector --plain-scope NAME``: an operator declares an instrumentation scope free of
GenAI data, and its spans go through rotel unread (neither priced nor redacted), while the same
spans from any other scope in the same request are priced and redacted as always."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from budgetspan import attributes as A
from budgetspan.collector.core import TierOptions
from tests.processes import ready_line, stop_process, wait_for

from .stack import Receiver, launch

SECRET = "my card number is 4111 1111 1111 1111"


def test_plain_scopes_are_read_from_the_environment() -> None:
    env = {A.ENV_COLLECTOR_PLAIN_SCOPES: " io.opentelemetry.jdbc, ,flask "}
    assert TierOptions.from_env(env).plain_scopes == {"io.opentelemetry.jdbc", "flask"}
    assert TierOptions.from_env({}).plain_scopes == frozenset()


@pytest.fixture(scope="module")
def plain_tier(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[str]:
    pytest.importorskip("rotel")
    tmp = tmp_path_factory.mktemp("plain-tier")
    proc, _ = launch(tmp, receiver.endpoint, "--plain-scope", "acme.http")
    try:
        m = ready_line(proc, r"READY otlp-http=(\S+) ", "collector", tmp / "collector.err")
        yield f"http://{m.group(1)}"
    finally:
        stop_process(proc)


def _request() -> bytes:
    """One request: the same chat span (model, usage, message content) under two scopes."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="plain-scope")))
    for n, scope in enumerate(("acme.http", "acme.llm"), start=1):
        ss = rs.scope_spans.add()
        ss.scope.name = scope
        span = ss.spans.add()
        span.trace_id, span.span_id, span.name = bytes([n]) * 16, bytes([n]) * 8, f"chat in {scope}"
        span.start_time_unix_nano, span.end_time_unix_nano = (
            1_700_000_000_000_000_000,
            1_700_000_000_500_000_000,
        )
        for key, text in (
            ("gen_ai.operation.name", "chat"),
            ("gen_ai.system", "openai"),
            ("gen_ai.request.model", "gpt-4o-mini"),
            ("gen_ai.prompt.0.content", SECRET),
        ):
            span.attributes.append(KeyValue(key=key, value=AnyValue(string_value=text)))
        span.attributes.append(KeyValue(key="gen_ai.usage.prompt_tokens", value=AnyValue(int_value=100)))
    return req.SerializeToString()


def test_a_declared_plain_scope_passes_unread_and_others_are_processed(
    plain_tier: str, receiver: Receiver, tmp_path: Path
) -> None:
    post = urllib.request.Request(
        plain_tier + "/v1/traces", _request(), {"Content-Type": "application/x-protobuf"}
    )
    with urllib.request.urlopen(post, timeout=10) as resp:
        assert resp.status == 200
    names = {"chat in acme.http", "chat in acme.llm"}
    wait_for(lambda: names <= {s.name for s in receiver.snapshot()}, 20, "both spans")
    got = {s.name: s.attributes for s in receiver.snapshot() if s.name in names}
    plain, processed = got["chat in acme.http"], got["chat in acme.llm"]
    assert plain["gen_ai.prompt.0.content"] == SECRET  # the operator's declaration: not read at all
    assert A.GEN_AI_USAGE_COST not in plain and A.COST_SOURCE not in plain
    assert SECRET not in map(str, processed.values())  # any other scope: redacted...
    assert (
        processed[A.COST_SOURCE] == A.COST_SOURCE_COLLECTOR and processed[A.GEN_AI_USAGE_COST] > 0
    )  # ...and priced
