"""The agent-framework instrumentors are skipped quietly when their library is absent, and a
project's own ``agents`` package is not taken for the OpenAI Agents SDK."""

from __future__ import annotations

import pytest

from budgetspan import instrumentation
from tests.instrumentation.hidden_libraries import preamble, run_script

_HIDDEN_SCRIPT = (
    preamble(["agents", "pydantic_ai", "langgraph"])
    + """
from budgetspan.instrumentation import available_instrumentors
found = sorted(type(i).__name__ for i in available_instrumentors())
patched = {}
for module, cls in (
    ("openai_agents", "OpenAIAgentsInstrumentor"),
    ("pydantic_ai", "PydanticAIInstrumentor"),
    ("langgraph", "LangGraphInstrumentor"),
):
    inst = getattr(importlib.import_module("budgetspan.instrumentation." + module), cls)()
    inst.instrument()  # the distribution's metadata is still there: this reaches _instrument
    patched[cls] = len(getattr(inst, "_patched", []))
    inst.uninstrument()
budgetspan.configure(instrument=True)
print(json.dumps({"found": found, "patched": patched, "warnings": warnings, "errors": errors}))
"""
)


def test_each_framework_instrumentor_is_skipped_quietly_without_its_library() -> None:
    report, _ = run_script(_HIDDEN_SCRIPT)
    frameworks = {"OpenAIAgentsInstrumentor", "PydanticAIInstrumentor", "LangGraphInstrumentor"}
    assert not frameworks & set(report["found"])
    assert report["patched"] == dict.fromkeys(frameworks, 0)
    assert report["warnings"] == [] and report["errors"] == []


def test_an_agents_package_without_the_sdk_distribution_is_not_the_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert instrumentation.library_present("agents")  # the SDK is installed here
    monkeypatch.setitem(instrumentation._DISTRIBUTION_OF, "agents", "no-such-distribution-budgetspan")
    assert not instrumentation.library_present("agents")  # e.g. a project's own agents/ package


def test_the_framework_instrumentors_are_registered_for_opentelemetry_instrument() -> None:
    from importlib.metadata import entry_points

    found = {e.name: e.value for e in entry_points(group="opentelemetry_instrumentor")}
    assert (
        found["budgetspan_openai_agents"]
        == "budgetspan.instrumentation.openai_agents:OpenAIAgentsInstrumentor"
    )
    assert found["budgetspan_pydantic_ai"] == "budgetspan.instrumentation.pydantic_ai:PydanticAIInstrumentor"
    assert found["budgetspan_langgraph"] == "budgetspan.instrumentation.langgraph:LangGraphInstrumentor"
    assert (
        found["budgetspan_llamaindex_agents"]
        == "budgetspan.instrumentation.llamaindex_agents:LlamaIndexAgentsInstrumentor"
    )
