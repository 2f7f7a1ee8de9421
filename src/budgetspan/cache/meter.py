"""What a computation cost: the model calls made while it ran, summed from their call records.

The cache measures a miss so that every later hit can say what it saved. A context variable
marks the computation; a listener (installed on first use, so a program without a cache pays
nothing) adds each finished model call's cost to it. A call whose cost is unknown (unpriced,
usage never reported) makes the whole figure unknown: never counted as zero.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import TYPE_CHECKING

from budgetspan import events

if TYPE_CHECKING:
    from budgetspan.events import CallRecord


class Meter:
    __slots__ = ("calls", "cost_usd", "known")

    def __init__(self) -> None:
        self.cost_usd = 0.0
        self.calls = 0
        self.known = True

    @property
    def cost(self) -> float | None:
        return self.cost_usd if self.known else None


_current: ContextVar[tuple[Meter, ...]] = ContextVar("budgetspan_cache_meters", default=())


class _Listener:
    """Adds each model call to every computation it ran inside (a cached call within a cached call
    counts toward both)."""

    def on_call_end(self, record: CallRecord) -> None:
        meters = _current.get()
        if not meters or record.kind != "model":
            return
        cost = record.cost_usd
        if cost is None and record.spend is not None:
            cost = record.spend.cost_usd  # an estimate charged for unreported usage
        for m in meters:
            m.calls += 1
            if cost is None:
                m.known = False
            else:
                m.cost_usd += cost


_listener = _Listener()


def start() -> tuple[Meter, Token[tuple[Meter, ...]]]:
    """Measure from here on, in this context (and the threads and tasks it starts)."""
    events.add_listener(_listener)  # (again if it was removed; repeats are ignored)
    meter = Meter()
    return meter, _current.set((*_current.get(), meter))


def stop(token: Token[tuple[Meter, ...]]) -> None:
    _current.reset(token)


__all__ = ["Meter", "start", "stop"]
