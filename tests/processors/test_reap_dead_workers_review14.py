"""Review 14: in multiprocess mode the endpoint forgets the live gauges of worker processes that
are gone (killed without ``mark_process_dead``: a Celery pool process, an OOM kill), and keeps
those of the processes still running. Real processes write real prometheus-client files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from budgetspan.processors.metrics_endpoint import forget_dead_processes

WRITER = """
import os, sys, time
from prometheus_client import Gauge
Gauge("budgetspan_live_runs", "live", ["workflow"], multiprocess_mode="livesum").labels("w").inc()
print(os.getpid(), flush=True)
if sys.argv[1] == "stay":
    time.sleep(60)
os._exit(0)  # gone without mark_process_dead
"""


def _writer(path: Path, mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(path))
    return subprocess.Popen([sys.executable, "-c", WRITER, mode], env=env, stdout=subprocess.PIPE, text=True)


def test_the_live_gauges_of_dead_processes_are_forgotten_and_the_living_kept(tmp_path: Path) -> None:
    gone = _writer(tmp_path, "go")
    stays = _writer(tmp_path, "stay")
    try:
        assert gone.stdout is not None and stays.stdout is not None
        gone_pid, stay_pid = int(gone.stdout.readline()), int(stays.stdout.readline())
        gone.wait(30)
        assert (tmp_path / f"gauge_livesum_{gone_pid}.db").exists()
        assert forget_dead_processes(str(tmp_path)) == [gone_pid]
        assert not (tmp_path / f"gauge_livesum_{gone_pid}.db").exists()
        assert (tmp_path / f"gauge_livesum_{stay_pid}.db").exists()
        assert forget_dead_processes(str(tmp_path)) == []
    finally:
        stays.kill()
        stays.wait(10)
