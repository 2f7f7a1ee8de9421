"""``budgetspan report --by tenant`` on nested runs, written through the real ``openai`` SDK (a
local HTTP server) and the file exporter: a nested run's calls also spend from its parent, so the
tenant's cost must count them once (review 5)."""

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
def traces(tmp_path: Path, scope_clock: list[float]) -> Iterator[Path]:
    """globex: an outer run and a nested one, one call in the nested run (spent from both)."""
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
            with budgetspan.run("triage", tenant="globex"), budgetspan.run("lookup"):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=50
                )
        provider.shutdown()
        yield path
    finally:
        OpenAIInstrumentor().uninstrument()
        context.set_tracer_provider(None)


def test_a_nested_runs_call_is_counted_once_in_its_tenants_cost(traces: Path) -> None:
    code, out, err = report(str(traces), "--by", "tenant", "--format", "json")
    assert code == 0, err
    [row] = json.loads(out)["rows"]
    assert row["name"] == "globex"
    assert row["cost_usd"] == pytest.approx(CALL_USD)  # was: twice that
