"""Shared fixtures: an SDK tracer provider with an in-memory exporter, and clean global state."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import budgetspan
from budgetspan import attributes as A
from budgetspan import config as bs_config
from budgetspan import events
from budgetspan.accounting import windows
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.accounting.scopes import REGISTRY
from budgetspan.processors.budget import BudgetSpanProcessor
from budgetspan.runs import context as bs_context
from budgetspan.runs import implicit as bs_implicit
from tests.http_server import QuietHandler, Serving

REPO = Path(__file__).resolve().parent.parent
#: The six phases of an agent run, spelled out here (not read from budgetspan: a renamed phase fails).
PHASES = (
    "context_assembly",
    "model_decision",
    "tool_execution",
    "verification",
    "approval",
    "final_response",
)
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

    def only(self, name_prefix: str) -> Any:
        """The one span whose name starts with ``name_prefix`` (there must be exactly one)."""
        spans = self.spans(name_prefix)
        assert len(spans) == 1, [s.name for s in spans]
        return spans[0]

    def retrievals(self, source: str, documents: list[int]) -> list[dict[str, Any]]:
        """The attributes of the retrieval spans, which must all be named ``retrieval {source}``
        and have returned ``documents`` (one count a span, in order)."""
        spans = self.spans("retrieval")
        assert [s.name for s in spans] == [f"retrieval {source}"] * len(documents)
        found = [dict(s.attributes or {}) for s in spans]
        assert [a[A.RETRIEVAL_DOCUMENTS] for a in found] == documents
        return found


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


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (Debian package) of the module's own, empty at the start, as a URL."""
    from tests.accounting.redis_server import start_redis, stop

    proc, port = start_redis(tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    stop(proc)


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Call it with a ``budgetspan.toml``'s text: budgetspan reads its configuration from that
    file (``BUDGETSPAN_CONFIG``) until the test ends."""

    def use(text: str) -> None:
        path = tmp_path / "budgetspan.toml"
        path.write_text(text)
        monkeypatch.setenv(A.ENV_CONFIG, str(path))
        bs_config.set_config(None)

    yield use
    bs_config.set_config(None)


#: The scope tests' "now": 2025-12-05 02:00 UTC.
SCOPE_T0 = 1_764_900_000.0


@pytest.fixture
def scope_clock() -> Iterator[list[float]]:
    """Scope windows read the time from ``now[0]`` (set it to move the clock), and calls go to a
    fresh in-memory ledger; afterwards the real clock, no scope budgets, no configuration."""
    now = [SCOPE_T0]
    windows.set_clock(lambda: now[0])
    bs_context.set_ledger(InMemoryLedger())
    try:
        yield now
    finally:
        windows.set_clock(None)
        REGISTRY.clear()
        bs_config.set_config(None)
        bs_context.set_ledger(InMemoryLedger())


@pytest.fixture(autouse=True)
def _content_switch_read_afresh() -> Iterator[None]:
    """The content switch is read at instrument time; each test starts from its environment."""
    bs_config.refresh_capture_content()
    yield
    bs_config.refresh_capture_content()


async def cancelled_once(seen: asyncio.Event, work: Coroutine[Any, Any, Any], timeout: float = 30) -> None:
    """Run ``work`` as a task, cancel it once ``seen`` is set (within ``timeout`` s), and check the
    cancellation reaches the caller."""
    task = asyncio.create_task(work)
    await asyncio.wait_for(seen.wait(), timeout)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


ListenerT = TypeVar("ListenerT")


@contextmanager
def events_to(listener: ListenerT) -> Iterator[ListenerT]:
    """``listener`` gets budgetspan's events (``budgetspan.events``) for the block."""
    events.add_listener(listener)
    try:
        yield listener
    finally:
        events.remove_listener(listener)


@contextmanager
def instrumentors_on(*instrumentors: Any) -> Iterator[None]:
    """The instrumentors on for the block, then off again (the last one first)."""
    for instrumentor in instrumentors:
        instrumentor.instrument()
    try:
        yield
    finally:
        for instrumentor in reversed(instrumentors):
            instrumentor.uninstrument()


@pytest.fixture
def instrumented(tracing: Any) -> Iterator[Any]:
    """The ``tracing`` fixture with budgetspan's OpenAI and Anthropic instrumentors on."""
    from budgetspan.instrumentation.anthropic import AnthropicInstrumentor
    from budgetspan.instrumentation.openai import OpenAIInstrumentor

    with instrumentors_on(OpenAIInstrumentor(), AnthropicInstrumentor()):
        yield tracing


PROMPT_TOKENS, COMPLETION_TOKENS = 123, 45  # what the loopback model server reports per call


class LoopbackServer:
    """A loopback HTTP server: OTLP bodies by path, and a chat-completions endpoint."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[bytes]] = {}
        self.model_requests = 0
        outer = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = self.body()
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path.endswith("/chat/completions"):
                    outer.model_requests += 1
                    reply = json.dumps(_completion()).encode()
                    ctype = "application/json"
                else:
                    outer.bodies.setdefault(self.path, []).append(body)
                    reply, ctype = b"", "application/x-protobuf"
                self.send_body(reply, ctype)

        self.http = Serving(Handler).start()
        self.url = self.http.url


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
    s.http.stop()


__all__ = ["FIXTURES", "REPO", "Tracing", "bs_context", "bs_implicit", "budgetspan"]
