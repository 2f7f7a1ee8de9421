"""An OpenAI-compatible chat completions server on loopback for the services under test.

Every reply reports the same usage (``PROMPT_TOKENS``/``COMPLETION_TOKENS``, and
``CACHED_TOKENS`` of the prompt as cache reads) so the test knows the price the tier must put on
each call; a streamed reply reports no usage (the tier must leave it unpriced, never at 0).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from tests.http_server import QuietHandler, Serving

PROMPT_TOKENS = 100
COMPLETION_TOKENS = 20
CACHED_TOKENS = 40


def _reply(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-collector",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "On its way."}}
        ],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
        },
    }


def _chunks(model: str) -> list[dict[str, Any]]:
    base = {
        "id": "chatcmpl-collector",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
    }
    return [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "On its "}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "way."}, "finish_reason": "stop"}]},
    ]


class ModelServer:
    def __init__(self) -> None:
        self.requests = 0
        self._lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.body())
                with server._lock:
                    server.requests += 1
                model = str(body.get("model", ""))
                if body.get("stream"):
                    data = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in _chunks(model))
                    self.send_body(data + b"data: [DONE]\n\n", "text/event-stream")
                else:
                    self.send_body(json.dumps(_reply(model)).encode(), "application/json")

        self._http = Serving(Handler).start()
        self.url = f"{self._http.url}/v1"

    def close(self) -> None:
        self._http.stop()
