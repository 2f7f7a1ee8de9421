"""budgetspan: the cost and latency of LLM agents, visible and bounded, the OpenTelemetry way.

The public API is exactly what this module exports. ``budgetspan.run`` and ``budgetspan.phase``
are the scopes; the modules behind them live in ``budgetspan.runs``, so nothing is shadowed.
"""

from __future__ import annotations

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
from budgetspan.attributes import VERSION
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
