"""README claims that did not hold when followed literally (review 12): the "what is left" line
and the run's explanation are plain text a model or a person reads, and ``spend()`` never answers
0 for what it does not know."""

from __future__ import annotations

import pytest

import budgetspan
from budgetspan.accounting.budget import Budget, Usage, explain
from budgetspan.accounting.ledger import CallKind, Spend
from budgetspan.runs import remaining


def test_what_is_left_says_large_counts_and_small_dollars_in_plain_figures() -> None:
    """The README's ``[users.default] max_total_tokens = 2000000`` read "1.99982e+06 of 2e+06
    tokens", and a sub-cent budget "$0.00 of $0.00"."""
    budget = Budget(max_total_tokens=2_000_000, max_model_calls=6, max_cost_usd=0.0002)
    used = Usage(model_calls=1, input_tokens=127, output_tokens=50, cost_usd=0.00008)
    assert remaining.text(budget, used) == (
        "5 of 6 model calls, 1,999,823 of 2,000,000 tokens and $0.0001 of $0.0002 left"
    )
    assert remaining.text(Budget(max_cost_usd=0.25), Usage(cost_usd=0.11)) == "$0.14 of $0.25 left"


def test_the_run_explanation_says_large_token_counts_in_plain_figures() -> None:
    """ "Stopped at 1999000 of 2e+06 tokens"; and "1 model calls made"."""
    used = Usage(model_calls=1, input_tokens=1_999_000, cost_usd=0.5)
    assert explain("max_total_tokens", 2_000_000, used) == (
        "Stopped at 1,999,000 of 2,000,000 tokens; 1 model call made; $0.50 spent."
    )
    assert explain("max_wall_clock_s", 0.5, Usage(wall_clock_s=0.6)).startswith(
        "Stopped at the 0.5 s time limit after 0.6 s"
    )


def test_a_scope_without_a_budget_is_not_answered_as_zero_spend(
    scope_clock: list[float], tracing: object
) -> None:
    """Only scopes with a budget are kept: a tenant without one that spent $0.30 read $0.00."""
    budgetspan.set_scope_budget("tenant", "acme", Budget(max_cost_usd=200), window="day")
    with budgetspan.run("chat", tenant="zz") as run:
        run.commit(run.reserve(CallKind.MODEL), Spend(input_tokens=10, output_tokens=5, cost_usd=0.3))
    with pytest.raises(ValueError, match="tenant zz has no budget here: only scopes with a budget"):
        budgetspan.spend(tenant="zz")
    with pytest.raises(ValueError, match="tenant zz has no budget here and no daily"):
        budgetspan.spend(tenant="zz", window="day")  # (a window named: read if another's budget kept it)
    assert budgetspan.spend(tenant="acme").cost_usd == 0  # a budget, no call yet: truly 0
    budgetspan.set_scope_budget("tenant", "default", Budget(max_cost_usd=5), window="day")
    with budgetspan.run("chat", tenant="zz") as run:
        run.commit(run.reserve(CallKind.MODEL), Spend(input_tokens=10, output_tokens=5, cost_usd=0.3))
    assert budgetspan.spend(tenant="zz").cost_usd == pytest.approx(0.3)


def test_a_window_alone_counts_every_tenants_spend_and_refuses_nothing(
    scope_clock: list[float], tracing: object
) -> None:
    """The README's way to query every tenant: ``[tenants.default]`` with a window and no limit."""
    budgetspan.set_scope_budget("tenant", "default", Budget(), window="day")
    for tenant, calls in (("zz", 3), ("yy", 40)):
        with budgetspan.run("chat", tenant=tenant) as run:
            for _ in range(calls):
                run.commit(
                    run.reserve(CallKind.MODEL), Spend(input_tokens=10, output_tokens=5, cost_usd=0.01)
                )
    assert budgetspan.spend(tenant="zz").model_calls == 3
    assert budgetspan.spend(tenant="yy").cost_usd == pytest.approx(0.40)
    assert budgetspan.spend(tenant="yy", window="day").input_tokens == 400
