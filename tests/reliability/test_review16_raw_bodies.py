"""Review 16: a raw body read by the caller (``with_streaming_response`` + ``iter_lines`` /
``iter_bytes`` / ``iter_text``, sync and async), the way proxies and SSE relays forward a model's
stream. budgetspan leaves raw bodies alone (no usage chunk asked for), so what the server sent
must be read on its way to the caller: its usage when it has one, else the estimate of the text.
Was: 0 output tokens charged, so every such stream passed ``max_output_tokens`` (3 of 3 sent
where 1 fits). Real ``openai`` SDK, a loopback server that counts the requests reaching it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import budgetspan
from budgetspan.instrumentation.anthropic import AnthropicInstrumentor
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from tests.http_server import QuietHandler, Serving
from tests.replay import anthropic_events, anthropic_sse

WORDS = "word " * 100  # 500 bytes: ~167 tokens by the estimate
PIECES = 20  # ~3,334 tokens of output in all


def _chunk(**fields: Any) -> bytes:
    base = {"id": "chatcmpl-r16", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    return f"data: {json.dumps({**base, **fields})}\n\n".encode()


class Model(Serving):
    """Streams ~3.3k tokens of text; a usage chunk only when asked; a JSON body when not a stream."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        model = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                body = json.loads(self.body())
                model.requests.append(body)
                if self.path.endswith("/messages"):  # Anthropic: usage in its start and delta events
                    events = anthropic_events(pieces=(WORDS,) * 4, delta_usage={"output_tokens": 2999})
                    self.send_stream([anthropic_sse(events)])
                    return
                if not body.get("stream"):
                    reply = {
                        "id": "chatcmpl-r16", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": WORDS}}],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 2999, "total_tokens": 3010},
                    }  # fmt: skip
                    self.send_body(json.dumps(reply).encode(), "application/json")
                    return
                events = [_chunk(choices=[{"index": 0, "delta": {"content": WORDS}}]) for _ in range(PIECES)]
                events.append(_chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
                if (body.get("stream_options") or {}).get("include_usage"):
                    usage = {"prompt_tokens": 11, "completion_tokens": 2999, "total_tokens": 3010}
                    events.append(_chunk(choices=[], usage=usage))
                if body.get("user") == "slow":  # 20 chunks over a second
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for event in events:
                        time.sleep(0.05)
                        self.wfile.write(event)
                    self.close_connection = True
                    return
                self.send_stream([*events, b"data: [DONE]\n\n"])

        super().__init__(Handler)


@pytest.fixture
def model(lean: Any) -> Iterator[Model]:
    OpenAIInstrumentor().instrument()
    AnthropicInstrumentor().instrument()
    with Model() as server:
        yield server
    OpenAIInstrumentor().uninstrument()
    AnthropicInstrumentor().uninstrument()


MESSAGES = [{"role": "user", "content": "hi"}]
READS = ["iter_lines", "iter_bytes", "iter_text"]


@pytest.mark.parametrize("read", READS)
def test_a_raw_stream_read_line_by_line_is_charged_what_it_carried(model: Model, read: str) -> None:
    client = openai.OpenAI(api_key="t", base_url=f"{model.url}/v1", max_retries=0)
    sent = 0
    with budgetspan.run("relay", max_output_tokens=5000, suppress_exhausted=True) as run:
        for _ in range(3):
            with client.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=4000
            ) as response:
                received = "".join(str(part) for part in getattr(response, read)())
            sent += 1
            assert "[DONE]" in received  # the caller's bytes untouched
    assert len(model.requests) == sent == 1  # was 3: each charged 0 output tokens
    assert "stream_options" not in model.requests[0]  # a raw body is left as the caller asked
    assert 3300 <= run.usage.output_tokens <= 3400 and run.usage.unreported_usage_calls == 1


@pytest.mark.parametrize("read", READS)
def test_an_async_raw_stream_is_charged_what_it_carried(model: Model, read: str) -> None:
    client = openai.AsyncOpenAI(api_key="t", base_url=f"{model.url}/v1", max_retries=0)

    async def main() -> budgetspan.Run:
        async with budgetspan.run("relay", max_output_tokens=5000, suppress_exhausted=True) as run:
            for _ in range(3):
                async with client.chat.completions.with_streaming_response.create(
                    model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=4000
                ) as response:
                    async for _part in getattr(response, read)():
                        pass
        return run

    run = asyncio.run(main())
    assert len(model.requests) == 1
    assert 3300 <= run.usage.output_tokens <= 3400


def test_a_raw_stream_with_its_own_usage_chunk_is_charged_that(model: Model) -> None:
    client = openai.OpenAI(api_key="t", base_url=f"{model.url}/v1", max_retries=0)
    with budgetspan.run("relay") as run:
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        ) as response:
            for _line in response.iter_lines():
                pass
    assert (run.usage.input_tokens, run.usage.output_tokens) == (11, 2999)
    assert run.usage.unreported_usage_calls == 0


def test_a_raw_json_body_read_in_pieces_is_charged_its_usage(model: Model) -> None:
    client = openai.OpenAI(api_key="t", base_url=f"{model.url}/v1", max_retries=0)
    with budgetspan.run("relay") as run:
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=4000
        ) as response:
            body = b"".join(response.iter_bytes())
    assert json.loads(body)["usage"]["completion_tokens"] == 2999
    assert (run.usage.input_tokens, run.usage.output_tokens) == (11, 2999)


def test_a_raw_stream_then_parsed_is_read_once(model: Model) -> None:
    client = openai.OpenAI(api_key="t", base_url=f"{model.url}/v1", max_retries=0)
    with budgetspan.run("relay") as run:
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        ) as response:
            chunks = list(response.parse())
    assert len(chunks) == PIECES + 2
    assert (run.usage.model_calls, run.usage.output_tokens) == (1, 2999)


def test_a_raw_stream_read_past_the_deadline_stops_at_its_next_piece(model: Model) -> None:
    client = openai.OpenAI(api_key="t", base_url=f"{model.url}/v1", max_retries=0)
    lines: list[str] = []
    with budgetspan.run("relay", max_wall_clock_s=0.3, suppress_exhausted=True) as run:
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=4000, user="slow"
        ) as response:
            lines.extend(response.iter_lines())
    assert run.exhausted is not None and run.exhausted.reason == "max_wall_clock_s"
    assert 2 <= len([line for line in lines if line]) < PIECES  # was: read to its end (1 s)


def test_an_async_raw_stream_is_bounded_by_the_deadline(model: Model) -> None:
    client = openai.AsyncOpenAI(api_key="t", base_url=f"{model.url}/v1", max_retries=0)
    lines: list[str] = []

    async def main() -> budgetspan.Run:
        async with budgetspan.run("relay", max_wall_clock_s=0.3, suppress_exhausted=True) as run:
            async with client.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=4000, user="slow"
            ) as response:
                async for line in response.iter_lines():
                    lines.append(line)
        return run

    run = asyncio.run(main())
    assert run.exhausted is not None and run.exhausted.reason == "max_wall_clock_s"
    assert len([line for line in lines if line]) < PIECES


def test_a_raw_stream_left_early_is_charged_what_was_read(model: Model) -> None:
    client = openai.OpenAI(api_key="t", base_url=f"{model.url}/v1", max_retries=0)
    with budgetspan.run("relay") as run:
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=4000
        ) as response:
            for i, _line in enumerate(response.iter_lines()):
                if i == 8:  # four chunks (each line and its blank line)
                    break
    # what reached the process (the read ahead of the lines included, up to the whole), never 0
    assert run.usage.output_tokens >= 600 and run.usage.model_calls == 1


def test_an_anthropic_raw_stream_read_line_by_line_is_charged_its_usage(model: Model) -> None:
    anthropic = pytest.importorskip("anthropic")
    client = anthropic.Anthropic(api_key="t", base_url=model.url, max_retries=0)
    with budgetspan.run("relay", max_output_tokens=5000, suppress_exhausted=True) as run:
        for _ in range(2):
            with client.messages.with_streaming_response.create(
                model="claude-3-haiku-20240307", messages=MESSAGES, max_tokens=4000, stream=True
            ) as response:
                for _line in response.iter_lines():
                    pass
    assert len(model.requests) == 1  # was 2: the first charged 1 output token
    assert (run.usage.input_tokens, run.usage.output_tokens) == (12, 2999)
