"""A local HTTP server on 127.0.0.1 that answers like the Gemini REST API and an OpenAI-compatible
chat endpoint, and counts every request that reached it.

Gemini: ``POST /{version}/models/{model}:generateContent`` (JSON) and
``:streamGenerateContent?alt=sse`` (server-sent events, one ``GenerateContentResponse`` each,
usage in the last one as the API sends it). OpenAI-compatible: ``POST .../chat/completions``,
whole or streamed (usage in a last chunk without choices when ``stream_options.include_usage``).

Each answer is built from the server's settings, changed per test: the text, the usage (or none:
``usage=None``), a function call for Gemini's automatic function calling.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from budgetspan import attributes as A
from tests.http_server import QuietHandler, Serving

#: Gemini usageMetadata the tests check against (input includes the cached part; thoughts are
#: output billed as output, and the total counts them).
GEMINI_USAGE: dict[str, int] = {
    "promptTokenCount": 120,
    "cachedContentTokenCount": 100,
    "candidatesTokenCount": 7,
    "thoughtsTokenCount": 30,
    "totalTokenCount": 157,
}

OPENAI_USAGE: dict[str, Any] = {
    "prompt_tokens": 21,
    "completion_tokens": 5,
    "total_tokens": 26,
    "prompt_tokens_details": {"cached_tokens": 0},
}


@dataclass
class Seen:
    """One request as it reached the server."""

    path: str
    body: dict[str, Any]


@dataclass
class Settings:
    text: list[str] = field(default_factory=lambda: ["Hello", " from", " the fake."])
    gemini_usage: dict[str, int] | None = field(default_factory=lambda: dict(GEMINI_USAGE))
    openai_usage: dict[str, Any] | None = field(default_factory=lambda: dict(OPENAI_USAGE))
    model_version: str = "gemini-2.5-flash"
    #: Gemini answers with a call of this function while no functionResponse is in the request.
    function_call: str | None = None


class LLMServer(Serving):
    """Start once per session; ``reset()`` before each test."""

    def __init__(self) -> None:
        self.settings = Settings()
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.body()
                body = json.loads(raw) if raw else {}
                with server._lock:
                    server.requests.append(Seen(self.path, body))
                server._answer(self, body)

        super().__init__(Handler)
        self.base_url = self.url

    def reset(self) -> LLMServer:
        with self._lock:
            self.requests.clear()
        self.settings = Settings()
        return self

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    # --- answers ---------------------------------------------------------------------------

    def _answer(self, handler: QuietHandler, body: dict[str, Any]) -> None:
        path = handler.path
        if ":streamGenerateContent" in path:
            _sse(handler, [json.dumps(c) for c in self._gemini_chunks(body)])
        elif ":generateContent" in path:
            _json(handler, self._gemini_response(body))
        elif path.split("?", 1)[0].endswith("/chat/completions"):
            if body.get("stream"):
                chunks = [json.dumps(c) for c in self._openai_chunks(body)]
                _sse(handler, [*chunks, "[DONE]"])
            else:
                _json(handler, self._openai_response(body))
        else:
            _json(handler, {"error": {"message": f"no route {path}"}}, status=404)

    def _gemini_parts(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        s = self.settings
        answered = any(
            "functionResponse" in part for c in body.get("contents", []) for part in c.get("parts", [])
        )
        if s.function_call and not answered:
            return [{"functionCall": {"name": s.function_call, "args": {"city": "Paris"}}}]
        return [{"text": "".join(s.text)}]

    def _gemini_response(self, body: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        answer: dict[str, Any] = {
            "candidates": [
                {
                    "content": {"role": "model", "parts": self._gemini_parts(body)},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "modelVersion": s.model_version,
            "responseId": "resp-gemini-1",
        }
        if s.gemini_usage is not None:
            answer["usageMetadata"] = s.gemini_usage
        return answer

    def _gemini_chunks(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        s = self.settings
        chunks: list[dict[str, Any]] = []
        for i, piece in enumerate(s.text):
            chunk: dict[str, Any] = {
                "candidates": [{"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0}],
                "modelVersion": s.model_version,
                "responseId": "resp-gemini-stream",
            }
            if i == len(s.text) - 1:
                chunk["candidates"][0]["finishReason"] = "STOP"
            if s.gemini_usage is not None:  # the API repeats the prompt count, the rest comes last
                usage = {"promptTokenCount": s.gemini_usage["promptTokenCount"]}
                chunk["usageMetadata"] = s.gemini_usage if i == len(s.text) - 1 else usage
            chunks.append(chunk)
        return chunks

    def _openai_response(self, body: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        answer: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1700000000,
            "model": body.get("model", "gpt-4o-mini"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(s.text)},
                    "finish_reason": "stop",
                }
            ],
        }
        if s.openai_usage is not None:
            answer["usage"] = s.openai_usage
        return answer

    def _openai_chunks(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        s = self.settings
        head = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": body.get("model", "gpt-4o-mini"),
        }
        chunks = [
            {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": t}}]} for t in s.text
        ]
        chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        wants_usage = (body.get("stream_options") or {}).get("include_usage")
        if wants_usage and s.openai_usage is not None:
            chunks.append({**head, "choices": [], "usage": s.openai_usage})
        return chunks


def _json(handler: QuietHandler, payload: dict[str, Any], status: int = 200) -> None:
    handler.send_body(json.dumps(payload).encode(), "application/json", status)


def _sse(handler: QuietHandler, events: list[str]) -> None:
    handler.send_body("".join(f"data: {e}\r\n\r\n" for e in events).encode(), "text/event-stream")


def assert_usage(
    span: Any, provider: str, model: str, tokens: tuple[int, int], cost: float
) -> dict[str, Any]:
    """The span names the provider and model and carries the (input, output) tokens the server
    reported, priced at ``cost``; returns its attributes for the provider's own checks."""
    attrs = dict(span.attributes)
    assert attrs[A.GEN_AI_PROVIDER_NAME] == provider
    assert attrs[A.GEN_AI_REQUEST_MODEL] == model
    assert (attrs[A.GEN_AI_USAGE_INPUT_TOKENS], attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS]) == tokens
    assert attrs[A.GEN_AI_USAGE_COST] == pytest.approx(cost)
    assert A.USAGE_UNREPORTED not in attrs
    return attrs
