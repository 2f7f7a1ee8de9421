"""Cost of budgetspan's core next to a bare SDK span, measured side by side in one run.

    .venv/bin/python bench/bench_core.py [--n 50000]

Rows (microseconds per operation, median of 5 repeats):
- bare SDK span: start + 5 attributes + end, no processor
- ledger reserve + commit (InMemoryLedger)
- gen_ai span through BudgetSpanProcessor (a foreign span: reserve in on_start, commit in on_end)
- @budgetspan.tool call (reserve, span, commit, events) vs the same function undecorated
"""

from __future__ import annotations

import argparse
import statistics
import timeit

from opentelemetry.sdk.trace import TracerProvider

import budgetspan
from budgetspan.budget import Budget
from budgetspan.ledger import CallKind, InMemoryLedger, Mode, Spend
from budgetspan.processors.budget import BudgetSpanProcessor
from budgetspan.run import end_process_run, set_tracer_provider

ATTRS = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 100,
    "gen_ai.usage.output_tokens": 20,
}


def per_op_us(fn: object, n: int, repeat: int = 5) -> float:
    times = timeit.repeat(fn, number=n, repeat=repeat)  # type: ignore[arg-type]
    return statistics.median(times) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    n = ap.parse_args().n

    bare = TracerProvider().get_tracer("bench")
    with_proc = TracerProvider()
    with_proc.add_span_processor(BudgetSpanProcessor())
    proc_tracer = with_proc.get_tracer("bench")

    def bare_span() -> None:
        with bare.start_as_current_span("chat gpt-4o-mini", attributes=ATTRS):
            pass

    own_tracer = with_proc.get_tracer("budgetspan")

    def own_span() -> None:
        with own_tracer.start_as_current_span("chat gpt-4o-mini", attributes=ATTRS):
            pass

    def processed_span() -> None:
        with proc_tracer.start_as_current_span("chat gpt-4o-mini", attributes=ATTRS):
            pass

    ledger = InMemoryLedger()
    ledger.open("r", Budget(max_model_calls=10**12, max_cost_usd=1e12), Mode.ENFORCE)
    spend = Spend(100, 20, cost_usd=0.0001)

    def reserve_commit() -> None:
        ledger.commit(ledger.reserve("r", CallKind.MODEL), spend)

    set_tracer_provider(TracerProvider())

    def plain() -> int:
        return 1

    tooled = budgetspan.tool(name="plain")(plain)
    scope = budgetspan.run("bench", max_tool_calls=10**12)
    scope.__enter__()

    rows = [
        ("bare SDK span (5 attributes, no processor)", per_op_us(bare_span, n)),
        ("ledger reserve + commit", per_op_us(reserve_commit, n)),
        ("foreign gen_ai span through BudgetSpanProcessor", per_op_us(processed_span, n)),
        ("budgetspan's own span through BudgetSpanProcessor", per_op_us(own_span, n)),
        ("plain function call", per_op_us(plain, n)),
        ("@budgetspan.tool call (span + ledger + events)", per_op_us(tooled, n)),
    ]
    scope.__exit__(None, None, None)
    end_process_run()
    base = rows[0][1]
    print(f"{'operation':50} {'µs/op':>8} {'vs bare span':>13}")
    for name, us in rows:
        print(f"{name:50} {us:8.2f} {us / base:12.2f}x")
    print(
        f"\nBudgetSpanProcessor adds {rows[2][1] - base:.2f} µs per foreign gen_ai span "
        f"(reserve + commit + cost) and {rows[3][1] - base:.2f} µs per own/other span (target ≤ 5 µs)"
    )


if __name__ == "__main__":
    main()
