"""Zero-code with no distro but BUDGETSPAN_TRACES_FILE set: budgetspan sets up an SDK provider and
writes the spans as OTLP JSON lines, so `budgetspan report` works on a zero-code program."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.instrumentation import zero_code
from tests.test_zero_code import SCRIPT


@pytest.mark.skipif(not zero_code.INSTRUMENT.exists(), reason="opentelemetry-instrument not installed")
def test_traces_file_without_a_distro(tmp_path: Path) -> None:
    traces = tmp_path / "traces.jsonl"
    env = {"BUDGETSPAN_BUDGET": "max_model_calls=2", "BUDGETSPAN_TRACES_FILE": str(traces)}
    proc = zero_code.run(tmp_path, SCRIPT, env, sdk=False, keep=("anthropic",), timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"provider": "TracerProvider"' in proc.stdout
    names = []
    for line in traces.read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                names += [s["name"] for s in ss["spans"]]
    assert names.count("chat gpt-4o-mini") == 2  # the refused third call made no span of a request
    report = subprocess.run(
        [str(Path(sys.executable).parent / "budgetspan"), "report", str(traces), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr
    (workflow,) = json.loads(report.stdout)["workflows"]
    assert workflow["workflow"] == "agent"  # the script is the run
    (model,) = [p for p in workflow["phases"] if p["phase"] == "model_decision"]
    assert model["calls"] == 2 and model["cost_usd"] == pytest.approx(2 * (9 * 0.15 + 1 * 0.6) / 1e6)
