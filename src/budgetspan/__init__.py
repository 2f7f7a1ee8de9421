"""budgetspan: the cost and latency of LLM agents, visible and bounded, the OpenTelemetry way.

The public API is exactly what this module exports. ``budgetspan.run`` and ``budgetspan.phase``
are the scopes; the modules behind them live in ``budgetspan.runs``, so nothing is shadowed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from budgetspan.attributes import VERSION

if TYPE_CHECKING:
    from budgetspan.accounting.budget import (
        Budget,
        BudgetExhausted,
        Limit,
        RunCancelled,
        ToolLimits,
        ToolRefused,
        Usage,
    )
    from budgetspan.accounting.ledger import Ledger, Mode
    from budgetspan.accounting.memory import InMemoryLedger
    from budgetspan.accounting.redis_ledger import RedisLedger
    from budgetspan.accounting.scopes import ScopeBudget, ScopeWarning
    from budgetspan.accounting.windows import Window
    from budgetspan.cache.backend import MemoryCache
    from budgetspan.cache.core import invalidate as invalidate_cache
    from budgetspan.cache.policy import Cache, set_cache_backend
    from budgetspan.cache.redis_backend import RedisCache
    from budgetspan.cache.wrap import cached
    from budgetspan.calls.tools import ToolTimeout, tool
    from budgetspan.config import BUILTIN_PROFILES, ConfigError
    from budgetspan.events import CacheRecord, CallRecord, add_listener, remove_listener
    from budgetspan.processors.budget import BudgetSpanProcessor
    from budgetspan.runs.context import current_phase, current_run, set_ledger
    from budgetspan.runs.limits import (
        ClarificationNeeded,
        Clarify,
        Decision,
        Escalate,
        Extend,
        LimitReached,
        RunEscalated,
        Stop,
    )
    from budgetspan.runs.phases import Phase
    from budgetspan.runs.progress import Milestone, ProgressSubscription, subscribe_progress
    from budgetspan.runs.quality import record_outcome
    from budgetspan.runs.registry import cancel, live_runs
    from budgetspan.runs.run import Outcome, Run
    from budgetspan.runs.scope_api import set_scope_budget, set_scope_lookup, spend
    from budgetspan.runs.scopes import PhaseScope as phase
    from budgetspan.runs.scopes import RunScope as run
    from budgetspan.runs.scopes import approval
    from budgetspan.runs.steps import FallbackScope as fallback
    from budgetspan.runs.steps import StepScope as step
    from budgetspan.setup import configure

# The public names, imported on first use (PEP 562): ``import budgetspan`` stays cheap for what
# needs little of it (``budgetspan report`` starts in ~0.1 s instead of ~0.4 s). A name added to
# the API goes here and in the TYPE_CHECKING block above (an eager import also works, only slower).
_LAZY: dict[str, tuple[str, str]] = {
    "Budget": ("budgetspan.accounting.budget", "Budget"),
    "BudgetExhausted": ("budgetspan.accounting.budget", "BudgetExhausted"),
    "Limit": ("budgetspan.accounting.budget", "Limit"),
    "RunCancelled": ("budgetspan.accounting.budget", "RunCancelled"),
    "ToolLimits": ("budgetspan.accounting.budget", "ToolLimits"),
    "ToolRefused": ("budgetspan.accounting.budget", "ToolRefused"),
    "Usage": ("budgetspan.accounting.budget", "Usage"),
    "Ledger": ("budgetspan.accounting.ledger", "Ledger"),
    "Mode": ("budgetspan.accounting.ledger", "Mode"),
    "InMemoryLedger": ("budgetspan.accounting.memory", "InMemoryLedger"),
    "RedisLedger": ("budgetspan.accounting.redis_ledger", "RedisLedger"),
    "ScopeBudget": ("budgetspan.accounting.scopes", "ScopeBudget"),
    "ScopeWarning": ("budgetspan.accounting.scopes", "ScopeWarning"),
    "Window": ("budgetspan.accounting.windows", "Window"),
    "MemoryCache": ("budgetspan.cache.backend", "MemoryCache"),
    "invalidate_cache": ("budgetspan.cache.core", "invalidate"),
    "Cache": ("budgetspan.cache.policy", "Cache"),
    "set_cache_backend": ("budgetspan.cache.policy", "set_cache_backend"),
    "RedisCache": ("budgetspan.cache.redis_backend", "RedisCache"),
    "cached": ("budgetspan.cache.wrap", "cached"),
    "ToolTimeout": ("budgetspan.calls.tools", "ToolTimeout"),
    "tool": ("budgetspan.calls.tools", "tool"),
    "BUILTIN_PROFILES": ("budgetspan.config", "BUILTIN_PROFILES"),
    "ConfigError": ("budgetspan.config", "ConfigError"),
    "CacheRecord": ("budgetspan.events", "CacheRecord"),
    "CallRecord": ("budgetspan.events", "CallRecord"),
    "add_listener": ("budgetspan.events", "add_listener"),
    "remove_listener": ("budgetspan.events", "remove_listener"),
    "BudgetSpanProcessor": ("budgetspan.processors.budget", "BudgetSpanProcessor"),
    "current_phase": ("budgetspan.runs.context", "current_phase"),
    "current_run": ("budgetspan.runs.context", "current_run"),
    "set_ledger": ("budgetspan.runs.context", "set_ledger"),
    "ClarificationNeeded": ("budgetspan.runs.limits", "ClarificationNeeded"),
    "Clarify": ("budgetspan.runs.limits", "Clarify"),
    "Decision": ("budgetspan.runs.limits", "Decision"),
    "Escalate": ("budgetspan.runs.limits", "Escalate"),
    "Extend": ("budgetspan.runs.limits", "Extend"),
    "LimitReached": ("budgetspan.runs.limits", "LimitReached"),
    "RunEscalated": ("budgetspan.runs.limits", "RunEscalated"),
    "Stop": ("budgetspan.runs.limits", "Stop"),
    "Phase": ("budgetspan.runs.phases", "Phase"),
    "Milestone": ("budgetspan.runs.progress", "Milestone"),
    "ProgressSubscription": ("budgetspan.runs.progress", "ProgressSubscription"),
    "subscribe_progress": ("budgetspan.runs.progress", "subscribe_progress"),
    "record_outcome": ("budgetspan.runs.quality", "record_outcome"),
    "cancel": ("budgetspan.runs.registry", "cancel"),
    "live_runs": ("budgetspan.runs.registry", "live_runs"),
    "Outcome": ("budgetspan.runs.run", "Outcome"),
    "Run": ("budgetspan.runs.run", "Run"),
    "set_scope_budget": ("budgetspan.runs.scope_api", "set_scope_budget"),
    "set_scope_lookup": ("budgetspan.runs.scope_api", "set_scope_lookup"),
    "spend": ("budgetspan.runs.scope_api", "spend"),
    "phase": ("budgetspan.runs.scopes", "PhaseScope"),
    "run": ("budgetspan.runs.scopes", "RunScope"),
    "approval": ("budgetspan.runs.scopes", "approval"),
    "fallback": ("budgetspan.runs.steps", "FallbackScope"),
    "step": ("budgetspan.runs.steps", "StepScope"),
    "configure": ("budgetspan.setup", "configure"),
}


if not TYPE_CHECKING:  # mypy reads the imports above, and still flags a misspelt name

    def __getattr__(name: str) -> Any:
        try:
            module, attr = _LAZY[name]
        except KeyError:
            raise AttributeError(f"module 'budgetspan' has no attribute {name!r}") from None
        import importlib

        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(_LAZY))


__version__ = VERSION

__all__ = [
    "BUILTIN_PROFILES",
    "Budget",
    "BudgetExhausted",
    "BudgetSpanProcessor",
    "Cache",
    "CacheRecord",
    "CallRecord",
    "ClarificationNeeded",
    "Clarify",
    "ConfigError",
    "Decision",
    "Escalate",
    "Extend",
    "InMemoryLedger",
    "Ledger",
    "Limit",
    "LimitReached",
    "MemoryCache",
    "Milestone",
    "Mode",
    "Outcome",
    "Phase",
    "ProgressSubscription",
    "RedisCache",
    "RedisLedger",
    "Run",
    "RunCancelled",
    "RunEscalated",
    "ScopeBudget",
    "ScopeWarning",
    "Stop",
    "ToolLimits",
    "ToolRefused",
    "ToolTimeout",
    "Usage",
    "Window",
    "__version__",
    "add_listener",
    "approval",
    "cached",
    "cancel",
    "configure",
    "current_phase",
    "current_run",
    "fallback",
    "invalidate_cache",
    "live_runs",
    "phase",
    "record_outcome",
    "remove_listener",
    "run",
    "set_cache_backend",
    "set_ledger",
    "set_scope_budget",
    "set_scope_lookup",
    "spend",
    "step",
    "subscribe_progress",
    "tool",
]
