"""Shared fixtures: an SDK tracer provider with an in-memory exporter, and clean global state."""

from __future__ import annotations

import gzip
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import budgetspan
from budgetspan import config as bs_config
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.processors.budget import BudgetSpanProcessor
from budgetspan.runs import context as bs_context
from budgetspan.runs import implicit as bs_implicit

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("BUDGETSPAN_FIXTURES", REPO.parent / "shared" / "fixtures" / "recorded"))


class Tracing:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.processor = BudgetSpanProcessor()
        self.provider.add_span_processor(self.processor)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self, name_prefix: str = "") -> list:  # type: ignore[type-arg]
        return [s for s in self.exporter.get_finished_spans() if s.name.startswith(name_prefix)]


@pytest.fixture
def tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[Tracing]:
    """budgetspan wired to a fresh provider and ledger, environment cleared of BUDGETSPAN_*."""
    for key in list(os.environ):
        if key.startswith("BUDGETSPAN_"):
            monkeypatch.delenv(key, raising=False)
    t = Tracing()
    bs_config.set_config(None)
    bs_context.set_ledger(InMemoryLedger())
    bs_context.set_tracer_provider(t.provider)
    bs_implicit.end_process_run()
    yield t
    bs_implicit.end_process_run()
    bs_context.set_tracer_provider(None)
    bs_config.set_config(None)
    t.provider.shutdown()


@pytest.fixture(autouse=True)
def _content_switch_read_afresh() -> Iterator[None]:
    """The content switch is read at instrument time; each test starts from its environment."""
    bs_config.refresh_capture_content()
    yield
    bs_config.refresh_capture_content()


@pytest.fixture
def instrumented(tracing: Any) -> Iterator[Any]:
    """The ``tracing`` fixture with budgetspan's OpenAI and Anthropic instrumentors on."""
    from budgetspan.instrumentation.anthropic import AnthropicInstrumentor
    from budgetspan.instrumentation.openai import OpenAIInstrumentor

    OpenAIInstrumentor().instrument()
    AnthropicInstrumentor().instrument()
    try:
        yield tracing
    finally:
        OpenAIInstrumentor().uninstrument()
        AnthropicInstrumentor().uninstrument()


PROMPT_TOKENS, COMPLETION_TOKENS = 123, 45  # what the loopback model server reports per call


class LoopbackServer:
    """A loopback HTTP server: OTLP bodies by path, and a chat-completions endpoint."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {}
        self.model_requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path.endswith("/chat/completions"):
                    outer.model_requests += 1
                    reply = json.dumps(_completion()).encode()
                    ctype = "application/json"
                else:
                    outer.bodies.setdefault(self.path, []).append(body)
                    reply, ctype = b"", "application/x-protobuf"
                self.send_response(200)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def _completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-otlp",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        },
    }


@pytest.fixture
def otlp_server() -> Iterator[LoopbackServer]:
    s = LoopbackServer()
    yield s
    s.httpd.shutdown()


__all__ = ["FIXTURES", "REPO", "Tracing", "bs_context", "bs_implicit", "budgetspan"]
