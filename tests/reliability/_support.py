"""Shared pieces of the reliability suite: a fake OTLP endpoint, an OpenAI SDK on a mock transport.

The OpenAI client is the real SDK (``openai.OpenAI`` / ``AsyncOpenAI``) over ``httpx2.MockTransport``
answering realistic chat completions (with usage), so the instrumentation runs end to end without
a network. The OTLP endpoint is a real loopback HTTP server that can be down, slow or failing.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import openai

from budgetspan.instrumentation.openai import OpenAIInstrumentor

BASE_URL = "https://api.openai.com/v1"
MODEL = "gpt-4o-mini"
PROMPT_MARK = "PROMPT-7f3a9c"  # unique strings: a scan for them finds any leaked content
ANSWER_MARK = "ANSWER-c41d2e"


def chat_body(
    text: str = ANSWER_MARK, prompt_tokens: int = 120, completion_tokens: int = 30, rid: str = "chatcmpl-r"
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": 1732700000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }


def chat_chunks(text: str = ANSWER_MARK, with_usage: bool = True) -> bytes:
    base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": MODEL}
    pieces = [text[: len(text) // 2], text[len(text) // 2 :]]
    chunks: list[dict[str, Any]] = [
        {**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces
    ]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if with_usage:
        usage = {"prompt_tokens": 50, "completion_tokens": 2, "total_tokens": 52}
        chunks.append({**base, "choices": [], "usage": usage})
    return ("".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n").encode()


def messages(extra: str = "") -> list[dict[str, str]]:
    return [
        {"role": "system", "content": f"You are a support agent. {PROMPT_MARK}"},
        {"role": "user", "content": f"Where is my order? {PROMPT_MARK} {extra}"},
    ]


Handler = Callable[[httpx2.Request], httpx2.Response]


def ok_handler(request: httpx2.Request) -> httpx2.Response:
    """A chat completion, streamed when the request asked for a stream."""
    if json.loads(request.content or b"{}").get("stream"):
        return sse(chat_chunks())
    return httpx2.Response(200, json=chat_body())


def sync_client(handler: Handler = ok_handler) -> openai.OpenAI:
    transport = httpx2.MockTransport(handler)
    return openai.OpenAI(
        api_key="sk-test", base_url=BASE_URL, max_retries=0, http_client=httpx2.Client(transport=transport)
    )


def async_client(
    handler: Handler = ok_handler, delay_s: float = 0.0, arrived: asyncio.Event | None = None
) -> openai.AsyncOpenAI:
    """``arrived`` is set when a request reaches the transport: the call is in flight."""

    async def answer(request: httpx2.Request) -> httpx2.Response:
        if arrived is not None:
            arrived.set()
        if delay_s:
            await asyncio.sleep(delay_s)
        return handler(request)

    transport = httpx2.MockTransport(answer)
    return openai.AsyncOpenAI(
        api_key="sk-test",
        base_url=BASE_URL,
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    )


def sse(body: bytes | httpx2.SyncByteStream | httpx2.AsyncByteStream) -> httpx2.Response:
    headers = {"content-type": "text/event-stream"}
    if isinstance(body, bytes):
        return httpx2.Response(200, content=body, headers=headers)
    return httpx2.Response(200, stream=body, headers=headers)


@contextmanager
def openai_instrumented() -> Iterator[None]:
    """Instrument the OpenAI SDK for the block (left as found: other suites may have done it)."""
    inst = OpenAIInstrumentor()
    already = inst.is_instrumented_by_opentelemetry
    if not already:
        inst.instrument()
    try:
        yield
    finally:
        if not already:
            inst.uninstrument()


# --- a loopback OTLP/HTTP endpoint ------------------------------------------------------------


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


class OtlpEndpoint:
    """A loopback HTTP server answering OTLP exports: ``ok``, ``slow`` (sleeps) or ``error`` (500)."""

    def __init__(self, mode: str, delay_s: float = 2.0) -> None:
        self.mode = mode
        self.delay_s = delay_s
        self.requests = 0
        self._stop = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                endpoint.requests += 1
                if endpoint.mode == "slow":
                    endpoint._stop.wait(endpoint.delay_s)
                status = 500 if endpoint.mode == "error" else 200
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/x-protobuf")
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up (timeout)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
