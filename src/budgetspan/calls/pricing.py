"""What a model call costs and what its span says about its usage."""

from __future__ import annotations

import dataclasses
from typing import Any

from budgetspan import attributes as A
from budgetspan.accounting.ledger import Spend
from budgetspan.accounting.pricing import default_resolver

_INT64 = 2**63


def call_cost(
    provider: str | None, model: str | None, response_model: str | None, spend: Spend
) -> float | None:
    """The provider's own figure when it gave one, else priced by the response model, else by
    the requested one (a dated response id priced by its alias); None: unpriced."""
    if spend.cost_usd is not None:
        return spend.cost_usd
    resolver = default_resolver()
    for name in dict.fromkeys(m for m in (response_model, model) if m):
        cost = resolver.cost(
            provider or "",
            name,
            spend.input_tokens,
            spend.output_tokens,
            spend.cache_read_tokens,
            spend.cache_write_tokens,
        )
        if cost is not None:
            return cost
    return None


def usage_attributes(spend: Spend, cost_usd: float | None) -> dict[str, Any]:
    """The ``gen_ai.usage.*`` attributes of a call; a count no provider could mean (negative,
    beyond int64, which OTLP cannot encode) is left out, and an unpriced call is marked."""
    attrs: dict[str, Any] = {}
    for key, value in (
        (A.GEN_AI_USAGE_INPUT_TOKENS, spend.input_tokens),
        (A.GEN_AI_USAGE_OUTPUT_TOKENS, spend.output_tokens),
        (A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, spend.cache_read_tokens),
        (A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, spend.cache_write_tokens),
        (A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, spend.reasoning_tokens),
    ):
        if value is not None and 0 <= value < _INT64:
            attrs[key] = value
    if cost_usd is not None:
        attrs[A.GEN_AI_USAGE_COST] = cost_usd
    else:
        attrs[A.COST_UNPRICED] = True
    return attrs


_FIGURES = tuple(f.name for f in dataclasses.fields(Spend))


def increase(now: Spend, before: Spend) -> Spend:
    """What a cumulative usage report adds to the previous one, figure by figure (never negative;
    a figure not reported stays None)."""
    out = Spend()
    for name in _FIGURES:
        a, b = getattr(now, name), getattr(before, name)
        setattr(out, name, None if a is None else max(0, a - (b or 0)))
    return out


def highest(a: Spend, b: Spend) -> Spend:
    """Figure by figure, the larger of two cumulative reports (what has been committed so far)."""
    return Spend(*(max(getattr(a, n) or 0, getattr(b, n) or 0) for n in _FIGURES))


def estimate_attributes(estimate: Spend | None) -> dict[str, Any]:
    """What was charged for a call whose provider never reported its usage (budgetspan's own
    figures, apart from ``gen_ai.usage.*``, which stays what the provider said)."""
    if estimate is None:
        return {}
    attrs: dict[str, Any] = {}
    if estimate.input_tokens:
        attrs[A.USAGE_ESTIMATED_INPUT] = estimate.input_tokens
    if estimate.output_tokens:
        attrs[A.USAGE_ESTIMATED_OUTPUT] = estimate.output_tokens
    if estimate.cost_usd is not None:
        attrs[A.COST_ESTIMATED] = estimate.cost_usd
    return attrs
