"""Multiprocess mode (PROMETHEUS_MULTIPROC_DIR), as under a pre-forking server: two worker
processes on one metrics port. The first binds it, the second logs "port in use" and goes on;
the endpoint serves the sum of both workers, and a dead worker's live runs drop out."""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import multiprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


WORKER = r"""
import sys, threading
import budgetspan
from opentelemetry.sdk.trace import TracerProvider

finished, live, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
budgetspan.configure(TracerProvider(), metrics_port=port, instrument=False)

@budgetspan.tool
def lookup(q):
    return q

for _ in range(finished):
    with budgetspan.run("mp") as run:
        lookup("x")
        run.succeed()
release = threading.Event()
entered = threading.Semaphore(0)
def hold():
    with budgetspan.run("mp"):
        entered.release()
        release.wait()
threads = [threading.Thread(target=hold) for _ in range(live)]
for t in threads:
    t.start()
for t in threads:  # READY only once every held run is live (a started thread may not be yet)
    assert entered.acquire(timeout=60)
print("READY", flush=True)
sys.stdin.read()
release.set()
for t in threads:
    t.join()
"""


def start_worker(env: dict[str, str], finished: int, live: int, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(finished), str(live), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    assert line.strip() == "READY", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(budgetspan_\w+)\{([^}]*)\} (\S+)$", line)
        if m and 'workflow="mp"' in m.group(2):
            key = m.group(1) + ("{" + m.group(2) + "}" if "le=" in m.group(2) else "")
            values[key] = values.get(key, 0.0) + float(m.group(3))
    return values


def scrape_until(port: int, want: dict[str, float], timeout_s: float = 30.0) -> dict[str, float]:
    """Scrape until the wanted values are served (bounded): workers write their files async."""
    deadline = time.monotonic() + timeout_s
    while True:
        values = scrape(port)
        if all(values.get(k) == v for k, v in want.items()) or time.monotonic() > deadline:
            return values
        time.sleep(0.05)


def test_workers_are_summed_and_dead_workers_leave_live_runs(tmp_path: Path) -> None:
    mp_dir = tmp_path / "prom-mp"
    mp_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDGETSPAN_")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(mp_dir)
    port = free_port()
    a = start_worker(env, finished=3, live=2, port=port)
    b = start_worker(env, finished=5, live=1, port=port)  # same port: in use
    try:
        want = {"budgetspan_runs_total": 8, "budgetspan_live_runs": 3}
        values = scrape_until(port, want)  # served by worker a, summed over a and b
        assert values["budgetspan_runs_total"] == 8
        assert values["budgetspan_tool_calls_total"] == 8
        assert values["budgetspan_run_duration_seconds_count"] == 8
        assert values["budgetspan_live_runs"] == 3
        if shutil.which("promtool"):  # the summed exposition is well-formed too
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                check = subprocess.run(
                    ["promtool", "check", "metrics"],
                    input=r.read(),
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
            assert check.returncode == 0, check.stdout + check.stderr
        assert b.stdin is not None
        b.stdin.close()
        assert b.wait(timeout=30) == 0
        assert b.stderr is not None
        assert "cannot serve Prometheus metrics" in b.stderr.read()
        # What a pre-forking server's child-exit hook does for a worker that is gone.
        multiprocess.mark_process_dead(b.pid, str(mp_dir))  # type: ignore[no-untyped-call]
        values = scrape_until(port, {"budgetspan_live_runs": 2, "budgetspan_runs_total": 9})
        assert values["budgetspan_live_runs"] == 2
        assert values["budgetspan_runs_total"] == 8 + 1  # b's held run finished as it exited
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                if proc.stdin:
                    proc.stdin.close()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


@pytest.mark.parametrize("mode", ["livesum"])
def test_live_runs_gauge_declares_a_multiprocess_mode(
    mode: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from prometheus_client import CollectorRegistry

    from budgetspan.processors.metrics import BudgetspanMetrics

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # client mode: prometheus-client's classes
    metrics = BudgetspanMetrics(CollectorRegistry())
    assert metrics.live_runs.metric._multiprocess_mode == mode
