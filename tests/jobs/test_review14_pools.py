"""Review 14: budgeted jobs on Celery's real pools (prefork and threads), with a real redis-server
and the real ``openai`` SDK against the loopback model server that counts every request reaching it.
Several jobs run at once in one worker; a pool process is killed mid-call; a job spawns sub-jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from budgetspan.jobs import JobStore, wait_for_end
from tests.accounting.redis_server import redis
from tests.jobs.conftest import ROOT, notifications, scrape, value
from tests.jobs.model_server import ModelServer
from tests.processes import free_port


class PoolWorker:
    """``celery -A tests.jobs.pool_app worker --pool=POOL -c SLOTS`` as its own process."""

    def __init__(
        self, pool: str, env: dict[str, str], client: redis.Redis, log: Path, slots: int = 3
    ) -> None:
        self.pool, self.env, self.client, self.log, self.slots = pool, env, client, log, slots
        self.name = pool + ("-multiproc" if "PROMETHEUS_MULTIPROC_DIR" in env else "")
        self.metrics_url = f"http://127.0.0.1:{env.get('BUDGETSPAN_METRICS_PORT')}/metrics"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "celery", "-A", "tests.jobs.pool_app", "worker", f"--pool={self.pool}"]
        cmd += [
            "-c",
            str(self.slots),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "warning",
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self.client.exists(f"test:worker-ready:{self.proc.pid}"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def app_module(redis_url: str, model_server: ModelServer) -> Any:
    os.environ["POOL_TEST_REDIS"] = redis_url
    os.environ["POOL_TEST_MODEL"] = model_server.url
    from tests.jobs import pool_app

    return pool_app


@pytest.fixture(scope="module", params=["prefork", "prefork-multiproc", "threads"])
def worker(
    request: pytest.FixtureRequest,
    redis_url: str,
    model_server: ModelServer,
    app_module: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PoolWorker]:
    env = dict(
        os.environ,
        POOL_TEST_REDIS=redis_url,
        POOL_TEST_MODEL=model_server.url,
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        BUDGETSPAN_METRICS_PORT=str(free_port()),
    )
    env.pop("BUDGETSPAN_BUDGET", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    pool, _, multiproc = request.param.partition("-")
    if multiproc:  # the pool's processes write their metrics to files; the parent serves the sum
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path_factory.mktemp("prom"))
    client = redis.Redis.from_url(redis_url)
    w = PoolWorker(pool, env, client, tmp_path_factory.mktemp("worker") / "worker.log")
    w.start()
    yield w
    w.stop()


def test_jobs_running_at_once_each_hold_their_budget(
    worker: PoolWorker, app_module: Any, model_server: ModelServer
) -> None:
    jobs, store = app_module.jobs, JobStore(app_module.client)
    ids = [
        jobs.submit(
            app_module.agent, 5, workflow="pooled", budget={"max_model_calls": 3}, job_id=f"{worker.name}-{i}"
        )
        for i in range(6)
    ]
    ends = [wait_for_end(store, job_id, timeout_s=60) for job_id in ids]
    for job_id, end in zip(ids, ends, strict=True):
        assert end is not None and end.outcome == "budget_exhausted", end
        assert model_server.steps(job_id) == [0, 1, 2]  # the 4th call was refused before it left
        assert end.usage["model_calls"] == 3
        assert not app_module.client.exists(f"budgetspan:run:{job_id}")  # nothing left held
        assert not app_module.client.hlen(f"budgetspan:job:{job_id}:calls")
    pids = {int(p) for job_id in ids for p in app_module.client.lrange(f"test:pids:{job_id}", 0, -1)}
    if worker.pool == "prefork":
        assert worker.proc is not None and worker.proc.pid not in pids  # ran in the pool's children
    if worker.name == "prefork":  # the pool's children count apart from the served registry: said
        assert "forked from one serving Prometheus metrics" in worker.log.read_text()
        assert "PROMETHEUS_MULTIPROC_DIR" in worker.log.read_text()
        return
    # The worker's /metrics counts every job's end, wherever in the pool it ran.
    deadline = time.monotonic() + 10
    while True:
        counted = value(
            scrape(worker.metrics_url), "budgetspan_jobs_total", workflow="pooled", state="budget_exhausted"
        )
        if counted >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counted == 6


def test_a_pool_process_killed_mid_call_the_retry_pays_it_once(
    worker: PoolWorker, app_module: Any, model_server: ModelServer
) -> None:
    if worker.pool != "prefork":
        pytest.skip("a threads pool has no process of its own to kill")
    jobs, client = app_module.jobs, app_module.client
    job_id = f"{worker.name}-killed"
    jobs.submit(
        app_module.agent,
        5,
        workflow="pooled",
        budget={"max_model_calls": 4},
        job_id=job_id,
        notify="tests.jobs.pool_app:on_end",
    )
    gate = model_server.gate(job_id, 2)
    model_server.wait_for(job_id, 2)
    [child] = {int(p) for p in client.lrange(f"test:pids:{job_id}", 0, -1)}
    os.kill(child, signal.SIGKILL)  # the pool process dies with step 2 reserved and in flight
    gate.set()
    del model_server.gates[(job_id, 2)]

    end = wait_for_end(JobStore(client), job_id, timeout_s=60)
    assert end is not None and end.attempts == 2, end
    assert model_server.steps(job_id) == [0, 1, 2, 2, 3]  # step 2 resent, counted once
    assert end.outcome == "budget_exhausted" and end.usage["model_calls"] == 4
    assert not client.exists(f"budgetspan:run:{job_id}")
    assert not client.hlen(f"budgetspan:job:{job_id}:calls")
    assert len(notifications(client, job_id)) >= 1
    if worker.name == "prefork-multiproc":  # the killed process's live run is not live for ever
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _live_runs(worker) != 0:
            time.sleep(0.2)
        assert _live_runs(worker) == 0


def _live_runs(worker: PoolWorker) -> float:
    samples = scrape(worker.metrics_url)
    return sum(v for (name, _), v in samples.items() if name == "budgetspan_live_runs")


def test_a_countdown_job_runs_once_and_holds_its_budget(
    worker: PoolWorker, app_module: Any, model_server: ModelServer
) -> None:
    jobs, store = app_module.jobs, JobStore(app_module.client)
    job_id = jobs.submit(
        app_module.agent,
        3,
        workflow="pooled",
        budget={"max_model_calls": 2},
        job_id=f"{worker.name}-countdown",
        countdown=2,
    )
    end = wait_for_end(store, job_id, timeout_s=60)
    assert end is not None and end.outcome == "budget_exhausted" and end.attempts == 1
    assert end.queue_wait_s is not None and end.queue_wait_s >= 1.9  # the countdown is queue time
    assert model_server.steps(job_id) == [0, 1]


def test_sub_jobs_submitted_from_a_job_spend_from_its_budget(
    worker: PoolWorker, app_module: Any, model_server: ModelServer
) -> None:
    jobs, client = app_module.jobs, app_module.client
    job_id = jobs.submit(
        app_module.fanout, 2, 3, workflow="pooled", budget={"max_model_calls": 3}, job_id=f"{worker.name}-fan"
    )
    end = wait_for_end(JobStore(client), job_id, timeout_s=60)
    assert end is not None and end.outcome == "success", end
    children = [f"{job_id}-c0", f"{job_id}-c1"]
    ends = [wait_for_end(JobStore(client), child, timeout_s=60) for child in children]
    sent = len(model_server.steps(job_id)) + sum(len(model_server.steps(c)) for c in children)
    assert sent == 3, f"{sent} model calls under a job budget of 3"
    outcomes = sorted(e.outcome for e in ends if e is not None)
    assert len(outcomes) == 2 and "budget_exhausted" in outcomes, ends
    stopped = next(e for e in ends if e is not None and e.outcome == "budget_exhausted")
    assert "3 of 3 model calls" in stopped.explanation, stopped
    # The parent's record was held open for its sub-jobs, and went with the last of them.
    assert not client.exists(f"budgetspan:run:{job_id}")
    for child in children:
        assert not client.exists(f"budgetspan:run:{child}")
        assert "held_runs" not in JobStore(client).state(child)


def test_a_task_retried_by_celery_autoretry_keeps_one_budget(
    worker: PoolWorker, app_module: Any, model_server: ModelServer
) -> None:
    """``autoretry_for`` on a job's task: Celery runs it again (was: the job ended ``failure``
    after the first attempt, the option silently ignored), with the same run and budget."""
    jobs, client, store = app_module.jobs, app_module.client, JobStore(app_module.client)
    job_id = jobs.submit(
        app_module.flaky, 5, workflow="pooled", budget={"max_model_calls": 4}, job_id=f"{worker.name}-flaky"
    )
    end = wait_for_end(store, job_id, timeout_s=60)
    assert end is not None and end.attempts == 2, end
    assert model_server.steps(job_id) == [0, 10, 11, 12]  # 4 calls over both attempts, not 1 + 4
    assert end.outcome == "budget_exhausted" and end.usage["model_calls"] == 4
    assert not client.exists(f"budgetspan:run:{job_id}")  # the record kept for the retry went at the end
    assert "held_runs" not in store.state(job_id)
    watch = subprocess.run(
        [sys.executable, "-m", "budgetspan.cli", "jobs", "watch", job_id, "--redis", app_module.REDIS_URL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert watch.returncode == 1, watch.stderr  # one end, after the last attempt: budget_exhausted
    ends = [line for line in watch.stdout.splitlines() if "budget_exhausted" in line or "Failed" in line]
    assert len(ends) == 1 and "4 of 4 model calls" in ends[0], watch.stdout

    broken = jobs.submit(app_module.broken, workflow="pooled", job_id=f"{worker.name}-broken")
    end = wait_for_end(store, broken, timeout_s=60)
    assert end is not None and end.outcome == "failure" and end.attempts == 2, end
    assert end.explanation == "Failed: ConnectionError"
    assert end.usage["model_calls"] == 2 and model_server.steps(broken) == [1, 2]
    assert not client.exists(f"budgetspan:run:{broken}")


def test_a_job_past_celery_s_hard_time_limit_ends_and_holds_nothing(
    worker: PoolWorker, app_module: Any, model_server: ModelServer
) -> None:
    if worker.pool != "prefork":
        pytest.skip("only the prefork pool enforces time limits (it kills the pool process)")
    jobs, client, store = app_module.jobs, app_module.client, JobStore(app_module.client)
    job_id = f"{worker.name}-slow"
    gate = model_server.gate(job_id, 1)  # step 1 is held past the 3 s limit: Celery kills the process
    try:
        jobs.submit(
            app_module.slow,
            3,
            workflow="pooled",
            budget={"max_model_calls": 5},
            job_id=job_id,
            notify="tests.jobs.pool_app:on_end",
        )
        end = wait_for_end(store, job_id, timeout_s=30)
    finally:
        gate.set()
    assert end is not None, store.state(job_id)
    assert end.outcome == "failure" and end.explanation == "Failed: TimeLimitExceeded", end
    assert model_server.steps(job_id) == [0, 1]
    assert end.usage["model_calls"] == 2  # the call in flight was sent: it counts
    assert len(notifications(client, job_id)) == 1
    assert not client.exists(f"budgetspan:run:{job_id}")  # the killed attempt's call is given back
    assert not client.hlen(f"budgetspan:job:{job_id}:calls")
