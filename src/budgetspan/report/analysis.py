"""Where time and money went: runs, phases, contributors, sequential reads, plan versus actual.

Input is a list of ``SpanRec`` (from OTLP JSON lines or, in the demo, from live spans). Spans are
grouped into runs by ``budgetspan.run.id``. A run's wall time is split over phases so that the
phase times add up to the run's time exactly: each instant goes to the innermost phase span (or
phase-less call) covering it, split evenly when several overlap, and to ``other`` when nothing
does. Costs and call counts come from the call spans' own ``budgetspan.phase``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from budgetspan import attributes as A
from budgetspan.report.load import SpanRec
from budgetspan.report.numbers import number, percentile
from budgetspan.report.plan import PlanRow, compare_plan
from budgetspan.report.run_stats import (
    CALL_OPS,
    MODEL_OPS,
    OTHER,
    PHASE_ORDER,
    PhaseStat,
    RunIndex,
    RunStat,
    SequentialReads,
    build_run,
    call_cost,
    is_phase_span,
    sequential_reads,
)

# --- per workflow -----------------------------------------------------------------------------


@dataclass
class PhaseSummary:
    phase: str
    runs: int
    time_s: float
    time_share: float
    p50_s: float
    p95_s: float
    cost_usd: float
    cost_share: float
    calls: int


@dataclass
class Contributor:
    name: str
    phase: str
    count: int
    time_s: float
    time_share: float
    cost_usd: float
    cost_share: float


@dataclass
class ReasonRate:
    reason: str
    runs: int
    rate: float


@dataclass
class WorkflowStat:
    workflow: str
    runs: int
    outcomes: dict[str, int]
    total_cost_usd: float
    total_time_s: float
    cost_per_success: float | None
    phases: list[PhaseSummary]
    top_by_time: list[Contributor]
    top_by_cost: list[Contributor]
    exhaustions: list[ReasonRate]
    would_exhaust: list[ReasonRate]
    retries: int
    retries_by_call: dict[str, int]
    sequential_reads: list[SequentialReads]
    unpriced_calls: int


@dataclass
class Analysis:
    workflows: list[WorkflowStat]
    runs: list[RunStat]
    plan: list[PlanRow] = field(default_factory=list)
    plan_notes: list[str] = field(default_factory=list)
    spans: int = 0


def _contributors(
    runs: list[tuple[RunStat, list[SpanRec]]],
    phase_spans: list[SpanRec],
    total_time: float,
    total_cost: float,
) -> list[Contributor]:
    groups: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for _run, calls in runs:
        for s in calls:
            g = groups[(s.name, str(s.attrs.get(A.PHASE, OTHER)))]
            g[0] += 1
            g[1] += s.duration_s
            if s.operation in MODEL_OPS:
                g[2] += call_cost(s) or 0.0
    for s in phase_spans:  # phases with no calls inside: waits (approval) and the agent's own work
        label = s.attrs.get(A.PHASE_LABEL)
        g = groups[(str(label) if label else s.name, str(s.attrs[A.PHASE]))]
        g[0] += 1
        g[1] += s.duration_s
    return [
        Contributor(
            name,
            phase,
            int(g[0]),
            g[1],
            g[1] / total_time if total_time else 0.0,
            g[2],
            g[2] / total_cost if total_cost else 0.0,
        )
        for (name, phase), g in groups.items()
    ]


def _rates(counter: Counter[str], runs: int) -> list[ReasonRate]:
    return [ReasonRate(reason, n, n / runs if runs else 0.0) for reason, n in counter.most_common()]


def analyze(
    spans: Iterable[SpanRec], plan: Mapping[str, Mapping[str, float]] | None = None, top: int = 5
) -> Analysis:
    """Group spans into runs and workflows and compute every figure of the report."""
    spans = list(spans)
    index = RunIndex(spans)
    by_run: dict[str, list[SpanRec]] = defaultdict(list)
    for s in spans:
        rid = s.attrs.get(A.RUN_ID)
        if isinstance(rid, str) and rid:
            by_run[rid].append(s)
    _adopt_phase_spans(by_run, index)
    has_calls = _phases_with_calls(spans, index)
    built = [build_run(rid, group, index) for rid, group in by_run.items()]
    built.sort(key=lambda rc: rc[0].start_ns)
    by_workflow: dict[str, list[tuple[RunStat, list[SpanRec]]]] = defaultdict(list)
    for rc in built:
        by_workflow[rc[0].workflow].append(rc)
    workflows = []
    for wf in sorted(by_workflow):
        items = by_workflow[wf]
        empty_phases = [
            s
            for r, _ in items
            for s in by_run[r.run_id]
            if is_phase_span(s) and (s.trace_id, s.span_id) not in has_calls
        ]
        workflows.append(_workflow_stat(wf, items, empty_phases, index, top))
    result = Analysis(workflows=workflows, runs=[r for r, _ in built], spans=len(spans))
    if plan is not None:
        result.plan, result.plan_notes = compare_plan(plan, result.runs)
    return result


def _workflow_stat(
    wf: str,
    items: list[tuple[RunStat, list[SpanRec]]],
    empty_phases: list[SpanRec],
    index: RunIndex,
    top: int,
) -> WorkflowStat:
    runs = [r for r, _ in items]
    n = len(runs)
    total_time = sum(r.wall_s for r in runs)
    total_cost = sum(r.cost_usd for r in runs)
    outcomes = Counter(r.outcome for r in runs)
    successes = outcomes.get("success", 0)
    phase_cost_total = sum(st.cost_usd for r in runs for st in r.phases.values())
    contributors = _contributors(items, empty_phases, total_time, phase_cost_total)
    retries_by_call: Counter[str] = Counter()
    for _r, calls in items:
        for s in calls:
            n_retries = int(number(s.attrs.get(A.RETRIES)) or 0)
            if n_retries:
                retries_by_call[s.name] += n_retries
    by_cost = [c for c in sorted(contributors, key=lambda c: -c.cost_usd) if c.cost_usd > 0]
    exhausted = Counter(r.reason or "unknown" for r in runs if r.outcome == "budget_exhausted")
    return WorkflowStat(
        workflow=wf,
        runs=n,
        outcomes=dict(outcomes.most_common()),
        total_cost_usd=total_cost,
        total_time_s=total_time,
        cost_per_success=total_cost / successes if successes else None,
        phases=_phase_summaries(runs, total_time, phase_cost_total),
        top_by_time=sorted(contributors, key=lambda c: -c.time_s)[:top],
        top_by_cost=by_cost[:top],
        exhaustions=_rates(exhausted, n),
        would_exhaust=_rates(Counter(x for r in runs for x in r.would_exhaust), n),
        retries=sum(r.retries for r in runs),
        retries_by_call=dict(retries_by_call.most_common()),
        sequential_reads=[f for r, calls in items for f in sequential_reads(r, calls, index)],
        unpriced_calls=sum(r.unpriced_calls for r in runs),
    )


def _phase_summaries(runs: list[RunStat], total_time: float, phase_cost_total: float) -> list[PhaseSummary]:
    names = [p for p in PHASE_ORDER if any(p in r.phases for r in runs)]
    names += sorted({p for r in runs for p in r.phases} - set(names))
    phases = []
    for p in names:
        per_run = [r.phases[p] for r in runs if p in r.phases]
        times = [st.time_s for st in per_run]
        cost = sum(st.cost_usd for st in per_run)
        phases.append(
            PhaseSummary(
                p,
                len(per_run),
                sum(times),
                sum(times) / total_time if total_time else 0.0,
                percentile(times, 50),
                percentile(times, 95),
                cost,
                cost / phase_cost_total if phase_cost_total else 0.0,
                sum(st.calls for st in per_run),
            )
        )
    return phases


def _adopt_phase_spans(by_run: dict[str, list[SpanRec]], index: RunIndex) -> None:
    """Phase blocks outside a declared run carry no run id: they belong to the run of their calls."""
    for group in by_run.values():
        have = {(s.trace_id, s.span_id) for s in group}
        for s in list(group):
            if s.operation not in CALL_OPS:
                continue
            node, hops = index.parent(s), 0
            while node is not None and hops < 256:
                key = (node.trace_id, node.span_id)
                if is_phase_span(node) and A.RUN_ID not in node.attrs and key not in have:
                    have.add(key)
                    group.append(node)
                node, hops = index.parent(node), hops + 1


def _phases_with_calls(spans: list[SpanRec], index: RunIndex) -> set[tuple[str, str]]:
    """Phase spans with a call somewhere below them (the others are waits or the agent's own work)."""
    has_calls: set[tuple[str, str]] = set()
    for s in spans:
        if s.operation in CALL_OPS:
            node, hops = index.parent(s), 0
            while node is not None and hops < 256:
                if is_phase_span(node):
                    has_calls.add((node.trace_id, node.span_id))
                node, hops = index.parent(node), hops + 1
    return has_calls


__all__ = [
    "OTHER",
    "Analysis",
    "Contributor",
    "PhaseStat",
    "RunStat",
    "SequentialReads",
    "WorkflowStat",
    "analyze",
]
