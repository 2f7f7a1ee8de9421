"""The set-up the scope budget tests share: OpenAI instrumented against a local server that
reports ``usage``, the scope windows on a clock the test moves, and everything put back after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest

import budgetspan
from budgetspan.accounting import windows
from budgetspan.accounting.pricing import set_default_resolver
from budgetspan.accounting.scopes import REGISTRY
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from tests.accounting.redis_server import needs_redis_server, redis
from tests.instrumentation.llm_server import LLMServer

#: 2025-12-05 02:00 UTC (03:00 in Paris) on the scope clock.
T0 = 1_764_900_000.0


@contextmanager
def scoped_app(
    server: LLMServer, lean: Any, usage: dict[str, int], ledger: budgetspan.Ledger | None = None
) -> Iterator[list[float]]:
    """Yields the clock (``clock[0]`` is now); ``ledger``: set as the current one."""
    set_default_resolver(None)
    server.reset()
    server.settings.openai_usage = dict(usage)
    clock = [T0]
    windows.set_clock(lambda: clock[0])
    if ledger is not None:
        budgetspan.set_ledger(ledger)
    OpenAIInstrumentor().instrument()
    try:
        yield clock
    finally:
        OpenAIInstrumentor().uninstrument()
        windows.set_clock(None)
        REGISTRY.clear()
        lean.install()


@pytest.fixture(scope="module")
def local_server() -> Iterator[LLMServer]:
    with LLMServer() as srv:
        yield srv


def on_either_ledger(usage: dict[str, int]) -> Any:
    """A fixture (``app = on_either_ledger(USAGE)`` in a test module, beside ``server =
    local_server``): budgetspan on the in-memory and on a Redis ledger in turn, OpenAI instrumented,
    the server reporting ``usage``, the scope clock at hand (returned)."""

    @pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis_server)])
    def app(request: pytest.FixtureRequest, lean: Any, server: LLMServer) -> Iterator[list[float]]:
        ledger = None
        if request.param == "redis":
            client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
            client.flushdb()
            ledger = budgetspan.RedisLedger(client)
        with scoped_app(server, lean, usage, ledger) as clock:
            yield clock

    return app


def client_of(server: LLMServer) -> openai.OpenAI:
    """The real openai SDK on the local server, without retries (a refusal is not retried)."""
    return openai.OpenAI(api_key="t", base_url=server.base_url + "/v1", max_retries=0)
