"""Abandoned streams: a stream the application drops (read partly or not at all) ends its span.

Real ``openai`` streams over a mock transport; the proxy's finalizer ends the call when the
stream is garbage-collected, with ``budgetspan.stream.end = abandoned``, even after its run ended.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import budgetspan
from budgetspan import attributes as A
from budgetspan import events
from tests.reliability._support import MODEL, async_client, messages, openai_instrumented, sync_client
from tests.reliability.conftest import Lean, scaled
from tests.reliability.test_faults import SpanCounter

STREAMS = scaled(300, minimum=20)


class Setup:
    def __init__(self, lean: Lean) -> None:
        self.counter = SpanCounter()
        self.exporter = InMemorySpanExporter()
        lean.provider.add_span_processor(self.counter)
        lean.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.internal_errors: list[str] = []
        events.add_listener(self)

    def on_internal_error(self, where: str) -> None:
        self.internal_errors.append(where)

    def chat_ends(self) -> list[object]:
        return [
            s.attributes.get(A.STREAM_END)
            for s in self.exporter.get_finished_spans()
            if s.name.startswith("chat ") and s.attributes
        ]


@pytest.fixture
def setup(lean: Lean) -> Iterator[Setup]:
    with openai_instrumented():
        yield Setup(lean)


def test_abandoned_sync_streams_end_their_spans(setup: Setup) -> None:
    client = sync_client()
    with budgetspan.run("streams") as run:
        for i in range(STREAMS):
            stream = client.chat.completions.create(model=MODEL, messages=messages(), stream=True)
            if i % 2:
                next(iter(stream))  # read one chunk, then walk away
            del stream
        gc.collect()
        assert setup.counter.started - setup.counter.ended == 1  # only the run span is open
    assert setup.chat_ends() == ["abandoned"] * STREAMS
    assert run.usage.model_calls == STREAMS
    assert setup.internal_errors == []


async def test_abandoned_async_streams_end_their_spans(setup: Setup) -> None:
    client = async_client()
    async with budgetspan.run("streams"):
        for i in range(STREAMS):
            stream = await client.chat.completions.create(model=MODEL, messages=messages(), stream=True)
            if i % 2:
                await stream.__anext__()
            del stream
        gc.collect()
        for _ in range(500):  # finalisers may end spans on a later loop turn: poll, bounded
            if setup.counter.started - setup.counter.ended == 1:
                break
            await asyncio.sleep(0.01)
        assert setup.counter.started - setup.counter.ended == 1
    assert setup.chat_ends() == ["abandoned"] * STREAMS
    assert setup.internal_errors == []


def test_stream_abandoned_after_its_run_ended_still_ends_cleanly(setup: Setup) -> None:
    client = sync_client()
    with budgetspan.run("streams", max_model_calls=5):
        stream = client.chat.completions.create(model=MODEL, messages=messages(), stream=True)
        next(iter(stream))
    assert budgetspan.live_runs() == []
    del stream
    gc.collect()
    assert setup.counter.started == setup.counter.ended
    assert setup.chat_ends() == ["abandoned"]
    assert setup.internal_errors == []
