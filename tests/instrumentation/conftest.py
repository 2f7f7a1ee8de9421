"""Fixtures for the agent-framework tests: one scripted model server per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.instrumentation.agent_server import AgentServer


@pytest.fixture(scope="session")
def agent_server() -> Iterator[AgentServer]:
    """The scripted OpenAI-compatible server (``tools-N`` models), shared by the whole session."""
    server = AgentServer().start()
    yield server
    server.stop()
