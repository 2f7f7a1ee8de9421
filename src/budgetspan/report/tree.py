"""Parent lookups among spans: which phase blocks enclose a span, and its ancestors.

Spans are indexed by trace, then span id. Walks go up the parent links; parents are followed
until a span has no (known) parent or a link points back into the walk (ids from a hostile file
can form a cycle). ``phase_depth`` remembers what it computed, so the depths of n spans cost O(n)
lookups in all, however deep the tree.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from budgetspan.report.otlp import SpanRec


class SpanIndex:
    """Lookups in ``traces`` (trace id -> span id -> span); the mapping may change between uses
    (the streaming report adds and removes spans), so make one index per run analysed."""

    def __init__(self, traces: Mapping[str, Mapping[str, SpanRec]]) -> None:
        self.traces = traces
        self._depth: dict[SpanRec, int] = {}  # by identity: a span is one object
        self._under: dict[SpanRec, bool] = {}  # spans that are not phase spans: under_phase

    @classmethod
    def of(cls, spans: Iterable[SpanRec]) -> SpanIndex:
        traces: dict[str, dict[str, SpanRec]] = {}
        for s in spans:
            traces.setdefault(s.trace_id, {})[s.span_id] = s
        return cls(traces)

    def get(self, trace_id: str, span_id: str | None) -> SpanRec | None:
        if span_id is None:
            return None
        spans = self.traces.get(trace_id)
        return spans.get(span_id) if spans is not None else None

    def parent(self, span: SpanRec) -> SpanRec | None:
        return self.get(span.trace_id, span.parent_id)

    def ancestors(self, span: SpanRec) -> Iterator[SpanRec]:
        """Parent, grandparent, ... (stops at a cycle). A parent is always in its child's trace."""
        spans = self.traces.get(span.trace_id)
        if spans is None or span.parent_id is None:
            return
        seen = {span.span_id}
        node = spans.get(span.parent_id)
        while node is not None and node.span_id not in seen:
            yield node
            seen.add(node.span_id)
            node = spans.get(node.parent_id) if node.parent_id is not None else None

    def under_phase(self, span: SpanRec) -> bool:
        """Whether a phase span encloses ``span``: ``phase_depth(span) > 0``, found at the first
        enclosing phase span (usually the parent) instead of the root."""
        memo = self._under
        spans = self.traces.get(span.trace_id)
        parent_id = span.parent_id
        if spans is None or parent_id is None:
            return False
        node = spans.get(parent_id)
        if node is None:
            return False
        if parent_id != span.span_id:  # the usual answers, from the parent alone
            if node.is_phase:
                return True
            known = memo.get(node)
            if known is not None:
                return known
        chain = []  # spans walked through, not phase spans, answer unknown yet
        on_chain = {span.span_id}
        answer = False
        while node is not None and node.span_id not in on_chain:
            if node.is_phase:
                answer = True
                break
            known = memo.get(node)
            if known is not None:
                answer = known
                break
            chain.append(node)
            on_chain.add(node.span_id)
            node = spans.get(node.parent_id) if node.parent_id is not None else None
        for n in chain:
            memo[n] = answer
        return answer

    def phase_depth(self, span: SpanRec) -> int:
        """How many phase spans enclose ``span`` (itself excluded)."""
        memo = self._depth
        known = memo.get(span)
        if known is not None:
            return known
        spans = self.traces.get(span.trace_id) or {}
        parent_id = span.parent_id
        node = spans.get(parent_id) if parent_id is not None else None
        if node is not None and parent_id != span.span_id:  # the usual case: the parent's is known
            known = memo.get(node)
            if known is not None:
                memo[span] = known + node.is_phase
                return known + node.is_phase
        chain = [span]  # spans whose depth is not known yet, child first
        on_chain = {span.span_id}
        above = 0  # the depth of the topmost span of the chain
        while node is not None and node.span_id not in on_chain:
            depth = memo.get(node)
            if depth is not None:
                above = depth + node.is_phase
                break
            chain.append(node)
            on_chain.add(node.span_id)
            node = spans.get(node.parent_id) if node.parent_id is not None else None
        for i in range(len(chain) - 1, -1, -1):
            if i < len(chain) - 1:
                above += chain[i + 1].is_phase
            memo[chain[i]] = above
        return memo[span]


__all__ = ["SpanIndex"]
