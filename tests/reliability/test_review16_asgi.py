"""Review 16: a FastAPI app served by uvicorn under ``opentelemetry-instrument`` (zero-code: only
``BUDGETSPAN_*``/``OTEL_*`` set), as users deploy an agent endpoint. No run is declared: each
request (its ASGI server span, a local root) is a run with ``BUDGETSPAN_BUDGET``. The real
``openai`` SDK calls a loopback model server that counts the requests that reach it.

Requests of one upstream trace (a gateway or an orchestrator fanning out with one ``traceparent``)
are separate requests: each holds its own budget (was: they shared one run, and when the first
ended the others went on with a fresh budget: 3 sent under a request's ``max_model_calls=2``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from tests.http_server import QuietHandler, Serving
from tests.instrumentation import zero_code
from tests.jobs.model_server import ModelServer
from tests.processes import free_port, stop_process, wait_for

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("opentelemetry.instrumentation.fastapi")

ROOT = Path(__file__).resolve().parents[2]

APP = """
import asyncio, os
import openai
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
import budgetspan

app = FastAPI()
gates: dict[str, asyncio.Event] = {}

@app.get("/ask")
async def ask(key: str, n: int, wait: str = ""):
    client = openai.AsyncOpenAI(api_key="t", base_url=os.environ["MODEL_URL"], max_retries=0)
    sent, refused = 0, None
    try:
        for i in range(n):
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"{key} {i}"}], max_tokens=5)
            sent += 1
            if wait and i == 0:
                await gates.setdefault(wait, asyncio.Event()).wait()
    except budgetspan.BudgetExhausted as e:
        refused = e.reason
    return {"sent": sent, "refused": refused}

@app.get("/sse")
async def sse(key: str):
    client = openai.AsyncOpenAI(api_key="t", base_url=os.environ["STREAM_URL"], max_retries=0)

    async def relay():
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": key}], stream=True, max_tokens=2000)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield f"data: {chunk.choices[0].delta.content}\\n\\n"

    return StreamingResponse(relay(), media_type="text/event-stream")

@app.get("/pid")
async def pid():
    return {"pid": os.getpid()}

@app.get("/release")
async def release(name: str):
    gates.setdefault(name, asyncio.Event()).set()
    return {}
"""


def _disabled() -> str:
    """Every installed instrumentor but FastAPI's and budgetspan's OpenAI one (the others' libraries
    take seconds to import)."""
    names = {e.name for e in entry_points(group="opentelemetry_instrumentor")}
    return ",".join(sorted(names - {"budgetspan_openai", "fastapi"}))


def _options(port: int, workers: int) -> list[str]:
    return ["--port", str(port), "--workers", str(workers)]


@pytest.fixture(params=[1], ids=["1-worker"])
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, ModelServer]]:
    """The app under ``opentelemetry-instrument uvicorn --workers N``; yields its URL and the
    model server."""
    model = ModelServer()
    streams = _STREAMS["current"] = StreamServer().start()
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUDGETSPAN_", "OTEL_"))}
    env.update(
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=_disabled(),
        PYTHONPATH=os.pathsep.join([str(zero_code.sdk_site(tmp_path)), str(ROOT / "src")]),
        BUDGETSPAN_BUDGET="max_model_calls=2",
        MODEL_URL=model.url,
        STREAM_URL=f"{streams.url}/v1",
    )
    log = tmp_path / "server.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                str(zero_code.INSTRUMENT),
                sys.executable,
                "-m",
                "uvicorn",
                "app:app",
                *_options(port, request.param),
            ],
            cwd=tmp_path,
            env=env,
            stdout=err,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for(lambda: urllib.request.urlopen(f"{url}/release?name=x", timeout=2), 60, "the app")
        except AssertionError:
            raise AssertionError(log.read_text()[-3000:]) from None
        yield url, model
    finally:
        stop_process(proc)
        model.stop()
        streams.stop()


_STREAMS: dict[str, StreamServer] = {}  # the stream server of the app being served


class StreamServer(Serving):
    """Streams 100 chunks, one every 50 ms, to each chat request; notes which streams' clients
    hung up before the end (``hung_up``) and which were written to the end (``finished``)."""

    def __init__(self) -> None:
        self.hung_up: set[str] = set()
        self.finished: set[str] = set()
        server = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                key = json.loads(self.body())["messages"][-1]["content"]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
                try:
                    for _ in range(100):
                        time.sleep(0.05)
                        chunk = {**base, "choices": [{"index": 0, "delta": {"content": "word " * 20}}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                except OSError:
                    server.hung_up.add(key)
                    return
                server.finished.add(key)
                self.close_connection = True

        super().__init__(Handler, quiet_errors=True)


def _get(url: str, traceparent: str | None = None) -> dict[str, Any]:
    headers = {"traceparent": traceparent} if traceparent else {}
    request = urllib.request.Request(url, headers=headers)
    return dict(json.loads(urllib.request.urlopen(request, timeout=30).read()))


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.skipif(not zero_code.INSTRUMENT.exists(), reason="opentelemetry-instrument not installed")
def test_requests_of_one_upstream_trace_each_hold_their_own_budget(
    served: tuple[str, ModelServer],
) -> None:
    url, model = served
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        # Request a: one call, then it waits (in flight) while request b of the same trace runs.
        first = pool.submit(_get, f"{url}/ask?key=a&n=4&wait=a", f"00-{TRACE}-00f067aa0ba902b7-01")
        model.wait_for("a", 0)
        second = _get(f"{url}/ask?key=b&n=4", f"00-{TRACE}-00f067aa0ba902b8-01")
        _get(f"{url}/release?name=a")
        answer = first.result(30)
    assert (second, answer) == (
        {"sent": 2, "refused": "max_model_calls"},  # was 1: a's call spent b's budget
        {"sent": 2, "refused": "max_model_calls"},  # was 3: a fresh budget after b ended
    )
    assert answer == {"sent": 2, "refused": "max_model_calls"}  # was 3: a fresh budget after b ended
    assert model.steps("a") == [0, 1] and model.steps("b") == [0, 1]


@pytest.mark.skipif(not zero_code.INSTRUMENT.exists(), reason="opentelemetry-instrument not installed")
@pytest.mark.parametrize("served", [2], ids=["2-workers"], indirect=True)
def test_each_request_of_each_uvicorn_worker_holds_its_budget(served: tuple[str, ModelServer]) -> None:
    url, model = served
    from concurrent.futures import ThreadPoolExecutor

    wait_for(lambda: len({_get(f"{url}/pid")["pid"] for _ in range(20)}) == 2, 60, "both workers")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _get(f"{url}/ask?key=w{i}&n=4"), range(16)))
    assert answers == [{"sent": 2, "refused": "max_model_calls"}] * 16
    assert all(model.steps(f"w{i}") == [0, 1] for i in range(16))


@pytest.mark.skipif(not zero_code.INSTRUMENT.exists(), reason="opentelemetry-instrument not installed")
def test_a_client_leaving_an_sse_relay_closes_the_model_stream(served: tuple[str, ModelServer]) -> None:
    """The browser goes away mid-answer: the relay's model stream is closed (the provider stops
    generating and billing), not read on to its end."""
    url, _ = served
    streams = _STREAMS["current"]
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /sse?key=leaver HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while received.count(b"data:") < 3:
            received += sock.recv(65536)
    wait_for(
        lambda: "leaver" in streams.hung_up or "leaver" in streams.finished, 20, "the model stream's end"
    )
    assert streams.hung_up == {"leaver"} and not streams.finished  # stopped, not 100 chunks
