"""Trace-id exemplars on the cost and duration histograms (processors/metric_cells.py, metrics.py):
written in the OpenMetrics exposition, each in the bucket its value falls in, only for sampled
traces; the classic text format stays without them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

import budgetspan
from budgetspan import attributes as A
from budgetspan import events
from budgetspan.processors import metrics as M
from budgetspan.runs import context as bs_context
from tests.processors.test_metrics import model_call

TRACED = (A.M_RUN_COST, A.M_RUN_DURATION, A.M_MODEL_CALL_DURATION, A.M_TOOL_DURATION)


@pytest.fixture
def registry(tracing: Any) -> Iterator[CollectorRegistry]:
    reg = CollectorRegistry()
    metrics = M.BudgetspanMetrics(reg)
    events.add_listener(metrics)
    yield reg
    events.remove_listener(metrics)


def exemplars(reg: CollectorRegistry) -> dict[str, list[Any]]:
    """Per family: the (bucket sample, exemplar) pairs the OpenMetrics parser reads back."""
    found: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(openmetrics_latest(reg).decode()):
        for s in fam.samples:
            if s.exemplar is not None:
                found.setdefault(fam.name, []).append(s)
    return found


@budgetspan.tool
def lookup(q: str) -> str:
    return q


def test_cost_and_duration_buckets_carry_the_runs_trace_id(registry: CollectorRegistry) -> None:
    with budgetspan.run("ticket") as run:
        model_call()
        lookup("x")
        run.succeed()
    assert run.span is not None
    trace_hex = format(run.span.get_span_context().trace_id, "032x")
    found = exemplars(registry)
    for name in TRACED:
        samples = found.get(name)
        assert samples, f"no exemplar on {name}"
        for s in samples:
            assert s.exemplar.labels == {A.EXEMPLAR_TRACE_LABEL: trace_hex}
            # the exemplar sits in the first bucket its value fits in
            assert s.exemplar.value <= float(s.labels["le"])
    (cost,) = found[A.M_RUN_COST]
    assert cost.exemplar.value == pytest.approx(run.usage.cost_usd)
    assert cost.labels["outcome"] == "success"
    # the classic text format has no exemplars (and still parses as before)
    assert b"trace_id" not in generate_latest(registry)


def test_the_last_observation_in_a_bucket_is_its_exemplar(registry: CollectorRegistry) -> None:
    traces = []
    for _ in range(2):
        with budgetspan.run("ticket") as run:
            model_call()
        assert run.span is not None
        traces.append(format(run.span.get_span_context().trace_id, "032x"))
    text = openmetrics_latest(registry).decode()
    line = next(
        ln for ln in text.splitlines() if ln.startswith(A.M_RUN_DURATION + "_bucket") and "trace_id" in ln
    )
    assert re.search(r'# \{trace_id="([0-9a-f]{32})"\}', line).group(1) == traces[1]  # type: ignore[union-attr]


def test_an_unsampled_trace_gives_no_exemplar(registry: CollectorRegistry) -> None:
    bs_context.set_tracer_provider(TracerProvider(sampler=ALWAYS_OFF))
    with budgetspan.run("ticket") as run:
        model_call()
        run.succeed()
    assert exemplars(registry) == {}
    assert (
        registry.get_sample_value(A.M_RUN_DURATION + "_count", {"workflow": "ticket", "outcome": "success"})
        == 1
    )


def test_the_metrics_api_path_carries_the_same_trace_ids(tracing: Any) -> None:
    """Over OTLP the SDK takes exemplars from the context a value is recorded in (its default
    trace-based filter): the listener records inside the run, so the cost and duration
    histograms carry the run's trace id there too."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from budgetspan.processors.otel_metrics import OTelMetrics

    reader = InMemoryMetricReader()
    listener = OTelMetrics(MeterProvider(metric_readers=[reader]))
    events.add_listener(listener)
    try:
        with budgetspan.run("ticket") as run:
            model_call()
            run.succeed()
    finally:
        events.remove_listener(listener)
    assert run.span is not None
    trace_id = run.span.get_span_context().trace_id
    data = reader.get_metrics_data()
    assert data is not None
    found = {
        m.name: {e.trace_id for p in m.data.data_points for e in p.exemplars}
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    for name in (A.OTEL_M_RUN_COST[0], A.OTEL_M_RUN_DURATION[0], A.OTEL_M_MODEL_CALL_DURATION[0]):
        assert found.get(name) == {trace_id}, name
    assert found.get(A.OTEL_GEN_AI_OPERATION_DURATION) == {trace_id}
