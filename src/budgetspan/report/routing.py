"""The routing evaluation: per workflow, step and model, what a successful run costs.

Cost per request says little: a cheap model that needs more retries, fallbacks, review rounds
and human rework may cost more per *successful* run than a stronger one. So, per workflow × step
× route (the model a step called first in a run; its retries and fallbacks to a stronger model
are part of that route's cost):

- runs, success rate (with a 95% Wilson interval), retries and rework per run;
- cost per model call of the step, and cost per successful run: the cost of every run on the
  route (failed runs' cost stays in) over its successful runs, with a 95% percentile bootstrap
  interval (runs resampled with replacement; seeded, so the same file gives the same report;
  above 25,000 runs of one route, the normal interval of the ratio, which the bootstrap's
  converges to and which costs one pass);
- p50 / p95 of the step's time per run (its model calls, retries included);
- where two routes served one step, the break-even: with mean run costs ``c_a < c_b`` and success
  rates ``s_a, s_b``, route a is cheaper per success while ``c_a / s_a < c_b / s_b``, that is
  while ``s_a > s_b · c_a / c_b``.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from budgetspan.report.numbers import percentile
from budgetspan.report.runs_detail import RunDetail

Z95 = 1.959963984540054
BOOTSTRAP_SEED = 19
BOOTSTRAP_BUDGET = 1_000_000  # resampled runs per interval: the repetitions shrink for big groups...
MIN_REPS, MAX_REPS = 200, 1000
MAX_BOOTSTRAP_N = 25_000  # ...and above this many runs of one route, the normal interval


@dataclass
class RouteStat:
    workflow: str
    step: str
    model: str
    runs: int
    successes: int
    success_rate: float
    success_ci: tuple[float, float]
    retries: int
    retries_per_run: float
    fallbacks: int
    rework_per_run: float
    runs_with_rework: int
    mean_score: float | None
    model_calls: int
    unpriced_calls: int
    cost_per_call: float | None
    step_cost_per_success: float | None
    run_cost_per_run: float
    cost_per_success: float | None  # the whole run's cost (retries, reviews, fallbacks) per success
    cost_per_success_ci: tuple[float, float] | None
    p50_s: float
    p95_s: float


@dataclass
class BreakEven:
    workflow: str
    step: str
    cheaper: str  # the route cheaper per run
    other: str
    break_even_rate: float  # the cheaper route is cheaper per success only above this success rate
    measured_rate: float
    measured_half_width: float
    winner: str | None  # the route cheaper per success as measured (None: no successes at all)
    verdict: str


@dataclass
class Routing:
    routes: list[RouteStat] = field(default_factory=list)
    break_evens: list[BreakEven] = field(default_factory=list)
    runs: int = 0
    late_outcomes: int = 0


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (sound at 0 % and 100 % too)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def cost_per_success(costs: Sequence[float], successes: Sequence[int]) -> float | None:
    k = sum(successes)
    return sum(costs) / k if k else None


def bootstrap_ci(
    costs: Sequence[float],
    successes: Sequence[int],
    *,
    seed: int = BOOTSTRAP_SEED,
    reps: int | None = None,
    max_bootstrap_n: int = MAX_BOOTSTRAP_N,
) -> tuple[float, float] | None:
    """95 % percentile bootstrap interval of sum(cost) / successes, resampling runs. A resample
    without a success has no finite cost per success (it counts as infinite). Above
    ``max_bootstrap_n`` runs, the normal (delta-method) interval, which the bootstrap's converges to."""
    n = len(costs)
    if n == 0 or not any(successes):
        return None
    if n > max_bootstrap_n:
        return delta_ci(costs, successes)
    if reps is None:
        reps = max(MIN_REPS, min(MAX_REPS, BOOTSTRAP_BUDGET // n))
    rng = random.Random(seed)
    # one complex number per run, cost + success·i: one C-level sum gives both totals of a resample
    runs = [complex(c, s) for c, s in zip(costs, successes, strict=True)]
    stats: list[float] = []
    for _ in range(reps):
        total = sum(rng.choices(runs, k=n))
        stats.append(total.real / total.imag if total.imag else math.inf)
    stats.sort()
    return (stats[int(0.025 * (reps - 1))], stats[math.ceil(0.975 * (reps - 1))])


def delta_ci(costs: Sequence[float], successes: Sequence[int]) -> tuple[float, float]:
    """The normal interval of the ratio mean(cost) / mean(success) (delta method)."""
    n = len(costs)
    mc, ms = sum(costs) / n, sum(successes) / n
    ratio = mc / ms
    var_c = sum((c - mc) ** 2 for c in costs) / (n - 1)
    var_s = ms * (1 - ms) * n / (n - 1)
    cov = sum((c - mc) * (s - ms) for c, s in zip(costs, successes, strict=True)) / (n - 1)
    se = math.sqrt(max(0.0, var_c - 2 * ratio * cov + ratio * ratio * var_s) / n) / ms
    return (max(0.0, ratio - Z95 * se), ratio + Z95 * se)


def _route(workflow: str, step: str, model: str, runs: list[RunDetail], seed: int) -> RouteStat:
    n = len(runs)
    uses = [r.steps[step] for r in runs]
    ok = [1 if r.success else 0 for r in runs]
    k = sum(ok)
    run_costs = [r.cost for r in runs]
    calls = sum(u.calls for u in uses)
    priced = calls - sum(u.unpriced for u in uses)
    step_cost = sum(u.cost for u in uses)
    retries = sum(u.retries for u in uses)
    scores = [r.score for r in runs if r.score is not None]
    times = [u.time_s for u in uses]
    return RouteStat(
        workflow=workflow,
        step=step,
        model=model,
        runs=n,
        successes=k,
        success_rate=k / n,
        success_ci=wilson(k, n),
        retries=retries,
        retries_per_run=retries / n,
        fallbacks=sum(u.fallbacks for u in uses),
        rework_per_run=sum(r.rework for r in runs) / n,
        runs_with_rework=sum(1 for r in runs if r.rework),
        mean_score=sum(scores) / len(scores) if scores else None,
        model_calls=calls,
        unpriced_calls=calls - priced,
        cost_per_call=step_cost / priced if priced else None,
        step_cost_per_success=step_cost / k if k else None,
        run_cost_per_run=sum(run_costs) / n,
        cost_per_success=cost_per_success(run_costs, ok),
        cost_per_success_ci=bootstrap_ci(run_costs, ok, seed=seed),
        p50_s=percentile(times, 50),
        p95_s=percentile(times, 95),
    )


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def break_even(a: RouteStat, b: RouteStat) -> BreakEven:
    """Compare two routes of one step (``a`` the cheaper per run)."""
    if b.run_cost_per_run < a.run_cost_per_run:
        a, b = b, a
    ratio = a.run_cost_per_run / b.run_cost_per_run if b.run_cost_per_run > 0 else 1.0
    rate = b.success_rate * ratio
    half = (a.success_ci[1] - a.success_ci[0]) / 2
    if a.cost_per_success is None and b.cost_per_success is None:
        winner = None
    elif b.cost_per_success is None or (
        a.cost_per_success is not None and a.cost_per_success <= b.cost_per_success
    ):
        winner = a.model
    else:
        winner = b.model
    verdict = (
        f"{a.model} is cheaper per success only while its success rate stays above {_pct(rate)}; "
        f"measured {_pct(a.success_rate)} ± {_pct(half)}"
    )
    if winner is None:
        verdict += ". Neither route has a successful run yet."
    else:
        verdict += f". Cheaper per successful run as measured: {winner}"
        if a.success_ci[0] <= rate <= a.success_ci[1]:
            verdict += " (too close to call: the break-even is within the interval)"
        verdict += "."
    return BreakEven(a.workflow, a.step, a.model, b.model, rate, a.success_rate, half, winner, verdict)


def evaluate(runs: Sequence[RunDetail], *, seed: int = BOOTSTRAP_SEED, late_outcomes: int = 0) -> Routing:
    """Group runs by workflow, step and the step's first model; compare the routes of each step."""
    groups: dict[tuple[str, str, str], list[RunDetail]] = defaultdict(list)
    for r in runs:
        for step, use in r.steps.items():
            groups[(r.workflow, step, use.model)].append(r)
    out = Routing(runs=len(runs), late_outcomes=late_outcomes)
    for (wf, step, model), members in sorted(groups.items()):
        out.routes.append(_route(wf, step, model, members, seed))
    by_step: dict[tuple[str, str], list[RouteStat]] = defaultdict(list)
    for route in out.routes:
        by_step[(route.workflow, route.step)].append(route)
    for routes in by_step.values():
        if len(routes) < 2:
            continue
        routes.sort(key=lambda r: (r.cost_per_success is None, r.cost_per_success or 0.0))
        best = routes[0]
        for other in routes[1:]:
            out.break_evens.append(break_even(best, other))
    return out
