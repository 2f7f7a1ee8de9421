"""``budgetspan demo --jobs``: the background tickets run as jobs on a Celery worker process.

The Redis: ``BUDGETSPAN_REDIS_URL`` when set, else a ``redis-server`` started here (when one is
installed) on a free loopback port, stopped at the end. Without a Redis (or without Celery) the
demo says so and runs every ticket in its own process, as without ``--jobs``.

The demo submits each background ticket (job id = run id, the ``background`` budget resolved here
and sent with the job), prints the job ids and the ``budgetspan jobs watch`` command, runs the
chat tickets meanwhile, then follows each job's progress stream from Redis, as another process
would, up to its end.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO

from budgetspan.demo import jobs_app
from budgetspan.demo.agent import TicketResult
from budgetspan.demo.data import Ticket
from budgetspan.report.render import money, secs

JOBS_INSTALL = "pip install 'budgetspan[jobs]'"


@dataclass
class JobsHost:
    """The demo's Redis, Celery worker process and submitting app."""

    url: str
    worker_traces: str
    demo: jobs_app.DemoJobs | None = None
    redis_proc: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    tmp: tempfile.TemporaryDirectory[str] = field(
        default_factory=lambda: tempfile.TemporaryDirectory(prefix="budgetspan-demo-jobs-")
    )

    # set up ------------------------------------------------------------------------------
    def _start_worker(self, model_url: str | None, scale: float) -> None:
        env = {k: v for k, v in os.environ.items() if k != "BUDGETSPAN_METRICS_PORT"}
        env.update({jobs_app.ENV_REDIS_URL: self.url, jobs_app.ENV_SCALE: str(scale)})
        env["BUDGETSPAN_TRACES_FILE"] = self.worker_traces
        if model_url:
            env[jobs_app.ENV_MODEL_URL] = model_url
        log = os.path.join(self.tmp.name, "worker.log")
        cmd = [sys.executable, "-m", "celery", "-A", "budgetspan.demo.jobs_app", "worker", "--pool=solo"]
        cmd += ["-Q", jobs_app.QUEUE, "--without-gossip", "--without-mingle", "--without-heartbeat"]
        with open(log, "ab") as sink:
            self.worker = subprocess.Popen([*cmd, "-l", "warning"], env=env, stdout=sink, stderr=sink)
        assert self.demo is not None
        key = jobs_app.READY_KEY.format(pid=self.worker.pid)
        deadline = time.monotonic() + 60
        while not self.demo.jobs.client.exists(key):
            if self.worker.poll() is not None or time.monotonic() > deadline:
                with open(log, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"the Celery worker did not start:\n{tail}")
            time.sleep(0.05)

    # the jobs ----------------------------------------------------------------------------
    def submit(self, ticket: Ticket) -> str:
        assert self.demo is not None
        return str(
            self.demo.jobs.submit(
                self.demo.resolve_ticket, ticket.id, workflow="resolve_ticket", budget=ticket.profile
            )
        )

    def follow(self, ticket: Ticket, job_id: str, out: IO[str]) -> TicketResult:
        """Print the job's milestones from its Redis stream, then its end."""
        assert self.demo is not None
        store = self.demo.jobs.store
        for entry in store.watch(job_id, timeout_s=300):
            if entry.get("kind") != "end":
                out.write(f"    {float(entry.get('elapsed_s') or 0):5.2f} s  {entry.get('label')}\n")
                out.flush()
        end = store.ended(job_id)
        result = TicketResult(ticket, run_id=job_id, outcome=end.outcome if end else "unknown")
        if end is None:
            out.write(f"  -> unknown: job {job_id} did not end within 300 s\n")
            return result
        result.cost_usd = float(end.usage.get("cost_usd") or 0.0)
        result.duration_s = float(end.usage.get("wall_clock_s") or 0.0)
        wait = f", after {secs(end.queue_wait_s)} in the queue" if end.queue_wait_s is not None else ""
        out.write(f"  -> {end.outcome} in {secs(result.duration_s)}, {money(result.cost_usd)}{wait}\n")
        out.write(f"     {end.explanation}\n")
        out.flush()
        return result

    def stop(self) -> None:
        """Stop the worker (it flushes its spans on the way out), then our redis-server."""
        for proc in (self.worker, self.redis_proc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.tmp.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def _redis(host: JobsHost) -> bool:
    """Use the given Redis, or start a redis-server; False when there is none."""
    if host.url:
        return _ping(host.url)
    port = _free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    host.redis_proc = subprocess.Popen([*cmd, "--dir", host.tmp.name], stdout=subprocess.DEVNULL)
    host.url = f"redis://127.0.0.1:{port}/0"
    for _ in range(200):
        if _ping(host.url):
            return True
        time.sleep(0.05)
    return False


def start(out: IO[str], model_url: str | None, scale: float, worker_traces: str) -> JobsHost | None:
    """A Redis and a worker for the background tickets, or None (said on ``out``) without them."""
    missing = [m for m in ("celery", "redis") if importlib.util.find_spec(m) is None]
    if missing:
        out.write(f"--jobs needs {' and '.join(missing)} ({JOBS_INSTALL}): every ticket runs here.\n")
        return None
    url = os.environ.get(jobs_app.ENV_REDIS_URL, "").strip()
    if not url and shutil.which("redis-server") is None:
        out.write(
            f"--jobs needs a Redis: set {jobs_app.ENV_REDIS_URL} or install redis-server. "
            "Every ticket runs here instead.\n"
        )
        return None
    host = JobsHost(url, worker_traces)
    try:
        if not _redis(host):
            out.write(f"--jobs: no Redis answers at {host.url}. Every ticket runs here instead.\n")
            host.stop()
            return None
        host.demo = jobs_app.make_app(host.url)
        host._start_worker(model_url, scale)
    except Exception as e:
        out.write(f"--jobs: {e}\nEvery ticket runs here instead.\n")
        host.stop()
        return None
    started = "started here" if host.redis_proc is not None else f"${jobs_app.ENV_REDIS_URL}"
    out.write(f"Jobs: a Celery worker process on Redis {host.url} ({started}), spans in {worker_traces}\n")
    return host


__all__ = ["JobsHost", "start"]
