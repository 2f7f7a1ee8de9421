"""Fixtures of the accounting tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.accounting.redis_server import start_redis, stop


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for the test module (``needs_redis_server`` marks the tests using it)."""
    proc, port = start_redis(tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    stop(proc)
