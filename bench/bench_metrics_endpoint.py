"""What scraping /metrics costs the application, and how big the exposition gets at the caps.

    .venv/bin/python bench/bench_metrics_endpoint.py [--runs 300] [--scrapers 16]

Three parts, each short (the dev machine has 2 shared cores):

1. scrapers: the application runs ``--runs`` runs, each one chat call through the real ``openai``
   SDK (``httpx2.MockTransport``) with the metrics listener on and the endpoint served
   (``metrics_endpoint.serve``); the exposition holds 20 workflows x 20 models. Per-run latency
   p50/p99/max without scrapers, then with ``--scrapers`` threads in another process scraping
   in a loop over keep-alive connections, then while 400 half-open connections are opened and
   all hang up at once.
2. one scrape against the application: 100 workflows x 100 models x 6 phases of model calls (the
   issue's case), an application thread ending model calls (sleeping 0.2 ms between them) while
   one exposition is rendered; how often and how long the scrape held the listener's lock (now
   never), the longest ``on_call_end`` of the application thread during the scrape and without
   one, and how much longer than 0.2 ms its sleeps took (the time it waited for the interpreter).
3. exposition size: 100 workflows x 100 models x 100 tools, default caps; lines, MiB and render
   time, next to the same with the series cap lifted.

``--before`` runs part 1 against prometheus-client's own server, for the figure before this change.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

import budgetspan
from budgetspan import events
from budgetspan.accounting.ledger import Spend
from budgetspan.events import CallRecord
from budgetspan.processors import metrics_endpoint as endpoint
from budgetspan.processors import metrics_server
from budgetspan.processors.metrics import BudgetspanMetrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.reliability._support import messages, openai_instrumented, sync_client

SCRAPERS = r"""
import http.client, sys, threading, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
count = [0]
def loop():
    conn = http.client.HTTPConnection(host, port, timeout=60)
    while True:
        try:
            conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
            conn.getresponse().read()
            count[0] += 1
        except Exception:
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=60)
for _ in range(n):
    threading.Thread(target=loop, daemon=True).start()
print("READY", flush=True)
sys.stdin.read()
print(count[0], flush=True)
"""


def record(workflow: str, model: str, phase: str = "model_decision", tool: str | None = None) -> CallRecord:
    if tool is not None:
        return CallRecord("tool", workflow, "tool_execution", 0.01, tool=tool)
    spend = Spend(100, 20, None, None, None, 0.001)
    return CallRecord("model", workflow, phase, 0.2, provider="acme", model=model, spend=spend)


def app_runs(n: int) -> list[float]:
    client = sync_client()
    took = []
    with openai_instrumented():
        for _ in range(n):
            t0 = time.perf_counter()
            with budgetspan.run("bench"):
                client.chat.completions.create(model="gpt-4o-mini", messages=messages())
            took.append(time.perf_counter() - t0)
    return took


def summary(label: str, took: list[float]) -> None:
    ms = sorted(t * 1000 for t in took)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"  {label:<34} p50 {statistics.median(ms):7.2f} ms  p99 {p99:7.2f} ms  max {ms[-1]:7.2f} ms")


def with_scrapers(address: tuple[str, int], n_scrapers: int, runs: int) -> list[float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRAPERS, address[0], str(address[1]), str(n_scrapers)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "READY"
    time.sleep(0.5)  # let the scrapers get going
    exposition = _exposition()
    renders = exposition.renders if exposition is not None else 0
    t0 = time.perf_counter()
    took = app_runs(runs)
    wall = time.perf_counter() - t0
    renders = (exposition.renders if exposition is not None else 0) - renders
    proc.stdin.close()
    scrapes = int(proc.stdout.readline() or 0)
    proc.wait(10)
    summary(f"{n_scrapers} scrapers in a loop", took)
    print(f"  ({runs} runs in {wall:.2f} s; {scrapes} scrapes answered meanwhile, {renders} renderings)")
    return took


def _exposition() -> Any:
    server = endpoint._server
    return server.exposition if server is not None else None


def _p99(took: list[float]) -> float:
    ms = sorted(t * 1000 for t in took)
    return ms[min(len(ms) - 1, int(len(ms) * 0.99))]


def rounds(address: tuple[str, int], args: argparse.Namespace) -> None:
    """No scrapers and scrapers side by side, ``--rounds`` times: each ratio is read against the
    baseline measured just before it (the machine's load moves both)."""
    ratios = []
    for i in range(args.rounds):
        load = os.getloadavg()[0]
        quiet = app_runs(args.runs)
        summary(f"round {i + 1}: no scrapers (load {load:.1f})", quiet)
        busy = with_scrapers(address, args.scrapers, args.runs)
        ratios.append(_p99(busy) / _p99(quiet))
        print(f"  p99 with / without scrapers: {ratios[-1]:.2f}")
    print(f"  ratios: {', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")


def with_half_open(address: tuple[str, int], runs: int) -> None:
    import socket
    import struct

    socks: list[socket.socket] = []
    refused = [0]

    def flood() -> None:
        for _ in range(400):
            try:
                socks.append(socket.create_connection(address, timeout=30))
            except OSError:
                refused[0] += 1
        for s in socks:  # all hang up at once, with a reset
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

    t = threading.Thread(target=flood)
    t.start()
    took = app_runs(runs)
    t.join(60)
    summary("400 half-open connections", took)
    print(f"  ({refused[0]} of 400 connections refused)")


def part_scrapers(args: argparse.Namespace) -> None:
    metrics = endpoint.get_metrics()
    for w in range(args.grid):
        for m in range(args.grid):
            metrics.on_call_end(record(f"wf{w}", f"model-{m}"))
    address = endpoint.serve(0)
    assert address is not None
    lines = len(generate_latest(endpoint.exposition_registry()).splitlines())
    print(f"1. app runs (one chat call each) while /metrics is scraped; exposition {lines} lines")
    app_runs(50)  # warm up
    if args.rounds:
        rounds(address, args)
        endpoint.stop_server()
        events.remove_listener(metrics)
        return
    summary("no scrapers", app_runs(args.runs))
    with_scrapers(address, args.scrapers, args.runs)
    summary("no scrapers (again)", app_runs(args.runs))
    with_half_open(address, args.runs)
    endpoint.stop_server()
    events.remove_listener(metrics)


class TimedLock:
    """The listener's lock, recording how long each hold by the scraping thread lasted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scraper: int | None = None
        self.holds: list[float] = []
        self._since = 0.0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self.lock.acquire(blocking, timeout)
        if got and threading.get_ident() == self.scraper:
            self._since = time.perf_counter()
        return got

    def release(self) -> None:
        if threading.get_ident() == self.scraper:
            self.holds.append(time.perf_counter() - self._since)
        self.lock.release()

    __enter__ = acquire

    def __exit__(self, *exc: Any) -> None:
        self.release()


def part_lock_hold(label: str, **caps: int) -> None:
    registry = CollectorRegistry()
    metrics = BudgetspanMetrics(registry, **caps)
    timed = TimedLock()
    metrics._lock = timed  # type: ignore[assignment]
    for collector in list(registry._collector_to_names):
        if hasattr(collector, "lock"):
            collector.lock = timed
    phases = ("context_assembly", "model_decision", "tool_execution", "verification", "approval", "final")
    for w in range(100):
        for m in range(100):
            for p in phases:
                metrics.on_call_end(record(f"wf{w}", f"model-{m}", p))
    probe = record("wf1", "model-1", "verification")

    late: list[float] = []  # how much longer than asked each 0.2 ms sleep took (waiting for the GIL)

    def calls_during(stop: threading.Event) -> list[float]:
        took = []
        while not stop.is_set():
            t0 = time.perf_counter()
            metrics.on_call_end(probe)
            t1 = time.perf_counter()
            took.append(t1 - t0)
            time.sleep(0.0002)
            late.append(time.perf_counter() - t1 - 0.0002)
        return took

    stop = threading.Event()
    out: list[list[float]] = []
    app = threading.Thread(target=lambda: out.append(calls_during(stop)))
    app.start()
    time.sleep(0.3)
    stop.set()
    app.join()
    quiet = out.pop()
    quiet_late = sorted(late)
    late.clear()
    stop.clear()
    pauses: list[float] = []
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - gc_started[0])

    app = threading.Thread(target=lambda: out.append(calls_during(stop)))
    app.start()
    timed.scraper = threading.get_ident()
    gc.callbacks.append(on_gc)
    t0 = time.perf_counter()
    text = generate_latest(registry)
    render = time.perf_counter() - t0
    gc.callbacks.remove(on_gc)
    stop.set()
    app.join()
    during = sorted(out.pop())
    holds = sorted(timed.holds)
    print(f"{label}: one scrape of 100 workflows x 100 models x 6 phases ({len(text.splitlines()):,} lines)")
    print(
        f"  render {render * 1000:.0f} ms; lock held {len(holds)} times: median {_ms(holds, 0.5)}, p99 {_ms(holds, 0.99)}, longest {_ms(holds, 1)}"
    )
    print(
        f"  app on_call_end during the scrape ({len(during)} calls): median {_ms(during, 0.5)}, p99 {_ms(during, 0.99)}, longest {_ms(during, 1)}; without a scrape: longest {_ms(sorted(quiet), 1)}"
    )
    print(
        f"  app thread kept from running (sleep overrun) during the scrape: median {_ms(sorted(late), 0.5)}, p99 {_ms(sorted(late), 0.99)}, longest {_ms(sorted(late), 1)}; without a scrape: median {_ms(quiet_late, 0.5)}, p99 {_ms(quiet_late, 0.99)}, longest {_ms(quiet_late, 1)}"
    )
    print(f"  garbage collections meanwhile: {len(pauses)}, longest {_ms(sorted(pauses), 1)}")
    print(f"  lock hold detail: {len(holds)} holds by the scraping thread")


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    return f"{values[min(len(values) - 1, int(len(values) * q))] * 1000:.3f} ms"


def part_size() -> None:
    print("3. 100 workflows x 100 models x 100 tools (one model and one tool call each)")
    for label, kwargs in (("default caps", {}), ("series cap lifted", {"max_series": 10_000_000})):
        registry = CollectorRegistry()
        metrics = BudgetspanMetrics(registry, **kwargs)
        for w in range(100):
            for m in range(100):
                for t in range(100):
                    metrics.on_call_end(record(f"wf{w}", f"model-{m}", tool=f"tool-{t}"))
                metrics.on_call_end(record(f"wf{w}", f"model-{m}"))
        t0 = time.perf_counter()
        text = generate_latest(registry)
        render = time.perf_counter() - t0
        print(
            f"  {label:<18} {len(text.splitlines()):>8,} lines  {len(text) / 2**20:6.2f} MiB  render {render * 1000:6.0f} ms"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--scrapers", type=int, default=16)
    ap.add_argument("--grid", type=int, default=20, help="part 1: workflows x models in the exposition")
    ap.add_argument("--rounds", type=int, default=0, help="part 1 only: no scrapers / scrapers, N times")
    ap.add_argument("--min-reuse", type=float, default=None, help="MIN_REUSE_S for this run (0: none)")
    ap.add_argument("--part", choices=("all", "scrapers", "lock", "size"), default="all")
    args = ap.parse_args()
    if args.min_reuse is not None:
        metrics_server.MIN_REUSE_S = args.min_reuse  # type: ignore[misc]
    if args.part in ("all", "scrapers"):
        part_scrapers(args)
    if args.part in ("all", "lock"):
        print("2. a scrape while an application thread ends model calls")
        part_lock_hold("  default caps")
        part_lock_hold("  series cap lifted", max_series=10_000_000)
    if args.part in ("all", "size"):
        part_size()


if __name__ == "__main__":
    main()
