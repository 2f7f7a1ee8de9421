"""``budgetspan report --by tenant`` against ``budgetspan.spend(tenant=...)`` (review 7), written
through the real ``openai`` SDK (a local HTTP server) and the file exporter: a web handler returns
a stream from inside its run and the framework reads it after the block; the tenant paid for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import budgetspan
from tests.report.cli import report
from tests.report.traced_openai import ASK, CALL_USD, STREAM, traced_openai


@pytest.fixture
def traces(tmp_path: Path, scope_clock: list[float]) -> Iterator[tuple[Path, float]]:
    """acme: a run with one call read in it, and one whose stream is read after the block."""
    path = tmp_path / "spans.jsonl"
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_cost_usd=1.0), window="day")
    try:
        with traced_openai(path) as client:
            with budgetspan.run("chat", tenant="acme"):
                client.chat.completions.create(**ASK)  # type: ignore[call-overload]
            with budgetspan.run("chat", tenant="acme"):
                stream = client.chat.completions.create(**ASK, **STREAM)  # type: ignore[call-overload]
            for _ in stream:  # the framework sends it on after the handler returned
                pass
            spent = budgetspan.spend(tenant="acme").cost_usd
        yield path, spent
    finally:
        budgetspan.set_scope_budget("tenant", "acme", None)


def test_the_tenants_cost_in_the_report_is_what_it_spent(traces: tuple[Path, float]) -> None:
    path, spent = traces
    assert spent == pytest.approx(2 * CALL_USD)
    code, out, err = report(str(path), "--by", "tenant", "--format", "json")
    assert code == 0, err
    [row] = json.loads(out)["rows"]
    assert row["name"] == "acme" and row["runs"] == 2
    assert row["cost_usd"] == pytest.approx(spent)  # was: one call's cost (the stream's left out)


def test_a_nested_runs_late_stream_counts_once(tmp_path: Path, scope_clock: list[float]) -> None:
    """A nested run returns a stream read after it ended but inside its parent (the parent's
    figure has it), and another read after both ended (in neither figure): each counted once."""
    path = tmp_path / "spans.jsonl"
    with traced_openai(path) as client:
        with budgetspan.run("triage", tenant="globex"):
            with budgetspan.run("lookup"):
                inside = client.chat.completions.create(**ASK, **STREAM)  # type: ignore[call-overload]
                after = client.chat.completions.create(**ASK, **STREAM)  # type: ignore[call-overload]
            for _ in inside:
                pass
        for _ in after:
            pass
    code, out, err = report(str(path), "--by", "tenant", "--format", "json")
    assert code == 0, err
    [row] = json.loads(out)["rows"]
    assert row["cost_usd"] == pytest.approx(2 * CALL_USD)
