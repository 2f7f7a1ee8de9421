"""Per-call latency while the OTLP endpoint is healthy, down, slow or answering 500.

    .venv/bin/python bench/bench_exporter_outage.py [--runs 3000] [--rounds 3]

Each scenario runs in its own subprocess with the SDK's BatchSpanProcessor + OTLPSpanExporter
(http) at their *default* settings (queue 2048, 5 s schedule, 10 s export timeout), budgetspan's
BudgetSpanProcessor, and one "agent step" per measured call: ``budgetspan.run`` around one
instrumented ``openai`` chat completion (mock transport, recorded-style body) and one ``@tool``.
The fake endpoints live in this (parent) process so their threads do not share the worker's GIL.

Between steps the worker pauses ``--think-ms`` (untimed), as an agent waiting on a model would: a
loop that never yields starves the exporter thread (each of its socket reads waits for the GIL),
and then spans are dropped even with a healthy endpoint (``--think-ms 0`` shows it).

Scenarios: ``none`` (no exporter: the baseline), ``ok`` (loopback server answering 200),
``down`` (closed port), ``slow`` (answers after 15 s, past the exporter timeout), ``error_500``.
Reported per scenario: median and p99 µs per step (median over rounds), the difference to
``none`` and to a healthy endpoint (``ok``: what an outage adds), and the spans the SDK counted
as dropped at the queue or failed at export (its counters need OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

SCENARIOS = ("none", "ok", "down", "slow", "error_500")


def worker(scenario: str, url: str, runs: int, think_ms: float) -> None:
    import time

    os.environ["OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"] = "true"

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import budgetspan
    from budgetspan.instrumentation.openai import OpenAIInstrumentor
    from budgetspan.runs import context as bs_context
    from tests.reliability._support import MODEL, messages, sync_client

    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    provider = TracerProvider()
    provider.add_span_processor(budgetspan.BudgetSpanProcessor())
    batch = None
    if scenario != "none":
        exporter = OTLPSpanExporter(endpoint=url, meter_provider=meters)
        batch = BatchSpanProcessor(exporter, meter_provider=meters)
        provider.add_span_processor(batch)
    bs_context.set_tracer_provider(provider)
    OpenAIInstrumentor().instrument()
    client = sync_client()

    @budgetspan.tool
    def lookup(i: int) -> int:
        return i

    def step(i: int) -> None:
        with budgetspan.run("bench", max_model_calls=3):
            client.chat.completions.create(model=MODEL, messages=messages())
            lookup(i)

    for i in range(300):  # warm-up
        step(i)
    times: list[float] = []
    for i in range(runs):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
        if think_ms:
            time.sleep(think_ms / 1000)  # the app waiting on something else: not timed
    times.sort()
    dropped = failed = 0
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:  # type: ignore[union-attr]
                    if "error.type" not in (p.attributes or {}):
                        continue
                    if m.name == "otel.sdk.processor.span.processed":
                        dropped += int(p.value)  # type: ignore[union-attr]
                    elif m.name == "otel.sdk.exporter.span.exported":
                        failed += int(p.value)  # type: ignore[union-attr]
    result = {
        "median_us": statistics.median(times) * 1e6,
        "p99_us": times[int(len(times) * 0.99) - 1] * 1e6,
        "dropped": dropped,
        "failed": failed,
    }
    print(json.dumps(result), flush=True)
    os._exit(0)  # no shutdown: a down or slow endpoint would hold the exit for the export timeout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--think-ms", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", nargs=2, metavar=("SCENARIO", "URL"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.runs, args.think_ms)
        return

    from tests.reliability._support import OtlpEndpoint, closed_port

    with (
        OtlpEndpoint("ok") as ok,
        OtlpEndpoint("slow", delay_s=15.0) as slow,
        OtlpEndpoint("error") as error,
    ):
        urls = {
            "none": "-",
            "ok": ok.url,
            "down": f"http://127.0.0.1:{closed_port()}/v1/traces",
            "slow": slow.url,
            "error_500": error.url,
        }
        results: dict[str, list[dict[str, float]]] = {s: [] for s in SCENARIOS}
        for _ in range(args.rounds):
            for scenario in SCENARIOS:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--runs",
                        str(args.runs),
                        "--worker",
                        scenario,
                        urls[scenario],
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                )
                results[scenario].append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = statistics.median(r["median_us"] for r in results["none"])
    healthy = statistics.median(r["median_us"] for r in results["ok"])
    print(
        f"{args.runs} steps (run + chat + tool) per scenario, {args.think_ms:g} ms untimed pause "
        f"between steps, median of {args.rounds} rounds"
    )
    print(
        f"{'scenario':<10} {'median µs':>10} {'p99 µs':>10} {'Δ none':>8} {'Δ ok':>8} "
        f"{'dropped':>8} {'failed':>8}  round medians µs"
    )
    for scenario in SCENARIOS:
        rs = results[scenario]
        meds = [r["median_us"] for r in rs]
        med = statistics.median(meds)
        p99 = statistics.median(r["p99_us"] for r in rs)
        dropped = statistics.median(r["dropped"] for r in rs)
        failed = statistics.median(r["failed"] for r in rs)
        print(
            f"{scenario:<10} {med:>10.1f} {p99:>10.1f} {med - base:>+8.1f} {med - healthy:>+8.1f} "
            f"{dropped:>8.0f} {failed:>8.0f}  {min(meds):.0f}-{max(meds):.0f}"
        )


if __name__ == "__main__":
    main()
