"""Budget (immutable limits), Usage (what a run consumed) and BudgetExhausted (the one exception).

A limit of ``None`` means "no limit". Limits are plain numbers so a budget can be written in an
environment variable, a TOML file or code and mean the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any


class Limit(str, Enum):
    """The limits a run can reach; the value is the limit's name and the metric's ``reason``."""

    MODEL_CALLS = "max_model_calls"
    TOOL_CALLS = "max_tool_calls"
    STEPS = "max_steps"
    INPUT_TOKENS = "max_input_tokens"
    OUTPUT_TOKENS = "max_output_tokens"
    TOTAL_TOKENS = "max_total_tokens"
    COST_USD = "max_cost_usd"
    WALL_CLOCK_S = "max_wall_clock_s"
    RETRIES = "max_retries"
    TOOL_MAX_CALLS = "tool.max_calls"
    TOOL_MAX_RETRIES = "tool.max_retries"
    TOOL_TIMEOUT_S = "tool.timeout_s"
    CANCELLED = "cancelled"
    UNPRICED = "unpriced_model"  # BUDGETSPAN_UNPRICED=refuse: no price known under a dollar limit
    LEDGER_UNAVAILABLE = "ledger_unavailable"  # RedisLedger(on_error="closed") during an outage
    NO_PROGRESS = "no_progress"  # a loop: repeated calls, ping-pong, steps without a new result


COUNT_LIMITS = (Limit.MODEL_CALLS, Limit.TOOL_CALLS, Limit.STEPS, Limit.RETRIES)
INT_LIMIT_NAMES = (
    "max_model_calls",
    "max_tool_calls",
    "max_steps",
    "max_input_tokens",
    "max_output_tokens",
    "max_total_tokens",
    "max_retries",
)
FLOAT_LIMIT_NAMES = ("max_cost_usd", "max_wall_clock_s")
LIMIT_NAMES = INT_LIMIT_NAMES + FLOAT_LIMIT_NAMES
TOOL_LIMIT_NAMES = ("timeout_s", "max_calls", "max_retries")
#: Loop limits: kept by the run layer (process-local), not by the ledger.
LOOP_LIMIT_NAMES = ("max_repeated_calls", "max_steps_without_progress")
#: What a loop limit does when reached: "stop" (the default) or "warn".
LOOP_ACTION_NAMES = ("repeated_calls_action", "no_progress_action")
LOOP_ACTIONS = ("stop", "warn")
#: Tool caps: they refuse the tool (``ToolRefused``), not the run.
TOOL_CAP_REASONS = ("tool.max_calls", "tool.max_retries")
EXTRA_NAMES = (*LOOP_LIMIT_NAMES, *LOOP_ACTION_NAMES, "reserve_for_final")
#: The limits that count (whole numbers), by name, in budgets and tool limits.
COUNT_NAMES = frozenset((*INT_LIMIT_NAMES, "max_calls", *LOOP_LIMIT_NAMES))
#: The largest count a limit may be: a float (Redis's Lua number) carries every count up to it
#: exactly; 10**23 calls is a typo, not a budget.
MAX_COUNT = 2**53


def _check_limit(name: str, value: Any) -> float | int | None:
    """Validate one limit: a non-negative finite number (int for counts), or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number or None, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if isinstance(value, int) and abs(value) > 10**30:  # (repr of a 5,000-digit int raises)
        got = f"an integer of {value.bit_length()} bits"
    else:
        got = repr(value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {got}")
    if name in COUNT_NAMES:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{name} must be a whole number, got {got}")
        if value > MAX_COUNT:  # (also inf)
            raise ValueError(f"{name} must be at most 2**53, got {got}")
        return int(value)
    if value > sys.float_info.max:  # an int past float's range (TOML reads 10**400 as one)
        raise ValueError(f"{name} must be finite, got {got}")
    return float(value)


@dataclass(frozen=True)
class ToolLimits:
    """Limits for one named tool: a timeout per call, a call cap and a retry cap per run."""

    timeout_s: float | None = None
    max_calls: int | None = None
    max_retries: int | None = None

    def __post_init__(self) -> None:
        for name in TOOL_LIMIT_NAMES:
            object.__setattr__(self, name, _check_limit(name, getattr(self, name)))

    def merged(self, other: ToolLimits) -> ToolLimits:
        """Limits of ``other`` where set, else ours."""
        return ToolLimits(
            **{
                n: getattr(other, n) if getattr(other, n) is not None else getattr(self, n)
                for n in TOOL_LIMIT_NAMES
            }
        )


NO_TOOL_LIMITS = ToolLimits()


@dataclass(frozen=True)
class Budget:
    """The limits of one run. Immutable: derive variants with :meth:`merged`."""

    max_model_calls: int | None = None
    max_tool_calls: int | None = None
    max_steps: int | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    max_total_tokens: int | None = None
    max_cost_usd: float | None = None
    max_wall_clock_s: float | None = None
    max_retries: int | None = None
    tools: Mapping[str, ToolLimits] = field(default_factory=dict)
    profile: str | None = None
    #: The same tool call (tool + arguments) with the same result: the k-th is a loop.
    max_repeated_calls: int | None = None
    #: Tool steps in a row that gave no result not seen before in the run: a loop.
    max_steps_without_progress: int | None = None
    repeated_calls_action: str | None = None  # "stop" (None) | "warn"
    no_progress_action: str | None = None  # "stop" (None) | "warn"
    #: Part of limits (by name) kept for the ``final_response`` phase: calls in other phases are
    #: refused when they would eat into it.
    reserve_for_final: Mapping[str, float] = field(default_factory=dict)

    @property
    def spend_limited(self) -> bool:
        """Any token or dollar limit: a call then holds its worst case against it."""
        return not (
            self.max_cost_usd is None
            and self.max_input_tokens is None
            and self.max_output_tokens is None
            and self.max_total_tokens is None
        )

    def __post_init__(self) -> None:
        for name in LIMIT_NAMES:
            object.__setattr__(self, name, _check_limit(name, getattr(self, name)))
        tools = {str(k): v if isinstance(v, ToolLimits) else ToolLimits(**v) for k, v in self.tools.items()}
        object.__setattr__(self, "tools", MappingProxyType(tools))
        for name in LOOP_LIMIT_NAMES:
            object.__setattr__(self, name, _check_limit(name, getattr(self, name)))
        for name in LOOP_ACTION_NAMES:
            if getattr(self, name) not in (None, *LOOP_ACTIONS):
                raise ValueError(
                    f"{name} must be one of {', '.join(LOOP_ACTIONS)}, got {getattr(self, name)!r}"
                )
        keep = {}
        for name, amount in dict(self.reserve_for_final).items():
            if name not in LIMIT_NAMES:
                raise ValueError(
                    f"reserve_for_final: unknown limit {name!r}; expected one of {', '.join(LIMIT_NAMES)}"
                )
            keep[name] = _check_limit(name, amount)
        object.__setattr__(self, "reserve_for_final", MappingProxyType({k: v for k, v in keep.items() if v}))

    def limits(self) -> dict[str, float | int]:
        """The limits that are set, by name."""
        return {n: getattr(self, n) for n in LIMIT_NAMES if getattr(self, n) is not None}

    def tool_limits(self, tool: str) -> ToolLimits:
        return self.tools.get(tool) or NO_TOOL_LIMITS

    def extended(self, amounts: Mapping[str, float]) -> Budget:
        """A new budget whose limits are raised by ``amounts`` (a limit that is not set stays unset)."""
        raised = {
            n: getattr(self, n) + amounts[n]
            for n in LIMIT_NAMES
            if amounts.get(n) and getattr(self, n) is not None
        }
        return dataclasses.replace(self, **raised)

    def loop_options(self) -> dict[str, Any]:
        """The loop limits and actions that are set, by name."""
        names = (*LOOP_LIMIT_NAMES, *LOOP_ACTION_NAMES)
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def merged(self, other: Budget | None = None, **limits: Any) -> Budget:
        """A new budget: ours, overridden by the limits set in ``other`` and then ``limits``."""
        values: dict[str, Any] = {n: getattr(self, n) for n in LIMIT_NAMES}
        values.update(self.loop_options(), reserve_for_final=dict(self.reserve_for_final))
        tools = dict(self.tools)
        profile = self.profile
        if other is not None:
            values.update(other.limits())
            values.update(other.loop_options())
            values["reserve_for_final"] = {**values["reserve_for_final"], **other.reserve_for_final}
            for name, tl in other.tools.items():
                tools[name] = tools[name].merged(tl) if name in tools else tl
            profile = other.profile or profile
        unknown = set(limits) - set(LIMIT_NAMES) - set(EXTRA_NAMES) - {"tools", "profile"}
        if unknown:
            raise ValueError(f"unknown budget limit(s): {', '.join(sorted(unknown))}")
        for k, v in limits.items():
            if k == "tools":
                tools.update(v)
            elif k == "profile":
                profile = v
            elif k == "reserve_for_final":
                values[k] = {**values[k], **(v or {})}
            else:
                values[k] = v
        return Budget(**values, tools=tools, profile=profile)

    @property
    def is_unlimited(self) -> bool:
        return not self.limits() and not self.tools and not self.loop_options()


@dataclass
class Usage:
    """What a run has consumed so far. Tokens the provider never reported are not guessed."""

    model_calls: int = 0
    tool_calls: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_calls: int = 0
    unreported_usage_calls: int = 0
    tools_finished: int = 0
    tool_calls_by_name: dict[str, int] = field(default_factory=dict)
    tool_retries_by_name: dict[str, int] = field(default_factory=dict)
    wall_clock_s: float = 0.0

    @property
    def steps(self) -> int:
        """One step is one model call or one tool call."""
        return self.model_calls + self.tool_calls

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def value_of(self, limit: str) -> float:
        """The usage figure that a limit named ``limit`` is compared to."""
        return float(
            {
                "max_model_calls": self.model_calls,
                "max_tool_calls": self.tool_calls,
                "max_steps": self.steps,
                "max_input_tokens": self.input_tokens,
                "max_output_tokens": self.output_tokens,
                "max_total_tokens": self.total_tokens,
                "max_cost_usd": self.cost_usd,
                "max_wall_clock_s": self.wall_clock_s,
                "max_retries": self.retries,
            }[limit]
        )

    def copy(self) -> Usage:
        u = dataclasses.replace(self)
        u.tool_calls_by_name = dict(self.tool_calls_by_name)
        u.tool_retries_by_name = dict(self.tool_retries_by_name)
        return u

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["steps"] = self.steps
        d["total_tokens"] = self.total_tokens
        return d


def as_dollars(x: float) -> str:
    """Cents ($1,500.00); below a cent four places; below that two significant digits
    ($0.000032, never a '$0.0000' for a call that costs something)."""
    if x >= 0.01 or x <= 0:
        return f"${x:,.2f}"
    if x >= 0.0001:
        return f"${x:.4f}"
    return f"${x:.{1 - math.floor(math.log10(x))}f}"


def as_figure(x: float) -> str:
    """A limit or count as a person writes it: 2,000,000 (not 2e+06), 0.5 for a fraction."""
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:g}"


def explain(
    reason: str,
    limit: float | None,
    usage: Usage,
    tool: str | None = None,
    worst: float | None = None,
    detail: str | None = None,
    notes: tuple[str, ...] = (),
) -> str:
    """One plain sentence saying why the run stopped and what it had done.

    e.g. "Stopped after 6 of 6 model calls; 2 of 3 tools finished; $0.21 of $0.25 spent."
    ``detail`` replaces the head (a loop says which call repeated); ``notes`` follow it
    ("1 model call kept for the final answer", "extended once by $0.10 after approval").
    """
    lim = "?" if limit is None else as_figure(limit)
    head = {
        "max_model_calls": f"Stopped after {usage.model_calls} of {lim} model calls",
        "max_tool_calls": f"Stopped after {usage.tool_calls} of {lim} tool calls",
        "max_steps": f"Stopped after {usage.steps} of {lim} steps",
        "max_input_tokens": f"Stopped at {usage.input_tokens:,} of {lim} input tokens",
        "max_output_tokens": f"Stopped at {usage.output_tokens:,} of {lim} output tokens",
        "max_total_tokens": f"Stopped at {usage.total_tokens:,} of {lim} tokens",
        "max_cost_usd": "Stopped at the cost limit",
        "max_wall_clock_s": f"Stopped at the {lim} s time limit after {usage.wall_clock_s:.1f} s",
        "max_retries": f"Stopped after {usage.retries} of {lim} retries",
        "tool.max_calls": f"Refused: tool {tool!r} was already called {usage.tool_calls_by_name.get(tool or '', 0)} of {lim} times",
        "tool.max_retries": f"Refused: tool {tool!r} already used {usage.tool_retries_by_name.get(tool or '', 0)} of {lim} retries",
        "tool.timeout_s": f"Stopped: tool {tool!r} ran past its {lim} s timeout",
        "cancelled": "Cancelled",
        "no_progress": f"Stopped: tool {tool!r} made no progress (a loop)",
        "ledger_unavailable": "Stopped: the shared budget ledger could not be reached",
        "unpriced_model": "Stopped: a model with no known price was called under a dollar limit",
    }.get(reason, f"Stopped at limit {reason}")
    head = detail or head
    if worst:
        amount = as_dollars(worst) if reason == "max_cost_usd" else f"{worst:,.0f} tokens"
        head += f" (the next call could have used up to {amount} more"
        head += ")" if reason == "max_cost_usd" else "; a lower max_tokens on the request reserves less)"
    parts = [head, *notes]
    if usage.tool_calls or reason in ("max_tool_calls", "tool.max_calls"):
        parts.append(f"{usage.tools_finished} of {usage.tool_calls} tools finished")
    if reason != "max_model_calls" and usage.model_calls:
        parts.append(f"{usage.model_calls} model call{'s' if usage.model_calls != 1 else ''} made")
    if reason == "max_cost_usd" and limit is not None:
        parts.append(f"{as_dollars(usage.cost_usd)} of {as_dollars(float(limit))} spent")
    else:
        spent = as_dollars(usage.cost_usd) + " spent"
        if usage.unpriced_calls:
            spent += f" (+{usage.unpriced_calls} unpriced calls)"
        parts.append(spent)
    return "; ".join(parts) + "."


class BudgetExhausted(Exception):
    """Raised by the next call after a run reached a limit (or was cancelled).

    ``partial`` holds what the run already produced (finished tool results, the last model
    answer, anything recorded with ``Run.add_partial``); ``explanation`` is one plain sentence.
    """

    #: The run's outcome when this ends it.
    outcome = "budget_exhausted"

    def __init__(
        self,
        reason: str,
        limit: float | None,
        usage: Usage,
        partial: Mapping[str, Any] | None = None,
        explanation: str | None = None,
        *,
        run_id: str | None = None,
        workflow: str | None = None,
        tool: str | None = None,
        worst: float | None = None,
        detail: str | None = None,
        notes: tuple[str, ...] = (),
        scope: str | None = None,
        scope_ref: Any = None,
        spent: float | None = None,
    ) -> None:
        self.reason = reason
        #: The scope above the run whose limit refused the call ("tenant acme"), if any, and what
        #: that scope had used of the limit (each later refusal of the stopped run says it again).
        self.scope = scope
        self.scope_ref = scope_ref
        self.spent = spent
        self.limit = limit
        self.usage = usage
        self.partial: dict[str, Any] = dict(partial or {})
        self.worst = worst
        self.detail = detail
        self.notes = notes
        self.explanation = explanation or explain(reason, limit, usage, tool, worst, detail, notes)
        self.run_id = run_id
        self.workflow = workflow
        self.tool = tool
        super().__init__(self.explanation)

    def explain(self, usage: Usage) -> str:
        """This refusal's sentence with ``usage`` (e.g. the run's final usage); a scope's
        refusal keeps its own sentence (it speaks of the scope's usage, not the run's)."""
        if self.scope is not None:
            return self.explanation
        return explain(self.reason, self.limit, usage, self.tool, self.worst, self.detail, self.notes)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_exhausted,
            (type(self), self.reason, self.limit, self.usage, self.partial, self.explanation),
        )


def _rebuild_exhausted(cls: type[BudgetExhausted], *args: Any) -> BudgetExhausted:
    return cls(*args)


class RunCancelled(BudgetExhausted):
    """The run was cancelled with ``budgetspan.cancel(run_id)``; its outcome is ``cancelled``."""

    outcome = "cancelled"


class ToolRefused(BudgetExhausted):
    """A tool past its own cap (``max_calls`` / ``max_retries``, reason ``tool.max_calls`` /
    ``tool.max_retries``): this tool call is refused, the run goes on. Frameworks that turn a
    tool's exception into an error message for the model can do so with this one."""
