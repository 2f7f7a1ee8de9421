"""Runs accounted at the collector tier, in observe mode, over a bounded window.

A run is found by ``budgetspan.run.id`` where the service's spans carry one (budgetspan in-process,
or any service that sets it), else by its trace: each trace is a run, as budgetspan's implicit
runs are. Spans of a run that arrive before the one carrying the run id (children end first) are
folded into the run when it shows up.

The same rule as in-process (``accounting.rule.refusal``) decides, for each model or tool call in
arrival order, whether enforce mode would have refused it: that span gets
``budgetspan.observe.would_refuse`` and the run is counted once in
``budgetspan_budget_would_exhaust_total``. Nothing is refused: the call has already happened.

A run ends when its run span (``invoke_agent`` with the run id) or its trace's root span
arrives, or when it has been idle for ``window_s`` or is the oldest of more than ``max_runs``
(outcome ``unknown``). Ended runs are remembered (keys only, within the same bounds) so that a
late span does not open the run again. Memory is bounded by ``max_runs`` whatever arrives.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from budgetspan.accounting.budget import Budget, Usage
from budgetspan.accounting.ledger import CallKind
from budgetspan.accounting.rule import refusal
from budgetspan.collector.metrics import TierMetrics

DEFAULT_WINDOW_S = 300.0
DEFAULT_MAX_RUNS = 50_000
_SWEEP_EVERY_S = 1.0


@dataclass(slots=True)
class RunState:
    key: str
    workflow: str
    service: str
    profile: str | None
    start_ns: int
    end_ns: int
    last_seen: float
    usage: Usage = field(default_factory=Usage)
    would_refuse: str | None = None
    ended: bool = False
    #: step -> [the step's first model, its cost]: cost per success by step and model at the end
    steps: dict[str, list[Any]] = field(default_factory=dict)


class RunWindow:
    """The runs in flight; the caller holds the metrics lock around every method."""

    def __init__(
        self,
        metrics: TierMetrics,
        budget_for: Callable[[str, str | None], Budget | None],  # None: nothing is limited
        window_s: float = DEFAULT_WINDOW_S,
        max_runs: int = DEFAULT_MAX_RUNS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.budget_for = budget_for
        self.window_s = window_s
        self.max_runs = max(1, max_runs)
        self.clock = clock
        self.runs: OrderedDict[str, RunState] = OrderedDict()
        self.by_trace: OrderedDict[str, str] = OrderedDict()  # trace id -> run id key
        self._next_sweep = 0.0

    def key_for(self, trace_id: str, run_id: str | None) -> str:
        if run_id:
            return "run:" + run_id
        return self.by_trace.get(trace_id) or "trace:" + trace_id

    def has_trace(self, trace_id: str) -> bool:
        return ("trace:" + trace_id) in self.runs or trace_id in self.by_trace

    def get(
        self,
        trace_id: str,
        run_id: str | None,
        workflow: str,
        service: str,
        profile: str | None,
        start_ns: int,
    ) -> RunState:
        """The run this span belongs to, opened if new (and the trace's earlier spans folded in)."""
        now = self.clock()
        key = "run:" + run_id if run_id else self.by_trace.get(trace_id) or "trace:" + trace_id  # (key_for)
        state = self.runs.get(key)
        if state is None:
            state = RunState(key, workflow, service, profile, start_ns, start_ns, now)
            if run_id:
                self._adopt_trace(state, trace_id)
            self.runs[key] = state
            self.metrics.live_runs.child(state.workflow, service).inc()
        else:
            self.runs.move_to_end(key)
            state.last_seen = now
            if start_ns and start_ns < state.start_ns:
                state.start_ns = start_ns
            if profile and not state.profile:
                state.profile = profile
        if run_id and trace_id not in self.by_trace:
            self.by_trace[trace_id] = key
        if now >= self._next_sweep or len(self.runs) > self.max_runs or len(self.by_trace) > self.max_runs:
            self._bound(now)  # (tested here first: most spans need neither)
        return state

    def _adopt_trace(self, state: RunState, trace_id: str) -> None:
        """Spans of this trace that came before the run id (children end first) join the run."""
        earlier = self.runs.pop("trace:" + trace_id, None)
        if earlier is None or earlier.ended:
            return
        self.metrics.live_runs.child(earlier.workflow, earlier.service).dec()
        u, e = state.usage, earlier.usage
        for name in ("model_calls", "tool_calls", "retries", "input_tokens", "output_tokens"):
            setattr(u, name, getattr(u, name) + getattr(e, name))
        u.cost_usd += e.cost_usd
        state.start_ns = min(state.start_ns, earlier.start_ns) if state.start_ns else earlier.start_ns
        state.would_refuse = state.would_refuse or earlier.would_refuse

    def account(
        self,
        state: RunState,
        kind: CallKind,
        tool: str | None,
        start_ns: int,
        end_ns: int,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost: float = 0.0,
    ) -> str | None:
        """The limit enforce mode would have refused this call at (before adding it), or None."""
        if state.ended:
            return None
        budget = self.budget_for(state.workflow, state.profile)
        found = None
        if budget is not None:
            late = (
                budget.max_wall_clock_s is not None
                and start_ns - state.start_ns >= budget.max_wall_clock_s * 1e9
            )
            r = refusal(budget, state.usage, kind, tool=tool, past_deadline=late)
            if r is not None:
                found = r.reason
                if state.would_refuse is None:
                    state.would_refuse = found
                    self.metrics.would_exhaust.child(state.workflow, found, state.service).inc()
        u = state.usage
        if kind is CallKind.TOOL:
            u.tool_calls += 1
            if tool:
                u.tool_calls_by_name[tool] = u.tool_calls_by_name.get(tool, 0) + 1
        else:
            u.model_calls += 1
            u.input_tokens += input_tokens
            u.output_tokens += output_tokens
            u.cost_usd += cost
        if end_ns > state.end_ns:
            state.end_ns = end_ns
        return found

    def end(self, state: RunState, outcome: str, end_ns: int, reason: str | None = None) -> None:
        """The run is over: its run metrics, once; the key stays (ended) so late spans do not reopen it."""
        if state.ended:
            return
        state.ended = True
        m, wf, svc, u = self.metrics, state.workflow, state.service, state.usage
        m.live_runs.child(wf, svc).dec()
        m.runs.child(wf, outcome, svc).inc()
        if 0 <= u.cost_usd < float("inf"):
            m.run_cost.child(wf, outcome, svc).observe(u.cost_usd)
        m.run_tokens.child(wf, outcome, svc).observe(u.input_tokens + u.output_tokens)
        end_ns = max(end_ns, state.end_ns)
        duration = max(0.0, (end_ns - state.start_ns) / 1e9) if state.start_ns else 0.0
        u.wall_clock_s = duration
        m.run_duration.child(wf, outcome, svc).observe(duration)
        if reason:
            m.exhaustions.child(wf, reason, svc).inc()
        budget = self.budget_for(wf, state.profile)
        for limit, allowed in budget.limits().items() if budget is not None else ():
            if allowed > 0:
                m.utilisation.child(wf, limit, svc).observe(u.value_of(limit) / allowed)
        for step, (model, cost) in state.steps.items():
            m.step_runs.child(wf, step, model, outcome, svc).inc()
            m.step_cost.child(wf, step, model, outcome, svc).inc(cost)
        state.usage, state.steps = Usage(), {}  # an ended run keeps its key only

    def _bound(self, now: float) -> None:
        """Close idle runs (oldest first) and the oldest beyond ``max_runs``; at most once a second
        for the idle ones, at once for the cap. ``get`` tests whether any is due before calling it
        (most spans need neither: with ``Tier._mark`` called only for a refusal, measured on the
        core alone: 95.5k -> 94.4k instructions a GenAI span)."""
        while len(self.runs) > self.max_runs:
            self._evict(self.runs.popitem(last=False)[1])
        while len(self.by_trace) > self.max_runs:
            self.by_trace.popitem(last=False)
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY_S
        limit = now - self.window_s
        while self.runs:
            oldest = next(iter(self.runs.values()))
            if oldest.last_seen > limit:
                break
            self._evict(self.runs.popitem(last=False)[1])

    def sweep(self) -> None:
        """Close what is idle now (hosts call it when nothing arrives for a while)."""
        self._next_sweep = 0.0
        self._bound(self.clock())

    def _evict(self, state: RunState) -> None:
        if not state.ended:
            self.end(state, "unknown", state.end_ns)
