"""Running a script under ``opentelemetry-instrument`` the way ``tests/test_zero_code.py`` does:
the SDK configurator registered as ``opentelemetry-distro`` registers it (a throwaway
``.dist-info`` on PYTHONPATH), only ``BUDGETSPAN_*`` and ``OTEL_*`` set from outside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"
SDK_CONFIGURATOR = """[opentelemetry_configurator]
budgetspan_test_sdk = opentelemetry.sdk._configuration:_OTelSDKConfigurator
"""
#: Only the instrumentors a framework script needs: the others' libraries take seconds to import.
OTHERS = ("langchain", "llamaindex", "mcp", "chroma", "qdrant", "anthropic", "openai_agents", "pydantic_ai")


def launch(tmp_path: Path, script: str, keep: tuple[str, ...], env: dict[str, str]) -> dict[str, Any]:
    """Run ``script`` under opentelemetry-instrument with budgetspan's ``keep`` instrumentors and
    the OpenAI one; return what it printed after ``RESULT ``."""
    site = tmp_path / "site"
    dist = site / "budgetspan_test_sdk_configurator-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: budgetspan-test-sdk-configurator\nVersion: 0.0\n"
    )
    (dist / "entry_points.txt").write_text(SDK_CONFIGURATOR)
    path = tmp_path / "agent.py"
    path.write_text(script)
    full = {k: v for k, v in os.environ.items() if not k.startswith(("BUDGETSPAN_", "OTEL_"))}
    full.update(
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SERVICE_NAME="zero-code-framework-test",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=",".join(f"budgetspan_{m}" for m in OTHERS if m not in keep),
        PYTHONPATH=str(site),
        **env,
    )
    proc = subprocess.run(
        [str(INSTRUMENT), sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=full,
        cwd=str(tmp_path),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result
