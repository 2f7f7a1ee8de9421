"""The report's bounds that its command line shows as defaults, in a module of their own so that
building the command line imports none of the reading and analysis modules (``native`` picks the
compiled or the pure ones afterwards)."""

from __future__ import annotations

WINDOW = 20_000  # spans read after a run's run span (or its trace's root) before it is finished
MAX_SPANS_IN_FLIGHT = 250_000
MAX_TIMELINES = 2_000  # runs whose timeline is kept (the HTML report's per-run pages; --html)

__all__ = ["MAX_SPANS_IN_FLIGHT", "MAX_TIMELINES", "WINDOW"]
