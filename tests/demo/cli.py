"""Running ``budgetspan demo`` as a user runs it: a subprocess in a folder of the test's own, with
none of this process's budgetspan, OpenAI or OpenTelemetry settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUDGETSPAN_", "OPENAI_", "OTEL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_demo(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``budgetspan demo ARGS`` run from ``cwd`` (in ``env``, by default ``demo_env()``)."""
    return subprocess.run(
        [sys.executable, "-m", "budgetspan.cli", "demo", *args],
        cwd=cwd,
        env=demo_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
