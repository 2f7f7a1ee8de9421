"""Cost per successful run by step and model, as two Prometheus counters fed at run end.

A run's outcome is known only when it ends, so each model call's cost is held per run and step
until then; at the end, for each step the run used, the step's cost and one run are counted under
(workflow, step, model, outcome). The step's model is the first model it called in the run: the
route chosen for it; retries and fallbacks to a stronger model count in that route's cost, which
is what choosing the route costs. Cost per successful run for a step and route:
``sum(budgetspan_step_cost_usd_total) / sum(budgetspan_step_runs_total{outcome="success"})``.
Callers hold the metrics lock.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from budgetspan.events import CallRecord

MAX_RUNS_HELD: Final = 100_000  # runs with steps in flight; past it new runs are not broken down


class StepCosts:
    __slots__ = ("_held", "cost", "runs")

    def __init__(self, cost: Any, runs: Any) -> None:
        self.cost = cost  # _Family: workflow, step, model, outcome
        self.runs = runs
        self._held: dict[str, dict[str, list[Any]]] = {}  # run id -> step -> [model, cost]

    def call(self, r: CallRecord) -> None:
        run = r.run
        assert run is not None
        steps = self._held.get(run.id)
        if steps is None:
            if len(self._held) >= MAX_RUNS_HELD:
                return
            steps = self._held[run.id] = {}
        step = r.step or r.phase
        entry = steps.get(step)
        if entry is None:
            entry = steps[step] = [r.model or "unknown", 0.0]
        cost = r.cost_usd if r.cost_usd is not None else (r.spend.cost_usd if r.spend else None)
        if cost is not None and 0.0 <= cost < math.inf:
            entry[1] += cost

    def run_end(self, run_id: str, workflow: str, outcome: str) -> None:
        for step, (model, cost) in self._held.pop(run_id, {}).items():
            self.runs.child(workflow, step, model, outcome).inc()
            self.cost.child(workflow, step, model, outcome).inc(cost)
