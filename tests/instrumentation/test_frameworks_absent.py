"""The agent-framework instrumentors are skipped quietly when their library is absent, and a
project's own ``agents`` package is not taken for the OpenAI Agents SDK."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from budgetspan import instrumentation
from tests.conftest import REPO

_HIDDEN_SCRIPT = r"""
import importlib, json, logging, sys
for name in ("agents", "pydantic_ai", "langgraph"):
    sys.modules[name] = None  # import fails exactly as if the package were not installed
records = []
class Keep(logging.Handler):
    def emit(self, record):
        if "spans go nowhere" not in record.getMessage():  # (this script sets up no exporter)
            records.append(record.getMessage())
logging.getLogger().addHandler(Keep(level=logging.WARNING))
import budgetspan
from budgetspan.instrumentation import available_instrumentors
errors = []
class Count:
    def on_internal_error(self, where):
        errors.append(where)
budgetspan.add_listener(Count())
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
print(json.dumps({"found": found, "patched": patched, "warnings": records, "errors": errors}))
"""


def test_each_framework_instrumentor_is_skipped_quietly_without_its_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _HIDDEN_SCRIPT], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    frameworks = {"OpenAIAgentsInstrumentor", "PydanticAIInstrumentor", "LangGraphInstrumentor"}
    assert not frameworks & set(report["found"])
    assert report["patched"] == dict.fromkeys(frameworks, 0)
    assert report["warnings"] == [] and report["errors"] == []
    assert "Traceback" not in out.stderr


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
