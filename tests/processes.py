"""Helpers for the real servers the tests start as their own processes: a free loopback port, a
poll until ready, the line a process prints once it is up, and a clean stop."""

from __future__ import annotations

import re
import select
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll ``predicate`` (an OSError counts as not yet) until it is true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def ready_line(proc: subprocess.Popen[str], pattern: str, what: str, log: Path) -> re.Match[str]:
    """The first line ``proc`` prints (within 60 s), which must match ``pattern``; else fail with
    ``log`` (its stderr)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    m = re.match(pattern, line)
    assert m, f"{what} did not start: {line!r}\n{log.read_text()}"
    return m


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL when the process is still there after 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
