"""Privacy and safety: no message content leaves by default; metrics stay bounded and local.

Prompts and answers carry unique marker strings; every exported span (name, attributes, events,
status, resource) and the whole Prometheus exposition are scanned for them. The same scan with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`` must find them (the scan works).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import urllib.request
from collections.abc import Iterator

import anthropic
import httpx2
import openai
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

import budgetspan
from budgetspan import config as bs_config
from budgetspan import events
from budgetspan.instrumentation.anthropic import AnthropicInstrumentor
from budgetspan.processors import metrics as M
from budgetspan.processors import metrics_endpoint as endpoint
from budgetspan.processors.labels import DEFAULT_MAX_VALUES
from tests.reliability._support import (
    ANSWER_MARK,
    MODEL,
    PROMPT_MARK,
    async_client,
    chat_body,
    messages,
    openai_instrumented,
    sync_client,
)
from tests.reliability.conftest import Lean

MARKS = (PROMPT_MARK, ANSWER_MARK)


def _span_text(span: ReadableSpan) -> str:
    """Everything an exporter would send for the span, as text (OTLP protobuf, decoded loosely)."""
    parts = [span.name, str(span.status.description or "")]
    parts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
    for event in span.events:
        parts.append(event.name)
        parts += [f"{k}={v}" for k, v in (event.attributes or {}).items()]
    parts += [f"{k}={v}" for k, v in span.resource.attributes.items()]
    return "\n".join(parts)


@pytest.fixture
def exported(lean: Lean) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    lean.provider.add_span_processor(SimpleSpanProcessor(exporter))
    with openai_instrumented():
        inst = AnthropicInstrumentor()
        already = inst.is_instrumented_by_opentelemetry
        if not already:
            inst.instrument()
        try:
            yield exporter
        finally:
            if not already:
                inst.uninstrument()


def _anthropic_client() -> anthropic.Anthropic:
    body = {
        "id": "msg_p", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
        "content": [{"type": "text", "text": ANSWER_MARK}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 20, "output_tokens": 5},
    }  # fmt: skip

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=body)

    return anthropic.Anthropic(
        api_key="sk-test", max_retries=0, http_client=httpx2.Client(transport=httpx2.MockTransport(answer))
    )


def _workload() -> None:
    """Chat, stream, async chat, Anthropic, tools taking and returning content, an exhaustion."""
    client, aclient, claude = sync_client(), async_client(), _anthropic_client()

    @budgetspan.tool
    def search(query: str) -> str:
        return f"results for {query} {ANSWER_MARK}"

    with budgetspan.run("privacy", max_model_calls=4, suppress_exhausted=True) as run:
        with budgetspan.phase("context_assembly"):
            search(f"user asked {PROMPT_MARK}")
        answer = client.chat.completions.create(model=MODEL, messages=messages())
        run.record_model_answer(answer.choices[0].message.content)
        stream = client.chat.completions.create(model=MODEL, messages=messages("s"), stream=True)
        assert ANSWER_MARK in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        async def async_chat() -> None:
            await aclient.chat.completions.create(model=MODEL, messages=messages("a"))

        asyncio.run(async_chat())
        claude.messages.create(
            model="claude-3-5-haiku-20241022",
            max_tokens=50,
            system=f"system {PROMPT_MARK}",
            messages=[{"role": "user", "content": f"hi {PROMPT_MARK}"}],
        )
        client.chat.completions.create(model=MODEL, messages=messages("over"))  # 5th: refused
    assert run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED
    assert ANSWER_MARK in str(run.exhausted.partial if run.exhausted else "")  # kept in-process


def test_no_prompt_or_completion_text_is_exported_by_default(
    exported: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    bs_config.refresh_capture_content()
    registry = CollectorRegistry()
    metrics = M.BudgetspanMetrics(registry=registry)
    events.add_listener(metrics)
    _workload()
    spans = exported.get_finished_spans()
    assert {s.name for s in spans} >= {"invoke_agent privacy", "chat gpt-4o-mini", "execute_tool search"}
    assert any(s.name.startswith("chat claude") for s in spans)
    for span in spans:
        text = _span_text(span)
        for mark in MARKS:
            assert mark not in text, (span.name, mark)
    wire = encode_spans(spans).SerializeToString()  # what OTLP would put on the wire
    assert not any(mark.encode() in wire for mark in MARKS)
    exposition = generate_latest(registry).decode()
    assert "budgetspan_runs_total" in exposition
    assert not any(mark in exposition for mark in MARKS)


def test_content_capture_switch_does_export_content(
    exported: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Positive control: the scan above would have found content had it been there."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    bs_config.refresh_capture_content()  # read at instrument time
    _workload()
    wire = encode_spans(exported.get_finished_spans()).SerializeToString()
    assert PROMPT_MARK.encode() in wire and ANSWER_MARK.encode() in wire


def test_provider_error_echoing_the_prompt_is_not_exported(
    exported: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 400 whose message quotes the input: the span records the error type, not the text."""
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    bs_config.refresh_capture_content()

    def reject(request: httpx2.Request) -> httpx2.Response:
        content = json.loads(request.content)["messages"][-1]["content"]
        error = {"message": f"Invalid content: {content!r}", "type": "invalid_request_error"}
        return httpx2.Response(400, json={"error": error})

    with budgetspan.run("privacy"), pytest.raises(openai.BadRequestError):
        sync_client(reject).chat.completions.create(model=MODEL, messages=messages())
    leaks = [
        (s.name, e.name, k)
        for s in exported.get_finished_spans()
        for e in s.events
        for k, v in (e.attributes or {}).items()
        if PROMPT_MARK in str(v)
    ]
    assert leaks == []
    (chat,) = [s for s in exported.get_finished_spans() if s.name.startswith("chat")]
    (event,) = [e for e in chat.events if e.name == "exception"]
    assert event.attributes["exception.type"].endswith("BadRequestError")
    assert event.attributes["exception.message"] == "BadRequestError (HTTP 400)"
    assert "create" in event.attributes["exception.stacktrace"]  # frames kept for debugging


def test_no_exception_text_reaches_any_span_or_log_line(
    exported: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider error quoting the prompt, raised through a phase and a run; a tool's error
    naming a customer; an error inside budgetspan itself: none of their text is exported or
    logged with content capture off (the exception type and HTTP status stay)."""
    caplog.set_level(logging.DEBUG - 1, logger="nothing")  # (capture WARNING and up as usual)
    email = "alice.secret@example.com"

    def reject(request: httpx2.Request) -> httpx2.Response:
        content = json.loads(request.content)["messages"][-1]["content"]
        return httpx2.Response(400, json={"error": {"message": f"Invalid content: {content!r}"}})

    @budgetspan.tool
    def lookup_customer(address: str) -> str:
        raise LookupError(f"no customer for {address}")

    with pytest.raises(openai.BadRequestError):
        with budgetspan.run("privacy"), budgetspan.phase("verification"):
            sync_client(reject).chat.completions.create(model=MODEL, messages=messages())
    with pytest.raises(LookupError):
        with budgetspan.run("privacy"), budgetspan.phase("tool_execution"):
            lookup_customer(email)
    spans = exported.get_finished_spans()
    wire = encode_spans(spans).SerializeToString()
    assert PROMPT_MARK.encode() not in wire and email.encode() not in wire
    logged = "\n".join(r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records)
    assert PROMPT_MARK not in logged and email not in logged
    names = {s.name for s in spans}
    assert {"invoke_agent privacy", "phase verification", "phase tool_execution"} <= names
    failed = [s for s in spans if s.name in ("invoke_agent privacy", "phase verification")]
    assert all(s.attributes.get("error.type") for s in failed)  # what failed is still said


# --- metrics: bounded labels, loopback endpoint ------------------------------------------------


def test_a_flood_of_distinct_model_and_tool_names_keeps_the_exposition_bounded(lean: Lean) -> None:
    registry = CollectorRegistry()
    metrics = M.BudgetspanMetrics(registry=registry)
    events.add_listener(metrics)

    def echo_model(request: httpx2.Request) -> httpx2.Response:
        body = chat_body()
        body["model"] = json.loads(request.content)["model"]
        return httpx2.Response(200, json=body)

    client = sync_client(echo_model)
    sizes: list[int] = []
    names = 0
    with openai_instrumented():
        for _batch in range(4):
            with budgetspan.run("flood"):
                for _ in range(500):
                    names += 1
                    client.chat.completions.create(model=f"ft:gpt-4o-mini:org:{names}", messages=messages())
                    budgetspan.tool(name=f"user_tool_{names}")(lambda: None)()
            sizes.append(len(generate_latest(registry).splitlines()))
    models: set[str] = set()
    tools: set[str] = set()
    for metric in registry.collect():
        for s in metric.samples:
            if "model" in s.labels:
                models.add(s.labels["model"])
            if "tool" in s.labels:
                tools.add(s.labels["tool"])
    assert len(models) <= DEFAULT_MAX_VALUES + 1 and "other" in models
    assert len(tools) <= DEFAULT_MAX_VALUES + 1 and "other" in tools
    # 1,000 more names later, not one more series line. (Compared from the second batch: the
    # step series see one model per run, the step's first, so they reach the cap's "other" a batch later.)
    assert sizes[-1] == sizes[1]
    print(
        f"\n[privacy] {names} distinct model and tool names: exposition {sizes[-1]} lines, "
        f"{len(models)} model and {len(tools)} tool label values"
    )


def _non_loopback_address() -> str | None:
    """An address of this host that is not loopback (None when there is none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # UDP: picks a route, sends nothing
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_metrics_endpoint_binds_to_loopback_by_default(lean: Lean, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUDGETSPAN_METRICS_ADDR", raising=False)
    monkeypatch.setattr(endpoint, "_server", None)
    bound = endpoint.serve(0)
    try:
        assert bound is not None and bound[0] == "127.0.0.1"
        port = bound[1]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b"# HELP" in body
        other = _non_loopback_address()
        if other is not None:
            assert not _reachable(other, port)
    finally:
        endpoint.stop_server()
    if other is None:
        pytest.skip("no non-loopback interface here to try the endpoint from")


def test_metrics_endpoint_binds_wider_only_when_configured(
    lean: Lean, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = _non_loopback_address()
    if other is None:
        pytest.skip("no non-loopback interface here")
    monkeypatch.setenv("BUDGETSPAN_METRICS_ADDR", "0.0.0.0")
    monkeypatch.setattr(endpoint, "_server", None)
    bound = endpoint.serve(0)
    try:
        assert bound is not None
        assert _reachable(other, bound[1])
    finally:
        endpoint.stop_server()


# --- hostile exceptions and failing callbacks (issue 15, second pass) ----------------------------

SECRET_EMAIL = "alice.secret@example.com"


class _FrameworkError(Exception):
    """An agent framework's exception whose ``status_code`` and ``__str__`` fail (or quote input)."""

    @property
    def status_code(self) -> int:
        raise RuntimeError(f"no status for {SECRET_EMAIL}")

    def __str__(self) -> str:
        raise RuntimeError(f"cannot describe the failure for {SECRET_EMAIL}")


def _budgetspan_log(caplog: pytest.LogCaptureFixture) -> str:
    """budgetspan's own log records at every level, with any traceback as a handler prints it."""
    formatter = logging.Formatter()
    return "\n".join(
        r.getMessage() + (formatter.formatException(r.exc_info) if r.exc_info else "")
        for r in caplog.records
        if r.name.startswith("budgetspan")
    )


def test_a_hostile_exception_keeps_its_span_failed_and_its_text_out_of_the_log(
    exported: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """Reading the HTTP status or the message of an exception raised: the tool span ended
    without its error (status unset, no error.type) and the DEBUG traceback of that internal
    error printed the tool's exception text (chained) and the property's."""
    caplog.set_level(logging.DEBUG, logger="budgetspan")

    @budgetspan.tool
    def crm_lookup(address: str) -> str:
        raise _FrameworkError(address)

    with pytest.raises(_FrameworkError), budgetspan.run("privacy"):
        crm_lookup(SECRET_EMAIL)
    (tool,) = [s for s in exported.get_finished_spans() if s.name == "execute_tool crm_lookup"]
    assert tool.status.status_code.name == "ERROR"
    assert tool.attributes["error.type"] == "_FrameworkError"
    (event,) = [e for e in tool.events if e.name == "exception"]
    assert event.attributes["exception.message"] == "_FrameworkError"
    wire = encode_spans(exported.get_finished_spans()).SerializeToString()
    assert SECRET_EMAIL.encode() not in wire
    assert SECRET_EMAIL not in _budgetspan_log(caplog)


def test_failing_user_callbacks_are_logged_without_their_text(
    lean: Lean, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_limit policy, a progress callback and an events listener that raise with the
    customer's address: logged (type and frames, DEBUG included), never with the text."""
    caplog.set_level(logging.DEBUG, logger="budgetspan")

    def policy(reached: budgetspan.LimitReached) -> None:
        raise ValueError(f"policy failed for {SECRET_EMAIL}")

    def progress(m: budgetspan.Milestone) -> None:
        raise ValueError(f"progress failed for {SECRET_EMAIL}")

    class Listener:
        def on_run_end(self, run: budgetspan.Run) -> None:
            raise KeyError(f"no account for {SECRET_EMAIL}")

    @budgetspan.tool(label="Looking up")
    def lookup(x: int) -> int:
        return x

    events.add_listener(Listener())
    with pytest.raises(budgetspan.BudgetExhausted):
        with budgetspan.run("privacy", max_tool_calls=1, on_limit=policy) as run:
            with budgetspan.subscribe_progress(progress, run=run):
                lookup(1)
                lookup(2)
    logged = _budgetspan_log(caplog)
    assert "ValueError" in logged and "KeyError" in logged  # what failed is still said
    assert SECRET_EMAIL not in logged


def test_frames_are_formatted_without_parsing_source() -> None:
    """Python 3.11 places a traceback's carets by parsing each line with ``ast``, whose state its
    threads share (CPython gh-106905: SystemError when two threads format at once); the frames
    budgetspan records and logs are formatted without it."""
    import ast
    from typing import Any

    from budgetspan import events

    def lookup(table: dict[str, int], key: str) -> int:
        return table["x"] + table[key]  # a part of the line raises: 3.11 would mark it with carets

    customer = "ann" + "@example.com"  # (the frames show source lines: the address is not in them)
    try:
        lookup({"x": 1}, customer)
    except KeyError as e:
        error = e
    parsed: list[object] = []
    real = ast.parse

    def counted(*args: Any, **kwargs: Any) -> Any:
        parsed.append(args)
        return real(*args, **kwargs)

    ast.parse = counted  # (not monkeypatch: pytest parses too, between a test and its teardown)
    try:
        frames = events.format_frames(error.__traceback__)
        text = events.redacted_traceback(error)
    finally:
        ast.parse = real
    assert parsed == []
    assert 'in lookup\n    return table["x"] + table[key]' in frames and "^" not in frames
    assert "KeyError (message not logged)" in text and "ann@" not in text


def test_a_lone_surrogate_from_the_provider_is_cleaned_on_the_span(
    exported: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """review11: ``"model": "gpt-\\ud800"`` (valid JSON) went onto the chat span as given: the OTLP
    encoder dropped the attribute and logged a traceback, span after span (the metrics label was
    cleaned, the span's attribute was not); the response id too."""
    body = chat_body(rid="chatcmpl-\udfff")
    body["model"] = "gpt-\ud800"
    raw = json.dumps(body).encode()

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=raw, headers={"content-type": "application/json"})

    with budgetspan.run("surrogate"):
        sync_client(answer).chat.completions.create(model=MODEL, messages=messages())
    (chat,) = [s for s in exported.get_finished_spans() if s.name.startswith("chat")]
    assert chat.attributes["gen_ai.response.model"] == "gpt-\ufffd"
    assert chat.attributes["gen_ai.response.id"] == "chatcmpl-\ufffd"
    caplog.clear()
    wire = encode_spans([chat]).SerializeToString()
    assert "gpt-\ufffd".encode() in wire and not [r for r in caplog.records if "encode" in r.getMessage()]
