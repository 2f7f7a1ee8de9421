"""Splitting a run's wall time over phases: a sweep over interval endpoints, O(n log n).

Each instant of ``[start, end]`` goes to the innermost (deepest) interval covering it; when
several phases cover it at that depth, the instant is split evenly between them; when nothing
covers it, it goes to ``other``. So the phase times add up to the run's time exactly.

Nothing is recomputed per instant: for each depth ``d`` the sweep keeps ``share[d]``, the time
each phase active at ``d`` has earned so far while ``d`` was the deepest level (a segment of
length ``t`` with ``k`` phases active there adds ``t / k``). A phase active at ``d`` from ``t0`` to
``t1`` earns ``share[d](t1) - share[d](t0)``. The deepest active level comes from a heap with lazy
deletion. Sorting the 2n endpoints dominates: O(n log n) for n intervals, however much they overlap.
"""

from __future__ import annotations

import heapq
from collections import defaultdict

OTHER = "other"

Interval = tuple[int, int, int, str]  # (start ns, end ns, depth >= 1, phase)


def phase_times(start: int, end: int, intervals: list[Interval]) -> dict[str, float]:
    """Seconds per phase over ``[start, end]`` (see the module's docstring)."""
    if end <= start:
        return {}
    side_by_side = _one_after_another(start, end, intervals)
    if side_by_side is not None:
        return side_by_side
    marks: list[tuple[int, int, int, str]] = []  # (time, -1 end / +1 start, depth, phase)
    for s, e, depth, phase in intervals:
        s, e = max(s, start), min(e, end)
        if e > s:
            marks.append((s, 1, depth, phase))
            marks.append((e, -1, depth, phase))
    marks.sort(key=lambda m: (m[0], m[1]))  # ends before starts at the same instant
    out: dict[str, float] = defaultdict(float)
    count: dict[tuple[int, str], int] = {}  # intervals active per (depth, phase)
    kinds: dict[int, int] = defaultdict(int)  # phases active per depth
    share: dict[int, float] = defaultdict(float)  # see the docstring
    since: dict[tuple[int, str], float] = {}  # share[depth] when (depth, phase) became active
    deepest: list[int] = []  # -depth for every depth with kinds > 0 (and stale ones, dropped lazily)
    t = start
    for when, delta, depth, phase in marks:
        if when > t:
            while deepest and kinds[-deepest[0]] == 0:
                heapq.heappop(deepest)
            if deepest:
                d = -deepest[0]
                k = kinds[d]
                # float first: compiled (mypyc), int / int is two doubles divided; pure, the exact
                # quotient rounded once (past 2**53 ns they differed in the last bit)
                share[d] += (when - t) if k == 1 else float(when - t) / k
            else:
                out[OTHER] += when - t
            t = when
        key = (depth, phase)
        n = count.get(key, 0)
        if delta > 0:
            if n == 0:
                since[key] = share[depth]
                kinds[depth] += 1
                if kinds[depth] == 1:
                    heapq.heappush(deepest, -depth)
            count[key] = n + 1
        elif n == 1:
            del count[key]
            out[phase] += share[depth] - since.pop(key)
            kinds[depth] -= 1
        else:
            count[key] = n - 1
    if end > t:
        out[OTHER] += end - t
    return {p: ns / 1e9 for p, ns in out.items() if ns > 0}


def _one_after_another(start: int, end: int, intervals: list[Interval]) -> dict[str, float] | None:
    """The common case, in one pass: top-level intervals that do not overlap (each one's time is
    its own). None when some overlap or nest: the sweep is needed."""
    out: dict[str, float] = defaultdict(float)
    covered = 0
    last_end = start
    for s, e, depth, phase in sorted(intervals):
        if depth != 1:
            return None
        s, e = max(s, start), min(e, end)
        if e <= s:
            continue
        if s < last_end:
            return None
        out[phase] += e - s
        covered += e - s
        last_end = e
    if end - start > covered:
        out[OTHER] += end - start - covered
    return {p: ns / 1e9 for p, ns in out.items() if ns > 0}


__all__ = ["OTHER", "Interval", "phase_times"]
