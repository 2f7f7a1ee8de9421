"""Review 16: a model call whose request left but whose answer never came (the caller's
``asyncio.timeout``, the SDK's ``timeout=``, a cancelled task, the run's own deadline). The server
goes on and bills the answer (OpenAI bills a non-streamed completion whether or not the client is
still there), so its output is unknown, never zero: it is charged at its worst case
(``max_tokens``), marked estimated. Was: the input estimate only, so a retry-on-timeout loop sent
10 requests under a ``max_cost_usd`` that holds 4. Real ``openai`` SDK, a slow loopback server
that counts the requests reaching it."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import budgetspan
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from tests.http_server import QuietHandler, Serving
from tests.processes import wait_for

ANSWER = {
    "id": "chatcmpl-slow", "object": "chat.completion", "created": 1, "model": "gpt-4o",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 1000, "total_tokens": 1010},
}  # fmt: skip
MESSAGES = [{"role": "user", "content": "hi"}]
#: gpt-4o at $10 per million output tokens: a 1,000-token answer is $0.01; $0.045 holds 4.
LIMIT = 0.045


class SlowModel(Serving):
    """Answers after the client has given up (or when released)."""

    def __init__(self) -> None:
        self.requests = 0
        self.release = threading.Event()
        model = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                self.body()
                model.requests += 1
                model.release.wait(2)
                try:
                    self.send_body(json.dumps(ANSWER).encode(), "application/json")
                except OSError:
                    pass  # the client hung up

        super().__init__(Handler, quiet_errors=True)

    def stop(self) -> None:
        self.release.set()
        super().stop()


@pytest.fixture
def model(lean: Any) -> Iterator[SlowModel]:
    OpenAIInstrumentor().instrument()
    with SlowModel() as server:
        yield server
    OpenAIInstrumentor().uninstrument()


def _create(client: Any) -> Any:
    return client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1000)


def test_calls_given_up_by_the_callers_timeout_are_charged_their_worst_case(model: SlowModel) -> None:
    client = openai.AsyncOpenAI(api_key="t", base_url=f"{model.url}/v1", max_retries=0)

    async def main() -> budgetspan.Run:
        async with budgetspan.run("retry-on-timeout", max_cost_usd=LIMIT, suppress_exhausted=True) as run:
            for _ in range(10):
                try:
                    async with asyncio.timeout(0.3):
                        await _create(client)
                except TimeoutError:
                    pass
        return run

    run = asyncio.run(main())
    wait_for(lambda: model.requests >= 4, 5, "the requests to reach the server")
    assert model.requests == run.usage.model_calls == 4  # was 10: each charged its input only
    assert run.usage.output_tokens == 4000 and run.usage.unreported_usage_calls == 4
    assert run.exhausted is not None and run.exhausted.reason == "max_cost_usd"


def test_calls_timed_out_by_the_sdk_are_charged_their_worst_case(model: SlowModel) -> None:
    client = openai.OpenAI(api_key="t", base_url=f"{model.url}/v1", max_retries=0, timeout=0.3)
    with budgetspan.run("sdk-timeout", max_cost_usd=LIMIT, suppress_exhausted=True) as run:
        for _ in range(10):
            try:
                _create(client)
            except openai.APITimeoutError:
                pass
    wait_for(lambda: model.requests >= 4, 5, "the requests to reach the server")
    assert model.requests == run.usage.model_calls == 4 and run.usage.output_tokens == 4000


def test_a_call_cut_by_the_runs_deadline_is_charged_its_worst_case(model: SlowModel) -> None:
    client = openai.AsyncOpenAI(api_key="t", base_url=f"{model.url}/v1", max_retries=0)

    async def main() -> budgetspan.Run:
        async with budgetspan.run("late", max_wall_clock_s=0.05, suppress_exhausted=True) as run:
            await _create(client)
        return run

    run = asyncio.run(main())
    assert run.exhausted is not None and run.exhausted.reason == "max_wall_clock_s"
    assert run.usage.model_calls == 1 and run.usage.output_tokens == 1000  # was 0


def test_a_call_answered_in_time_is_charged_what_it_reported(model: SlowModel) -> None:
    model.release.set()
    client = openai.OpenAI(api_key="t", base_url=f"{model.url}/v1", max_retries=0)
    with budgetspan.run("in-time") as run:
        _create(client)
    assert (run.usage.output_tokens, run.usage.unreported_usage_calls) == (1000, 0)


def test_attempts_the_sdk_retried_after_a_read_timeout_are_charged_too(model: SlowModel) -> None:
    # each attempt reached the server, which bills it: 3 attempts a call (max_retries=2)
    client = openai.OpenAI(api_key="t", base_url=f"{model.url}/v1", max_retries=2, timeout=0.3)
    with budgetspan.run("sdk-retries", max_cost_usd=LIMIT, suppress_exhausted=True) as run:
        for _ in range(10):
            try:
                _create(client)
            except openai.APITimeoutError:
                pass
    wait_for(lambda: model.requests >= 4, 5, "the requests to reach the server")
    assert model.requests == 4  # was 12: 4 calls of 3 attempts, each call charged once
    assert run.usage.output_tokens == 4000 and run.exhausted is not None
