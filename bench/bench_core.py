"""Cost of budgetspan's core next to a bare SDK span, measured side by side in one run.

    .venv/bin/python bench/bench_core.py [--n 40000 --rounds 20]    # wall clock, best of rounds
    .venv/bin/python bench/bench_core.py --instructions           # CPU instructions (valgrind)

Rows (per operation):
- bare SDK span: start + 5 attributes + end, no processor
- ledger reserve + commit (InMemoryLedger)
- gen_ai span through BudgetSpanProcessor (a foreign span: reserve in on_start, commit in on_end)
- @budgetspan.tool call (reserve, span, commit, events) vs the same function undecorated

The run every operation is accounted to has a budget with a limit of every kind (calls, steps,
tokens, dollars, wall clock, retries), set too high to be reached: the processor checks all of
them, as it would in production. Wall clock: interleaved rounds; the table shows the best round of
each row, and the processor's cost is also given as the median over rounds of each row's
difference to the bare span in the same round, which a shared machine's drift disturbs least.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import timeit
from collections.abc import Callable

from every_limit import EVERY_LIMIT
from opentelemetry.sdk.trace import TracerProvider

import budgetspan
from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, Mode, Spend
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.processors.budget import BudgetSpanProcessor
from budgetspan.runs.context import set_tracer_provider
from budgetspan.runs.implicit import end_process_run

ATTRS = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.input_tokens": 100,
    "gen_ai.usage.output_tokens": 20,
}


def best_of_rounds(
    ops: dict[str, Callable[[], object]], n: int, rounds: int
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """µs per operation: each round runs every row once (n / rounds operations).

    Returns the best round of each row, and for each row the median over rounds of its difference
    to the first row (the bare span) in the same round: rows of one round run within ~0.3 s of
    each other, so the pairing cancels the drift of a shared machine that a difference of two
    minimums from different rounds keeps.
    """
    per_round = max(1, n // rounds)
    best: dict[str, float] = {}
    deltas: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(rounds):
        this_round: dict[str, float] = {}
        for name, fn in ops.items():
            us = timeit.timeit(fn, number=per_round) / per_round * 1e6
            this_round[name] = us
            best[name] = min(best.get(name, us), us)
        base = next(iter(this_round.values()))
        for name, us in this_round.items():
            deltas[name].append(us - base)
    paired = [(name, statistics.median(deltas[name])) for name in ops]
    return [(name, best[name]) for name in ops], paired


def operations() -> tuple[dict[str, Callable[[], object]], Callable[[], None]]:
    """The measured operations by name, and what closes the run they share."""
    bare = TracerProvider().get_tracer("bench")
    with_proc = TracerProvider()
    with_proc.add_span_processor(BudgetSpanProcessor())
    proc_tracer = with_proc.get_tracer("bench")
    own_tracer = with_proc.get_tracer("budgetspan")

    def bare_span() -> None:
        with bare.start_as_current_span("chat gpt-4o-mini", attributes=ATTRS):
            pass

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
    scope = budgetspan.run("bench", budget=EVERY_LIMIT)
    scope.__enter__()

    def close() -> None:
        scope.__exit__(None, None, None)
        end_process_run()

    ops: dict[str, Callable[[], object]] = {
        "bare SDK span (5 attributes, no processor)": bare_span,
        "ledger reserve + commit": reserve_commit,
        "foreign gen_ai span through BudgetSpanProcessor": processed_span,
        "budgetspan's own span through BudgetSpanProcessor": own_span,
        "plain function call": plain,
        "@budgetspan.tool call (span + ledger + events)": tooled,
    }
    return ops, close


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40_000, help="operations per row, over all rounds")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--instructions", action="store_true", help="count CPU instructions with valgrind")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # one operation, for valgrind
    ap.add_argument("--metrics", action="store_true", help="with the Prometheus metrics listener on")
    args = ap.parse_args()
    if args.metrics:
        from budgetspan.processors import metrics_endpoint as endpoint

        endpoint.install(None)
    if args.worker is not None:
        ops, close = operations()
        fn = list(ops.values())[args.worker]
        for _ in range(args.n):
            fn()
        close()
        return
    if args.instructions:
        instructions(args.metrics)
        return
    ops, close = operations()
    for fn in ops.values():  # warm-up: the first row must not pay for caches and lazy imports
        for _ in range(2000):
            fn()
    rows, paired = best_of_rounds(ops, args.n, args.rounds)
    close()
    report(rows, "µs/op")
    print(
        f"paired by round (median of per-round differences to the bare span): foreign gen_ai span "
        f"+{paired[2][1]:,.2f} µs, own/other span {paired[3][1]:+,.2f} µs"
    )


def report(rows: list[tuple[str, float]], unit: str) -> None:
    base = rows[0][1]
    print(f"{'operation':50} {unit:>12} {'vs bare span':>13}")
    for name, v in rows:
        print(f"{name:50} {v:12,.2f} {v / base:12.2f}x")
    print(
        f"\nBudgetSpanProcessor adds {rows[2][1] - base:,.2f} {unit} per foreign gen_ai span "
        f"(reserve + commit + cost) and {rows[3][1] - base:,.2f} {unit} per own/other span"
    )


def _count(worker: int, n: int, metrics: bool) -> int:
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__]
    cmd += ["--worker", str(worker), "--n", str(n)] + (["--metrics"] if metrics else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    for line in out.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split(":")[-1].strip().replace(",", ""))
    raise RuntimeError(f"worker {worker}: no instruction count\n{out.stderr[-2000:]}")


def instructions(metrics: bool, small: int = 200, large: int = 1200) -> None:
    """Per operation = (I(large) - I(small)) / (large - small): start-up cancels out."""
    ops, close = operations()
    names = list(ops)
    close()
    rows = [
        (name, (_count(i, large, metrics) - _count(i, small, metrics)) / (large - small))
        for i, name in enumerate(names)
    ]
    report(rows, "instructions")


if __name__ == "__main__":
    main()
