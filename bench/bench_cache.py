"""What a cached tool call costs: a hit against the call it replaces, per backend.

    PYTHONPATH=src /work/main/.venv/bin/python bench/bench_cache.py [--calls 3000 --rounds 5]

One ``@budgetspan.tool`` with a trivial body (returns a short list), inside a declared run with a
tenant, on an SDK tracer provider with no exporter (spans are made and dropped). Configurations:

- ``tool``: the tool without a cache: reservation, ``execute_tool`` span, commit, events;
- ``hit memory``: ``cache=Cache("tenant", ttl_s=...)`` on the in-memory backend, every call a hit
  (key built from the run's identity, SHA-256, lookup, JSON decode, ``cached`` span, event);
- ``hit redis``: the same on ``RedisCache`` against a redis-server on loopback (started here, no
  persistence): two round trips per hit (generation counters, entry);
- ``skipped``: a ``user``-scoped cache in a run without a user: not cached, the tool runs as usual.

Wall clock per call, best of ``--rounds`` interleaved rounds (a shared machine only ever slows a
round down). What a hit saves is the replaced call's own cost (a model call, a retrieval: usually
milliseconds to seconds); this is the price of asking.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

import budgetspan
from budgetspan.runs.context import set_tracer_provider


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tool(cache: budgetspan.Cache | None) -> Callable[[str], Any]:
    @budgetspan.tool(name="lookup", cache=cache)
    def lookup(q: str) -> list[str]:
        return [q, "policy"]

    return lookup


def _per_call(fn: Callable[[str], Any], calls: int) -> float:
    with budgetspan.run("bench", tenant="acme"):
        fn("refunds")  # warm: the entry exists
        t = time.perf_counter()
        for _ in range(calls):
            fn("refunds")
        return (time.perf_counter() - t) / calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    set_tracer_provider(TracerProvider())
    configs: dict[str, Callable[[str], Any]] = {
        "tool": _tool(None),
        "hit memory": _tool(budgetspan.Cache("tenant", ttl_s=3600, backend=budgetspan.MemoryCache())),
        "skipped": _tool(budgetspan.Cache("user", ttl_s=3600, backend=budgetspan.MemoryCache())),
    }
    server = None
    if shutil.which("redis-server"):
        port = _free_port()
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=tempfile.mkdtemp(),
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        redis_cache = budgetspan.RedisCache(f"redis://127.0.0.1:{port}/0")
        configs["hit redis"] = _tool(budgetspan.Cache("tenant", ttl_s=3600, backend=redis_cache))
    try:
        best = {name: float("inf") for name in configs}
        for _ in range(args.rounds):
            for name, fn in configs.items():
                best[name] = min(best[name], _per_call(fn, args.calls))
    finally:
        if server is not None:
            server.kill()
            server.wait()
    print("| configuration | µs / call |\n|---|---:|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds * 1e6:.1f} |")


if __name__ == "__main__":
    main()
