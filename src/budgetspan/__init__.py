"""budgetspan: the cost and latency of LLM agents, visible and bounded, the OpenTelemetry way.

The public API is exactly what this module exports. ``budgetspan.run`` and ``budgetspan.phase``
are the scopes; the modules behind them live in ``budgetspan.runs``, so nothing is shadowed.
"""

from __future__ import annotations

from budgetspan.accounting.budget import Budget, BudgetExhausted, Limit, RunCancelled, ToolLimits, Usage
from budgetspan.accounting.ledger import Ledger, Mode
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.accounting.redis_ledger import RedisLedger
from budgetspan.accounting.scopes import ScopeBudget, ScopeWarning
from budgetspan.accounting.windows import Window
from budgetspan.attributes import VERSION
from budgetspan.calls.tools import ToolTimeout, tool
from budgetspan.config import BUILTIN_PROFILES, ConfigError
from budgetspan.events import CallRecord, add_listener, remove_listener
from budgetspan.processors.budget import BudgetSpanProcessor
from budgetspan.runs.context import current_phase, current_run, set_ledger
from budgetspan.runs.phases import Phase
from budgetspan.runs.progress import Milestone, ProgressSubscription, subscribe_progress
from budgetspan.runs.registry import cancel, live_runs
from budgetspan.runs.run import Outcome, Run
from budgetspan.runs.scope_api import set_scope_budget, set_scope_lookup, spend
from budgetspan.runs.scopes import PhaseScope as phase
from budgetspan.runs.scopes import RunScope as run
from budgetspan.runs.scopes import approval
from budgetspan.setup import configure

__version__ = VERSION

__all__ = [
    "BUILTIN_PROFILES",
    "Budget",
    "BudgetExhausted",
    "BudgetSpanProcessor",
    "CallRecord",
    "ConfigError",
    "InMemoryLedger",
    "Ledger",
    "Limit",
    "Milestone",
    "Mode",
    "Outcome",
    "Phase",
    "ProgressSubscription",
    "RedisLedger",
    "Run",
    "RunCancelled",
    "ScopeBudget",
    "ScopeWarning",
    "ToolLimits",
    "ToolTimeout",
    "Usage",
    "Window",
    "__version__",
    "add_listener",
    "approval",
    "cancel",
    "configure",
    "current_phase",
    "current_run",
    "live_runs",
    "phase",
    "remove_listener",
    "run",
    "set_ledger",
    "set_scope_budget",
    "set_scope_lookup",
    "spend",
    "subscribe_progress",
    "tool",
]
