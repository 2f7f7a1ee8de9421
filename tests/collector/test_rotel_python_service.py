"""End to end: a Python service's OpenTelemetry SDK spans, shaped like OpenLLMetry's, go over
OTLP/HTTP to rotel running budgetspan's processor (launched with ``budgetspan collector``), which
forwards them to a loopback OTLP receiver; a real Prometheus scrapes the tier's metrics.

One tier and one Prometheus for the module; the service sends rounds of runs in the background
until the module ends (rates need samples over time)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from budgetspan import attributes as A
from budgetspan.accounting.pricing import default_resolver
from tests.prometheus_server import Prometheus, wait_for

from .stack import COLLECTOR_TIER_NOTE, ReceivedSpan, Receiver, Tier, empty_panels, launch

REPO = Path(__file__).resolve().parents[2]
SERVICE = "support-api"
UPSTREAM_COST = 0.001234
IN_PROCESS_ONLY = {
    "Budget-exhaustion share",
    "Budget exhaustions by reason",
    "Retries by type",
    "Budget extensions and loop stops",
}


def _chat(tracer: trace.Tracer, model: str, usage: tuple[int, int] | None, **extra: Any) -> None:
    """A chat span as OpenLLMetry's older OpenAI instrumentation makes it (content included)."""
    with tracer.start_as_current_span("openai.chat", kind=trace.SpanKind.CLIENT) as s:
        s.set_attributes(
            {
                "llm.request.type": "chat",
                "gen_ai.system": "OpenAI",
                "gen_ai.request.model": model,
                "traceloop.workflow.name": "support",
                "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": "my card number is 4111 1111 1111 1111",
                "gen_ai.completion.0.content": "I will look into it",
                **extra,
            }
        )
        if usage is not None:
            s.set_attribute("gen_ai.usage.prompt_tokens", usage[0])
            s.set_attribute("gen_ai.usage.completion_tokens", usage[1])
        s.add_event("gen_ai.content.prompt", {"gen_ai.prompt": "my card number is 4111"})


def _tool(tracer: trace.Tracer, name: str, ok: bool = True) -> None:
    with tracer.start_as_current_span(f"{name}.tool") as s:
        s.set_attributes(
            {
                "traceloop.span.kind": "tool",
                "traceloop.entity.name": name,
                "traceloop.entity.input": '{"order": "A-1", "email": "a@example.com"}',
                "traceloop.workflow.name": "support",
            }
        )
        if not ok:
            s.set_status(trace.StatusCode.ERROR)


def _support_run(tracer: trace.Tracer, chats: int, model: str = "gpt-4o-mini", tool_ok: bool = True) -> None:
    with tracer.start_as_current_span("support.workflow", kind=trace.SpanKind.SERVER) as root:
        root.set_attributes({"traceloop.span.kind": "workflow", "traceloop.workflow.name": "support"})
        with tracer.start_as_current_span("GET /orders", kind=trace.SpanKind.CLIENT) as http:
            http.set_attribute("http.request.method", "GET")
        _tool(tracer, "lookup_order", tool_ok)
        for _ in range(chats):
            _chat(tracer, model, (100, 20), **{"gen_ai.usage.cache_read_input_tokens": 40})


def _inprocess_run(tracer: trace.Tracer, n: int) -> None:
    """A run as budgetspan in-process reports it: enforce mode stopped it at its tool limit."""
    run_id = f"run-{n}"
    with tracer.start_as_current_span("invoke_agent triage") as run:
        with tracer.start_as_current_span("chat gpt-4o-mini") as s:
            s.set_attributes(
                {
                    A.GEN_AI_OPERATION_NAME: A.OP_CHAT,
                    A.GEN_AI_PROVIDER_NAME: "openai",
                    A.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
                    A.GEN_AI_USAGE_INPUT_TOKENS: 200,
                    A.GEN_AI_USAGE_OUTPUT_TOKENS: 10,
                    A.GEN_AI_USAGE_COST: UPSTREAM_COST,
                    A.TIME_TO_FIRST_TOKEN_S: 0.05,
                    A.RETRIES: 1,
                    A.RUN_ID: run_id,
                    A.WORKFLOW: "triage",
                    A.PHASE: "model_decision",
                }
            )
        for result in ("miss", "hit"):  # budgetspan's cache, as budgetspan.cached reports it
            with tracer.start_as_current_span("cached search_policy") as c:
                c.set_attributes(
                    {
                        A.CACHE_NAME: "search_policy",
                        A.CACHE_RESULT: result,
                        A.CACHE_SCOPE: "tenant",
                        A.RUN_ID: run_id,
                        A.WORKFLOW: "triage",
                        **({A.CACHE_SAVED_USD: 0.002, A.CACHE_SAVED_S: 0.4} if result == "hit" else {}),
                    }
                )
        run.set_attributes(
            {
                A.GEN_AI_OPERATION_NAME: A.OP_INVOKE_AGENT,
                A.RUN_ID: run_id,
                A.WORKFLOW: "triage",
                A.RUN_OUTCOME: "budget_exhausted",
                A.EXHAUSTED_REASON: "max_tool_calls",
                A.BUDGET_EXTENSIONS: 1,  # extended once at its cost limit, then stopped at the tool limit
                A.BUDGET_EXTENDED_LIMITS: "max_cost_usd",
            }
        )
    with tracer.start_as_current_span("invoke_agent triage") as looped:  # stopped as a loop
        looped.set_attributes(
            {
                A.GEN_AI_OPERATION_NAME: A.OP_INVOKE_AGENT,
                A.RUN_ID: run_id + "-loop",
                A.WORKFLOW: "triage",
                A.RUN_OUTCOME: "budget_exhausted",
                A.EXHAUSTED_REASON: "no_progress",
                A.LOOP_STOPPED: "repeated_call",
            }
        )


def round_of_runs(tracer: trace.Tracer, n: int) -> None:
    """Six runs (one trace each): within, over and without a price; a stream; two in-process
    (one stopped at its tool limit, one stopped as a loop)."""
    _support_run(tracer, 2)  # within its profile
    _support_run(tracer, 3)  # the third model call is over max_model_calls = 2
    _support_run(tracer, 1, model="acme-llm-1", tool_ok=False)  # no known price
    with tracer.start_as_current_span("support.workflow") as root:  # a stream without usage
        root.set_attribute("traceloop.workflow.name", "support")
        _chat(tracer, "gpt-4o-mini", None, **{"llm.is_streaming": True})
    _inprocess_run(tracer, n)


class Service:
    def __init__(self, endpoint: str) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": SERVICE}))
        self.sent = InMemorySpanExporter()
        self.provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint + "/v1/traces"))
        )
        self.provider.add_span_processor(SimpleSpanProcessor(self.sent))
        self.tracer = self.provider.get_tracer("opentelemetry.instrumentation.openai")
        self.stop = threading.Event()
        self.rounds = 0

    def loop(self) -> None:
        while not self.stop.is_set():
            round_of_runs(self.tracer, self.rounds)
            self.rounds += 1
            self.stop.wait(0.3)


@pytest.fixture(scope="module")
def service(tier: Tier, receiver: Receiver) -> Iterator[Service]:
    svc = Service(tier.otlp_http)
    thread = threading.Thread(target=svc.loop, daemon=True)
    thread.start()
    wait_for(
        lambda: svc.rounds >= 2 and len(receiver.snapshot()) >= len(svc.sent.get_finished_spans()) // 2,
        30,
        "spans through the tier",
    )
    yield svc
    svc.stop.set()
    thread.join(10)
    svc.provider.shutdown()


def _by_trace(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    out: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        out.setdefault(s.trace_id, []).append(s)
    return out


def _settled(service: Service, receiver: Receiver) -> tuple[list[Any], list[ReceivedSpan]]:
    """What the service sent by now, and what the receiver got of it (waits for stragglers)."""
    sent = list(service.sent.get_finished_spans())
    ids = {format(s.context.span_id, "016x") for s in sent}
    wait_for(
        lambda: len({1 for r in receiver.snapshot() if r.parent_id in ids or r.parent_id == ""}) > 0,
        10,
        "spans",
    )
    time.sleep(1.0)  # rotel batches for up to 200 ms
    return sent, receiver.snapshot()


def test_every_span_arrives_and_genai_spans_are_priced_tagged_redacted(
    service: Service, receiver: Receiver
) -> None:
    sent, got = _settled(service, receiver)
    sent_traces = {format(s.context.trace_id, "032x") for s in sent}
    got_traces = _by_trace(got)
    for t in sent_traces:  # nothing dropped: every span of every finished trace came through
        n_sent = sum(1 for s in sent if format(s.context.trace_id, "032x") == t)
        assert len(got_traces.get(t, [])) == n_sent, t
    chats = [
        s
        for s in got
        if s.name == "openai.chat" and s.attributes.get("gen_ai.request.model") == "gpt-4o-mini"
    ]
    priced = [s for s in chats if "gen_ai.usage.prompt_tokens" in s.attributes]
    assert priced
    expected = default_resolver().cost("openai", "gpt-4o-mini", 100, 20, 40, None)
    for s in priced:
        a = s.attributes
        assert a[A.GEN_AI_USAGE_INPUT_TOKENS] == 100 and a[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 20
        assert a[A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 40
        assert a[A.GEN_AI_PROVIDER_NAME] == "openai" and a[A.GEN_AI_OPERATION_NAME] == "chat"
        assert math.isclose(a[A.GEN_AI_USAGE_COST], expected) and a[A.COST_SOURCE] == A.COST_SOURCE_COLLECTOR
        assert a[A.PHASE] == "model_decision"
        assert not [k for k in a if k.startswith(("gen_ai.prompt", "gen_ai.completion"))]
        assert a[A.CONTENT_REDACTED] == 3
        assert s.events == [("gen_ai.content.prompt", {})]
    streamed = [s for s in chats if "gen_ai.usage.prompt_tokens" not in s.attributes]
    assert streamed and all(
        s.attributes[A.USAGE_UNREPORTED] is True and A.GEN_AI_USAGE_COST not in s.attributes for s in streamed
    )
    unknown = [s for s in got if s.attributes.get("gen_ai.request.model") == "acme-llm-1"]
    assert unknown and all(
        s.attributes[A.COST_UNPRICED] is True and A.GEN_AI_USAGE_COST not in s.attributes for s in unknown
    )
    tools = [s for s in got if s.name == "lookup_order.tool"]
    assert tools and all(
        s.attributes[A.PHASE] == "tool_execution"
        and s.attributes[A.GEN_AI_TOOL_NAME] == "lookup_order"
        and "traceloop.entity.input" not in s.attributes
        for s in tools
    )


def test_a_cost_set_upstream_is_kept_and_plain_spans_pass_unchanged(
    service: Service, receiver: Receiver
) -> None:
    _, got = _settled(service, receiver)
    upstream = [s for s in got if s.name == "chat gpt-4o-mini"]
    assert upstream and all(
        s.attributes[A.GEN_AI_USAGE_COST] == UPSTREAM_COST and A.COST_SOURCE not in s.attributes
        for s in upstream
    )
    http = [s for s in got if s.name == "GET /orders"]
    assert http and all(s.attributes == {"http.request.method": "GET"} for s in http)


def test_a_run_over_its_profile_is_marked_on_the_call_that_would_have_been_refused(
    service: Service, receiver: Receiver
) -> None:
    _, got = _settled(service, receiver)
    marked_runs = 0
    for spans in _by_trace(got).values():
        chats = [
            s for s in spans if s.name == "openai.chat" and s.attributes.get("gen_ai.usage.prompt_tokens")
        ]
        if len(chats) != 3 or len(spans) != 6:
            # a run within its profile, or one whose spans have not all arrived yet: a mark here
            # may only be the third call's (a run never has more than one call past a limit of 2)
            assert sum(A.WOULD_REFUSE in s.attributes for s in chats) <= 1
            continue
        marks = [s.attributes.get(A.WOULD_REFUSE) for s in chats]
        assert marks.count("max_model_calls") == 1 and marks.count(None) == 2
        assert all(s.attributes[A.BUDGET_MODE] == "observe" for s in chats if A.WOULD_REFUSE in s.attributes)
        marked_runs += 1
    assert marked_runs >= 2


def test_every_dashboard_query_returns_data_from_the_tier(service: Service, prometheus: Prometheus) -> None:
    import json

    wait_for(
        lambda: (
            float(prometheus.query('count_over_time(up{job="budgetspan-collector"}[1m])')[0]["value"][1]) >= 6
        ),
        60,
        "six scrapes",
    )
    overview = json.loads((REPO / "dashboards" / "budgetspan-overview.json").read_text())
    workflow = json.loads((REPO / "dashboards" / "budgetspan-workflow.json").read_text())
    empty = empty_panels(prometheus, overview, {"workflow": ".*", "service": ".*"})
    assert not empty, "panels without data:\n" + "\n".join(empty)
    # $service set to the tier's service label selects the same data; another service selects none.
    empty = empty_panels(prometheus, overview, {"workflow": ".*", "service": SERVICE})
    assert not empty, "panels without data for service=" + SERVICE + ":\n" + "\n".join(empty)
    assert len(empty_panels(prometheus, overview, {"workflow": ".*", "service": "no-such-service"})) == sum(
        len(p.get("targets", []))
        for p in overview["panels"]
        if COLLECTOR_TIER_NOTE not in p.get("description", "")
    )
    # The support workflow runs without budgetspan in-process: nothing enforced it and nothing
    # counted its retries, so only those panels are empty for it; they have data for triage
    # (a service that runs budgetspan in-process, seen through the same tier).
    empty = empty_panels(prometheus, workflow, {"workflow": "support", "phase": ".*", "service": ".*"})
    assert {e.split(" / ")[1].split(":")[0] for e in empty} <= IN_PROCESS_ONLY, empty
    only = {**workflow, "panels": [p for p in workflow["panels"] if p["title"] in IN_PROCESS_ONLY]}
    empty = empty_panels(prometheus, only, {"workflow": "triage", "phase": ".*", "service": ".*"})
    assert not empty, "panels without data:\n" + "\n".join(empty)
    services = {r["metric"]["service"] for r in prometheus.query("budgetspan_model_calls_total")}
    assert services == {SERVICE}
    would = prometheus.query(
        f'budgetspan_budget_would_exhaust_total{{workflow="support",reason="max_model_calls",service="{SERVICE}"}}'
    )
    assert would and float(would[0]["value"][1]) >= 1
    exhausted = prometheus.query(
        'budgetspan_budget_exhaustions_total{workflow="triage",reason="max_tool_calls"}'
    )
    assert exhausted and float(exhausted[0]["value"][1]) >= 1
    # the cache's series from the spans' budgetspan.cache.* attributes: one miss, then one hit per
    # round (one query, so every figure is from the same scrape; it may land between the two spans)
    got = {
        (r["metric"]["__name__"], r["metric"].get("result")): float(r["value"][1])
        for r in prometheus.query(
            '{__name__=~"budgetspan_cache_requests_total|budgetspan_cache_saved_usd_total", tool="search_policy"}'
        )
    }
    hits, misses = (
        got[("budgetspan_cache_requests_total", "hit")],
        got[("budgetspan_cache_requests_total", "miss")],
    )
    assert hits >= 1 and misses - hits in (0, 1)
    assert got[("budgetspan_cache_saved_usd_total", None)] == pytest.approx(0.002 * hits)
    rules = {r["name"]: r for g in prometheus.api("rules")["groups"] for r in g["rules"]}
    assert rules and all(r["health"] == "ok" for r in rules.values()), rules


def test_the_launcher_treats_any_exit_of_rotel_as_a_failure(tmp_path: Path, receiver: Receiver) -> None:
    """A processor that fails to import makes rotel exit 0; the launcher says so and exits 1."""
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('no such module')\n")
    proc, _ = launch(tmp_path, receiver.endpoint, "--processor", str(broken), "--ready-timeout", "20")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "READY" not in out
    assert "rotel exited with status" in (tmp_path / "collector.err").read_text()


def test_a_span_without_status_is_processed(tier: Tier, receiver: Receiver) -> None:
    """OTLP lets a sender leave ``status`` out (rotel then hands the processor None): the span is
    still priced, not failed and passed through untouched."""
    import urllib.request

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=SERVICE)))
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x07" * 16, b"\x07" * 8, "no-status chat"
    span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_000_500_000_000
    for key, value in (("gen_ai.operation.name", "chat"), ("gen_ai.system", "openai")):
        span.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))
    span.attributes.append(KeyValue(key="gen_ai.request.model", value=AnyValue(string_value="gpt-4o-mini")))
    span.attributes.append(KeyValue(key="gen_ai.usage.prompt_tokens", value=AnyValue(int_value=100)))
    assert not span.HasField("status")
    post = urllib.request.Request(
        tier.otlp_http + "/v1/traces", req.SerializeToString(), {"Content-Type": "application/x-protobuf"}
    )
    with urllib.request.urlopen(post, timeout=10) as resp:
        assert resp.status == 200
    wait_for(lambda: [s for s in receiver.snapshot() if s.name == "no-status chat"], 10, "the span")
    (got,) = [s for s in receiver.snapshot() if s.name == "no-status chat"]
    assert (
        got.attributes[A.COST_SOURCE] == A.COST_SOURCE_COLLECTOR and got.attributes[A.GEN_AI_USAGE_COST] > 0
    )
