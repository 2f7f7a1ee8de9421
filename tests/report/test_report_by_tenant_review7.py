"""``budgetspan report --by tenant`` against ``budgetspan.spend(tenant=...)`` (review 7), written
through the real ``openai`` SDK (a local HTTP server) and the file exporter: a web handler returns
a stream from inside its run and the framework reads it after the block; the tenant paid for it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import budgetspan
from budgetspan.accounting.pricing import set_default_resolver
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from budgetspan.processors.budget import BudgetSpanProcessor
from budgetspan.processors.file_export import FileSpanExporter
from budgetspan.runs import context
from tests.instrumentation.llm_server import LLMServer
from tests.report.cli import report

USAGE = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}
CALL_USD = 1000 * 0.15e-6 + 50 * 0.60e-6  # gpt-4o-mini


@pytest.fixture
def traces(tmp_path: Path, scope_clock: list[float]) -> Iterator[tuple[Path, float]]:
    """acme: a run with one call read in it, and one whose stream is read after the block."""
    set_default_resolver(None)
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(BudgetSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(path)))
    context.set_tracer_provider(provider)
    OpenAIInstrumentor().instrument()
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_cost_usd=1.0), window="day")
    try:
        with LLMServer() as server:
            server.settings.openai_usage = dict(USAGE)
            client = openai.OpenAI(api_key="t", base_url=server.base_url + "/v1", max_retries=0)
            ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
            with budgetspan.run("chat", tenant="acme"):
                client.chat.completions.create(**ask)  # type: ignore[call-overload]
            with budgetspan.run("chat", tenant="acme"):
                stream = client.chat.completions.create(  # type: ignore[call-overload]
                    **ask, stream=True, stream_options={"include_usage": True}
                )
            for _ in stream:  # the framework sends it on after the handler returned
                pass
        spent = budgetspan.spend(tenant="acme").cost_usd
        provider.shutdown()
        yield path, spent
    finally:
        OpenAIInstrumentor().uninstrument()
        context.set_tracer_provider(None)
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
    set_default_resolver(None)
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(BudgetSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(path)))
    context.set_tracer_provider(provider)
    OpenAIInstrumentor().instrument()
    try:
        with LLMServer() as server:
            server.settings.openai_usage = dict(USAGE)
            client = openai.OpenAI(api_key="t", base_url=server.base_url + "/v1", max_retries=0)
            ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
            late = {"stream": True, "stream_options": {"include_usage": True}}
            with budgetspan.run("triage", tenant="globex"):
                with budgetspan.run("lookup"):
                    inside = client.chat.completions.create(**ask, **late)  # type: ignore[call-overload]
                    after = client.chat.completions.create(**ask, **late)  # type: ignore[call-overload]
                for _ in inside:
                    pass
            for _ in after:
                pass
        provider.shutdown()
    finally:
        OpenAIInstrumentor().uninstrument()
        context.set_tracer_provider(None)
    code, out, err = report(str(path), "--by", "tenant", "--format", "json")
    assert code == 0, err
    [row] = json.loads(out)["rows"]
    assert row["cost_usd"] == pytest.approx(2 * CALL_USD)
