"""An OpenAI-compatible chat completions server on loopback for the services under test.

Every reply reports the same usage (``PROMPT_TOKENS``/``COMPLETION_TOKENS``, and
``CACHED_TOKENS`` of the prompt as cache reads) so the test knows the price the tier must put on
each call; a streamed reply reports no usage (the tier must leave it unpriced, never at 0).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with server._lock:
                    server.requests += 1
                model = str(body.get("model", ""))
                if body.get("stream"):
                    data = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in _chunks(model))
                    data += b"data: [DONE]\n\n"
                    kind = "text/event-stream"
                else:
                    data, kind = json.dumps(_reply(model)).encode(), "application/json"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
