"""Review 16: a sync tool that is itself an agent (it calls a model in a loop) runs past its
``timeout_s``. A thread cannot be killed, so budgetspan abandons the body; but the body's later
calls (model calls, tools) are refused with the tool's ``ToolTimeout``, so the abandoned sub-agent
stops at its next call. Was: it went on calling the model, first against the run, then, once the
run had ended, under no limit at all (all 20 requests sent). Real ``openai`` SDK over a
recording transport that counts the requests reaching the wire."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import budgetspan
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from tests.reliability._support import chat_body
from tests.replay import Recorder, json_response


@pytest.fixture
def wire(lean: Any) -> Iterator[Recorder]:
    OpenAIInstrumentor().instrument()
    try:
        yield Recorder(json_response(chat_body()))
    finally:
        OpenAIInstrumentor().uninstrument()


def test_an_abandoned_sub_agent_tool_stops_at_its_next_model_call(wire: Recorder) -> None:
    c = openai.OpenAI(api_key="t", http_client=wire.sync(), max_retries=0)
    ended = threading.Event()
    refused: list[BaseException] = []

    @budgetspan.tool(timeout_s=0.3)
    def research(topic: str) -> str:
        try:
            for _ in range(20):  # a sub-agent's loop: one model call every 0.1 s
                c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": topic}])
                time.sleep(0.1)
            return "done"
        except BaseException as e:
            refused.append(e)
            raise
        finally:
            ended.set()

    with budgetspan.run("outer", max_model_calls=50) as run:
        with pytest.raises(budgetspan.ToolTimeout):
            research("llamas")
    assert ended.wait(5)  # the body stopped at its next call after the timeout
    sent = len(wire.requests)
    assert 1 <= sent < 10  # was 20: the abandoned body went on, unbounded once the run ended
    assert [type(e) for e in refused] == [budgetspan.ToolTimeout]
    assert run.usage.model_calls == sent


def test_a_tool_within_its_timeout_calls_freely(wire: Recorder) -> None:
    c = openai.OpenAI(api_key="t", http_client=wire.sync(), max_retries=0)

    @budgetspan.tool(timeout_s=5)
    def research(topic: str) -> str:
        for _ in range(3):
            c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": topic}])
        return "done"

    with budgetspan.run("outer"):
        assert research("llamas") == "done"
    assert len(wire.requests) == 3
