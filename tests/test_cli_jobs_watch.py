"""``budgetspan jobs watch`` prints a job's milestones: review11."""

from __future__ import annotations

import pytest

from budgetspan.cli import main
from budgetspan.jobs.store import JobStore
from tests.accounting.redis_server import redis


def test_watch_escapes_control_characters_in_what_it_prints(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A milestone's label, and the end's explanation (with content capture on it quotes the
    error, which may quote a provider's text), were printed raw: an escape sequence cleared the
    watcher's terminal or retitled its window. Escaped now, as ``budgetspan report`` does."""
    store = JobStore(redis.Redis.from_url(redis_url))
    store.publish("j-esc", {"kind": "milestone", "label": "Step \x1b[2J1", "elapsed_s": 0.5})
    store.publish("j-esc", {"kind": "end", "outcome": "failure", "label": "Failed: E: \x1b]0;owned\x07"})
    code = main(["jobs", "watch", "j-esc", "--redis", redis_url, "--timeout", "5"])
    out = capsys.readouterr().out
    assert code == 1
    assert "\x1b" not in out and "\x07" not in out
    assert "Step \\x1b[2J1" in out and "failure: Failed: E: \\x1b]0;owned\\x07" in out
