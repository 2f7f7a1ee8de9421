"""Cost of budgetspan's OpenTelemetry Metrics API listener per model call and per run.

    .venv/bin/python bench/bench_otel_metrics.py [--n 20000]

Rows (microseconds per operation, best of interleaved rounds on a shared machine):
- one model-call record (chat, 2 token types with cache_read, cost, default-phase duration):
  the OTel listener on an SDK MeterProvider with a reader (the GenAI metrics and budgetspan's own
  series), on the API's proxy (no MeterProvider set: the no-op case), and the Prometheus listener
- the GenAI metrics alone (3 histogram records, what an instrumentation such as openai-v2 records)
- a run end (runs, cost/duration/token histograms, invoke_agent duration, utilisation of 1 limit)
"""

from __future__ import annotations

import argparse
import timeit
from typing import Any

from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

import budgetspan
from budgetspan.accounting.ledger import Spend
from budgetspan.events import CallRecord
from budgetspan.processors.metrics import BudgetspanMetrics
from budgetspan.processors.otel_metrics import OTelMetrics


def _record() -> CallRecord:
    return CallRecord(
        kind="model",
        workflow="bench",
        phase="model_decision",
        duration_s=0.4,
        provider="openai",
        model="gpt-4o-mini",
        spend=Spend(input_tokens=120, output_tokens=30, cache_read_tokens=64),
        cost_usd=0.0003,
        operation="chat",
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    r = _record()
    sdk = OTelMetrics(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    noop = OTelMetrics(NoOpMeterProvider())
    prom = BudgetspanMetrics(CollectorRegistry())
    with budgetspan.run("bench", budget={"max_model_calls": 10}) as run:
        pass
    rows: dict[str, Any] = {
        "otel listener, model call (SDK provider)": lambda: sdk.on_call_end(r),
        "otel listener, model call (no-op provider)": lambda: noop.on_call_end(r),
        "otel GenAI metrics alone (3 records)": lambda: sdk._gen_ai_call(r),
        "prometheus listener, model call": lambda: prom.on_call_end(r),
        "otel listener, run end (SDK provider)": lambda: sdk.on_run_end(run),
    }
    best = {name: float("inf") for name in rows}
    per_round = max(1, args.n // args.rounds)
    for _ in range(args.rounds):
        for name, fn in rows.items():
            best[name] = min(best[name], timeit.timeit(fn, number=per_round) / per_round * 1e6)
    for name, us in best.items():
        print(f"{name:48s} {us:7.2f} µs")


if __name__ == "__main__":
    main()
