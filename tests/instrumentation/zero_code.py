"""Running a script under ``opentelemetry-instrument``, as a user's program runs: only
``BUDGETSPAN_*`` and ``OTEL_*`` set from outside; with ``sdk=True`` the SDK configurator that
``opentelemetry-distro`` registers is registered too (a throwaway ``.dist-info`` on PYTHONPATH)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from tests.instrumentation.agent_server import AgentServer

INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"
SDK_CONFIGURATOR = """[opentelemetry_configurator]
budgetspan_test_sdk = opentelemetry.sdk._configuration:_OTelSDKConfigurator
"""


def disabled_except(*keep: str) -> str:
    """``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` for every installed instrumentor but OpenAI's and
    budgetspan's ``keep`` ones: the others' libraries take seconds to import."""
    names = {e.name for e in entry_points(group="opentelemetry_instrumentor")}
    wanted = {"budgetspan_openai", *(f"budgetspan_{k}" for k in keep)}
    return ",".join(sorted(names - wanted))


def sdk_site(tmp_path: Path) -> Path:
    """A folder that registers the SDK configurator when put on PYTHONPATH."""
    site = tmp_path / "site"
    dist = site / "budgetspan_test_sdk_configurator-0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: budgetspan-test-sdk-configurator\nVersion: 0.0\n"
    )
    (dist / "entry_points.txt").write_text(SDK_CONFIGURATOR)
    return site


def run(
    tmp_path: Path,
    script: str,
    env: dict[str, str],
    *,
    sdk: bool = True,
    keep: tuple[str, ...] = (),
    pythonpath: tuple[str, ...] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (as ``agent.py`` in ``tmp_path``) under opentelemetry-instrument; ``env``
    overrides the defaults (no exporters, budgetspan's OpenAI and ``keep`` instrumentors only)."""
    (tmp_path / "agent.py").write_text(script)
    full = {k: v for k, v in os.environ.items() if not k.startswith(("BUDGETSPAN_", "OTEL_"))}
    paths = [*([str(sdk_site(tmp_path))] if sdk else []), *pythonpath]
    full.update(
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_SERVICE_NAME="zero-code-test",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=disabled_except(*keep),
    )
    if paths:
        full["PYTHONPATH"] = os.pathsep.join(paths)
    full.update(env)
    return subprocess.run(
        [str(INSTRUMENT), sys.executable, "agent.py"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full,
        cwd=str(tmp_path),
    )


def result(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """What the script printed after ``RESULT `` (last such line), the process having succeeded."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    # The first JSON value of the line: a console span exporter's thread may write right after it.
    found: dict[str, Any] = json.JSONDecoder().raw_decode(lines[-1][len("RESULT ") :])[0]
    return found


def launch(tmp_path: Path, script: str, keep: tuple[str, ...], env: dict[str, str]) -> dict[str, Any]:
    """Run ``script`` with the SDK configurator and budgetspan's ``keep`` instrumentors; its RESULT."""
    return result(run(tmp_path, script, env, keep=keep))


#: The end of an agent framework script (whose start imports json and budgetspan, and keeps the
#: cities its tool body ran for in ``ran``): run the agent (``{run}``, one statement) and print
#: what the refusal said.
AGENT_RUN = """
refused = None
try:
    {run}
except budgetspan.BudgetExhausted as e:
    refused = {{"reason": e.reason, "tool_calls": e.usage.tool_calls, "partial": e.partial["tool_results"]}}
print("RESULT " + json.dumps({{"refused": refused, "ran": ran}}), flush=True)
"""


def check_agent_stopped_at_two_model_calls(
    server: AgentServer, tmp_path: Path, setup: str, run: str, keep: str
) -> None:
    """An agent framework script (``setup``, then ``AGENT_RUN`` with ``run``; instrumented by
    ``keep``) run against ``server`` with ``max_model_calls=2`` must show: two requests, two tool
    bodies run, and both tool results kept in the refusal's partial result."""
    mark = server.mark()
    env = {"BUDGETSPAN_BUDGET": "max_model_calls=2", "AGENT_SERVER_URL": server.base_url}
    res = launch(tmp_path, setup + AGENT_RUN.format(run=run), (keep,), env)
    assert len(server.since(mark)) == 2  # the third request never left the script
    assert res["refused"]["reason"] == "max_model_calls"
    assert res["refused"]["tool_calls"] == 2 and res["ran"] == ["x1", "x2"]
    assert [r["tool"] for r in res["refused"]["partial"]] == ["lookup", "lookup"]
