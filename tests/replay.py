"""Test helpers: replay recorded cassettes through the real SDKs, and a recording local transport.

``replay(path)`` is vcrpy with ``record_mode="none"``: a request the cassette does not hold fails
instead of reaching the network. ``Recorder`` is an httpx2 transport that answers from a script
and keeps every request it received, so a test can assert that a refused call sent nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import vcr
import yaml

from tests.conftest import FIXTURES

#: A small chat request, and the usage the scripted answers to it report.
CHAT_ARGS: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
CHAT_USAGE = {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}

_VCR = vcr.VCR(
    record_mode="none",
    match_on=("method", "scheme", "host", "port", "path"),
    decode_compressed_response=True,
)


def cassette(name: str) -> Path:
    return FIXTURES / name


def all_cassettes() -> list[str]:
    return sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*.yaml"))


def requests_of(name: str) -> list[dict[str, Any]]:
    """The JSON bodies of the cassette's requests, in order: replay sends the same arguments."""
    data = yaml.safe_load(cassette(name).read_text())
    return [json.loads(i["request"]["body"]) for i in data["interactions"]]


def endpoints_of(name: str) -> list[str]:
    """The request paths of the cassette's exchanges, in order (e.g. ``/v1/responses``)."""
    data = yaml.safe_load(cassette(name).read_text())
    return [str(httpx2.URL(i["request"]["uri"]).path) for i in data["interactions"]]


def replay(name: str) -> Any:
    return _VCR.use_cassette(str(cassette(name)), allow_playback_repeats=False)


# --- local transport ------------------------------------------------------------------------

Answer = httpx2.Response | Callable[[httpx2.Request], httpx2.Response]


def openai_client(rec: Recorder, **kw: Any) -> openai.OpenAI:
    """The real OpenAI client over ``rec`` (no retries unless asked)."""
    kw.setdefault("max_retries", 0)
    return openai.OpenAI(api_key="test", http_client=rec.sync(), **kw)


class Recorder:
    """An httpx2 transport (sync and async) answering from a list; records every request."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx2.Request] = []

    def _answer(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if not self.answers:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(request) if callable(answer) else answer

    def sync(self) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.MockTransport(self._answer))

    def asynchronous(self) -> httpx2.AsyncClient:
        async def handler(request: httpx2.Request) -> httpx2.Response:
            return self._answer(request)

        return httpx2.AsyncClient(transport=httpx2.MockTransport(handler))


def json_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Any:
    return lambda request: httpx2.Response(status, json=body, headers=headers or {})


def openai_sse(chunks: list[dict[str, Any]], done: bool = True) -> bytes:
    out = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
    return (out + ("data: [DONE]\n\n" if done else "")).encode()


def anthropic_sse(events: list[dict[str, Any]]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def sse_response(body: bytes) -> Any:
    return lambda request: httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})


class BrokenStream(httpx2.SyncByteStream):
    """Sends ``head`` then fails like a dropped connection."""

    def __init__(self, head: bytes) -> None:
        self.head = head

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        raise httpx2.ReadError("connection dropped")


class HangingStream(httpx2.AsyncByteStream):
    """Sends ``head`` then waits until cancelled: a model that stalls mid-stream."""

    def __init__(self, head: bytes) -> None:
        self.head = head

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.head
        await asyncio.sleep(3600)


class _Chunks(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


def streamed_json(body: dict[str, Any]) -> Any:
    """A JSON answer whose body is only read when the client reads it (like the network)."""
    return lambda request: httpx2.Response(
        200, stream=_Chunks(json.dumps(body).encode()), headers={"content-type": "application/json"}
    )


def broken_sse(head: bytes) -> Any:
    return lambda request: httpx2.Response(
        200, stream=BrokenStream(head), headers={"content-type": "text/event-stream"}
    )


def hanging_sse(head: bytes) -> Any:
    return lambda request: httpx2.Response(
        200, stream=HangingStream(head), headers={"content-type": "text/event-stream"}
    )


# --- canned bodies ----------------------------------------------------------------------------


def chat_completion(
    model: str = "gpt-4o-mini", text: str = "hello", usage: Any = None, rid: str = "chatcmpl-1"
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def chat_chunks(
    model: str = "gpt-4o-mini", pieces: tuple[str, ...] = ("Hel", "lo"), usage: Any = None
) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": model}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces
    ]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage is not None:
        chunks.append({**base, "choices": [], "usage": usage})
    return chunks


def anthropic_message(
    model: str = "claude-3-haiku-20240307", text: str = "hi", usage: Any = None
) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage if usage is not None else {"input_tokens": 10, "output_tokens": 5},
    }


def anthropic_events(
    model: str = "claude-3-haiku-20240307",
    pieces: tuple[str, ...] = ("Hi", " there"),
    start_usage: Any = None,
    delta_usage: Any = None,
) -> list[dict[str, Any]]:
    msg = {
        "id": "msg_s",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage if start_usage is not None else {"input_tokens": 12, "output_tokens": 1},
    }
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": msg},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ]
    events += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
        for p in pieces
    ]
    events += [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": delta_usage if delta_usage is not None else {"output_tokens": 7},
        },
        {"type": "message_stop"},
    ]
    return events


# --- fixtures ---------------------------------------------------------------------------------


def expected_cost(provider: str, model: str, inp: int, out: int, cr: int = 0, cw: int = 0) -> float | None:
    """genai-prices' own price for this usage (None: it does not know the model)."""
    from genai_prices import Usage, calc_price

    try:
        price = calc_price(
            Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=cr, cache_write_tokens=cw),
            model_ref=model,
            provider_id=provider,
        )
    except LookupError:
        return None
    return float(price.total_price)
