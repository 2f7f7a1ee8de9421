"""``budgetspan report --by tenant``: the per-tenant view from the run spans' tenant id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import budgetspan
from budgetspan.accounting.ledger import CallKind, Spend
from budgetspan.processors.file_export import FileSpanExporter
from budgetspan.runs import context
from tests.report.test_report import report


@pytest.fixture
def traces(tmp_path: Path, scope_clock: list[float]) -> Iterator[Path]:
    """Five runs written by the file exporter: acme stopped once by its daily budget."""
    path = tmp_path / "spans.jsonl"
    exporter = FileSpanExporter(path)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    context.set_tracer_provider(provider)
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_cost_usd=1.0), window="day")
    try:
        for tenant, cost in (("acme", 0.5), ("acme", 0.5), ("acme", 0.5), ("globex", 0.25), (None, 0.1)):
            with budgetspan.run("chat", tenant=tenant, user="ann", suppress_exhausted=True) as run:
                run.commit(run.reserve(CallKind.MODEL), Spend(cost_usd=cost))
        provider.shutdown()
        yield path
    finally:
        context.set_tracer_provider(None)


def test_runs_and_cost_by_tenant(traces: Path) -> None:
    code, out, err = report(str(traces), "--by", "tenant", "--format", "json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)["rows"]}
    assert rows["acme"]["runs"] == 3 and rows["acme"]["cost_usd"] == 1.0
    assert (rows["acme"]["succeeded"], rows["acme"]["budget_exhausted"], rows["acme"]["scope_stops"]) == (
        2,
        1,
        1,
    )
    assert rows["acme"]["cost_per_success"] == 0.5
    assert rows["globex"]["runs"] == 1 and rows["(none)"]["cost_usd"] == 0.1
    code, table, _ = report(str(traces), "--by", "tenant")
    assert table.splitlines()[1].split()[:4] == ["acme", "3", "2", "1"]  # most spent first
    code, by_user, _ = report(str(traces), "--by", "user", "--format", "markdown")
    assert "| ann | 5 | 4 | 1 | 0 | $1.3500 |" in by_user
