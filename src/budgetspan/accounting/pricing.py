"""Dollar cost of one call from provider + model + token usage.

Prices come from genai-prices' bundled offline snapshot (no network at start-up; its refresh is
opt-in), behind our own resolver so that:

- an unknown model is *unpriced* (``None``), never a fake $0;
- the per-model lookup is cached (a full ``calc_price`` costs tens of microseconds);
- ``BUDGETSPAN_PRICES`` (a TOML file) overrides or adds prices, e.g. for fine-tunes or self-hosted models.

Token figures follow the OpenTelemetry convention: ``input_tokens`` *includes* cache reads and
writes (Anthropic's raw ``input_tokens`` must be summed up before it is passed here).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import warnings
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from budgetspan.accounting.toml_file import TomlFileError, read_toml
from budgetspan.attributes import ENV_PRICES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenPrice:
    """A price override in USD per million tokens."""

    input_mtok: float
    output_mtok: float
    cache_read_mtok: float | None = None
    cache_write_mtok: float | None = None


class PriceConfigError(ValueError):
    """A price file that cannot be used; names the variable and the accepted form."""


PRICE_FILE_FORM = (
    'a TOML file with one table per "provider/model", e.g. ["openai/my-model"] '
    "input_mtok = 1.0, output_mtok = 2.0 (optional cache_read_mtok, cache_write_mtok), in USD per million tokens"
)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the float range
        return False


def _number(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value) or value < 0:
        raise PriceConfigError(
            f"{ENV_PRICES}: {where}.{key} must be a non-negative number, got {value!r}; expected {PRICE_FILE_FORM}"
        )
    return float(value)


def parse_price_overrides(
    data: dict[str, Any], source: str = ENV_PRICES
) -> dict[tuple[str, str], TokenPrice]:
    """Validate a parsed price table; every error names the entry and the accepted form."""
    out: dict[tuple[str, str], TokenPrice] = {}
    for key, entry in data.items():
        if not isinstance(entry, dict) or "/" not in key:
            raise PriceConfigError(
                f'{source}: entry {key!r} is not a "provider/model" table; expected {PRICE_FILE_FORM}'
            )
        unknown = set(entry) - {"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"}
        if unknown or "input_mtok" not in entry or "output_mtok" not in entry:
            raise PriceConfigError(
                f"{source}: entry {key!r} has keys {sorted(entry)}; expected {PRICE_FILE_FORM}"
            )
        provider, model = key.split("/", 1)
        out[(provider.lower(), model)] = TokenPrice(
            _number(key, "input_mtok", entry["input_mtok"]),
            _number(key, "output_mtok", entry["output_mtok"]),
            None
            if entry.get("cache_read_mtok") is None
            else _number(key, "cache_read_mtok", entry["cache_read_mtok"]),
            None
            if entry.get("cache_write_mtok") is None
            else _number(key, "cache_write_mtok", entry["cache_write_mtok"]),
        )
    return out


def load_price_file(path: str) -> dict[tuple[str, str], TokenPrice]:
    try:
        data = read_toml(path)
    except TomlFileError as e:
        raise PriceConfigError(f"{ENV_PRICES}={path!r}: {e}; expected {PRICE_FILE_FORM}") from e.__cause__
    return parse_price_overrides(data, f"{ENV_PRICES}={path!r}")


# genai-prices provider ids for our gen_ai.provider.name values where they differ.
_PROVIDER_IDS = {
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "gcp.vertex_ai": "google",
    "gcp.gemini": "google",
    "gcp.gen_ai": "google",
    "aws.bedrock": "aws",
    "x_ai": "x-ai",
    "mistral_ai": "mistral",
    "together_ai": "together",
}

_MISSING = object()


class PriceResolver:
    """Cached lookups; thread-safe (a benign race computes a lookup twice)."""

    def __init__(self, overrides: dict[tuple[str, str], TokenPrice] | None = None) -> None:
        self.overrides = dict(overrides or {})
        self._cache: dict[tuple[str, str], Any] = {}
        # What ``cost`` multiplies by: (input, cache read, cache write, output) USD per million
        # tokens for a flat price, the genai-prices object for any other, None when unpriced.
        self._rates: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        #: Names no price table knows (an Azure OpenAI deployment, a gateway's alias) -> the
        #: priced model an answer to them named (``learn_name``; kept until forgotten).
        self._answered_as: dict[tuple[str, str], str] = {}

    def _model_price(self, provider: str, model: str) -> Any:
        key = (provider, model)
        hit = self._cache.get(key, _MISSING)
        if hit is not _MISSING:
            return hit
        found: Any = self.overrides.get((provider.lower(), model)) or self.overrides.get(("*", model))
        if found is None:
            found = _lookup_genai_prices(provider, model)
        if found is None:
            found = _fine_tuned_price(provider, model)
        with self._lock:
            if len(self._cache) > 4096:  # unbounded model names must not grow memory forever
                self._cache.clear()
                self._rates.clear()
            self._cache[key] = found
            self._rates[key] = _rates(found)
        return found

    def is_priced(self, provider: str, model: str) -> bool:
        return self._model_price(provider, model) is not None

    def learn_name(self, provider: str, name: str, answered: str) -> None:
        """A call to ``name``, which no price table knows, was answered by the priced model
        ``answered``: ``name`` is priced as it from now on, worst cases included (else every
        later call's worst case is unknown and a dollar limit holds none of them)."""
        # (Asked of the cache, not of ``_answered_as``: a name learnt before the cache was
        # emptied is learnt again.)
        if self.is_priced(provider, name):
            return
        price = self._model_price(provider, answered)
        if price is None:
            return
        with self._lock:
            if len(self._answered_as) > 1024:  # forgotten whole, to be learnt again as answered
                for key in self._answered_as:
                    self._cache.pop(key, None)
                    self._rates.pop(key, None)
                self._answered_as.clear()
            self._answered_as[(provider, name)] = answered
            self._cache[(provider, name)] = price
            self._rates[(provider, name)] = _rates(price)
        self._worst_case_cost.cache_clear()  # (it may hold "unknown" for the name)

    def answered_as(self, provider: str, name: str | None) -> str | None:
        """The priced model a name no price table knows was learnt as (``learn_name``)."""
        return self._answered_as.get((provider, name)) if name else None

    def cost(
        self,
        provider: str,
        model: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
        cache_read_tokens: int | None = None,
        cache_write_tokens: int | None = None,
    ) -> float | None:
        """USD cost, or None when the model is unknown or the usage was not reported."""
        if not model or (input_tokens is None and output_tokens is None):
            return None
        key = (provider or "", model)
        rates = self._rates.get(key, _MISSING)
        if rates is _MISSING:
            rates = _rates(self._model_price(*key))
        if type(rates) is tuple and not cache_read_tokens and not cache_write_tokens:
            # The usual call, first: a flat price and no cache figures.
            inp = input_tokens or 0
            out = output_tokens or 0
            try:
                if inp >= 0 and out >= 0:
                    value = (inp * rates[0] + out * rates[3]) / 1e6
                    return value if 0 <= value < _INF else None  # (a rate set in code may be odd)
            except (OverflowError, TypeError):
                return None
        return self._cost(
            rates, provider, model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens
        )

    def _cost(
        self,
        rates: Any,
        provider: str,
        model: str,
        input_tokens: int | None,
        output_tokens: int | None,
        cache_read_tokens: int | None,
        cache_write_tokens: int | None,
    ) -> float | None:
        """``cost`` for everything but the usual call: cache figures, odd figures, tiered prices."""
        if rates is None:
            return None
        inp = input_tokens or 0
        out = output_tokens or 0
        cr = cache_read_tokens or 0
        cw = cache_write_tokens or 0
        try:  # absurd token figures (beyond float range, not numbers) are unpriced
            if ((cr or cw) and (cr < 0 or cw < 0 or cr + cw > inp)) or inp < 0 or out < 0:  # rare: clamp
                inp, out, cr, cw = (x if x > 0 else 0 for x in (inp, out, cr, cw))
                cr = min(cr, inp)  # cache figures cannot exceed the input
                cw = min(cw, inp - cr)
            if type(rates) is tuple:
                i, r, w, o = rates
                if cr or cw:
                    value = ((inp - cr - cw) * i + cr * r + cw * w + out * o) / 1e6
                else:
                    value = (inp * i + out * o) / 1e6
        except (OverflowError, TypeError, ValueError):
            return None
        if type(rates) is not tuple:
            try:
                from genai_prices import Usage as GPUsage

                usage = GPUsage(
                    input_tokens=inp, output_tokens=out, cache_read_tokens=cr, cache_write_tokens=cw
                )
                value = float(rates.calc_price(usage)["total_price"])
            except Exception:  # an odd price shape must not break the caller: unpriced
                log.debug("genai-prices failed for %s/%s", provider, model, exc_info=True)
                return None
        return value if 0 <= value < _INF else None  # (NaN fails both)

    def worst_case_cost(
        self, provider: str, model: str | None, input_tokens_estimate: int, max_output_tokens: int | None
    ) -> float | None:
        """Cost if the call read its estimated input and wrote all of ``max_output_tokens`` (its
        input alone where the output limit is unknown); None when the model or both are unknown."""
        if not model or (max_output_tokens is None and not input_tokens_estimate):
            return None
        return self._worst_case_cost(
            provider, model, _size_class(input_tokens_estimate), max_output_tokens or 0
        )

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (the resolver lives as long as the process)
    def _worst_case_cost(
        self, provider: str, model: str, input_tokens: int, output_tokens: int
    ) -> float | None:
        """``cost`` cached per size class: a tiered price goes through genai-prices (~5 µs), and
        every model call asks for its worst case before it is sent."""
        return self.cost(provider, model, input_tokens, output_tokens)


def _lookup_genai_prices(provider: str, model: str) -> Any:
    try:
        from genai_prices import Usage as GPUsage
        from genai_prices import calc_price
    except Exception:  # pragma: no cover - dependency missing
        return None
    pid = _PROVIDER_IDS.get(provider, provider) or None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            found = calc_price(
                GPUsage(input_tokens=1, output_tokens=1), model_ref=model, provider_id=pid
            ).model_price
            return _as_token_price(found) or found
        except LookupError:  # unknown model: unpriced, never a guessed price from another provider
            return None
        except Exception:
            log.debug("genai-prices lookup failed for %s/%s", provider, model, exc_info=True)
            return None


_INF = float("inf")


def _size_class(tokens: int) -> int:
    """``tokens`` rounded up to a power of two: a worst case never below the estimate."""
    return 0 if tokens <= 0 else 1 << (int(tokens) - 1).bit_length()


#: OpenAI's fine-tuned models cost 1.5-2x their base model's rates per token: priced at 2x, so a
#: dollar limit is never undercounted.
FINE_TUNED_FACTOR = 2.0


def _fine_tuned_price(provider: str, model: str) -> TokenPrice | None:
    """A fine-tuned id (``ft:gpt-4o-mini-2024-07-18:org::id``) priced from its base model."""
    if not model.startswith("ft:") or model.count(":") < 2:
        return None
    base = _lookup_genai_prices(provider, model.split(":")[1])
    if type(base) is not TokenPrice:
        return None  # unknown base, or a tiered price: unpriced
    f = FINE_TUNED_FACTOR
    return TokenPrice(
        base.input_mtok * f,
        base.output_mtok * f,
        None if base.cache_read_mtok is None else base.cache_read_mtok * f,
        None if base.cache_write_mtok is None else base.cache_write_mtok * f,
    )


def _rates(price: Any) -> Any:
    """What ``cost`` multiplies by (see ``PriceResolver._rates``); cache prices default to the input's."""
    if type(price) is not TokenPrice:
        return price
    i = price.input_mtok
    r = i if price.cache_read_mtok is None else price.cache_read_mtok
    w = i if price.cache_write_mtok is None else price.cache_write_mtok
    return (i, r, w, price.output_mtok)


def _as_token_price(model_price: Any) -> TokenPrice | None:
    """Flat per-token prices as plain floats: the fast path (a full calc_price is ~25-50 µs).

    Tiered or otherwise structured prices return None and keep going through genai-prices.
    """
    fields = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")
    values = [getattr(model_price, f, None) for f in fields]
    if not all(v is None or isinstance(v, Decimal) for v in values):
        return None
    inp, out, cr, cw = (None if v is None else float(v) for v in values)
    if inp is None and out is None:
        return None
    return TokenPrice(inp or 0.0, out or 0.0, cr, cw)


_default: PriceResolver | None = None
_default_lock = threading.Lock()


def default_resolver() -> PriceResolver:
    """The process-wide resolver, with ``BUDGETSPAN_PRICES`` applied (read once).

    ``configure()`` refuses a bad price file at start-up; a program that never called it gets the
    error logged once and genai-prices' own prices, so usage is still counted.
    """
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                path = os.environ.get(ENV_PRICES, "").strip()
                try:
                    overrides = load_price_file(path) if path else None
                except PriceConfigError as e:
                    log.error("budgetspan: %s; the price overrides are ignored", e)
                    overrides = None
                _default = PriceResolver(overrides)
    return _default


def set_default_resolver(resolver: PriceResolver | None) -> None:
    global _default
    _default = resolver
