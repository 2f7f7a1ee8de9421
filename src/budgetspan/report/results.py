"""What the report computes, as plain dataclasses: a run's figures, a workflow's, the savings and
the whole analysis.

Kept in a module of their own, never compiled (``native``): the compiled analysis hands back these
same classes, so rendering, ``orjson`` (which cannot write mypyc's classes) and type checks see
one set of classes whichever analysis ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from budgetspan.report.plan import PlanRow

# Each dataclass has a docstring (without one, ``dataclass`` makes one with ``inspect.signature``:
# ~4M instructions of the report's start-up for these classes).
# Limit name -> the usage attribute it is compared to (budgetspan.usage.*).
LIMIT_USAGE = {
    "max_model_calls": "model_calls",
    "max_tool_calls": "tool_calls",
    "max_steps": "steps",
    "max_input_tokens": "input_tokens",
    "max_output_tokens": "output_tokens",
    "max_total_tokens": "total_tokens",
    "max_cost_usd": "cost_usd",
    "max_retries": "retries",
}


@dataclass(slots=True)
class PhaseStat:
    """A run's figures in one phase."""

    time_s: float = 0.0
    cost_usd: float = 0.0
    model_calls: int = 0
    tool_calls: int = 0
    retrievals: int = 0

    @property
    def calls(self) -> int:
        return self.model_calls + self.tool_calls + self.retrievals


@dataclass(slots=True)
class Read:
    """One read-only call of a ``SequentialReads``."""

    name: str
    offset_s: float  # from the run's start
    duration_s: float


@dataclass
class SequentialReads:
    """Read-only calls under one parent that ran one after another."""

    workflow: str
    run_id: str
    parent: str
    reads: list[Read]
    saving_s: float  # time saved had they all run at once


@dataclass(slots=True)
class RunStat:
    """One run's figures."""

    run_id: str
    workflow: str
    profile: str | None = None
    outcome: str = "unknown"
    reason: str | None = None
    explanation: str | None = None
    start_ns: int = 0
    end_ns: int = 0
    cost_usd: float = 0.0
    model_calls: int = 0
    tool_calls: int = 0
    retrievals: int = 0
    retries: int = 0
    verification_steps: int = 0
    approval_waits: int = 0
    unpriced_calls: int = 0
    limits: dict[str, float] = field(default_factory=dict)
    usage: dict[str, float] = field(default_factory=dict)
    would_exhaust: list[str] = field(default_factory=list)
    phases: dict[str, PhaseStat] = field(default_factory=dict)
    has_run_span: bool = False
    tenant: str | None = None  # budgetspan.tenant.id and user.id of the run span (report --by)
    user: str | None = None
    #: budgetspan.run.parent_id: the run this one is nested in, whose figures include its calls
    parent_id: str | None = None
    #: (end, cost) of its calls that ended after it: in ``cost_usd``, not in its ledger figure.
    late: tuple[tuple[int, float], ...] = ()

    @property
    def wall_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9

    def budget_used(self) -> tuple[str, float] | None:
        """The limit closest to (or past) its end, and the share of it used."""
        best: tuple[str, float] | None = None
        for limit, value in self.limits.items():
            if limit == "max_wall_clock_s":
                used = self.usage.get("wall_clock_s", self.wall_s)
            elif limit in LIMIT_USAGE:
                used = self.usage.get(LIMIT_USAGE[limit], 0.0)
            else:
                continue
            share = used / value if value > 0 else (1.0 if used > 0 else 0.0)
            if best is None or share > best[1]:
                best = (limit, share)
        return best

    def plan_actual(self, item: str) -> float:
        if item == "duration_s":
            return self.wall_s
        return float(getattr(self, item))


@dataclass
class CacheLine:
    """budgetspan's cache, per workflow and cached tool."""

    workflow: str
    name: str
    hits: int = 0
    misses: int = 0
    skipped: int = 0
    unavailable: int = 0
    saved_usd: float = 0.0
    saved_s: float = 0.0
    unknown_cost_hits: int = 0  # hits whose original computation's cost was not known

    @property
    def hit_rate(self) -> float:
        asked = self.hits + self.misses + self.skipped + self.unavailable
        return self.hits / asked if asked else 0.0


@dataclass
class PromptCacheLine:
    """Provider prompt caching, per workflow."""

    workflow: str
    calls: int = 0  # model calls that read or wrote the prompt cache
    input_tokens: int = 0  # of every model call of the workflow (cached ones included)
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    saved_usd: float = 0.0
    premium_usd: float = 0.0
    unpriced_calls: int = 0  # calls with cache figures and no known price

    @property
    def cache_read_share(self) -> float:
        return self.cache_read_tokens / self.input_tokens if self.input_tokens else 0.0

    @property
    def net_usd(self) -> float:
        return self.saved_usd - self.premium_usd


@dataclass
class Savings:
    """What caching saved (``savings``)."""

    cache: list[CacheLine]
    prompt_cache: list[PromptCacheLine]


@dataclass
class PhaseSummary:
    """A workflow's figures in one phase, over its runs."""

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
    """A call or step (name and phase) and its share of a workflow's time and cost."""

    name: str
    phase: str
    count: int
    time_s: float
    time_share: float
    cost_usd: float
    cost_share: float


@dataclass
class ReasonRate:
    """How many of a workflow's runs ended (or would have) for one reason."""

    reason: str
    runs: int
    rate: float


@dataclass
class WorkflowStat:
    """A workflow's figures."""

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
    """Everything the report says."""

    workflows: list[WorkflowStat]
    runs: list[RunStat]
    plan: list[PlanRow] = field(default_factory=list)
    plan_notes: list[str] = field(default_factory=list)
    spans: int = 0
    late_spans: int = 0  # spans of runs already reported (see ``assemble``): not counted
    early_runs: int = 0  # runs finished before they were complete, to stay within the bound
    savings: Savings | None = None  # what the cache and provider prompt caching saved (``savings``)


__all__ = [
    "LIMIT_USAGE",
    "Analysis",
    "CacheLine",
    "Contributor",
    "PhaseStat",
    "PhaseSummary",
    "PromptCacheLine",
    "Read",
    "ReasonRate",
    "RunStat",
    "Savings",
    "SequentialReads",
    "WorkflowStat",
]
