"""Per-call overhead of OpenAI instrumentations, side by side in one run.

    bash bench/setup_peers.sh
    .venv-bench/bin/python bench/bench_openai_overhead.py [--calls 3000] [--repeats 5]

Each configuration runs in its own subprocess (instrumentors patch the SDK globally) against the
same mock HTTP transport (httpx.MockTransport) answering the recorded chat completion from
shared/fixtures, with the same SDK TracerProvider and a do-nothing exporter:

- bare:        the openai SDK, no instrumentation
- budgetspan:  budgetspan.configure() (spans, ledger, cost, events; metrics off)
- openllmetry: opentelemetry-instrumentation-openai (Traceloop)
- openai-v2:   opentelemetry-instrumentation-openai-v2 (official contrib)

Reported: median µs per call over repeats, and the overhead over bare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASSETTE = HERE.parent.parent / "shared" / "fixtures" / "recorded" / "openai" / "test_chat__test_chat.yaml"
FALLBACK_BODY = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1709819153, "model": "gpt-3.5-turbo-0125",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Why did OpenTelemetry break up with Tracing? Because it couldn't handle the baggage!"}, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 15, "completion_tokens": 19, "total_tokens": 34},
}
CONFIGS = ("bare", "budgetspan", "openllmetry", "openai-v2")


def response_body() -> bytes:
    try:
        import yaml

        data = yaml.safe_load(CASSETTE.read_text())
        return str(data["interactions"][0]["response"]["body"]["string"]).encode()
    except Exception:
        return json.dumps(FALLBACK_BODY).encode()


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
    if config == "budgetspan":
        import budgetspan

        budgetspan.configure(provider)
    elif config == "openllmetry":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor

        OpenAIInstrumentor().instrument(tracer_provider=provider)
    elif config == "openai-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as V2

        V2().instrument(tracer_provider=provider)

    body = response_body()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    client = openai.OpenAI(api_key="sk-bench", http_client=httpx.Client(transport=httpx.MockTransport(handler)))

    async def ahandler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    aclient = openai.AsyncOpenAI(api_key="sk-bench", http_client=httpx.AsyncClient(transport=httpx.MockTransport(ahandler)))
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

    sync_batch()  # warm-up
    asyncio.run(async_batch())
    sync = [sync_batch() for _ in range(repeats)]

    async def arepeats() -> list[float]:
        return [await async_batch() for _ in range(repeats)]

    asy = asyncio.run(arepeats())
    return {"config": config, "sync_us": statistics.median(sync), "async_us": statistics.median(asy)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker", choices=CONFIGS)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.calls, args.repeats)))
        return
    results = {}
    for config in CONFIGS:
        out = subprocess.run(
            [sys.executable, __file__, "--worker", config, "--calls", str(args.calls), "--repeats", str(args.repeats)],
            capture_output=True, text=True, env={**os.environ, "OTEL_SDK_DISABLED": "false"},
        )
        if out.returncode != 0:
            print(f"{config}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        results[config] = json.loads(out.stdout.strip().splitlines()[-1])
    if args.json:
        print(json.dumps(results, indent=2))
    bare = results.get("bare")
    print(f"{'configuration':14} {'sync µs/call':>13} {'overhead':>10} {'async µs/call':>14} {'overhead':>10}")
    for config, r in results.items():
        so = r["sync_us"] - bare["sync_us"] if bare else float("nan")
        ao = r["async_us"] - bare["async_us"] if bare else float("nan")
        print(f"{config:14} {r['sync_us']:13.1f} {so:+10.1f} {r['async_us']:14.1f} {ao:+10.1f}")
    if bare and "budgetspan" in results and "openllmetry" in results:
        for mode in ("sync_us", "async_us"):
            ours = results["budgetspan"][mode] - bare[mode]
            peer = results["openllmetry"][mode] - bare[mode]
            print(f"{mode[:-3]}: budgetspan overhead / OpenLLMetry overhead = {ours / peer:.2f}" if peer > 0 else "")


if __name__ == "__main__":
    main()
