"""One redis-server, one model server and one Celery worker (a separate process) per module. The
worker's app module is imported once per session, against the first module's Redis: the tests that
submit to the worker live in one module (test_celery_jobs.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.accounting.redis_server import redis
from tests.jobs.model_server import ModelServer
from tests.processes import free_port

ROOT = Path(__file__).resolve().parents[2]

if shutil.which("redis-server") is None:
    pytest.skip("Debian redis-server not installed", allow_module_level=True)
pytest.importorskip("celery")


class Worker:
    """``celery -A tests.jobs.celery_app worker --pool=solo``, which a test may kill and restart."""

    def __init__(self, env: dict[str, str], client: redis.Redis, log: Path) -> None:
        self.env, self.client, self.log = env, client, log
        self.traces = Path(env["BUDGETSPAN_TRACES_FILE"])  # the worker's spans, OTLP JSON lines
        self.metrics_url = f"http://127.0.0.1:{env['BUDGETSPAN_METRICS_PORT']}/metrics"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "celery", "-A", "tests.jobs.celery_app", "worker", "--pool=solo"]
        cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        key = f"test:worker-ready:{self.proc.pid}"
        deadline = time.monotonic() + 60
        while not self.client.exists(key):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not start; see {self.log}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def model_server() -> Iterator[ModelServer]:
    server = ModelServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def worker(
    redis_url: str, model_server: ModelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    traces = tmp_path_factory.mktemp("traces") / "worker.jsonl"
    env = dict(
        os.environ,
        JOBS_TEST_REDIS=redis_url,
        JOBS_TEST_MODEL=model_server.url,
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    )
    # The worker imports this checkout's budgetspan (src layout), as the submitting test does.
    env["BUDGETSPAN_TRACES_FILE"] = str(traces)
    env["BUDGETSPAN_METRICS_PORT"] = str(free_port())  # the worker's /metrics, scraped by the tests
    env.pop("BUDGETSPAN_BUDGET", None)
    w = Worker(env, redis.Redis.from_url(redis_url), tmp_path_factory.mktemp("worker") / "worker.log")
    w.start()
    yield w
    w.kill()


@pytest.fixture(scope="module")
def app_module(redis_url: str, model_server: ModelServer) -> object:
    """The worker's app module, imported here (the submitting process) against the same Redis."""
    os.environ["JOBS_TEST_REDIS"] = redis_url
    os.environ["JOBS_TEST_MODEL"] = model_server.url
    from tests.jobs import celery_app

    return celery_app


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A process's /metrics samples, by name and labels."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def notifications(client: redis.Redis, job_id: str, timeout_s: float = 30) -> list[dict[str, Any]]:
    """The notifications the worker delivered for ``job_id``, waiting for the first: a job's end is
    recorded before it is delivered (``budgetspan.jobs.notify``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [json.loads(x) for x in client.lrange("test:notified", 0, -1)]
        mine = [n for n in found if n["job_id"] == job_id]
        if mine or time.monotonic() > deadline:
            return mine
        time.sleep(0.05)
