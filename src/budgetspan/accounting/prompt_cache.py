"""What provider prompt caching saved on one call, in dollars, from its token figures.

``saved``: the cache-read tokens at the full input price less at the cache-read price.
``premium``: what the cache-write tokens cost above the full input price (Anthropic charges
1.25x for a 5-minute write). The net saving is ``saved - premium``; a prompt written to the cache
and never read again shows as a net loss. None where the model has no price: unknown, not zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from budgetspan.accounting.ledger import Spend
from budgetspan.accounting.pricing import PriceResolver, default_resolver


@dataclass(frozen=True)
class PromptCacheSaving:
    saved_usd: float
    premium_usd: float

    @property
    def net_usd(self) -> float:
        return self.saved_usd - self.premium_usd


def prompt_cache_saving(
    provider: str,
    model: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    cache_read_tokens: int | None,
    cache_write_tokens: int | None,
    resolver: PriceResolver | None = None,
) -> PromptCacheSaving | None:
    """The call's saving, or None when it read and wrote nothing from the cache or is unpriced.
    ``input_tokens`` includes the cached ones (the OpenTelemetry convention)."""
    cr, cw = cache_read_tokens or 0, cache_write_tokens or 0
    if (cr <= 0 and cw <= 0) or not model:
        return None
    r = resolver or default_resolver()
    full = r.cost(provider, model, input_tokens, output_tokens)
    read_only = r.cost(provider, model, input_tokens, output_tokens, cr, 0)
    actual = r.cost(provider, model, input_tokens, output_tokens, cr, cw)
    if full is None or read_only is None or actual is None:
        return None
    return PromptCacheSaving(max(0.0, full - read_only), max(0.0, actual - read_only))


def spend_saving(provider: str | None, model: str | None, spend: Spend) -> PromptCacheSaving | None:
    """:func:`prompt_cache_saving` for one call's reported ``Spend`` (the metrics' view)."""
    s = spend
    return prompt_cache_saving(
        provider or "", model, s.input_tokens, s.output_tokens, s.cache_read_tokens, s.cache_write_tokens
    )


__all__ = ["PromptCacheSaving", "prompt_cache_saving", "spend_saving"]
