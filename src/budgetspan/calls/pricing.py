"""What a model call costs and what its span says about its usage."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from budgetspan import attributes as A
from budgetspan.accounting.budget import Limit
from budgetspan.accounting.ledger import Mode, Refusal, Spend
from budgetspan.accounting.pricing import default_resolver
from budgetspan.config import get_config
from budgetspan.events import internal_error

if TYPE_CHECKING:
    from budgetspan.runs.run import Run

_INT64 = 2**63


def call_cost(
    provider: str | None, model: str | None, response_model: str | None, spend: Spend
) -> float | None:
    """The provider's own figure when it gave one, else priced by the response model, else by
    the requested one (a dated response id priced by its alias); None: unpriced."""
    if spend.cost_usd is not None:
        return spend.cost_usd
    resolver = default_resolver()
    names = (response_model, model) if response_model != model else (model,)
    for name in names:
        if not name:
            continue
        cost = resolver.cost(
            provider or "",
            name,
            spend.input_tokens,
            spend.output_tokens,
            spend.cache_read_tokens,
            spend.cache_write_tokens,
        )
        if cost is not None:
            if name is response_model and model:  # a deployment or alias name: its price learnt
                resolver.learn_name(provider or "", model, name)
            return cost + spend.tool_fees_usd if spend.tool_fees_usd else cost
    return None


def worst_case_cost(
    provider: str | None,
    model: str,
    input_tokens: int | None,
    output_tokens: int | None,
    attributes: dict[str, Any],
) -> float | None:
    """The call's worst case: its tokens' (``PriceResolver.worst_case_cost``) and the built-in
    tools' fees it may run up (``A.TOOL_FEES_WORST_CASE``, set by the instrumentation)."""
    cost = default_resolver().worst_case_cost(provider or "", model, input_tokens or 0, output_tokens)
    fees = attributes.get(A.TOOL_FEES_WORST_CASE)
    return cost + fees if cost is not None and isinstance(fees, float) else cost


def reported(spend: Spend | None) -> bool:
    """Whether a provider reported a call's tokens (unreported ones are estimated, never zero)."""
    return spend is not None and (spend.input_tokens is not None or spend.output_tokens is not None)


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


def increase(now: Spend, before: Spend) -> Spend:
    """What a cumulative usage report adds to the previous one, figure by figure (never negative;
    a figure not reported stays None)."""
    return Spend(
        _more(now.input_tokens, before.input_tokens),
        _more(now.output_tokens, before.output_tokens),
        _more(now.cache_read_tokens, before.cache_read_tokens),
        _more(now.cache_write_tokens, before.cache_write_tokens),
        _more(now.reasoning_tokens, before.reasoning_tokens),
        _more(now.cost_usd, before.cost_usd),
    )


def _more(now: Any, before: Any) -> Any:
    return None if now is None else max(0, now - (before or 0))


def highest(a: Spend, b: Spend) -> Spend:
    """Figure by figure, the larger of two cumulative reports (what has been committed so far)."""
    return Spend(
        max(a.input_tokens or 0, b.input_tokens or 0),
        max(a.output_tokens or 0, b.output_tokens or 0),
        max(a.cache_read_tokens or 0, b.cache_read_tokens or 0),
        max(a.cache_write_tokens or 0, b.cache_write_tokens or 0),
        max(a.reasoning_tokens or 0, b.reasoning_tokens or 0),
        max(a.cost_usd or 0.0, b.cost_usd or 0.0),
    )


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


log = logging.getLogger(__name__)
_warned_unpriced: set[tuple[str | None, str | None]] = set()
#: Models named in the warning; past them one line says so (a model name may be a caller's: a
#: proxy passing its users' ``model`` through made a warning and a name held for ever per name).
MOST_WARNED = 100


def warn_unpriced_once(provider: str | None, model: str | None, run: Run) -> None:
    """Say once per model that a run with a dollar limit cannot count its calls in dollars (the
    names quoted with ``%r``: a newline in one wrote a forged line into the application's log)."""
    key = (provider, model)
    if key in _warned_unpriced or len(_warned_unpriced) > MOST_WARNED:
        return
    _warned_unpriced.add(key)
    if len(_warned_unpriced) > MOST_WARNED:
        log.warning("budgetspan: %d models have no known price; further ones are not named", MOST_WARNED)
        return
    log.warning(
        "budgetspan: %r/%r has no known price; its calls are not counted in dollars against the "
        "max_cost_usd of run %s (workflow %r). Name its price in %s, or set %s=refuse.",
        provider,
        model,
        run.id,
        run.workflow,
        A.ENV_PRICES,
        A.ENV_UNPRICED,
    )


def check_unpriced(provider: str | None, model: str | None, attributes: dict[str, Any], run: Run) -> None:
    """A model call that cannot be counted in dollars, in a run with a dollar limit: a model with
    no known price, or a built-in tool with no known fee (named in ``attributes`` by the request's
    fee plan before it is sent). ``BUDGETSPAN_UNPRICED=refuse`` refuses it; ``warn`` (the default)
    lets it through, says so once per model in the log and on each span, and the run's
    explanation counts it ("+N unpriced calls")."""
    try:
        priced = model is not None and default_resolver().is_priced(provider or "", model)
        policy = get_config().unpriced
    except Exception:
        internal_error("Call unpriced check")
        return
    tools = attributes.get(A.TOOL_FEES_UNPRICED)
    if priced and not tools:
        return
    attributes[A.COST_UNPRICED_POLICY] = policy
    if policy == "refuse" and run.mode is Mode.ENFORCE:
        if priced:
            names = ", ".join(repr(t) for t in tools or ())
            detail = (
                f"Stopped: a built-in tool with no known fee ({names}) was requested under a dollar limit"
            )
            raise run.exhaust(Refusal(Limit.UNPRICED.value, None, tool=model), detail=detail)
        raise run.exhaust(Refusal(Limit.UNPRICED.value, None, tool=model))
    if not priced:
        warn_unpriced_once(provider, model, run)
