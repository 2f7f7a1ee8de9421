"""InMemoryLedger reserve + commit of one model call, wall clock (best of 7 x 20,000).

    PYTHONPATH=src .venv/bin/python bench/bench_ledger_reserve.py LABEL

Used to compare two checkouts (set PYTHONPATH to each one's src) on this shared machine; the budget
has a limit of every kind, none reachable, and no reserve for the final answer.
"""

from __future__ import annotations

import sys
import timeit

from every_limit import EVERY_LIMIT

from budgetspan.accounting.ledger import CallKind, Mode, Spend
from budgetspan.accounting.memory import InMemoryLedger


def main() -> None:
    led = InMemoryLedger()
    led.open("r", EVERY_LIMIT, Mode.ENFORCE)
    spend = Spend(100, 20, cost_usd=0.001)

    def op() -> None:
        r = led.reserve(
            "r", CallKind.MODEL, worst_case_cost=0.01, worst_case_tokens=100, worst_case_input_tokens=100
        )
        led.commit(r, spend)

    best = min(timeit.repeat(op, number=20000, repeat=7)) / 20000 * 1e6
    label = sys.argv[1] if len(sys.argv) > 1 else "this checkout"
    print(f"{label}: reserve + commit {best:.2f} us")


if __name__ == "__main__":
    main()
