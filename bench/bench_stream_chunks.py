"""Per-chunk overhead of a streamed chat completion, budgetspan side by side with peers.

    bash bench/setup_peers.sh                                                   # .venv-bench
    PYTHONPATH=src .venv-bench/bin/python bench/bench_stream_chunks.py --instructions   # valgrind
    PYTHONPATH=src .venv-bench/bin/python bench/bench_stream_chunks.py                  # wall clock

A synthetic SSE stream (``chat.completion.chunk`` events, one token each, then the finish and
usage chunks) answered by an ``httpx.MockTransport`` and read through the real ``openai`` SDK, sync
and async, under an SDK tracer provider with a do-nothing exporter. Each configuration runs in its
own process (instrumentors patch the SDK globally):

- bare:            the SDK alone
- budgetspan:      ``budgetspan.configure()`` (environment unset), the stream read inside a declared run
- budgetspan-wall: the same run with ``max_wall_clock_s`` set (an async stream arms one timer)
- openai-v2:       opentelemetry-instrumentation-openai-v2 (official contrib)
- openllmetry:     opentelemetry-instrumentation-openai (Traceloop)

Per chunk = (cost of a stream of ``--long`` chunks - cost of one of ``--short`` chunks) / (long -
short): what a call costs once (span, request, ledger) cancels out. ``--instructions`` counts CPU
instructions of the sync path with callgrind (load-independent); otherwise wall clock, best of
interleaved rounds.
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

CONFIGS = ("bare", "budgetspan", "budgetspan-wall", "openai-v2", "openllmetry")


def sse_body(chunks: int) -> bytes:
    base = {"id": "chatcmpl-b", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    events = [
        {**base, "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
        for i in range(chunks)
    ]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = {"prompt_tokens": 11, "completion_tokens": chunks, "total_tokens": 11 + chunks}
    events.append({**base, "choices": [], "usage": usage})
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def _instrument(config: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class NullExporter(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(NullExporter()))
    trace.set_tracer_provider(provider)
    if config.startswith("budgetspan"):
        import budgetspan

        budgetspan.configure(provider)
    elif config == "openllmetry":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor

        OpenAIInstrumentor().instrument(tracer_provider=provider)
    elif config == "openai-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as V2

        V2().instrument(tracer_provider=provider)


def _run_scope(config: str) -> object:
    """The scope the calls run in: a declared run for budgetspan, nothing for the others."""
    import contextlib

    if not config.startswith("budgetspan"):
        return contextlib.nullcontext()
    import budgetspan

    limit = {"max_wall_clock_s": 3600.0} if config == "budgetspan-wall" else {}
    return budgetspan.run("bench", **limit)  # type: ignore[arg-type]


# long: one worker process, sync and async batches, kept together for readability
def worker(config: str, chunks: int, calls: int, repeats: int, sync_only: bool) -> dict[str, float]:
    import httpx
    import openai

    _instrument(config)
    body = sse_body(chunks)
    headers = {"content-type": "text/event-stream"}
    client = openai.OpenAI(
        api_key="sk-bench",
        max_retries=0,
        http_client=httpx.Client(
            transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body, headers=headers))
        ),
    )

    async def ahandler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers=headers)

    aclient = openai.AsyncOpenAI(
        api_key="sk-bench",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(ahandler)),
    )
    args = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    def sync_batch() -> float:
        t0 = time.perf_counter()
        with _run_scope(config):  # type: ignore[attr-defined]
            for _ in range(calls):
                for _chunk in client.chat.completions.create(**args):  # type: ignore[call-overload]
                    pass
        return (time.perf_counter() - t0) / calls * 1e6

    async def async_batch() -> float:
        t0 = time.perf_counter()
        async with _run_scope(config):  # type: ignore[attr-defined]
            for _ in range(calls):
                async for _chunk in await aclient.chat.completions.create(**args):  # type: ignore[call-overload]
                    pass
        return (time.perf_counter() - t0) / calls * 1e6

    sync_batch()  # warm-up
    if sync_only:  # instruction counting: the heap of imports and set-up frozen (see bench_openai_overhead)
        gc.collect()
        gc.freeze()
        sync_batch()
        return {"sync_us": 0.0, "async_us": 0.0}
    sync = [sync_batch() for _ in range(repeats)]

    async def arepeats() -> list[float]:
        await async_batch()
        return [await async_batch() for _ in range(repeats)]

    return {"sync_us": min(sync), "async_us": min(asyncio.run(arepeats()))}


def _spawn(config: str, chunks: int, calls: int, repeats: int, valgrind: bool) -> dict[str, float] | int:
    argv = [sys.executable, __file__, "--worker", config, "--chunks", str(chunks), "--calls", str(calls)]
    argv += ["--repeats", str(repeats)]
    env = {**os.environ, "OTEL_SDK_DISABLED": "false", "PYTHONHASHSEED": "0"}
    if valgrind:
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv, "--sync-only"]
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{config} failed:\n{out.stderr[-3000:]}")
    if valgrind:
        for line in out.stderr.splitlines():
            if "Collected :" in line:
                return int(line.split(":")[-1].strip().replace(",", ""))
        raise SystemExit(f"{config}: no instruction count")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def instructions(configs: tuple[str, ...], short: int, long: int, calls: int) -> None:
    per_chunk = {}
    for config in configs:
        hi = _spawn(config, long, calls, 1, valgrind=True)
        lo = _spawn(config, short, calls, 1, valgrind=True)
        # warm-up + one measured batch: 2 x calls streams of each length
        per_chunk[config] = (int(hi) - int(lo)) / (2 * calls * (long - short))  # type: ignore[arg-type]
        print(f"{config}: {per_chunk[config]:,.0f} instructions / chunk", file=sys.stderr, flush=True)
    _table(per_chunk, "instructions / chunk", "{:,.0f}")


def wall(configs: tuple[str, ...], short: int, long: int, calls: int, repeats: int, rounds: int) -> None:
    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for config in configs:
            hi = _spawn(config, long, calls, repeats, valgrind=False)
            lo = _spawn(config, short, calls, repeats, valgrind=False)
            b = best.setdefault(config, {"sync_us": float("inf"), "async_us": float("inf")})
            for mode in b:
                per = (hi[mode] - lo[mode]) / (long - short)  # type: ignore[index]
                b[mode] = min(b[mode], per)
    for mode in ("sync_us", "async_us"):
        _table({c: r[mode] for c, r in best.items()}, f"{mode[:-3]} µs / chunk", "{:.2f}")


def _table(per_chunk: dict[str, float], what: str, fmt: str) -> None:
    bare = per_chunk.get("bare", 0.0)
    v2 = per_chunk.get("openai-v2", bare) - bare
    print(f"| configuration | {what} | overhead / chunk | ÷ openai-v2's overhead |")
    print("|---|---:|---:|---:|")
    for config, n in per_chunk.items():
        over = n - bare
        ratio = f"{over / v2:.2f}" if config != "bare" and v2 > 0 else ""
        print(
            f"| {config} | {fmt.format(n)} | {'' if config == 'bare' else '+' + fmt.format(over)} | {ratio} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=CONFIGS)
    ap.add_argument("--chunks", type=int, default=0)
    ap.add_argument("--short", type=int, default=10)
    ap.add_argument("--long", type=int, default=210)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sync-only", action="store_true")
    ap.add_argument("--instructions", action="store_true")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.chunks, args.calls, args.repeats, args.sync_only)))
        return
    configs = tuple(c for c in args.configs.split(",") if c in CONFIGS)
    if args.instructions:
        instructions(configs, args.short, args.long, args.calls)
    else:
        wall(configs, args.short, args.long, args.calls, args.repeats, args.rounds)


if __name__ == "__main__":
    main()
