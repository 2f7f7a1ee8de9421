"""A real redis-server on loopback for the tests of the Redis ledger (Debian package redis-server)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.processes import free_port

redis = pytest.importorskip("redis")

needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="Debian redis-server not installed"
)


def start_redis(
    directory: Path, port: int | None = None, *options: str
) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server on ``port`` (a free one by default), empty, answering PING; ``options`` are
    more of its command line (``"--maxmemory", "64mb"``)."""
    port = port or free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            *options,
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


@contextmanager
def frozen(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """The server stopped (SIGSTOP): connections are accepted by the kernel, nothing answers."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def run_figures(client: Any, key: str, *names: str) -> list[float]:
    """Figures of a run's hash on Redis (kept packed in its ``F`` field), by name."""
    from budgetspan.accounting.redis_mirror import figures_of

    figures = figures_of(client.hget(key, "F"))
    return [figures[name] for name in names]


def set_run_figures(client: Any, key: str, figures: dict[str, float]) -> None:
    """Write figures into a run's hash on Redis (the others stay as they are)."""
    from budgetspan.accounting.redis_mirror import FIGURES, figures_of
    from budgetspan.accounting.redis_scripts import MIRROR

    now = figures_of(client.hget(key, "F"))
    now.update(figures)
    client.hset(key, "F", FIGURES.pack(*(now[name] for name in MIRROR)))
