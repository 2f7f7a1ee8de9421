"""``budgetspan report --by tenant`` on nested runs, written through the real ``openai`` SDK (a
local HTTP server) and the file exporter: a nested run's calls also spend from its parent, so the
tenant's cost must count them once (review 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import budgetspan
from tests.report.cli import report
from tests.report.traced_openai import ASK, CALL_USD, traced_openai


@pytest.fixture
def traces(tmp_path: Path, scope_clock: list[float]) -> Path:
    """globex: an outer run and a nested one, one call in the nested run (spent from both)."""
    path = tmp_path / "spans.jsonl"
    with traced_openai(path) as client, budgetspan.run("triage", tenant="globex"), budgetspan.run("lookup"):
        client.chat.completions.create(**ASK)  # type: ignore[call-overload]
    return path


def test_a_nested_runs_call_is_counted_once_in_its_tenants_cost(traces: Path) -> None:
    code, out, err = report(str(traces), "--by", "tenant", "--format", "json")
    assert code == 0, err
    [row] = json.loads(out)["rows"]
    assert row["name"] == "globex"
    assert row["cost_usd"] == pytest.approx(CALL_USD)  # was: twice that
