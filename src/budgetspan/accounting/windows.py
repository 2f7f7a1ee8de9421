"""Time windows for scope budgets: a fixed hour, day or month (a calendar one, in a time zone), a
rolling period from first use, or no window at all (the scope's whole life).

A fixed window has a label (``2026-12-05`` for a day) that names its ledger record, so every
process agrees on it and a new window is a new, empty record: the budget resets by itself. The
clock is ``windows.now`` (Unix seconds), which tests replace with ``set_clock``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PERIODS = ("hour", "day", "month")
#: How long a rolling window lasts, by period (a rolling month is 30 days).
ROLLING_S = {"hour": 3600.0, "day": 86_400.0, "month": 30 * 86_400.0}
#: How long a scope with no window is kept after its last use.
IDLE_TTL_S = 7 * 86_400

_clock: Callable[[], float] = time.time


def now() -> float:
    """The scope clock, in Unix seconds."""
    return _clock()


def set_clock(clock: Callable[[], float] | None) -> None:
    """Replace the scope clock (tests); None restores ``time.time``."""
    global _clock
    _clock = clock or time.time


@dataclass(frozen=True)
class Bounds:
    """One window: its label (part of the record's key), its start and end (Unix seconds)."""

    label: str
    start: float
    end: float | None


@dataclass(frozen=True)
class Window:
    """``period``: hour, day, month or None (no window); ``rolling``: from first use, not the
    calendar; ``tz``: the time zone of a calendar window."""

    period: str | None = None
    rolling: bool = False
    tz: str = "UTC"
    _cache: list[Bounds] = field(default_factory=list, compare=False, hash=False, repr=False)
    _next: list[Bounds] = field(default_factory=list, compare=False, hash=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.period is not None and self.period not in PERIODS:
            raise ValueError(f"window {self.period!r}: expected one of {', '.join(PERIODS)} (or none)")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"window time zone {self.tz!r}: not a known IANA zone") from None

    @property
    def adjective(self) -> str:
        """'daily', 'hourly', 'monthly', 'rolling 24 h' ... for the explanation."""
        if self.period is None:
            return "total"
        if self.rolling:
            return {"hour": "rolling 1-hour", "day": "rolling 24-hour", "month": "rolling 30-day"}[
                self.period
            ]
        return {"hour": "hourly", "day": "daily", "month": "monthly"}[self.period]

    @property
    def ttl_s(self) -> int | None:
        """A rolling window's record lives this long from its first use (Redis expiry)."""
        return int(ROLLING_S[self.period]) if self.rolling and self.period else None

    def bounds(self, at: float | None = None) -> Bounds:
        """The fixed window ``at`` falls in (now by default); cached until it ends."""
        t = now() if at is None else at
        if self.period is None:
            return Bounds("all", 0.0, None)
        if self.rolling:
            return Bounds("rolling", t, t + ROLLING_S[self.period])
        return self._calendar_at(self._cache, t)

    def following(self, bounds: Bounds) -> Bounds:
        """The calendar window after ``bounds`` (the latest asked kept apart from ``bounds``')."""
        return self._calendar_at(self._next, bounds.end if bounds.end is not None else bounds.start)

    def _calendar_at(self, slot: list[Bounds], t: float) -> Bounds:
        """The calendar window ``t`` falls in, from ``slot`` (the one last found) while it holds."""
        with self._lock:
            cached = slot[0] if slot else None
        if cached is not None and cached.start <= t < (cached.end or 0.0):
            return cached
        found = self._calendar(t)
        with self._lock:
            slot[:] = [found]
        return found

    def _calendar(self, t: float) -> Bounds:
        zone = ZoneInfo(self.tz)
        local = datetime.fromtimestamp(t, zone)
        if self.period == "hour":
            start = local.replace(minute=0, second=0, microsecond=0)
            label = start.strftime("%Y-%m-%dT%H")
            if start.fold:  # the hour a DST change repeats: its second pass is a window of its own
                label += start.strftime("%z")
            return Bounds(label, start.timestamp(), start.timestamp() + 3600.0)
        elif self.period == "day":
            start = local.replace(hour=0, minute=0, second=0, microsecond=0)
            end = start + timedelta(days=1)  # wall-clock arithmetic: 23 or 25 h at DST changes
            label = start.strftime("%Y-%m-%d")
        else:
            start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            end = (start + timedelta(days=32)).replace(day=1)
            label = start.strftime("%Y-%m")
        return Bounds(label, start.timestamp(), end.timestamp())

    def resets(self, end: float | None) -> str:
        """'resets at 00:00 UTC', 'resets on 2027-01-01 at 00:00 UTC', '' without a window."""
        if end is None:
            return ""
        local = datetime.fromtimestamp(end, ZoneInfo(self.tz))
        here = datetime.fromtimestamp(now(), ZoneInfo(self.tz))
        when = local.strftime("%H:%M")
        if local.date() - here.date() > timedelta(days=1):
            return f"resets on {local:%Y-%m-%d} at {when} {self.tz}"
        return f"resets at {when} {self.tz}"


NO_WINDOW = Window()


def parse_window(text: str | None, tz: str = "UTC") -> Window:
    """'day', 'hour', 'month', 'rolling-day' (or 'rolling day'), '' / 'none' for no window."""
    raw = (text or "").strip().lower().replace("_", "-").replace(" ", "-")
    if raw in ("", "none"):
        return Window(None, tz=tz)
    rolling = raw.startswith("rolling-")
    period = raw.removeprefix("rolling-")
    if period not in PERIODS:
        raise ValueError(
            f"window {text!r}: expected hour, day, month, rolling-hour, rolling-day, rolling-month or none"
        )
    return Window(period, rolling, tz)
