"""What caching saved: budgetspan's cache (per cached tool) and provider prompt caching (per
workflow).

budgetspan's cache: every span with ``budgetspan.cache.result`` is one request. A hit saved the
recorded cost of the computation it stands for (``budgetspan.cache.saved_usd``, measured from
the model calls that computation made) and its duration less the lookup's. A hit whose original
cost was unknown adds to ``unknown_cost_hits``, never to the dollars.

Prompt caching: from each model call's token figures (``accounting.prompt_cache``), the cache-read
share of input tokens, what reads saved against the full input price, and the premium paid for
cache writes; the net is what caching earned. Calls of unpriced models are counted apart.
"""

from __future__ import annotations

from budgetspan import attributes as A
from budgetspan.report.numbers import number
from budgetspan.report.otlp import SpanRec
from budgetspan.report.results import CacheLine, PromptCacheLine, Savings

#: The attributes this module reads (added to the report's ``REPORT_KEEP``).
SAVINGS_KEYS = frozenset(
    {
        A.CACHE_RESULT,
        A.CACHE_NAME,
        A.CACHE_SAVED_USD,
        A.CACHE_SAVED_S,
        A.CACHE_COST_USD,
        A.GEN_AI_TOOL_NAME,
    }
)
MAX_LINES = 10_000  # distinct (workflow, name) cache lines; the rest are summed as "(others)"


def _int(v: object) -> int:
    if v is None:  # absent (cache tokens, mostly)
        return 0
    if type(v) is int:  # a token count, mostly: as ``int(number(v))``, without the calls
        return int(float(v)) if v > 0 else 0
    n = number(v)
    return int(n) if n is not None and n > 0 else 0


class SavingsCounter:
    """Folds each finished run's spans into the savings lines of its workflow."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], CacheLine] = {}
        self._prompt: dict[str, PromptCacheLine] = {}

    def add(self, workflow: str, spans: list[SpanRec]) -> None:
        for s in spans:
            a = s.attrs
            if A.CACHE_RESULT in a:
                self._add_cache(workflow, a)
            elif s.operation in A.MODEL_OPERATIONS:
                self._add_model_call(workflow, a)

    def _add_cache(self, workflow: str, a: dict[str, object]) -> None:
        name = str(a.get(A.CACHE_NAME) or a.get(A.GEN_AI_TOOL_NAME) or "unknown")
        key = (workflow, name)
        line = self._cache.get(key)
        if line is None:
            if len(self._cache) >= MAX_LINES:
                key = (workflow, "(others)")
            line = self._cache.setdefault(key, CacheLine(*key))
        result = a.get(A.CACHE_RESULT)
        if result == A.CACHE_RESULT_HIT:
            line.hits += 1
            saved = number(a.get(A.CACHE_SAVED_USD))
            if saved is None or saved < 0:
                line.unknown_cost_hits += 1
            else:
                line.saved_usd += saved
            line.saved_s += max(0.0, number(a.get(A.CACHE_SAVED_S)) or 0.0)
        elif result == A.CACHE_RESULT_MISS:
            line.misses += 1
        elif result == A.CACHE_RESULT_UNAVAILABLE:
            line.unavailable += 1
        else:
            line.skipped += 1

    def _add_model_call(self, workflow: str, a: dict[str, object]) -> None:
        line = self._prompt.get(workflow)
        if line is None:
            line = self._prompt[workflow] = PromptCacheLine(workflow)
        inp, out = _int(a.get(A.GEN_AI_USAGE_INPUT_TOKENS)), _int(a.get(A.GEN_AI_USAGE_OUTPUT_TOKENS))
        cr = _int(a.get(A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS))
        cw = _int(a.get(A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS))
        line.input_tokens += inp
        if not cr and not cw:
            return
        line.calls += 1
        line.cache_read_tokens += cr
        line.cache_write_tokens += cw
        from budgetspan.accounting.prompt_cache import prompt_cache_saving  # only where cache was used

        provider = str(a.get(A.GEN_AI_PROVIDER_NAME) or a.get(A.GEN_AI_SYSTEM_DEPRECATED) or "")
        saving = None
        for model in (a.get(A.GEN_AI_RESPONSE_MODEL), a.get(A.GEN_AI_REQUEST_MODEL)):
            if isinstance(model, str) and model:
                saving = prompt_cache_saving(provider, model, inp, out, cr, cw)
                if saving is not None:
                    break
        if saving is None:
            line.unpriced_calls += 1
            return
        line.saved_usd += saving.saved_usd
        line.premium_usd += saving.premium_usd

    def result(self) -> Savings:
        return Savings(
            cache=[self._cache[k] for k in sorted(self._cache)],
            prompt_cache=[self._prompt[k] for k in sorted(self._prompt) if self._prompt[k].calls],
        )


__all__ = ["SAVINGS_KEYS", "CacheLine", "PromptCacheLine", "Savings", "SavingsCounter"]
