"""Review: a run's wall-clock limit holds on the Redis ledger as in memory, although a reservation
asks the server's clock only when this process's reckoning puts the deadline near."""

from __future__ import annotations

import time

import pytest

from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, Ledger, LedgerRefused, Mode


def test_the_time_kept_for_the_final_answer_ends_other_calls_early(ledger: Ledger) -> None:
    """``reserve_for_final={"max_wall_clock_s": 2}`` of 3 s: a call outside the final phase is
    refused after 1 s (the in-memory rule); on Redis the process's reckoning of when to ask the
    server's clock must count the time kept, or such calls pass until ~2 s."""
    ledger.open("r", Budget(max_wall_clock_s=3, reserve_for_final={"max_wall_clock_s": 2}), Mode.ENFORCE)
    ledger.reserve("r", CallKind.MODEL)
    time.sleep(1.2)
    with pytest.raises(LedgerRefused) as refused:
        ledger.reserve("r", CallKind.MODEL)
    assert refused.value.refusal.reason == "max_wall_clock_s"
    ledger.reserve("r", CallKind.MODEL, final=True)  # the final answer has the whole 3 s
