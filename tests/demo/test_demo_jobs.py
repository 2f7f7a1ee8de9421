"""`budgetspan demo --jobs`: the background tickets as jobs on a real Celery worker process and a
real redis-server, followed from Redis; and the plain demo, with a clear message, without a Redis."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from budgetspan.jobs import JobStore
from tests.demo import cli
from tests.demo.cli import demo_env
from tests.demo.test_demo import _outcomes, _sections

if shutil.which("redis-server") is None:
    pytest.skip("Debian redis-server not installed", allow_module_level=True)
pytest.importorskip("celery")
from tests.accounting.redis_server import redis, start_redis, stop

JOB_LINE = re.compile(r"^  (T-\d{4})  job ([0-9a-f]{32})$", re.M)


def run_demo(cwd: Path, env: dict[str, str], *tickets: str) -> subprocess.CompletedProcess[str]:
    ticket_args = [arg for t in tickets for arg in ("--ticket", t)]
    return cli.run_demo(cwd, "--jobs", "--latency-scale", "0.05", *ticket_args, env=env, timeout=180)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    proc, port = start_redis(tmp_path)
    yield f"redis://127.0.0.1:{port}/0"
    stop(proc)


def test_background_tickets_run_as_jobs_and_can_be_watched_from_another_process(
    tmp_path: Path, redis_url: str
) -> None:
    env = demo_env() | {"BUDGETSPAN_REDIS_URL": redis_url}
    proc = run_demo(tmp_path, env, "T-1001", "T-1005", "T-1006")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert f"Jobs: a Celery worker process on Redis {redis_url} ($BUDGETSPAN_REDIS_URL)" in out
    jobs = dict(JOB_LINE.findall(out))
    assert set(jobs) == {"T-1005", "T-1006"}  # the background tickets; T-1001 (chat) ran here
    watch_line = f"budgetspan jobs watch {jobs['T-1005']} --redis {redis_url}"
    assert f"Follow one from another terminal: {watch_line}" in out
    assert _outcomes(out) == {"T-1001": "success", "T-1005": "success", "T-1006": "failure"}
    followed = _sections(out)["T-1005"]
    assert followed[0] == f"    job {jobs['T-1005']}, read from its Redis stream"
    assert any(line.endswith("Checking the draft") for line in followed)
    assert "Failed: OrderNotFound" in "\n".join(_sections(out)["T-1006"])

    # The job's state outlives the demo: any process reads it by job id.
    client = redis.Redis.from_url(redis_url)
    state = JobStore(client).state(jobs["T-1005"])
    assert state["state"] == "ended" and state["outcome"] == "success"
    watch = subprocess.run(
        [sys.executable, "-m", "budgetspan.cli", *watch_line.split()[1:], "--timeout", "10"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert watch.returncode == 0, watch.stderr
    assert "Searching policy" in watch.stdout
    assert watch.stdout.strip().splitlines()[-1].startswith("success: Done after 2 model calls")

    # The worker's spans went to their own file; the job's run span carries the job id as run id.
    worker_spans = (tmp_path / "budgetspan-demo-jobs.jsonl").read_text()
    assert jobs["T-1005"] in worker_spans and "invoke_agent resolve_ticket" in worker_spans
    assert "Next: budgetspan report budgetspan-demo.jsonl budgetspan-demo-jobs.jsonl" in out
    # Per run table: the jobs are in it, next to the ticket that ran here.
    table = out.split("Per run", 1)[1]
    assert all(t in table for t in ("T-1001", "T-1005", "T-1006"))


def test_the_demo_starts_its_own_redis_server(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, demo_env(), "T-1007")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(
        r"Jobs: a Celery worker process on Redis redis://127\.0\.0\.1:\d+/0 \(started here\)", proc.stdout
    )
    assert [t for t, _ in JOB_LINE.findall(proc.stdout)] == ["T-1007"]
    assert _outcomes(proc.stdout) == {"T-1007": "success"}


def test_without_a_redis_the_demo_says_so_and_runs_every_ticket_here(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = demo_env() | {"PATH": str(empty)}  # no redis-server to start, no BUDGETSPAN_REDIS_URL
    proc = run_demo(tmp_path, env, "T-1005")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--jobs needs a Redis: set BUDGETSPAN_REDIS_URL or install redis-server." in proc.stdout
    assert not JOB_LINE.search(proc.stdout) and "Jobs:" not in proc.stdout
    assert _outcomes(proc.stdout) == {"T-1005": "success"}
