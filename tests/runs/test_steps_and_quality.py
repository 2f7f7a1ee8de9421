"""``budgetspan.step`` and ``budgetspan.fallback`` on real call spans; outcome quality (score,
rework, outcomes recorded after the run); the cost-per-success-by-step series."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import budgetspan
from budgetspan import attributes as A
from budgetspan import events
from budgetspan.accounting.ledger import Spend
from budgetspan.accounting.pricing import default_resolver
from budgetspan.calls.call import Call
from budgetspan.processors import metrics as M
from tests.conftest import events_to

USAGE = Spend(1000, 200, None, None, None, None)


def chat(model: str = "gpt-4o-mini") -> None:
    call = Call(A.OP_CHAT, f"chat {model}", provider="openai", model=model).start()
    with call.activate():
        call.set_usage(USAGE)
    call.end()


@budgetspan.tool(name="lookup")
def lookup() -> int:
    return 1


def attrs_of(tracing: Any, prefix: str) -> list[dict[str, Any]]:
    return [dict(s.attributes) for s in tracing.spans(prefix)]


def test_step_scope_names_the_step_of_model_and_tool_calls_default_the_phase(tracing: Any) -> None:
    with budgetspan.run("support"):
        with budgetspan.step("classify"):
            chat()
            lookup()
            with budgetspan.step("draft"):  # nested: the innermost wins
                chat()
            chat()
        chat()  # outside any step: the phase
        with budgetspan.phase("verification"):
            chat()
    steps = [a[A.STEP] for a in attrs_of(tracing, "chat")]
    assert steps == ["classify", "draft", "classify", "model_decision", "verification"]
    (tool,) = attrs_of(tracing, "execute_tool")
    assert tool[A.STEP] == "classify"


def test_step_as_decorator_sync_and_async_and_per_task(tracing: Any) -> None:
    @budgetspan.step("summarise")
    def summarise() -> str:
        chat()
        return "ok"

    @budgetspan.step("plan")
    async def plan(n: int) -> int:
        await asyncio.sleep(0.001 * n)
        chat()
        return n

    async def main() -> list[int]:
        with budgetspan.run("agent"):
            assert summarise() == "ok"
            # two tasks in two steps at once: each call gets its own task's step
            one = budgetspan.step("left")

            async def side(name: str) -> int:
                async with budgetspan.step(name):
                    await asyncio.sleep(0.002)
                    chat()
                return 0

            done = await asyncio.gather(plan(2), side("left"), side("right"))
            async with one:  # one scope object entered again later
                chat()
            return list(done)

    assert asyncio.run(main()) == [2, 0, 0]
    assert sorted(a[A.STEP] for a in attrs_of(tracing, "chat")) == [
        "left",
        "left",
        "plan",
        "right",
        "summarise",
    ]


def test_step_follows_the_context_into_threads_it_is_copied_to(tracing: Any) -> None:
    import contextvars

    with budgetspan.run("agent"), budgetspan.step("fanout"):
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(chat,))
        t.start()
        t.join()
    (a,) = attrs_of(tracing, "chat")
    assert a[A.STEP] == "fanout"


def test_fallback_marks_the_calls_that_replaced_a_model(tracing: Any) -> None:
    with budgetspan.run("agent"), budgetspan.step("draft"):
        chat("gpt-4o-mini")
        with budgetspan.fallback("gpt-4o-mini", reason="rejected"):
            chat("gpt-4o")
    first, second = attrs_of(tracing, "chat")
    assert A.FALLBACK_FROM not in first
    assert (second[A.FALLBACK_FROM], second[A.FALLBACK_REASON], second[A.STEP]) == (
        "gpt-4o-mini",
        "rejected",
        "draft",
    )


@pytest.mark.parametrize("bad", ["", "   ", "x" * 65, None, 3])
def test_step_and_fallback_names_are_checked(bad: Any) -> None:
    with pytest.raises(ValueError):
        budgetspan.step(bad)
    with pytest.raises(ValueError):
        budgetspan.fallback(bad)


def test_score_and_rework_are_written_on_the_run_span(tracing: Any) -> None:
    with budgetspan.run("agent") as run:
        run.record_rework("human_edit")
        run.record_rework("human_edit", 2)
        run.record_rework("reviewer_correction")
        run.succeed(score=0.75)
    (span,) = attrs_of(tracing, "invoke_agent")
    assert span[A.RUN_OUTCOME] == "success" and span[A.RUN_SCORE] == 0.75
    assert span[A.RUN_REWORK] == 4
    assert list(span[A.RUN_REWORK_KINDS]) == ["human_edit=3", "reviewer_correction=1"]
    with pytest.raises(ValueError):
        run.record_rework("x", -1)
    with pytest.raises(ValueError):
        run.succeed(score=float("nan"))


def test_a_run_without_quality_says_nothing_about_it(tracing: Any) -> None:
    with budgetspan.run("agent"):
        pass
    (span,) = attrs_of(tracing, "invoke_agent")
    assert A.RUN_SCORE not in span and A.RUN_REWORK not in span


def test_record_outcome_after_the_run_emits_a_span_naming_the_run(tracing: Any) -> None:
    with budgetspan.run("agent") as run:
        pass
    budgetspan.record_outcome(
        run.id, score=0.4, rework={"human_edit": 2}, outcome="failure", workflow="agent"
    )
    (late,) = attrs_of(tracing, "record_outcome")
    assert late[A.OUTCOME_RUN_ID] == run.id and A.RUN_ID not in late  # not one of the run's own spans
    assert (late[A.RUN_OUTCOME], late[A.RUN_SCORE], late[A.RUN_REWORK], late[A.WORKFLOW]) == (
        "failure",
        0.4,
        2,
        "agent",
    )
    with pytest.raises(ValueError):
        budgetspan.record_outcome("", score=1.0)


def test_record_outcome_on_a_live_run_goes_on_its_span(tracing: Any) -> None:
    with budgetspan.run("agent") as run:
        budgetspan.record_outcome(run.id, score=0.9, rework=1)
    (span,) = attrs_of(tracing, "invoke_agent")
    assert span[A.RUN_SCORE] == 0.9 and span[A.RUN_REWORK] == 1
    assert attrs_of(tracing, "record_outcome") == []


@pytest.fixture
def metrics(tracing: Any) -> Iterator[tuple[CollectorRegistry, M.BudgetspanMetrics]]:
    registry = CollectorRegistry()
    with events_to(M.BudgetspanMetrics(registry)) as m:
        yield registry, m


def test_cost_per_success_by_step_and_model_series(metrics: tuple[CollectorRegistry, Any]) -> None:
    registry, _ = metrics
    one = default_resolver().cost("openai", "gpt-4o-mini", 1000, 200, None, None)
    strong = default_resolver().cost("openai", "gpt-4o", 1000, 200, None, None)
    assert one and strong
    with budgetspan.run("support") as run:
        with budgetspan.step("draft"):
            chat("gpt-4o-mini")
            with budgetspan.fallback("gpt-4o-mini"):
                chat("gpt-4o")  # the route is the step's first model: the fallback's cost is its
        chat("gpt-4o-mini")  # no step: the phase
        run.succeed()
    with budgetspan.run("support") as run, budgetspan.step("draft"):
        chat("gpt-4o-mini")
        run.fail()

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"workflow": "support", **labels}) or 0.0

    draft = {"step": "draft", "model": "gpt-4o-mini"}
    assert value("budgetspan_step_runs_total", outcome="success", **draft) == 1
    assert value("budgetspan_step_runs_total", outcome="failure", **draft) == 1
    assert value("budgetspan_step_cost_usd_total", outcome="success", **draft) == pytest.approx(one + strong)
    assert value("budgetspan_step_cost_usd_total", outcome="failure", **draft) == pytest.approx(one)
    decision = {"step": "model_decision", "model": "gpt-4o-mini", "outcome": "success"}
    assert value("budgetspan_step_cost_usd_total", **decision) == pytest.approx(one)
    assert (
        registry.get_sample_value(
            "budgetspan_step_runs_total",
            {"workflow": "support", "step": "draft", "model": "gpt-4o", "outcome": "success"},
        )
        is None
    )


def test_the_step_series_on_the_opentelemetry_metrics_api_too(tracing: Any) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from budgetspan.processors.otel_metrics import OTelMetrics

    reader = InMemoryMetricReader()
    listener = OTelMetrics(MeterProvider(metric_readers=[reader]))
    events.add_listener(listener)
    try:
        with budgetspan.run("support") as run, budgetspan.step("draft"):
            chat("gpt-4o-mini")
            chat("gpt-4o-mini")
            run.succeed()
    finally:
        events.remove_listener(listener)
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        m.name: list(m.data.data_points)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    one = default_resolver().cost("openai", "gpt-4o-mini", 1000, 200, None, None) or 0
    labels = {"workflow": "support", "step": "draft", "model": "gpt-4o-mini", "outcome": "success"}
    (runs,) = points[A.OTEL_M_STEP_RUNS[0]]
    (cost,) = points[A.OTEL_M_STEP_COST[0]]
    assert dict(runs.attributes) == labels and runs.value == 1
    assert dict(cost.attributes) == labels and cost.value == pytest.approx(2 * one)
