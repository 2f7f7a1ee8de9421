"""An OpenAI-compatible chat server on loopback that counts what reached it, per job and step.

Each request's last user message is ``"<job id> <step>"``; a step can be gated: its request is held
(after being counted) until the test opens the gate, so a test knows a call is in flight; a held
step whose client closes the connection is noted in ``closed``.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time

from tests.http_server import QuietHandler, Serving


class ModelServer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.times: dict[tuple[str, int], float] = {}  # when each step was first seen (monotonic)
        self.gates: dict[tuple[str, int], threading.Event] = {}
        self.closed: dict[tuple[str, int], float] = {}  # held steps whose client hung up, and when
        self._lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            def _hold(self, key: tuple[str, int], gate: threading.Event) -> None:
                """Hold the response until the gate opens, noting when the client hangs up."""
                deadline = time.monotonic() + 30
                while not gate.wait(0.02) and time.monotonic() < deadline:
                    readable, _, _ = select.select([self.connection], [], [], 0)
                    if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                        with server._lock:
                            server.closed[key] = time.monotonic()
                        return

            def do_POST(self) -> None:
                body = json.loads(self.body())
                job, step = body["messages"][-1]["content"].split()
                key = (job, int(step))
                with server._lock:
                    server.seen.append(key)
                    server.times.setdefault(key, time.monotonic())
                    gate = server.gates.get(key)
                if gate is not None:
                    self._hold(key, gate)
                reply = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": f"done {step}"},
                        }
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }
                try:
                    self.send_body(json.dumps(reply).encode(), "application/json")
                except OSError:
                    pass  # the worker died while we held its request

        self.http = Serving(Handler).start()
        self.url = f"{self.http.url}/v1"

    def gate(self, job: str, step: int) -> threading.Event:
        with self._lock:
            event = self.gates[(job, step)] = threading.Event()
        return event

    def steps(self, job: str) -> list[int]:
        with self._lock:
            return [s for j, s in self.seen if j == job]

    def wait_for(self, job: str, step: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while step not in self.steps(job):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the model server never saw step {step} of job {job}")
            time.sleep(0.02)

    def wait_closed(self, job: str, step: int, timeout_s: float = 30) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if (job, step) in self.closed:
                    return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        for event in list(self.gates.values()):
            event.set()
        self.http.stop()
