"""Cost of budgetspan's Prometheus metrics per span and per call, next to a bare SDK span, in one run.

    .venv/bin/python bench/bench_metrics.py [--n 20000]

Rows (microseconds per operation, best of interleaved rounds on a shared machine):
- bare SDK span: start + 5 attributes + end, no processor
- the same span with MetricsSpanProcessor on the provider (a no-op for spans, by design)
- a foreign gen_ai span through BudgetSpanProcessor, without and with the metrics listener
  (the difference is what metrics add to one accounted model call)
- the metrics listener alone: one model-call record (calls, duration, 3 token types, cost,
  default-phase duration) and one tool-call record
- a run start + end, without and with metrics (runs, cost/duration/token histograms, live gauge,
  utilisation of 2 limits)
- why children are cached: prometheus-client ``labels(...).inc()`` per call vs a cached child
"""

from __future__ import annotations

import argparse
import importlib
import timeit
from collections.abc import Callable

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, Counter

import budgetspan
from budgetspan import events
from budgetspan.accounting.ledger import Spend
from budgetspan.events import CallRecord
from budgetspan.processors.budget import BudgetSpanProcessor
from budgetspan.processors.metrics import BudgetspanMetrics
from budgetspan.processors.metrics_endpoint import MetricsSpanProcessor
from budgetspan.runs import context as bs_context
from budgetspan.runs import implicit as bs_implicit

bench_core = importlib.import_module("bench_core")  # beside this file (run as a script)

ATTRS = bench_core.ATTRS  # the same foreign span in both benches, so their figures compare


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000, help="operations per row, over all rounds")
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    n = args.n

    bare = TracerProvider().get_tracer("bench")

    def bare_span() -> None:
        with bare.start_as_current_span("chat gpt-4o-mini", attributes=ATTRS):
            pass

    metrics = BudgetspanMetrics(CollectorRegistry())
    noop_provider = TracerProvider()
    noop_provider.add_span_processor(MetricsSpanProcessor(metrics, None))
    noop = noop_provider.get_tracer("bench")

    def span_with_metrics_processor() -> None:
        with noop.start_as_current_span("chat gpt-4o-mini", attributes=ATTRS):
            pass

    accounted = TracerProvider()
    accounted.add_span_processor(BudgetSpanProcessor())
    foreign = accounted.get_tracer("other-instrumentation")
    bs_context.set_tracer_provider(accounted)

    def foreign_span() -> None:
        with foreign.start_as_current_span("chat gpt-4o-mini", attributes=ATTRS):
            pass

    model_record = CallRecord(
        "model",
        "bench",
        "model_decision",
        0.42,
        provider="openai",
        model="gpt-4o-mini",
        spend=Spend(1000, 200, 500, None, None, 0.0004),
        cost_usd=0.0004,
    )
    tool_record = CallRecord("tool", "bench", "tool_execution", 0.01, tool="search_kb")

    def runs() -> None:
        with budgetspan.run("bench", max_model_calls=10, max_cost_usd=1.0):
            pass

    c = Counter("bench_calls", "bench", ["workflow", "model"], registry=CollectorRegistry())
    child = c.labels("bench", "gpt-4o-mini")

    cases: list[tuple[str, Callable[[], object], int]] = [
        ("bare SDK span (5 attributes)", bare_span, n),
        ("  + MetricsSpanProcessor on the provider", span_with_metrics_processor, n),
        ("foreign gen_ai span, BudgetSpanProcessor, no metrics", foreign_span, n),
        ("foreign gen_ai span, BudgetSpanProcessor + metrics", foreign_span, n),
        ("metrics listener: one model-call record", lambda: metrics.on_call_end(model_record), n),
        ("metrics listener: one tool-call record", lambda: metrics.on_call_end(tool_record), n),
        ("run start + end, no metrics", runs, n // 4),
        ("run start + end, with metrics", runs, n // 4),
        ("prometheus-client labels(...).inc() each time", lambda: c.labels("bench", "gpt-4o-mini").inc(), n),
        ("prometheus-client cached child .inc()", child.inc, n),
    ]
    listened = {"foreign gen_ai span, BudgetSpanProcessor + metrics", "run start + end, with metrics"}
    best: dict[str, float] = {}
    # Interleaved rounds, best of each: the machine is shared, so drift must hit every row alike.
    with budgetspan.run("bench"):
        for _ in range(args.rounds):
            for name, fn, count in cases:
                if name in listened:
                    events.add_listener(metrics)
                try:
                    t = min(timeit.repeat(fn, number=max(1, count // args.rounds), repeat=1))
                finally:
                    events.remove_listener(metrics)
                us = t / max(1, count // args.rounds) * 1e6
                best[name] = min(best.get(name, us), us)
    rows = [(name, best[name]) for name, _, _ in cases]
    bs_implicit.end_process_run()

    width = max(len(name) for name, _ in rows)
    print(f"{'operation':<{width}}  µs/op")
    for name, us in rows:
        print(f"{name:<{width}}  {us:6.2f}")
    with_m = dict(rows)["foreign gen_ai span, BudgetSpanProcessor + metrics"]
    without = dict(rows)["foreign gen_ai span, BudgetSpanProcessor, no metrics"]
    print(
        f"\nmetrics add {with_m - without:.2f} µs to one accounted model-call span "
        f"({(with_m - without) / dict(rows)['bare SDK span (5 attributes)'] * 100:.0f}% of a bare span)"
    )


if __name__ == "__main__":
    main()
