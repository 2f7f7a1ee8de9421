"""Background jobs for the Prometheus end-to-end workload: jobs by state and queue wait.

Each round submits one job and runs it through ``budgetspan.jobs.execute`` (the queue-independent
worker path; the Celery adapter only adds sending and header reading, tested in tests/jobs) on a
real ``redis-server`` started here, and cancels one more while it is queued. Without the Debian
``redis-server`` there are no jobs (and the jobs panels stay empty).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any


class JobRounds:
    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.ledger: Any = None
        self.n = 0
        self.dir = tempfile.TemporaryDirectory(prefix="budgetspan-jobs-")

    def start(self) -> JobRounds:
        if shutil.which("redis-server") is None:
            return self
        import redis
        from redis.backoff import ConstantBackoff
        from redis.retry import Retry

        from budgetspan.jobs.ledger import JobLedger

        port = _free_port()
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", self.dir.name),
            ],
            stdout=subprocess.DEVNULL,
        )
        # Each command is retried while the new server does not answer yet (10 s at the most).
        retry = Retry(ConstantBackoff(0.05), 200)
        client = redis.Redis(port=port, retry=retry, retry_on_error=[redis.ConnectionError])
        client.ping()
        self.ledger = JobLedger(client)
        # The test ends the workload with SIGTERM: exit through ``finally`` so our redis-server stops.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        return self

    def round(self, work: Callable[[], None]) -> None:
        if self.ledger is None:
            return
        from budgetspan.jobs import JobSpec, cancel, execute
        from budgetspan.jobs.worker import submitted

        self.n += 1
        store = self.ledger.store
        spec = JobSpec.new("background_tickets", {"max_model_calls": 5}, job_id=f"wl-{self.n}")
        submitted(store, spec)
        time.sleep(0.01 * (self.n % 5))  # some wait in the queue
        from budgetspan.runs import context

        before = context.get_ledger()
        try:
            execute(spec, work, (), {}, self.ledger)
        finally:
            context.set_ledger(before)  # the workload's other runs keep their in-process ledger
        dropped = JobSpec.new("background_tickets", job_id=f"wl-{self.n}-dropped")
        submitted(store, dropped)
        cancel(store, dropped.job_id)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        self.dir.cleanup()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
