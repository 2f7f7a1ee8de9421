"""Per-call overhead of OpenAI instrumentations, side by side in one run.

    bash bench/setup_peers.sh
    .venv-bench/bin/python bench/bench_openai_overhead.py [--calls 1000] [--repeats 3] [--rounds 3]

Each configuration runs in its own subprocess (instrumentors patch the SDK globally) against the
same mock HTTP transport (httpx.MockTransport) answering the recorded chat completion from
shared/fixtures, with the same SDK TracerProvider and a do-nothing exporter:

- bare:        the openai SDK, no instrumentation
- budgetspan:  budgetspan.configure() (spans, ledger, cost, events; metrics off)
- openllmetry: opentelemetry-instrumentation-openai (Traceloop)
- openai-v2:   opentelemetry-instrumentation-openai-v2 (official contrib)
- budgetspan+metrics, openai-v2+metrics: the same, with an SDK MeterProvider (one in-memory reader,
               collected never, so no export cost) set globally first: budgetspan's OpenTelemetry
               Metrics API listener (GenAI metrics and its own series) and openai-v2's GenAI metrics
               are then recorded on every call
- span-floor:  not an instrumentation: a minimal wrapt wrapper that emits the span budgetspan emits
               (5 attributes at creation, 9 at the end, made current around the request) through the
               SDK API and does nothing else, i.e. what emitting that span costs any instrumentation

Reported: the best (minimum) µs per call over repeats and interleaved rounds, and the overhead
over bare.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASSETTE = HERE.parent.parent / "shared" / "fixtures" / "recorded" / "openai" / "test_chat__test_chat.yaml"
FALLBACK_BODY = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1709819153,
    "model": "gpt-3.5-turbo-0125",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Why did OpenTelemetry break up with Tracing? Because it couldn't handle the baggage!",
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 15, "completion_tokens": 19, "total_tokens": 34},
}
CONFIGS = (
    "bare",
    "budgetspan",
    "openllmetry",
    "openai-v2",
    "span-floor",
    "budgetspan+metrics",
    "openai-v2+metrics",
)


def response_body() -> bytes:
    try:
        import yaml

        data = yaml.safe_load(CASSETTE.read_text())
        return str(data["interactions"][0]["response"]["body"]["string"]).encode()
    except Exception:
        return json.dumps(FALLBACK_BODY).encode()


def install_span_floor(provider: object) -> None:
    """The reference line: only the span (same name, kind and attributes as budgetspan's chat span)."""
    import wrapt
    from opentelemetry import context, trace

    tracer = provider.get_tracer("span-floor")  # type: ignore[attr-defined]

    def wrapper(wrapped, instance, args, kwargs):  # type: ignore[no-untyped-def]
        model = kwargs.get("model")
        span = tracer.start_span(
            f"chat {model}",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": model,
                "server.address": "api.openai.com",
                "server.port": 443,
            },
        )
        token = context.attach(trace.set_span_in_context(span))
        try:
            response = wrapped(*args, **kwargs)
        finally:
            context.detach(token)
        usage = response.usage
        span.set_attributes(
            {
                "budgetspan.phase": "model_decision",
                "budgetspan.run.id": "run",
                "budgetspan.workflow": "default",
                "gen_ai.response.id": response.id,
                "gen_ai.response.model": response.model,
                "gen_ai.response.finish_reasons": (response.choices[0].finish_reason,),
                "gen_ai.usage.input_tokens": usage.prompt_tokens,
                "gen_ai.usage.output_tokens": usage.completion_tokens,
                "gen_ai.usage.cost": 0.0000455,
            }
        )
        span.end()
        return response

    wrapt.wrap_function_wrapper(
        "openai.resources.chat.completions.completions", "Completions.create", wrapper
    )


def worker(config: str, calls: int, repeats: int) -> dict[str, object]:
    import httpx
    import openai
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class NullExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(NullExporter()))
    trace.set_tracer_provider(provider)
    if config.endswith("+metrics"):
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
        config = config.removesuffix("+metrics")
    if config == "budgetspan":
        import budgetspan

        budgetspan.configure(provider)
    elif config == "openllmetry":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor

        OpenAIInstrumentor().instrument(tracer_provider=provider)
    elif config == "openai-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as V2

        V2().instrument(tracer_provider=provider)
    elif config == "span-floor":
        install_span_floor(provider)

    body = response_body()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    client = openai.OpenAI(
        api_key="sk-bench", http_client=httpx.Client(transport=httpx.MockTransport(handler))
    )

    async def ahandler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    aclient = openai.AsyncOpenAI(
        api_key="sk-bench", http_client=httpx.AsyncClient(transport=httpx.MockTransport(ahandler))
    )
    msgs = [{"role": "user", "content": "Tell me a joke about opentelemetry"}]

    def sync_batch() -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            client.chat.completions.create(model="gpt-3.5-turbo", messages=msgs)  # type: ignore[arg-type]
        return (time.perf_counter() - t0) / calls * 1e6

    async def async_batch() -> float:
        t0 = time.perf_counter()
        for _ in range(calls):
            await aclient.chat.completions.create(model="gpt-3.5-turbo", messages=msgs)  # type: ignore[arg-type]
        return (time.perf_counter() - t0) / calls * 1e6

    if os.environ.get("BENCH_SYNC_ONLY"):  # instruction counting: warm-up + N sync calls, nothing else
        # One call warms every cache; then the heap built by imports and set-up is frozen, so that
        # a full collection of it, landing at a different call in each run, does not swing the
        # per-call figure by hundreds of thousands of instructions (same for every configuration).
        client.chat.completions.create(model="gpt-3.5-turbo", messages=msgs)  # type: ignore[arg-type]
        gc.collect()
        gc.freeze()
        sync_batch()
        sync_batch()
        return {"config": config, "sync_us": 0.0, "async_us": 0.0}
    sync_batch()  # warm-up
    asyncio.run(async_batch())
    sync = [sync_batch() for _ in range(repeats)]

    async def arepeats() -> list[float]:
        return [await async_batch() for _ in range(repeats)]

    asy = asyncio.run(arepeats())
    # The minimum is the figure least disturbed by other load on a shared machine.
    return {"config": config, "sync_us": min(sync), "async_us": min(asy)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", choices=CONFIGS)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all configurations")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="count CPU instructions per sync call with valgrind (immune to other load on the machine)",
    )
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset to run")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.calls, args.repeats)))
        return
    configs = tuple(c for c in args.configs.split(",") if c in CONFIGS)
    if args.instructions:
        instructions(configs)
        return
    results: dict[str, dict[str, float]] = {}
    for _round in range(args.rounds):  # interleaved, so slow spells of the machine hit every config
        for config in configs:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    config,
                    "--calls",
                    str(args.calls),
                    "--repeats",
                    str(args.repeats),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "OTEL_SDK_DISABLED": "false"},
            )
            if out.returncode != 0:
                print(f"{config}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            best = results.setdefault(config, {"sync_us": float("inf"), "async_us": float("inf")})
            best["sync_us"] = min(best["sync_us"], r["sync_us"])
            best["async_us"] = min(best["async_us"], r["async_us"])
    if args.json:
        print(json.dumps(results, indent=2))
    bare = results.get("bare")
    print(
        f"{'configuration':14} {'sync µs/call':>13} {'overhead':>10} {'async µs/call':>14} {'overhead':>10}"
    )
    for config, r in results.items():
        so = r["sync_us"] - bare["sync_us"] if bare else float("nan")
        ao = r["async_us"] - bare["async_us"] if bare else float("nan")
        print(f"{config:14} {r['sync_us']:13.1f} {so:+10.1f} {r['async_us']:14.1f} {ao:+10.1f}")
    if bare and "budgetspan" in results and "openllmetry" in results:
        for mode in ("sync_us", "async_us"):
            ours = results["budgetspan"][mode] - bare[mode]
            peer = results["openllmetry"][mode] - bare[mode]
            print(
                f"{mode[:-3]}: budgetspan overhead / OpenLLMetry overhead = {ours / peer:.2f}"
                if peer > 0
                else ""
            )


def _instructions(config: str, calls: int) -> int:
    """Total instructions of a worker making 2 x ``calls`` sync calls (plus start-up)."""
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--worker",
            config,
            "--calls",
            str(calls),
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_SYNC_ONLY": "1"},
    )
    for line in out.stderr.splitlines():
        if "Collected :" in line:
            return int(line.split(":")[-1].strip().replace(",", ""))
    raise RuntimeError(f"{config}: no instruction count\n{out.stderr[-2000:]}")


def instructions(configs: tuple[str, ...] = CONFIGS, small: int = 10, large: int = 60) -> None:
    """Per-call instructions = (I(large) - I(small)) / (2 * (large - small)): start-up cancels out."""
    per_call = {}
    for config in configs:
        per_call[config] = (_instructions(config, large) - _instructions(config, small)) / (
            2 * (large - small)
        )
    bare = per_call["bare"]
    print(f"{'configuration':14} {'instructions/call':>18} {'overhead':>12}")
    for config, n in per_call.items():
        print(f"{config:14} {n:18,.0f} {n - bare:+12,.0f}")
    peer = per_call.get("openllmetry", bare) - bare
    for config in ("budgetspan", "span-floor"):
        if config in per_call and peer > 0:
            print(f"{config} overhead / OpenLLMetry overhead = {(per_call[config] - bare) / peer:.2f}")


if __name__ == "__main__":
    main()
