"""The warning for a model without a known price (calls/pricing.py): review11."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import budgetspan
from budgetspan.calls import pricing


def test_unpriced_model_warnings_are_bounded_and_their_names_escaped(
    tracing: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model name is the caller's (a proxy passes its users' ``model`` through): 2,000 distinct
    unpriced names under a dollar limit were 2,000 warnings and 2,000 names held for ever, and a
    name holding a newline wrote a line of its own into the application's log."""
    monkeypatch.setattr(pricing, "_warned_unpriced", set())
    caplog.set_level(logging.WARNING, logger="budgetspan")
    with budgetspan.run("proxy", max_cost_usd=1.0) as run:
        for i in range(2000):
            pricing.warn_unpriced_once("acme", f"m-{i}\nCRITICAL forged: admin logged in", run)
    said = [r.getMessage() for r in caplog.records if r.name == pricing.log.name]
    assert (
        1 < len(said) <= pricing.MOST_WARNED + 1 and len(pricing._warned_unpriced) <= pricing.MOST_WARNED + 1
    )
    assert not [m for m in said if "\n" in m]
    assert "m-0\\nCRITICAL" in said[0]
