"""The report tests' traces written as an application writes them: the real ``openai`` SDK on a
local HTTP server, instrumented, spans through budgetspan's processor into the file exporter."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from budgetspan.accounting.pricing import set_default_resolver
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from budgetspan.processors.budget import BudgetSpanProcessor
from budgetspan.processors.file_export import FileSpanExporter
from budgetspan.runs import context
from tests.instrumentation.llm_server import LLMServer

USAGE = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}
CALL_USD = 1000 * 0.15e-6 + 50 * 0.60e-6  # gpt-4o-mini, each call's
ASK = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
STREAM = {"stream": True, "stream_options": {"include_usage": True}}


@contextmanager
def traced_openai(path: Path) -> Iterator[openai.OpenAI]:
    """A client whose calls (each ``USAGE``) are traced into ``path``; the file is complete when
    the block ends."""
    set_default_resolver(None)
    provider = TracerProvider()
    provider.add_span_processor(BudgetSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(path)))
    context.set_tracer_provider(provider)
    OpenAIInstrumentor().instrument()
    try:
        with LLMServer() as server:
            server.settings.openai_usage = dict(USAGE)
            yield openai.OpenAI(api_key="t", base_url=server.base_url + "/v1", max_retries=0)
        provider.shutdown()
    finally:
        OpenAIInstrumentor().uninstrument()
        context.set_tracer_provider(None)
