"""The collector tier in rotel: GenAI spans per second with budgetspan's processor vs rotel
passing them through, and the processor's own cost per GenAI span and per plain span.

How: rotel (``budgetspan collector``'s command line, exporter ``blackhole``) is fed prebuilt
OTLP/HTTP protobuf requests by sender processes. A small wrapper processor (written to a temp
file) times each ``process_spans`` call inside rotel's interpreter, in wall time and in the
thread's CPU time (``thread_time_ns``: what the processor costs whatever else the cores run), and
notes the first and last call; the pass-through run uses a wrapper that only notes the calls (a
processor that touches no span costs rotel nothing: spans become Python objects only when read).
Spans per second = spans handled / (last call - first call) in rotel.

    .venv/bin/python bench/bench_collector.py [--spans 200000] [--batch 500] [--profile out.prof]
    .venv/bin/python bench/bench_collector.py --instructions   # CPU instructions per span (valgrind);
    # it also prints plain spans of a scope declared GenAI-free (--plain-scope)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from budgetspan.collector import launcher

WRAPPER = """
import json, os, time
MODE = os.environ["BENCH_MODE"]
if MODE in ("budgetspan", "plain-scope", "floor"):  # plain-scope: BUDGETSPAN_COLLECTOR_PLAIN_SCOPES=bench.plain
    from budgetspan.collector.rotel_processor import process_spans as inner
if MODE == "floor":  # rotel's side alone: the host's reads and writes, the core's edit made once
    from budgetspan.collector import core
    _real, _edit = core.Tier.process, []
    def _constant(self, facts, attrs):
        if not _edit:
            _edit.append(_real(self, facts, attrs))
        return _edit[0]
    core.Tier.process = _constant
OUT = os.environ["BENCH_OUT"]
if os.environ.get("BENCH_NO_GC"):
    import gc; gc.disable()
PROFILE = os.environ.get("BENCH_PROFILE")
if PROFILE:
    import cProfile
    profiler = cProfile.Profile()
EVERY = int(os.environ.get("BENCH_EVERY", "20"))
stats = {"calls": 0, "spans": 0, "ns": 0, "cpu_ns": 0, "first": 0, "last": 0}
def process_spans(rs):
    if PROFILE:
        profiler.enable()
    t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
    if MODE in ("budgetspan", "plain-scope", "floor"):
        inner(rs)
    t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
    stats["cpu_ns"] += c1 - c0
    if PROFILE:
        profiler.disable()
        if stats["calls"] % EVERY == 0:
            profiler.dump_stats(PROFILE)
    n = 0
    if MODE in ("budgetspan", "plain-scope", "floor"):
        for ss in rs.scope_spans:
            n += len(ss.spans)
    stats["calls"] += 1; stats["spans"] += n; stats["ns"] += t1 - t0
    stats["first"] = stats["first"] or t0; stats["last"] = t1
    if stats["calls"] % EVERY == 0:
        with open(OUT, "w") as f: json.dump(stats, f)
"""


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(double_value=float(value)))  # type: ignore[arg-type]


def request(n: int, genai: bool, seed: int) -> bytes:
    """One request of ``n`` spans; GenAI spans as OpenLLMetry's older names write them."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(_kv("service.name", "bench"))
    ss = rs.scope_spans.add()
    ss.scope.name = "bench.genai" if genai else "bench.plain"
    for i in range(n):
        sp = ss.spans.add()
        sp.trace_id = (seed * 1_000_003 + i // 5 + 1).to_bytes(16, "big")
        sp.span_id = (i + 1).to_bytes(8, "big")
        sp.parent_span_id = (10**6).to_bytes(8, "big")
        sp.name = "openai.chat" if genai else "GET /orders"
        sp.kind = Span.SPAN_KIND_CLIENT
        sp.start_time_unix_nano = 1_700_000_000_000_000_000 + i
        sp.end_time_unix_nano = sp.start_time_unix_nano + 5_000_000
        attrs = (
            GENAI_ATTRIBUTES
            if genai
            else {
                "http.request.method": "GET",
                "url.full": "http://x/orders",
                "http.response.status_code": 200,
                "server.address": "x",
                "server.port": 80,
                "network.protocol.version": "1.1",
            }
        )
        sp.attributes.extend(_kv(k, v) for k, v in attrs.items())
    return req.SerializeToString()


def _send(port: int, body: bytes, count: int) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(count):
        conn.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        conn.getresponse().read()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rotel_command(wrapper: Path, http_port: int, tmp: Path) -> list[str]:
    """rotel as ``budgetspan collector`` starts it, with the wrapper processor, exporting nowhere."""
    return [
        str(launcher.rotel_binary()),
        "start",
        "--otlp-http-endpoint",
        f"127.0.0.1:{http_port}",
        "--otlp-grpc-endpoint",
        f"127.0.0.1:{_free_port()}",
        "--exporter",
        "blackhole",
        "--otlp-with-trace-processor",
        str(wrapper),
        "--pid-file",
        str(tmp / "pid"),
        "--log-file",
        str(tmp / "log"),
    ]


def _wait_for(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.05)


def run(
    mode: str, genai: bool, spans: int, batch: int, senders: int = 2, profile: str | None = None
) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-collector-"))
    wrapper, out = tmp / "wrapper.py", tmp / "stats.json"
    wrapper.write_text(WRAPPER)
    http_port, metrics_port = _free_port(), _free_port()
    env = {**os.environ, "PYTHONPATH": launcher.python_path(), "BENCH_MODE": mode, "BENCH_OUT": str(out)}
    env["BUDGETSPAN_COLLECTOR_METRICS_PORT"] = str(metrics_port) if mode == "budgetspan" else ""
    if profile:
        env["BENCH_PROFILE"] = profile
    cmd = _rotel_command(wrapper, http_port, tmp)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=(tmp / "stderr").open("w"))
    try:
        _wait_for(http_port, proc, 20)
        per_sender = spans // batch // senders
        bodies = [request(batch, genai, s) for s in range(senders)]
        workers = [multiprocessing.Process(target=_send, args=(http_port, b, per_sender)) for b in bodies]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        time.sleep(1.5)
        stats = json.loads(out.read_text())
        if mode == "budgetspan" and genai:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                text = r.read()
            assert b"budgetspan_cost_usd_total{" in text
            # A span the processor fails on passes unchanged but is not the work measured here.
            assert b"budgetspan_internal_errors_total{" not in text, (tmp / "stderr").read_text()[-2000:]
    finally:
        proc.terminate()
        proc.wait(10)
    handled = per_sender * senders * batch
    wall = (stats["last"] - stats["first"]) / 1e9
    n = max(1, stats["spans"])
    return {
        "spans": handled,
        "spans_per_s": handled / wall if wall > 0 else 0.0,
        "us_per_span": stats["ns"] / n / 1000 if stats["spans"] else 0.0,
        "cpu_us_per_span": stats["cpu_ns"] / n / 1000 if stats["spans"] else 0.0,
    }


# --- instructions --------------------------------------------------------------------------------
#: rotel's call of the Python processor for one ResourceSpans: the spans made Python objects, the
#: processor, and the objects turned back into rotel's spans. Only what runs inside it is counted.
PROCESS_FN = "*ResourceSpans as rotel_sdk::model::PythonProcessable>::process"


def _rotel_instructions(mode: str, genai: bool, requests: int, batch: int) -> int:
    """Instructions counted inside rotel's processor calls for ``requests`` requests of ``batch``
    spans, one sender, rotel under callgrind (the count a busy machine does not move)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-collector-vg-"))
    wrapper, out, counts = tmp / "wrapper.py", tmp / "stats.json", tmp / "callgrind.out"
    wrapper.write_text(WRAPPER)
    http_port = _free_port()
    env = {**os.environ, "PYTHONPATH": launcher.python_path(), "BENCH_MODE": mode, "BENCH_OUT": str(out)}
    env.update(BENCH_EVERY="1", PYTHONHASHSEED="0", BUDGETSPAN_COLLECTOR_METRICS_PORT=str(_free_port()))
    env.update(BUDGETSPAN_COLLECTOR_PLAIN_SCOPES="bench.plain" if mode == "plain-scope" else "")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={counts}", "--collect-atstart=no"]
    cmd += [f"--toggle-collect={PROCESS_FN}", *_rotel_command(wrapper, http_port, tmp)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=(tmp / "stderr").open("w"))
    try:
        deadline = time.monotonic() + 120
        _wait_for(http_port, proc, 120)
        _send(http_port, request(batch, genai, 0), requests)
        while not out.exists() or json.loads(out.read_text() or "{}").get("calls", 0) < requests:
            if time.monotonic() > deadline + 600 or proc.poll() is not None:
                raise RuntimeError((tmp / "stderr").read_text()[-2000:])
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(120)
    found = re.search(r"^(?:summary|totals): (\d+)", counts.read_text(), re.M)
    assert found is not None, counts
    return int(found.group(1))


def instructions(batch: int, small: int = 2, large: int = 8) -> None:
    """Per span: (I(large requests) - I(small)) / ((large - small) * batch), so rotel's start and
    the processor's first calls (imports, new series) cancel out; the processor's own share is
    that minus the pass-through's."""
    per_span = {}
    for label, mode, genai in (
        ("GenAI spans, rotel pass-through", "pass", True),
        ("GenAI spans, rotel + budgetspan", "budgetspan", True),
        ("GenAI spans, rotel's side alone", "floor", True),
        ("plain spans, rotel + budgetspan", "budgetspan", False),
        ("plain spans, rotel's side alone", "floor", False),
        ("plain spans, scope declared plain", "plain-scope", False),
    ):
        lo, hi = (_rotel_instructions(mode, genai, n, batch) for n in (small, large))
        per_span[label] = (hi - lo) / ((large - small) * batch)
        own = per_span[label] - per_span["GenAI spans, rotel pass-through"]
        print(f"{label:36s} {per_span[label]:>10,.0f} instructions/span (processor {own:,.0f})", flush=True)


GENAI_ATTRIBUTES = {
    "llm.request.type": "chat",
    "gen_ai.system": "openai",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.usage.prompt_tokens": 120,
    "gen_ai.usage.completion_tokens": 30,
    "gen_ai.prompt.0.content": "hello",
}


def _core_loop(n: int) -> None:
    """``Tier.process`` on ``n`` plain-dict GenAI spans (after 1,000 to warm up), 5 per trace-run."""
    from prometheus_client import CollectorRegistry

    from budgetspan.collector.core import SpanFacts, Tier

    tier = Tier(registry=CollectorRegistry())
    traces = [(i + 1).to_bytes(16, "big").hex() for i in range(100)]
    for i in [*range(1000), *range(n)]:
        start = 1_700_000_000_000_000_000 + i
        facts = SpanFacts(traces[i // 5 % 100], "00000000000f4240", start, start + 5_000_000, False, "b")
        tier.process(facts, dict(GENAI_ATTRIBUTES))


def core_instructions(small: int = 1000, large: int = 5000) -> None:
    """The core alone (no rotel): instructions per GenAI span, (I(large) - I(small)) / (large - small)."""
    totals = []
    for n in (small, large):
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable]
        cmd += [__file__, "--core-loop", str(n)]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        found = re.search(r"Collected : (\d+)", done.stderr)
        assert found is not None, done.stderr[-2000:]
        totals.append(int(found.group(1)))
    print(
        f"core (Tier.process on a dict)        {(totals[1] - totals[0]) / (large - small):>10,.0f} instructions/span"
    )


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--spans", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--profile", help="cProfile the processor inside rotel (GenAI spans) into this file")
    p.add_argument("--instructions", action="store_true", help="CPU instructions per span (valgrind)")
    p.add_argument("--core-loop", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.core_loop is not None:
        _core_loop(args.core_loop)
        return 0
    if args.instructions:
        core_instructions()
        instructions(args.batch)
        return 0
    if args.profile:  # times under the profiler are not the figures; only where the time goes
        run("budgetspan", True, args.spans, args.batch, profile=str(Path(args.profile).resolve()))
        import pstats

        pstats.Stats(args.profile).sort_stats("tottime").print_stats(25)
        return 0
    rows = []
    for label, mode, genai in (
        ("GenAI spans, rotel pass-through", "pass", True),
        ("GenAI spans, rotel + budgetspan", "budgetspan", True),
        ("GenAI spans, rotel's side alone", "floor", True),
        ("plain spans, rotel + budgetspan", "budgetspan", False),
        ("plain spans, rotel's side alone", "floor", False),
    ):
        r = run(mode, genai, args.spans, args.batch)
        rows.append((label, r))
        print(
            f"{label:36s} {r['spans_per_s']:>10,.0f} spans/s   processor {r['us_per_span']:6.2f} µs/span"
            f" (thread CPU {r['cpu_us_per_span']:6.2f})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
