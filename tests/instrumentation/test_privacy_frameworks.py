"""No exception text from a framework's run reaches a span or budgetspan's log with content
capture off (issue 15, review11): a tool raising ``LookupError(f"no customer for {email}")`` and a
provider's 400 quoting the prompt, through the real openai-agents, LangGraph, pydantic-ai,
LlamaIndex and LiteLLM against local servers (the scripted agent server; one answering 400 with
the prompt in its message). The exported OTLP bytes and budgetspan's log lines are searched."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

import budgetspan
from budgetspan import config as bs_config
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from tests.conftest import Tracing, instrumentors_on
from tests.http_server import QuietHandler, Serving
from tests.instrumentation.agent_server import AgentServer

SECRET = "zq" + "customer-secret" + "42"  # made at run time: logged frames show source lines


class _Quoting(QuietHandler):
    """A provider's 400 that quotes the request's text around the secret."""

    def do_POST(self) -> None:
        body = self.body().decode()
        at = body.find(SECRET)
        quoted = body[max(0, at - 20) : at + 40] if at >= 0 else body[:200]
        error = {"message": f"Invalid content: {quoted}", "type": "invalid_request_error"}
        self.send_body(json.dumps({"error": error}).encode(), "application/json", status=400)


@pytest.fixture
def rejecting() -> Iterator[str]:
    with Serving(_Quoting) as server:
        yield server.url + "/v1"


@pytest.fixture(autouse=True)
def _capture_off(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    bs_config.refresh_capture_content()
    caplog.set_level(logging.DEBUG)


def lookup(city: str) -> str:
    """Look a customer up."""
    raise LookupError(f"no customer for {SECRET} in {city}")


def _assert_no_secret(tracing: Tracing, caplog: pytest.LogCaptureFixture, names: set[str]) -> None:
    spans = tracing.exporter.get_finished_spans()
    assert names <= {s.name for s in spans}
    assert SECRET.encode() not in encode_spans(spans).SerializeToString()
    ours = [
        r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
        for r in caplog.records
        if r.name.startswith("budgetspan")
    ]
    assert not [line for line in ours if SECRET in line]


def _openai_agents(agent_server: AgentServer, rejecting: str) -> None:
    from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool
    from agents.tracing import set_trace_processors

    from budgetspan.instrumentation.openai_agents import OpenAIAgentsInstrumentor

    set_trace_processors([])
    with instrumentors_on(OpenAIInstrumentor(), OpenAIAgentsInstrumentor()):
        client = openai.AsyncOpenAI(base_url=agent_server.base_url, api_key="t", max_retries=0)
        tool = function_tool(lookup, name_override="lookup")
        agent = Agent(name="oa", tools=[tool], model=OpenAIChatCompletionsModel("tools-1", client))
        with budgetspan.run("framework"):
            Runner.run_sync(agent, "hi")  # the SDK answers the tool's error to the model
        bad = openai.AsyncOpenAI(base_url=rejecting, api_key="t", max_retries=0)
        agent = Agent(name="ob", model=OpenAIChatCompletionsModel("gpt-4o-mini", bad))
        with pytest.raises(openai.BadRequestError), budgetspan.run("framework"):
            Runner.run_sync(agent, f"hello {SECRET}")


def _langgraph(agent_server: AgentServer, rejecting: str) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.prebuilt import ToolNode, create_react_agent

    from budgetspan.instrumentation.langchain import LangChainInstrumentor
    from budgetspan.instrumentation.langgraph import LangGraphInstrumentor

    with instrumentors_on(OpenAIInstrumentor(), LangChainInstrumentor(), LangGraphInstrumentor()):
        llm = ChatOpenAI(model="tools-1", base_url=agent_server.base_url, api_key="t", max_retries=0)
        with pytest.raises(LookupError), budgetspan.run("framework"):
            create_react_agent(llm, [tool(lookup)]).invoke({"messages": [("user", "hi")]})
        handled = ToolNode([tool(lookup)], handle_tool_errors=True)  # the error becomes a message
        with budgetspan.run("framework"):
            create_react_agent(llm, handled).invoke({"messages": [("user", "hi")]})
        bad = ChatOpenAI(model="gpt-4o-mini", base_url=rejecting, api_key="t", max_retries=0)
        with pytest.raises(openai.BadRequestError), budgetspan.run("framework"):
            create_react_agent(bad, [tool(lookup)]).invoke({"messages": [("user", f"hi {SECRET}")]})


def _pydantic_ai(agent_server: AgentServer, rejecting: str) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.exceptions import ModelHTTPError
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    from budgetspan.instrumentation.pydantic_ai import PydanticAIInstrumentor

    with instrumentors_on(OpenAIInstrumentor(), PydanticAIInstrumentor()):
        provider = OpenAIProvider(base_url=agent_server.base_url, api_key="t")
        agent = Agent(OpenAIChatModel("tools-1", provider=provider), name="pa", tools=[lookup])
        with pytest.raises(LookupError), budgetspan.run("framework"):
            agent.run_sync("hi")
        bad = Agent(OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(base_url=rejecting, api_key="t")))
        with pytest.raises(ModelHTTPError), budgetspan.run("framework"):
            bad.run_sync(f"hello {SECRET}")


def _llamaindex(agent_server: AgentServer, rejecting: str) -> None:
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.tools import FunctionTool

    from budgetspan.instrumentation.llamaindex_agents import LlamaIndexAgentsInstrumentor
    from tests.instrumentation.llama_openai_llm import OpenAIChatLLM

    async def run(llm: OpenAIChatLLM, tools: list[Any], text: str) -> None:
        agent = FunctionAgent(name="li", description="d", tools=tools, llm=llm)
        async with budgetspan.run("framework"):
            await agent.run(user_msg=text)

    with instrumentors_on(OpenAIInstrumentor(), LlamaIndexAgentsInstrumentor()):
        tools = [FunctionTool.from_defaults(lookup)]
        asyncio.run(run(OpenAIChatLLM(model="tools-1", base_url=agent_server.base_url), tools, "hi"))
        with pytest.raises(openai.BadRequestError):
            asyncio.run(run(OpenAIChatLLM(model="gpt-4o-mini", base_url=rejecting), [], f"hi {SECRET}"))


def _litellm(agent_server: AgentServer, rejecting: str) -> None:
    import litellm

    from budgetspan.instrumentation.litellm import LiteLLMInstrumentor

    with instrumentors_on(OpenAIInstrumentor(), LiteLLMInstrumentor()):
        messages = [{"role": "user", "content": f"hi {SECRET}"}]
        with pytest.raises(litellm.BadRequestError), budgetspan.run("framework"):
            litellm.completion(model="openai/gpt-4o-mini", api_base=rejecting, api_key="k", messages=messages)


FRAMEWORKS: dict[str, tuple[Callable[[AgentServer, str], None], set[str]]] = {
    "openai_agents": (_openai_agents, {"execute_tool lookup", "chat gpt-4o-mini"}),
    "langgraph": (_langgraph, {"execute_tool lookup", "chat gpt-4o-mini"}),
    "pydantic_ai": (_pydantic_ai, {"execute_tool lookup", "chat gpt-4o-mini"}),
    "llamaindex": (_llamaindex, {"execute_tool lookup", "chat gpt-4o-mini"}),
    "litellm": (_litellm, {"chat gpt-4o-mini"}),
}


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_no_exception_text_from_a_framework_reaches_a_span_or_the_log(
    framework: str,
    tracing: Tracing,
    agent_server: AgentServer,
    rejecting: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    drive, names = FRAMEWORKS[framework]
    drive(agent_server, rejecting)
    _assert_no_secret(tracing, caplog, names | {"invoke_agent framework"})
