"""Zero-code: a LangGraph agent and a LlamaIndex agent under ``opentelemetry-instrument`` with only
``BUDGETSPAN_BUDGET`` set. Three tool rounds are scripted. ``max_model_calls=2`` must let exactly
two requests reach the server and refuse the third model call; ``max_tool_calls=1`` must let one
tool body run and refuse the second tool call. Each refusal is a ``BudgetExhausted`` raised out of
the framework (the agent takes no further turn), ``.partial`` holding the tool results.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.instrumentation import zero_code
from tests.instrumentation.functional_api_app import FUNCTIONAL_API_APP

COMMON = r"""
import json
import budgetspan
from tests.instrumentation.chat_server import ChatServer

server = ChatServer().start()
MODEL = "fake-r3-zero-code"
ran = []
turns = []


def report(refused):
    print("RESULT " + json.dumps({
        "requests": len(server.for_model(MODEL)), "ran": ran, "refused": refused, "turns": len(turns),
    }), flush=True)
"""

LANGGRAPH = r"""
import warnings
warnings.filterwarnings("ignore")
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.prebuilt import ToolNode, create_react_agent


@tool
def get_weather(city: str) -> str:
    "Weather for a city."
    ran.append(city)
    return "sunny in " + city


def before_model(state):
    turns.append(1)
    return {"llm_input_messages": state["messages"]}


llm = ChatOpenAI(model=MODEL, base_url=server.base_url, api_key="test", max_retries=0)
agent = create_react_agent(
    llm, ToolNode([get_weather], handle_tool_errors=True), name="weather_agent", pre_model_hook=before_model
)
try:
    agent.invoke({"messages": [("user", "weather in Paris?")]})
    report(None)
except budgetspan.BudgetExhausted as e:
    report({"reason": e.reason, "tool_results": len(e.partial["tool_results"])})
"""

LLAMAINDEX = r"""
import asyncio
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.tools import FunctionTool
from tests.instrumentation.llama_openai_llm import OpenAIChatLLM


class CountingLLM(OpenAIChatLLM):
    def _request(self, messages, kwargs):
        turns.append(1)
        return super()._request(messages, kwargs)


def get_weather(city: str) -> str:
    "Weather for a city."
    ran.append(city)
    return "sunny in " + city


agent = FunctionAgent(
    name="weather_agent", description="weather", tools=[FunctionTool.from_defaults(get_weather)],
    llm=CountingLLM(model=MODEL, base_url=server.base_url),
)


async def main():
    try:
        await agent.run(user_msg="weather in Paris?")
        report(None)
    except budgetspan.BudgetExhausted as e:
        report({"reason": e.reason, "tool_results": len(e.partial["tool_results"])})


asyncio.run(main())
"""


# budget -> (requests, tool bodies run, tool results in .partial, turns begun)
EXPECTED = {
    "max_model_calls=2": (2, ["Paris", "Paris"], 2, 3),
    "max_tool_calls=1": (2, ["Paris"], 1, 2),
}


@pytest.mark.skipif(not zero_code.INSTRUMENT.exists(), reason="opentelemetry-instrument not installed")
@pytest.mark.parametrize("budget", list(EXPECTED))
@pytest.mark.parametrize("framework", ["langgraph", "llamaindex"])
def test_zero_code_refuses_the_call_past_the_limit(tmp_path: Path, framework: str, budget: str) -> None:
    keep = ("langgraph", "langchain") if framework == "langgraph" else ("llamaindex_agents",)
    script = COMMON + (LANGGRAPH if framework == "langgraph" else LLAMAINDEX)
    proc = zero_code.run(
        tmp_path, script, {"BUDGETSPAN_BUDGET": budget}, sdk=False, keep=keep, pythonpath=(str(REPO),)
    )
    result = zero_code.result(proc)
    requests, ran, tool_results, turns = EXPECTED[budget]
    assert result["requests"] == requests  # nothing past the limit left the process
    assert result["ran"] == ran
    assert result["refused"] == {"reason": budget.split("=")[0], "tool_results": tool_results}
    # the refusal was raised out of the framework: no turn began after it (a turn that began
    # after a swallowed tool refusal would be refused at its model call, one turn too late)
    assert result["turns"] == turns


FUNCTIONAL_API = (
    "import json\nimport budgetspan\n"
    + FUNCTIONAL_API_APP
    + """
print("RESULT " + json.dumps({"reason": run_flow(), "attempts": attempts}))
"""
)


@pytest.mark.skipif(not zero_code.INSTRUMENT.exists(), reason="opentelemetry-instrument not installed")
def test_zero_code_instruments_a_functional_api_app(tmp_path: Path) -> None:
    """An app of ``@entrypoint``/``@task`` imports ``langgraph.func``, never ``langgraph.graph``:
    LangGraph is instrumented at that import too, so a task's RetryPolicy does not retry a refusal."""
    proc = zero_code.run(
        tmp_path,
        FUNCTIONAL_API,
        {"BUDGETSPAN_BUDGET": "max_tool_calls=1"},
        sdk=False,
        keep=("langgraph", "langchain"),
        pythonpath=(str(REPO / "src"), str(REPO)),
    )
    result = zero_code.result(proc)
    assert result == {"reason": "max_tool_calls", "attempts": ["paris", "oslo"]}  # oslo: once
