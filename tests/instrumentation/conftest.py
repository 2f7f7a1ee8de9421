"""Fixtures for the agent-framework tests: one scripted OpenAI-compatible server per session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.instrumentation.chat_server import ChatServer


@pytest.fixture(scope="session")
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer().start()
    yield server
    server.stop()


@pytest.fixture
def tag() -> str:
    """A model-name suffix unique to the test: the server's log is filtered by model name."""
    return uuid.uuid4().hex[:8]
