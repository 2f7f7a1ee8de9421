"""budgetspan: the cost and latency of LLM agents, visible and bounded, the OpenTelemetry way.

The public API is exactly what this module exports.
"""

from __future__ import annotations

__version__ = "0.1.0"

from budgetspan.budget import Budget, BudgetExhausted, Limit, RunCancelled, ToolLimits, Usage
from budgetspan.config import BUILTIN_PROFILES, ConfigError
from budgetspan.events import CallRecord, add_listener, remove_listener
from budgetspan.ledger import InMemoryLedger, Ledger, Mode
from budgetspan.ledger_redis import RedisLedger
from budgetspan.phase import Phase
from budgetspan.processors.budget import BudgetSpanProcessor
from budgetspan.progress import Milestone, ProgressSubscription, subscribe_progress
from budgetspan.run import (
    Outcome,
    Run,
    approval,
    cancel,
    current_phase,
    current_run,
    live_runs,
    set_ledger,
)
from budgetspan.run import PhaseScope as _PhaseScope
from budgetspan.run import RunScope as _RunScope
from budgetspan.setup import configure
from budgetspan.tools import ToolTimeout, tool

run = _RunScope
phase = _PhaseScope

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
    "ToolLimits",
    "ToolTimeout",
    "Usage",
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
    "subscribe_progress",
    "tool",
]
