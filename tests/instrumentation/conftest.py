"""Fixtures for the provider instrumentations: local servers per session (Gemini REST and
OpenAI-compatible; a loopback server that counts requests), reset before each test, fake AWS
credentials (never a real endpoint), the scripted agent-framework servers (agent_server.py; chat_server.py with tool rounds
and handoffs, its log filtered by a model name unique to the test), and budgetspan's
instrumentors for each library."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import instrumentors_on
from tests.http_server import Serving
from tests.instrumentation.agent_server import AgentServer
from tests.instrumentation.chat_server import ChatServer
from tests.instrumentation.llm_server import LLMServer
from tests.instrumentation.local_server import LocalServer

# LiteLLM fetches its price map from the network at import unless told to use its bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _session_server(server_class: type[Serving], name: str) -> Any:
    """The session fixture ``name``: one ``server_class`` server, started for the whole session."""

    def started() -> Iterator[Serving]:
        with server_class() as server:
            yield server

    return pytest.fixture(scope="session", name=name)(started)


llm_server_session = _session_server(LLMServer, "llm_server_session")
_server = _session_server(LocalServer, "_server")
#: The scripted OpenAI-compatible server (``tools-N`` models) of agent_server.py.
agent_server = _session_server(AgentServer, "agent_server")
chat_server = _session_server(ChatServer, "chat_server")


@pytest.fixture
def llm_server(llm_server_session: LLMServer) -> LLMServer:
    """The session's server with its default answers and no request recorded yet."""
    return llm_server_session.reset()


@pytest.fixture
def server(_server: LocalServer) -> LocalServer:
    """The session's loopback server, with no answers scripted and no requests recorded."""
    return _server.reset()


@pytest.fixture
def genai_instrumented(tracing: Any) -> Iterator[Any]:
    """The ``tracing`` fixture with budgetspan's google-genai instrumentor on."""
    from budgetspan.instrumentation.google_genai import GoogleGenAIInstrumentor

    with instrumentors_on(GoogleGenAIInstrumentor()):
        yield tracing


@pytest.fixture
def litellm_instrumented(tracing: Any) -> Iterator[Any]:
    """The ``tracing`` fixture with budgetspan's LiteLLM and OpenAI instrumentors on (LiteLLM
    reaches some providers through the OpenAI SDK: both are on, as in a real program)."""
    from budgetspan.instrumentation.litellm import LiteLLMInstrumentor
    from budgetspan.instrumentation.openai import OpenAIInstrumentor

    with instrumentors_on(OpenAIInstrumentor(), LiteLLMInstrumentor()):
        yield tracing


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Fake credentials and a region from the environment; no profile, config file or instance
    metadata is read, so nothing can reach a real AWS account."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for key in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_BEDROCK_RUNTIME"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def bedrock(tracing: Any, aws_env: None) -> Iterator[Any]:
    """``tracing`` with budgetspan's Bedrock instrumentor on (and fake AWS credentials)."""
    from budgetspan.instrumentation.bedrock import BedrockInstrumentor

    with instrumentors_on(BedrockInstrumentor()):
        yield tracing


@pytest.fixture
def mistral(tracing: Any) -> Iterator[Any]:
    """``tracing`` with budgetspan's Mistral instrumentor on."""
    from budgetspan.instrumentation.mistral import MistralInstrumentor

    with instrumentors_on(MistralInstrumentor()):
        yield tracing


class _InternalErrors:
    def __init__(self) -> None:
        self.where: list[str] = []

    def on_internal_error(self, where: str) -> None:
        self.where.append(where)


@pytest.fixture(autouse=True)
def no_internal_errors(request: pytest.FixtureRequest) -> Iterator[_InternalErrors]:
    """A bug in our own code is swallowed so the user's call goes on: here it fails the test
    (unless the test injects one on purpose: ``@pytest.mark.internal_errors_expected``)."""
    from budgetspan import events

    seen = _InternalErrors()
    events.add_listener(seen)
    yield seen
    events.remove_listener(seen)
    if request.node.get_closest_marker("internal_errors_expected") is None:
        assert seen.where == [], f"budgetspan internal errors: {seen.where}"


@pytest.fixture
def tag() -> str:
    """A model-name suffix unique to the test: the chat server's log is filtered by model name."""
    return uuid.uuid4().hex[:8]
