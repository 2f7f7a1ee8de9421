"""Memory: many sequential runs leave no live state behind and no per-run memory growth.

Each run makes a ``@tool`` call and a foreign ``chat`` span (accounted by the processor); every
tenth run hits its tool limit, so the exhaustion path (exception, partial, explanation) is in
the loop too. Growth is measured with ``tracemalloc`` over the runs that follow a warm-up
(caches, interned strings and free lists fill during the warm-up).
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

import budgetspan
from budgetspan import attributes as A
from budgetspan import events
from budgetspan.calls import foreign as foreign_spans
from budgetspan.processors.budget import BudgetSpanProcessor
from tests.conftest import bs_context, bs_implicit
from tests.reliability.conftest import Lean, scaled

RUNS = scaled(100_000, minimum=2_000)  # sequential runs on the lean path (spans sampled out)
TRACED = scaled(10_000, minimum=1_000)  # of which the last ones run under tracemalloc
RECORDED = scaled(3_000, minimum=1_000)  # runs with recorded spans and a foreign chat span
WARM_UP = 2_000
MAX_BYTES_PER_RUN = 50  # amortised traced growth allowed after the warm-up
MAX_OBJECTS_PER_RUN = 0.01  # gc-tracked objects left behind per run

CHAT_ATTRS: dict[str, Any] = {
    A.GEN_AI_OPERATION_NAME: A.OP_CHAT,
    A.GEN_AI_PROVIDER_NAME: "openai",
    A.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
    A.GEN_AI_USAGE_INPUT_TOKENS: 120,
    A.GEN_AI_USAGE_OUTPUT_TOKENS: 30,
}


def _growth_report(snapshot: tracemalloc.Snapshot) -> str:
    snapshot = snapshot.filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
    )
    return "\n".join(str(s) for s in snapshot.statistics("lineno")[:8])


class _Outcomes:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def on_run_end(self, run: budgetspan.Run) -> None:
        key = run.outcome.value if run.outcome else "none"
        self.counts[key] = self.counts.get(key, 0) + 1


def _traced_growth(loop: Callable[[int, int], None], start: int, n: int) -> tuple[float, str]:
    """Bytes per run still allocated after ``n`` more runs (and a collection)."""
    gc.collect()
    tracemalloc.start(1)
    try:
        before = tracemalloc.get_traced_memory()[0]
        loop(start, start + n)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return (after - before) / n, _growth_report(snapshot)


def _runs(between: Callable[[], None]) -> Callable[[int, int], None]:
    """Runs ``first`` to ``stop`` (``max_tool_calls=1``): each calls a tool, then ``between()``;
    every 10th calls it again, over the limit (BudgetExhausted, suppressed by the run)."""

    @budgetspan.tool
    def lookup(i: int) -> int:
        return i

    def loop(first: int, stop: int) -> None:
        for i in range(first, stop):
            with budgetspan.run("memory", max_tool_calls=1, suppress_exhausted=True):
                lookup(i)
                between()
                if i % 10 == 0:
                    lookup(i)

    return loop


def _assert_no_live_state(lean: Lean) -> None:
    assert budgetspan.live_runs() == []
    assert len(lean.ledger) == 0
    assert len(bs_implicit._trace_runs) == 0
    assert foreign_spans._pending == {}


def test_100k_sequential_runs_leave_live_state_and_memory_flat(
    lean: Lean, capsys: pytest.CaptureFixture[str]
) -> None:
    """The lean path (spans sampled out): run + a tool call; every 10th run hits its limit."""
    lean.provider = TracerProvider(sampler=ALWAYS_OFF)
    lean.provider.add_span_processor(lean.processor)
    lean.install()
    outcomes = _Outcomes()
    events.add_listener(outcomes)

    loop = _runs(between=lambda: None)
    loop(0, WARM_UP)
    gc.collect()
    objects_before = len(gc.get_objects())
    loop(WARM_UP, WARM_UP + RUNS - TRACED)
    per_run, report = _traced_growth(loop, WARM_UP + RUNS - TRACED, TRACED)
    gc.collect()
    object_growth = len(gc.get_objects()) - objects_before

    _assert_no_live_state(lean)
    total = WARM_UP + RUNS
    exhausted = len(range(0, total, 10))
    assert outcomes.counts == {"success": total - exhausted, "budget_exhausted": exhausted}
    with capsys.disabled():
        print(
            f"\n[memory] {RUNS} sequential runs: {object_growth} gc objects left, "
            f"{per_run:.2f} B/run traced growth over the last {TRACED}"
        )
    assert object_growth < max(100, RUNS * MAX_OBJECTS_PER_RUN)
    assert per_run < MAX_BYTES_PER_RUN, report


def test_recorded_runs_with_foreign_spans_leave_memory_flat(
    lean: Lean, capsys: pytest.CaptureFixture[str]
) -> None:
    """Recorded spans through the budget processor, with a foreign chat span it accounts."""
    app = lean.provider.get_tracer("app")

    def chat() -> None:
        with app.start_as_current_span("chat gpt-4o-mini", attributes=CHAT_ATTRS):
            pass

    loop = _runs(between=chat)
    loop(0, WARM_UP)
    per_run, report = _traced_growth(loop, WARM_UP, RECORDED)
    _assert_no_live_state(lean)
    with capsys.disabled():
        print(f"\n[memory] {RECORDED} recorded runs: {per_run:.2f} B/run traced growth")
    assert per_run < MAX_BYTES_PER_RUN, report


def _sampled_out_provider() -> TracerProvider:
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(BudgetSpanProcessor())
    return provider


def test_implicit_runs_of_sampled_out_traces_are_bounded(lean: Lean, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trace whose root is sampled out never reports its end: its implicit run is evicted."""
    cap = 100
    monkeypatch.setattr(bs_implicit, "_MAX_TRACE_RUNS", cap)
    provider = _sampled_out_provider()
    bs_context.set_tracer_provider(provider)
    app = provider.get_tracer("app")
    ended: list[budgetspan.Run] = []

    class Ends:
        def on_run_end(self, run: budgetspan.Run) -> None:
            ended.append(run)

    events.add_listener(Ends())

    @budgetspan.tool
    def fetch() -> str:
        return "ok"

    requests = 10 * cap
    for _ in range(requests):
        with app.start_as_current_span("GET /orders"):  # non-recording, but a valid trace id
            fetch()

    assert len(bs_implicit._trace_runs) == cap
    assert len(budgetspan.live_runs()) == cap
    assert len(lean.ledger) == cap
    assert len(ended) == requests - cap  # evicted runs were ended (and closed in the ledger)
    assert all(r.implicit and r.usage.tool_calls == 1 for r in ended)
    provider.shutdown()


def test_implicit_runs_bounded_at_the_default_cap(lean: Lean) -> None:
    provider = _sampled_out_provider()
    bs_context.set_tracer_provider(provider)
    app = provider.get_tracer("app")

    @budgetspan.tool
    def fetch() -> str:
        return "ok"

    cap = bs_implicit._MAX_TRACE_RUNS
    for _ in range(cap + 500):
        with app.start_as_current_span("GET /orders"):
            fetch()
    assert len(bs_implicit._trace_runs) == cap
    assert len(lean.ledger) == cap
    provider.shutdown()


def test_implicit_run_of_a_sampled_trace_ends_with_its_root(lean: Lean) -> None:
    app = lean.provider.get_tracer("app")

    @budgetspan.tool
    def fetch() -> str:
        return "ok"

    during: set[tuple[int, int]] = set()
    for _ in range(scaled(1_000)):
        with app.start_as_current_span("GET /orders"):
            fetch()
            fetch()
            run = bs_implicit.resolve_run()  # positive control: each trace had its own live run
            during.add((len(bs_implicit._trace_runs), run.usage.tool_calls if run else -1))
    assert during == {(1, 2)}
    assert len(bs_implicit._trace_runs) == 0
    assert budgetspan.live_runs() == []
    assert len(lean.ledger) == 0
