"""Outcome quality: a verifier's score and rework (human edits, reviewer corrections) of a run,
during the run (``run.succeed(score=...)``, ``run.record_rework(...)``) or after it ended
(``budgetspan.record_outcome(run_id, ...)``: an approval or a human review comes later).

A success that needed three human edits did not cost what a clean one did: the report puts
rework next to the success rate, per step and model.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace

from budgetspan import attributes as A
from budgetspan import events
from budgetspan.runs import context, registry

MAX_KIND = 64


def check_score(score: float | None) -> float | None:
    if score is None:
        return None
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise ValueError(f"score: a finite number, got {score!r}")
    return float(score)


def check_rework(kind: str, n: int) -> tuple[str, int]:
    if not isinstance(kind, str) or not kind.strip() or len(kind) > MAX_KIND:
        raise ValueError(f"rework kind: a non-empty name of at most {MAX_KIND} characters, got {kind!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"rework count: a whole number >= 0, got {n!r}")
    return kind.strip(), n


def quality_attributes(score: float | None, rework: Mapping[str, int]) -> dict[str, Any]:
    """The span attributes for a score and rework counts (none for what was never said)."""
    attrs: dict[str, Any] = {}
    if score is not None:
        attrs[A.RUN_SCORE] = score
    if rework:
        attrs[A.RUN_REWORK] = sum(rework.values())
        attrs[A.RUN_REWORK_KINDS] = [f"{k}={n}" for k, n in sorted(rework.items())]
    return attrs


class Quality:
    """Mixed into ``Run``: what a reviewer or verifier said of the result."""

    score: float | None
    rework: dict[str, int]
    _lock: threading.Lock

    def record_rework(self, kind: str, n: int = 1) -> None:
        """Count rework the result needed (``human_edit``, ``reviewer_correction``...)."""
        kind, n = check_rework(kind, n)
        with self._lock:
            self.rework[kind] = self.rework.get(kind, 0) + n


def _rework_of(rework: int | Mapping[str, int] | None) -> dict[str, int]:
    if rework is None:
        return {}
    if isinstance(rework, Mapping):
        return dict(check_rework(k, n) for k, n in rework.items())
    return dict([check_rework("rework", rework)])


def record_outcome(
    run_id: str,
    *,
    score: float | None = None,
    rework: int | Mapping[str, int] | None = None,
    outcome: str | None = None,
    workflow: str | None = None,
) -> None:
    """Say how a run turned out after the fact (a review, an approval). A live run takes it
    directly (written on its span at its end); otherwise a small ``record_outcome`` span names
    the run (``budgetspan.outcome.run_id``) and ``budgetspan report`` joins it to that run.
    ``outcome`` ("success", "failure"...) replaces the run's own in the report."""
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("record_outcome: the run id is a non-empty string")
    score = check_score(score)
    kinds = _rework_of(rework)
    live = registry.get_run(run_id)
    if live is not None and not live.ended and outcome is None:
        if score is not None:
            live.score = score
        for kind, n in kinds.items():
            live.record_rework(kind, n)
        return
    attrs = quality_attributes(score, kinds)
    attrs[A.OUTCOME_RUN_ID] = run_id
    if outcome is not None:
        attrs[A.RUN_OUTCOME] = str(outcome)
    name = workflow or (live.workflow if live is not None else None) or "run"
    if workflow or live is not None:
        attrs[A.WORKFLOW] = name
    try:
        links = []
        if live is not None and live.span is not None:
            links.append(trace.Link(live.span.get_span_context()))
        span = context.get_tracer().start_span(
            A.SPAN_OUTCOME.format(workflow=name), attributes=attrs, links=links
        )
        span.end()
    except Exception:
        events.internal_error("record_outcome")
