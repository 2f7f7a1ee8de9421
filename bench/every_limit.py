"""The budget the benchmarks account their runs to: a limit of every kind (calls, steps, tokens,
dollars, wall clock, retries), set too high to be reached, so every check runs as in production.

The bench scripts run as ``python bench/NAME.py``, which puts this folder on the import path.
"""

from __future__ import annotations

from budgetspan.accounting.budget import Budget

EVERY_LIMIT = Budget(
    max_model_calls=10**12,
    max_tool_calls=10**12,
    max_steps=10**12,
    max_input_tokens=10**15,
    max_output_tokens=10**15,
    max_total_tokens=10**15,
    max_cost_usd=1e12,
    max_wall_clock_s=1e9,
    max_retries=10**12,
)
