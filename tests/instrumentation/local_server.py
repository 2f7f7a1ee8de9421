"""A loopback HTTP server that answers from a script and keeps every request it received, so a
test can say what reached the wire (a refused call sent nothing; a retry sent twice).

Real SDKs whose transport cannot be swapped for a mock (boto3's urllib3) talk to it through
their ``endpoint_url``. It also speaks AWS's event-stream framing, for Bedrock's streams.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.http_server import QuietHandler, Serving


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    #: Send only this many bytes of the body, then drop the connection (a cut stream).
    cut_at: int | None = None


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class LocalServer(Serving):
    """``answers`` are used in order (the last one again once the others are used up)."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.requests: list[Received] = []
        server = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                server.requests.append(Received("POST", self.path, dict(self.headers), self.body()))
                server.answer(self)

            do_GET = do_POST

        super().__init__(Handler)

    def reset(self, *answers: Answer) -> LocalServer:
        self.answers = list(answers)
        self.requests = []
        return self

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        if not self.answers:
            handler.send_error(500, "no answer scripted")
            return
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        handler.send_response(answer.status)
        for key, value in answer.headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(answer.body)))
        handler.end_headers()
        body = answer.body if answer.cut_at is None else answer.body[: answer.cut_at]
        handler.wfile.write(body)
        handler.wfile.flush()
        if answer.cut_at is not None:
            handler.close_connection = True


def json_answer(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})})


# --- AWS event-stream framing -----------------------------------------------------------------


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return bytes([len(raw_name)]) + raw_name + b"\x07" + struct.pack(">H", len(raw_value)) + raw_value


def event_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (lengths + CRC), headers, payload, message CRC."""
    head = b"".join(_header(k, v) for k, v in headers.items())
    prelude = struct.pack(">II", 16 + len(head) + len(payload), len(head))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + head + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, payload: dict[str, Any]) -> bytes:
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return event_frame(headers, json.dumps(payload).encode())


def chunk_event(body: dict[str, Any]) -> bytes:
    """An InvokeModelWithResponseStream ``chunk``: the model's JSON, base64 in ``bytes``."""
    return event("chunk", {"bytes": base64.b64encode(json.dumps(body).encode()).decode()})


def event_stream(*frames: bytes, cut_at: int | None = None) -> Answer:
    return Answer(200, b"".join(frames), {"Content-Type": "application/vnd.amazon.eventstream"}, cut_at)
