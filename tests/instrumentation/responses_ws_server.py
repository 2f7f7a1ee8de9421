"""A loopback server for the Responses API's WebSocket mode (``wss://.../v1/responses``): each
``response.create`` frame it receives is answered with ``response.created``, one text delta and
``response.completed`` carrying usage, as OpenAI's server does. It counts the frames received, so
a test can say what reached the wire."""

from __future__ import annotations

import json
import threading
from typing import Any

from websockets.sync.server import ServerConnection, serve

USAGE = {
    "input_tokens": 40,
    "output_tokens": 6,
    "total_tokens": 46,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens_details": {"reasoning_tokens": 0},
}


def _response(rid: str, model: str, status: str, text: str | None) -> dict[str, Any]:
    output = []
    if text is not None:
        output.append(
            {
                "type": "message",
                "id": f"msg_{rid}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    return {
        "id": rid,
        "object": "response",
        "created_at": 1,
        "model": model,
        "status": status,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": USAGE if status == "completed" else None,
    }


class ResponsesWebSocketServer:
    """``url`` is the client's base URL (``http://127.0.0.1:PORT/v1``); ``frames`` what arrived."""

    def __init__(self, text: str = "Sunny.") -> None:
        self.text = text
        self.frames: list[dict[str, Any]] = []
        self._server = serve(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.socket.getsockname()[1]}/v1"

    def _serve(self, connection: ServerConnection) -> None:
        for message in connection:
            frame = json.loads(message)
            self.frames.append(frame)
            if frame.get("type") != "response.create":
                continue
            rid, model = f"resp_{len(self.frames)}", frame.get("model", "gpt-4o-mini")
            events = [
                {"type": "response.created", "response": _response(rid, model, "in_progress", None)},
                {
                    "type": "response.output_text.delta",
                    "item_id": f"msg_{rid}",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": self.text,
                    "logprobs": [],
                },
                {"type": "response.completed", "response": _response(rid, model, "completed", self.text)},
            ]
            for n, event in enumerate(events):
                connection.send(json.dumps({**event, "sequence_number": n}))

    def __enter__(self) -> ResponsesWebSocketServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
