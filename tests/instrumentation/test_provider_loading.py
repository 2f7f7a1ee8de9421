"""The Bedrock and Mistral instrumentors load the way a program meets them: registered as
``opentelemetry_instrumentor`` entry points, and patched by ``instrument_all`` when the program
imports boto3 / mistralai after budgetspan was set up (mistralai >= 2 is a namespace package,
where OpenLLMetry's instrumentor does not load at all)."""

from __future__ import annotations

from importlib.metadata import entry_points

from tests.instrumentation.hidden_libraries import run_script


def test_entry_points_name_the_instrumentors() -> None:
    found = {ep.name: ep for ep in entry_points(group="opentelemetry_instrumentor")}
    for name, cls in (
        ("budgetspan_bedrock", "BedrockInstrumentor"),
        ("budgetspan_mistral", "MistralInstrumentor"),
    ):
        assert found[name].load().__name__ == cls


_SCRIPT = """
import json
from opentelemetry.sdk.trace import TracerProvider
from budgetspan.instrumentation import instrument_all

done = instrument_all(TracerProvider(), only=["bedrock", "mistral"])
import boto3
from mistralai.client import Mistral
import botocore.client
from mistralai.client.chat import Chat
from mistralai.client.embeddings import Embeddings
print(json.dumps({
    "done": done,
    "bedrock": hasattr(botocore.client.BaseClient._make_api_call, "__wrapped__"),
    "mistral": [hasattr(m, "__wrapped__") for m in (Chat.complete, Chat.stream_async, Embeddings.create)],
}))
"""


def test_patched_when_the_program_imports_the_sdk_later() -> None:
    result, stderr = run_script(_SCRIPT)
    assert result == {"done": ["bedrock", "mistral"], "bedrock": True, "mistral": [True, True, True]}
    assert "internal error" not in stderr and "cannot load" not in stderr
