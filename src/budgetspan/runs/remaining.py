"""What is left of a run's budget, as numbers and as one line a model can plan with.

``run.remaining()`` gives, for each limit that is set, the limit less what is used (never below
zero); ``run.remaining_text()`` says it in words for a system prompt: "3 of 6 model calls and
$0.14 of $0.25 left". Both read the limits this process holds for the run (raised by its own
extensions) and the usage from the ledger (with Redis, every process's).
"""

from __future__ import annotations

from budgetspan.accounting.budget import Budget, Usage, as_dollars, as_figure

#: The order and the words of the one-line form.
_WORDS: dict[str, str] = {
    "max_model_calls": "model calls",
    "max_tool_calls": "tool calls",
    "max_steps": "steps",
    "max_total_tokens": "tokens",
    "max_input_tokens": "input tokens",
    "max_output_tokens": "output tokens",
    "max_cost_usd": "",
    "max_wall_clock_s": "",
    "max_retries": "retries",
}


def left(budget: Budget, usage: Usage) -> dict[str, float]:
    """The limit less the usage, for each limit that is set."""
    return {name: max(limit - usage.value_of(name), 0) for name, limit in budget.limits().items()}


def _one(name: str, limit: float, rest: float) -> str:
    if name == "max_cost_usd":
        return f"{as_dollars(rest)} of {as_dollars(limit)}"
    if name == "max_wall_clock_s":
        return f"{rest:.0f} of {as_figure(limit)} seconds"
    return f"{as_figure(rest)} of {as_figure(limit)} {_WORDS[name]}"


def text(budget: Budget, usage: Usage) -> str:
    """ "3 of 6 model calls and $0.14 of $0.25 left" ("No limits." when none is set)."""
    limits = budget.limits()
    rest = left(budget, usage)
    parts = [_one(name, limits[name], rest[name]) for name in _WORDS if name in limits]
    if not parts:
        return "No limits."
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return listed + " left"


__all__ = ["left", "text"]
