"""pydantic-ai (``pydantic-ai-slim[openai]``): tools counted and refused before their body, agent
run spans, refusals that reach the caller as ``BudgetExhausted``, one chat span per request, also
with pydantic-ai's own instrumentation on (its ``chat`` / ``execute_tool`` spans around ours).

Everything runs through the real ``Agent`` and ``OpenAIChatModel`` (the real ``openai`` client)
against the session's scripted server (``tools-N`` models call a tool N turns in a row).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import StatusCode
from pydantic_ai import Agent, ModelRetry
from pydantic_ai.models.instrumented import InstrumentationSettings
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

import budgetspan
from budgetspan import attributes as A
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from budgetspan.instrumentation.pydantic_ai import PydanticAIInstrumentor
from tests.conftest import Tracing, instrumentors_on
from tests.instrumentation import zero_code
from tests.instrumentation.agent_server import AgentServer, Request


@pytest.fixture
def pydantic_on(tracing: Tracing) -> Iterator[Tracing]:
    with instrumentors_on(OpenAIInstrumentor(), PydanticAIInstrumentor()):
        yield tracing


@pytest.fixture(params=[False, True], ids=["plain", "pydantic_instrumented"])
def own_spans(request: pytest.FixtureRequest, pydantic_on: Tracing) -> Iterator[bool]:
    """With and without pydantic-ai's own instrumentation (``Agent.instrument_all()``), sending
    its ``invoke_agent`` / ``chat`` / ``execute_tool`` spans to the same provider."""
    if request.param:
        Agent.instrument_all(InstrumentationSettings(tracer_provider=pydantic_on.provider))
    yield bool(request.param)
    Agent.instrument_all(False)


def scripted_agent(server: AgentServer, script: str, name: str | None) -> Agent[None, str]:
    """An agent on ``server``'s OpenAI-compatible chat endpoint, answering by ``script``."""
    provider = OpenAIProvider(base_url=server.base_url, api_key="test")
    return Agent(OpenAIChatModel(script, provider=provider), name=name)


class Weather:
    """An agent whose tool body records that it ran; the tool's name is not the function's.
    ``sent()``: the requests the server received since the agent was made."""

    def __init__(self, server: AgentServer, script: str, name: str | None = "weather") -> None:
        self.ran: list[str] = []
        self.agent = scripted_agent(server, script, name)
        self.server, self.mark = server, server.mark()

        @self.agent.tool_plain(name="lookup")
        def look_up_city(city: str) -> str:
            """Look a city up."""
            self.ran.append(city)
            return f"sunny in {city}"

    def sent(self) -> list[Request]:
        return self.server.since(self.mark)

    def refused(self, name: str, **limits: Any) -> tuple[budgetspan.BudgetExhausted, Any]:
        """Run the agent (sync) in a budgetspan run with ``limits``, which must stop it: the
        refusal and the run."""
        with pytest.raises(budgetspan.BudgetExhausted) as info:
            with budgetspan.run(name, **limits) as run:
                self.agent.run_sync("weather?")
        return info.value, run


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def _own(tracing: Tracing, prefix: str) -> list[Any]:
    return [s for s in tracing.spans(prefix) if s.instrumentation_scope.name == A.INSTRUMENTATION_SCOPE]


def test_one_tool_call_allowed_lets_exactly_one_body_run(
    pydantic_on: Tracing, own_spans: bool, agent_server: AgentServer
) -> None:
    w = Weather(agent_server, "tools-3")
    e, run = w.refused("one tool", max_tool_calls=1)
    assert w.ran == ["x1"]
    assert len(w.sent()) == 2
    assert e.reason == "max_tool_calls" and e is run.exhausted
    assert e.partial["tool_results"] == [{"tool": "lookup", "result": "sunny in x1"}]
    assert (run.usage.tool_calls, run.usage.model_calls) == (1, 2)  # counted once, also with its spans
    (tool,) = _own(pydantic_on, "execute_tool")
    assert tool.name == "execute_tool lookup" and _attrs(tool)[A.TOOL_SYSTEM] == "pydantic_ai"
    (run_span,) = pydantic_on.spans("invoke_agent one tool")
    assert _attrs(run_span)[A.EXHAUSTED_EXPLANATION] == e.explanation  # 1 of 1, as the exception says
    assert "1 of 1 tool calls" in e.explanation


def test_max_model_calls_sends_exactly_that_many_requests(
    pydantic_on: Tracing, own_spans: bool, agent_server: AgentServer
) -> None:
    w = Weather(agent_server, "tools-3")
    e, run = w.refused("two calls", max_model_calls=2)
    assert len(w.sent()) == 2 and run.usage.model_calls == 2
    assert e.reason == "max_model_calls" and e is run.exhausted
    assert "2 of 2 model calls" in e.explanation
    assert w.ran == ["x1", "x2"] and len(e.partial["tool_results"]) == 2


async def test_each_request_is_one_chat_span_with_the_servers_token_counts(
    pydantic_on: Tracing, own_spans: bool, agent_server: AgentServer
) -> None:
    w = Weather(agent_server, "tools-3")
    mark = agent_server.mark()
    async with budgetspan.run("tokens") as run:
        result = await w.agent.run("weather?")
    assert result.output == "Final answer after 3 tool results: sunny in x3"
    sent = agent_server.since(mark)
    chats = sorted(_own(pydantic_on, "chat"), key=lambda s: s.start_time)
    assert [
        (_attrs(s)[A.GEN_AI_USAGE_INPUT_TOKENS], _attrs(s)[A.GEN_AI_USAGE_OUTPUT_TOKENS]) for s in chats
    ] == [(r.input_tokens, r.output_tokens) for r in sent]
    u = run.usage
    assert (u.model_calls, u.tool_calls, u.tools_finished) == (4, 3, 3)  # not doubled by its spans
    assert (u.input_tokens, u.output_tokens) == (
        sum(r.input_tokens for r in sent),
        sum(r.output_tokens for r in sent),
    )
    peer_chats = [s for s in pydantic_on.spans("chat") if s not in chats]
    assert len(peer_chats) == (4 if own_spans else 0)
    (agent_span,) = _own(pydantic_on, "invoke_agent weather")
    assert _attrs(agent_span)[A.AGENT_FRAMEWORK] == "pydantic_ai"
    assert agent_span.parent.span_id == run.span.get_span_context().span_id
    ids = {s.context.span_id for s in pydantic_on.spans()}
    for span in chats + _own(pydantic_on, "execute_tool"):  # under the agent span (or its spans under it)
        parent = span.parent.span_id
        while parent != agent_span.context.span_id:
            assert parent in ids
            parent = next(s for s in pydantic_on.spans() if s.context.span_id == parent).parent.span_id


async def test_a_refusal_among_parallel_tool_calls_is_budget_exhausted(
    pydantic_on: Tracing, agent_server: AgentServer
) -> None:
    w = Weather(agent_server, "tools-1x3")  # one turn, three calls at once
    with pytest.raises(budgetspan.BudgetExhausted) as info:  # not an exception group
        async with budgetspan.run("parallel", max_tool_calls=2) as run:
            await w.agent.run("weather?")
    assert run.usage.tool_calls == 2 and info.value.reason == "max_tool_calls"
    # The refused third call never ran; pydantic-ai cancels the calls still running beside it.
    assert len(w.ran) <= 2 and len(set(w.ran)) == len(w.ran)


def test_a_model_retry_from_the_body_is_an_error_not_a_result(
    pydantic_on: Tracing, agent_server: AgentServer
) -> None:
    agent = scripted_agent(agent_server, "tools-2", "retrying")
    tries: list[str] = []

    @agent.tool_plain(retries=2)
    def flaky(city: str) -> str:
        """Fails once, asking the model to try again."""
        tries.append(city)
        if len(tries) == 1:
            raise ModelRetry("try again")
        return "fine"

    with budgetspan.run("retry") as run:
        agent.run_sync("weather?")
    assert len(tries) == 2 and run.usage.tool_calls == 2  # the model asked again: a second call
    assert run.partial["tool_results"] == [{"tool": "flaky", "result": "fine"}]
    first, second = sorted(_own(pydantic_on, "execute_tool flaky"), key=lambda s: s.start_time)
    assert first.status.status_code is StatusCode.ERROR and second.status.status_code is StatusCode.UNSET


def test_a_nameless_agent_span_takes_the_inferred_name(
    pydantic_on: Tracing, agent_server: AgentServer
) -> None:
    w = Weather(agent_server, "tools-0", name=None)
    forecaster = w.agent
    with budgetspan.run("nameless"):
        forecaster.run_sync("weather?")
    (span,) = [s for s in _own(pydantic_on, "invoke_agent") if A.AGENT_FRAMEWORK in _attrs(s)]
    assert span.name == "invoke_agent forecaster" and _attrs(span)[A.GEN_AI_AGENT_NAME] == "forecaster"


ZERO_CODE = r"""
import json, os
import budgetspan
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

ran = []
provider = OpenAIProvider(base_url=os.environ["AGENT_SERVER_URL"], api_key="test")
agent = Agent(OpenAIChatModel("tools-5", provider=provider), name="weather")

@agent.tool_plain(name="lookup")
def look_up(city: str) -> str:
    ran.append(city)
    return "sunny in " + city

"""


@pytest.mark.skipif(not zero_code.INSTRUMENT.exists(), reason="opentelemetry-instrument not installed")
def test_zero_code_refuses_the_call_after_the_limit(agent_server: AgentServer, tmp_path: Path) -> None:
    zero_code.check_agent_stopped_at_two_model_calls(
        agent_server, tmp_path, ZERO_CODE, 'agent.run_sync("weather?")', "pydantic_ai"
    )


def test_a_tool_past_its_own_cap_is_a_tool_error_for_the_model(
    pydantic_on: Tracing, agent_server: AgentServer
) -> None:
    """ToolRefused (the tool's max_calls) reaches the model as a retry prompt; the run goes on."""
    ran: list[str] = []
    agent = scripted_agent(agent_server, "tools-2", "capped")

    @agent.tool_plain(retries=2)
    def lookup(city: str) -> str:
        """Look a city up."""
        ran.append(city)
        return "sunny"

    with budgetspan.run("capped", tools={"lookup": {"max_calls": 1}}) as run:
        result = agent.run_sync("weather?")
    assert len(ran) == 1 and run.usage.tool_calls == 1
    assert run.outcome is budgetspan.Outcome.SUCCESS and run.exhausted is None
    assert result.output  # the model answered after reading the refusal
    told = [  # a retry prompt or an error tool return, as this pydantic-ai version words it
        str(getattr(part, "content", ""))
        for message in result.all_messages()
        for part in message.parts
        if "Refused: tool 'lookup' was already called 1 of 1 times" in str(getattr(part, "content", ""))
    ]
    assert told  # (the scripted model quotes it back in its answer too)
