"""Fixtures for the provider instrumentations: one local LLM server per session (Gemini REST and
OpenAI-compatible), reset before each test, and budgetspan's instrumentors for each library.
For the agent frameworks: one scripted chat server per session (chat_server.py: tool rounds and
handoffs decided from each request), its log filtered by a model name unique to the test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.instrumentation.chat_server import ChatServer
from tests.instrumentation.llm_server import LLMServer

# LiteLLM fetches its price map from the network at import unless told to use its bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(scope="session")
def llm_server_session() -> Iterator[LLMServer]:
    server = LLMServer().start()
    yield server
    server.stop()


@pytest.fixture
def llm_server(llm_server_session: LLMServer) -> LLMServer:
    """The session's server with its default answers and no request recorded yet."""
    llm_server_session.reset()
    return llm_server_session


@pytest.fixture
def genai_instrumented(tracing: Any) -> Iterator[Any]:
    """The ``tracing`` fixture with budgetspan's google-genai instrumentor on."""
    from budgetspan.instrumentation.google_genai import GoogleGenAIInstrumentor

    GoogleGenAIInstrumentor().instrument()
    try:
        yield tracing
    finally:
        GoogleGenAIInstrumentor().uninstrument()


@pytest.fixture
def litellm_instrumented(tracing: Any) -> Iterator[Any]:
    """The ``tracing`` fixture with budgetspan's LiteLLM and OpenAI instrumentors on (LiteLLM
    reaches some providers through the OpenAI SDK: both are on, as in a real program)."""
    from budgetspan.instrumentation.litellm import LiteLLMInstrumentor
    from budgetspan.instrumentation.openai import OpenAIInstrumentor

    OpenAIInstrumentor().instrument()
    LiteLLMInstrumentor().instrument()
    try:
        yield tracing
    finally:
        LiteLLMInstrumentor().uninstrument()
        OpenAIInstrumentor().uninstrument()


@pytest.fixture(scope="session")
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer().start()
    yield server
    server.stop()


@pytest.fixture
def tag() -> str:
    """A model-name suffix unique to the test: the chat server's log is filtered by model name."""
    return uuid.uuid4().hex[:8]
