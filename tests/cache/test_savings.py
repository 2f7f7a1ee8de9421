"""What caching saved, in the report and the metrics, equals what the recorded calls cost: the
cache's hits from the real OpenAI SDK's calls, provider prompt caching from the real Anthropic
SDK's cache-read and cache-write figures (both over a recording transport)."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from prometheus_client import CollectorRegistry

import budgetspan
from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting.pricing import default_resolver
from budgetspan.accounting.prompt_cache import prompt_cache_saving
from budgetspan.cache.backend import MemoryCache
from budgetspan.processors.file_export import encode_request
from budgetspan.processors.metrics import BudgetspanMetrics
from budgetspan.report.analysis import analyze
from budgetspan.report.load import parse_request
from budgetspan.report.render import render
from tests.replay import Recorder, anthropic_message, chat_completion, json_response

ANTHROPIC_USAGE = {
    "input_tokens": 200,  # Anthropic's raw figure excludes the cached tokens
    "output_tokens": 50,
    "cache_read_input_tokens": 6000,
    "cache_creation_input_tokens": 1000,
}


def _report(spans: Any) -> Any:
    return analyze(parse_request(json.loads(json.dumps(encode_request(spans)))))


@pytest.fixture
def metrics() -> Any:
    registry = CollectorRegistry()
    m = BudgetspanMetrics(registry)
    events.add_listener(m)
    yield registry
    events.remove_listener(m)


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return value if value is not None else 0.0


def test_report_and_metrics_say_what_the_cache_saved(instrumented: Any, metrics: CollectorRegistry) -> None:
    rec = Recorder(
        json_response(
            chat_completion(text="30 days", usage={"prompt_tokens": 900, "completion_tokens": 100})
        ),
        json_response(
            chat_completion(text="14 days", usage={"prompt_tokens": 1500, "completion_tokens": 40})
        ),
    )
    client = openai.OpenAI(api_key="test", http_client=rec.sync(), max_retries=0)

    @budgetspan.tool(cache=budgetspan.Cache("tenant", ttl_s=60, backend=MemoryCache()))
    def policy_search(topic: str) -> str:
        out = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": topic}]
        )
        return out.choices[0].message.content or ""

    for tenant in ("acme", "globex"):
        for topic in ("refunds", "refunds", "refunds", "returns"):
            with budgetspan.run("support", tenant=tenant):
                policy_search(topic)
    chats = instrumented.spans("chat")
    assert len(chats) == 4  # per tenant: refunds once, returns once
    misses = instrumented.spans("execute_tool policy_search")
    assert len(misses) == 4
    cost = [c.attributes[A.GEN_AI_USAGE_COST] for c in chats]  # acme refunds, returns; globex the same
    assert cost[0] != cost[2]  # (the recorded answers differ: a mix-up of entries would show)
    expected = 2 * cost[0] + 2 * cost[2]  # two hits per tenant on its own "refunds" entry
    for miss, chat in zip(misses, chats, strict=True):  # each miss says what its computation cost
        assert chat.parent.span_id == miss.context.span_id
        assert miss.attributes[A.CACHE_COST_USD] == chat.attributes[A.GEN_AI_USAGE_COST]
    a = _report(instrumented.exporter.get_finished_spans())
    assert a.savings is not None
    (line,) = a.savings.cache
    assert (line.workflow, line.name, line.hits, line.misses) == ("support", "policy_search", 4, 4)
    assert line.saved_usd == pytest.approx(expected, rel=1e-12) and line.unknown_cost_hits == 0
    assert line.saved_s > 0
    assert _sample(metrics, "budgetspan_cache_requests_total", tool="policy_search", result="hit") == 4
    assert _sample(metrics, "budgetspan_cache_requests_total", tool="policy_search", result="miss") == 4
    assert _sample(metrics, "budgetspan_cache_saved_usd_total", tool="policy_search") == pytest.approx(
        expected
    )
    assert "What the cache saved" in render(a)


def test_prompt_caching_share_and_savings_per_workflow(instrumented: Any, metrics: CollectorRegistry) -> None:
    model = "claude-3-5-sonnet-20241022"
    rec = Recorder(json_response(anthropic_message(model=model, usage=ANTHROPIC_USAGE)))
    client = anthropic.Anthropic(api_key="test", http_client=rec.sync(), max_retries=0)
    with budgetspan.run("drafting"):
        for _ in range(2):
            client.messages.create(model=model, max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    (first, second) = instrumented.spans("chat")
    attrs = first.attributes
    inp = attrs[A.GEN_AI_USAGE_INPUT_TOKENS]
    assert inp == 7200 and attrs[A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] == 6000
    one = prompt_cache_saving("anthropic", model, inp, 50, 6000, 1000)
    assert one is not None and one.saved_usd > 0 and one.premium_usd > 0
    # what the saving means: the recorded cost plus the net saving is the cost at the full input price
    full = default_resolver().cost("anthropic", model, inp, 50)
    assert attrs[A.GEN_AI_USAGE_COST] + one.net_usd == pytest.approx(full)
    a = _report(instrumented.exporter.get_finished_spans())
    assert a.savings is not None
    (line,) = a.savings.prompt_cache
    assert (line.workflow, line.calls, line.cache_read_tokens) == ("drafting", 2, 12000)
    assert line.cache_read_share == pytest.approx(12000 / 14400)
    assert line.saved_usd == pytest.approx(2 * one.saved_usd) and line.premium_usd == pytest.approx(
        2 * one.premium_usd
    )
    labels = {"workflow": "drafting", "provider": "anthropic", "model": model}
    assert _sample(metrics, "budgetspan_prompt_cache_saved_usd_total", **labels) == pytest.approx(
        2 * one.saved_usd
    )
    assert _sample(metrics, "budgetspan_prompt_cache_write_premium_usd_total", **labels) == pytest.approx(
        2 * one.premium_usd
    )
    assert "Provider prompt caching" in render(a)
    assert second.attributes[A.GEN_AI_USAGE_COST] == attrs[A.GEN_AI_USAGE_COST]


def test_the_same_series_over_the_metrics_api() -> None:
    """The OpenTelemetry Metrics API carries the cache and prompt-caching series too, under names
    the standard translation turns into the Prometheus ones."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from budgetspan.accounting.ledger import Spend
    from budgetspan.events import CacheRecord, CallRecord
    from budgetspan.processors.otel_metrics import OTelMetrics

    reader = InMemoryMetricReader()
    m = OTelMetrics(MeterProvider(metric_readers=[reader]))
    m.on_cache(CacheRecord("kb", "miss", "wf"))
    m.on_cache(CacheRecord("kb", "hit", "wf", saved_usd=0.25, saved_s=1.5))
    m.on_cache(CacheRecord("kb", "hit", "wf", saved_usd=None, saved_s=0.5))  # cost unknown: no dollars
    model = "claude-3-5-sonnet-20241022"
    m.on_call_end(
        CallRecord(
            kind="model",
            workflow="wf",
            phase="model_decision",
            duration_s=1.0,
            provider="anthropic",
            model=model,
            spend=Spend(7200, 50, 6000, 1000),
            operation="chat",
        )
    )
    data = reader.get_metrics_data()
    assert data is not None
    got = {
        metric.name: {tuple(sorted(dict(p.attributes).items())): p.value for p in metric.data.data_points}
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name.startswith(("budgetspan.cache", "budgetspan.prompt_cache"))
    }
    assert got[A.OTEL_M_CACHE_REQUESTS[0]] == {
        (("result", "miss"), ("tool", "kb")): 1,
        (("result", "hit"), ("tool", "kb")): 2,
    }
    assert got[A.OTEL_M_CACHE_SAVED_USD[0]] == {(("tool", "kb"),): 0.25}
    assert got[A.OTEL_M_CACHE_SAVED_SECONDS[0]] == {(("tool", "kb"),): 2.0}
    one = prompt_cache_saving("anthropic", model, 7200, 50, 6000, 1000)
    assert one is not None
    labels = (("model", model), ("provider", "anthropic"), ("workflow", "wf"))
    assert got[A.OTEL_M_PROMPT_CACHE_SAVED_USD[0]] == {labels: pytest.approx(one.saved_usd)}
    assert got[A.OTEL_M_PROMPT_CACHE_WRITE_PREMIUM_USD[0]] == {labels: pytest.approx(one.premium_usd)}
