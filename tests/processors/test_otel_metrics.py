"""The Metrics API listener on an SDK MeterProvider with an in-memory reader."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from budgetspan import attributes as A
from budgetspan.accounting.ledger import Spend
from budgetspan.events import CallRecord
from budgetspan.processors import otel_metrics
from budgetspan.processors.otel_metrics import OTelMetrics


def _collect(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = list(m.data.data_points)
    return out


def _call(**kw: Any) -> CallRecord:
    base: dict[str, Any] = dict(
        kind="model", workflow="wf", phase="model_decision", duration_s=0.5, provider="openai", model="m1"
    )
    base.update(kw)
    return CallRecord(**base)


def _listener() -> tuple[OTelMetrics, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return OTelMetrics(MeterProvider(metric_readers=[reader])), reader


def test_stream_gives_time_to_first_chunk_and_refused_or_foreign_calls_no_gen_ai_metrics() -> None:
    m, reader = _listener()
    m.on_call_end(_call(operation="chat", spend=Spend(10, 3, cache_read_tokens=4), time_to_first_token_s=0.2))
    m.on_call_end(_call(operation="chat", status="refused"))  # never reached the provider
    m.on_call_end(_call(operation=None, spend=Spend(1000, 1000)))  # seen on another instrumentation's span
    got = _collect(reader)
    usage = {dict(p.attributes)[A.GEN_AI_TOKEN_TYPE]: p for p in got[A.OTEL_GEN_AI_TOKEN_USAGE]}
    # input includes the cached tokens: input + output is the call's total, nothing counted twice
    assert (usage["input"].sum, usage["output"].sum) == (10, 3)
    assert set(usage) == {"input", "output"}
    (ttfc,) = got[A.OTEL_GEN_AI_TIME_TO_FIRST_CHUNK]
    assert (ttfc.count, ttfc.sum) == (1, 0.2)
    (duration,) = got[A.OTEL_GEN_AI_OPERATION_DURATION]
    assert duration.count == 1
    # budgetspan's own series count all three, as the Prometheus path does
    calls = {dict(p.attributes)[A.L_STATUS]: p.value for p in got[A.OTEL_M_MODEL_CALLS[0]]}
    assert calls == {"ok": 2, "refused": 1}


def test_error_status_becomes_error_type() -> None:
    m, reader = _listener()
    m.on_call_end(_call(operation="chat", status="timeout"))
    (point,) = _collect(reader)[A.OTEL_GEN_AI_OPERATION_DURATION]
    assert dict(point.attributes)[A.ERROR_TYPE] == "timeout"


def test_label_values_are_capped_like_the_prometheus_labels() -> None:
    reader = InMemoryMetricReader()
    m = OTelMetrics(MeterProvider(metric_readers=[reader]), max_label_values=2)
    for i in range(5):
        m.on_call_end(_call(operation="chat", model=f"model-{i}", spend=Spend(1, 1)))
    got = _collect(reader)
    models = {dict(p.attributes)[A.L_MODEL] for p in got[A.OTEL_M_MODEL_CALLS[0]]}
    assert models == {"model-0", "model-1", "other"}
    gen_ai_models = {
        dict(p.attributes)[A.GEN_AI_REQUEST_MODEL] for p in got[A.OTEL_GEN_AI_OPERATION_DURATION]
    }
    assert gen_ai_models == {"model-0", "model-1", "other"}


def test_install_skips_a_provider_with_no_reader(monkeypatch: Any) -> None:
    from opentelemetry import metrics

    otel_metrics.uninstall()
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: MeterProvider(metric_readers=[]))
    try:
        assert otel_metrics.install() is None
        monkeypatch.setattr(
            metrics, "get_meter_provider", lambda: MeterProvider(metric_readers=[InMemoryMetricReader()])
        )
        assert otel_metrics.install() is not None
    finally:
        otel_metrics.uninstall()


def test_extensions_loops_and_tool_refusals_on_the_metrics_api(tracing: Any) -> None:
    import budgetspan

    listener, reader = _listener()
    with budgetspan.run("wf") as run:
        listener.on_budget_extended(run, "max_cost_usd")
        listener.on_loop(run, "ping_pong", "stopped")
        listener.on_tool_refused(run, "lookup", "tool.max_calls")
    got = _collect(reader)
    assert [dict(p.attributes) for p in got["budgetspan.budget.extensions"]] == [
        {"workflow": "wf", "limit": "max_cost_usd"}
    ]
    assert [dict(p.attributes) for p in got["budgetspan.loops"]] == [
        {"workflow": "wf", "type": "ping_pong", "status": "stopped"}
    ]
    assert got["budgetspan.tool.refusals"][0].value == 1


def test_token_series_sum_to_the_total_and_parts_go_apart() -> None:
    """budgetspan.tokens carries input and output only (a sum is the total); cache reads and
    reasoning, parts of them, go to budgetspan.token_details, as on the Prometheus path."""
    m, reader = _listener()
    m.on_call_end(_call(operation="chat", spend=Spend(10, 3, cache_read_tokens=4, reasoning_tokens=2)))
    got = _collect(reader)
    tokens = {dict(p.attributes)[A.L_TYPE]: p.value for p in got[A.OTEL_M_TOKENS[0]]}
    assert tokens == {"input": 10, "output": 3}
    details = {dict(p.attributes)[A.L_TYPE]: p.value for p in got[A.OTEL_M_TOKEN_DETAILS[0]]}
    assert details == {"cache_read": 4, "reasoning": 2}
