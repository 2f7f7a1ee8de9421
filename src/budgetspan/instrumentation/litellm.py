"""LiteLLM used as a client library: ``litellm.completion`` and ``litellm.acompletion``, whole or
streamed (``stream=True``), whatever provider LiteLLM routes the request to.

One ``litellm.completion`` is one model call. LiteLLM reaches some providers through the OpenAI
SDK (Azure OpenAI, legacy completions, older LiteLLM versions for OpenAI itself); budgetspan's
OpenAI wrapper sees that inner request inside this call (``in_model_call()``) and lets it through
uncounted. The same guard keeps LiteLLM's own re-entries (``acompletion`` runs ``completion`` in
a thread with the caller's context; ``num_retries`` and fallbacks call ``completion`` again)
inside the one call the caller made.

Provider and model come from LiteLLM's own routing (``get_llm_provider``): ``openai/gpt-4o-mini``
is ``gpt-4o-mini`` at ``openai``. Results are OpenAI-shaped (``ModelResponse`` and
``ModelResponseStream``), read by the OpenAI chat observer. A stream that did not ask for usage
is asked for it (``stream_options.include_usage``) where LiteLLM says the provider takes the
option; the extra usage chunk is hidden from the caller, as for the OpenAI SDK.

Unreported usage: LiteLLM fills a response the provider sent without usage with zeros; zero input
and zero output is taken as unreported (no call reads 0 tokens), so the call is charged budgetspan's
estimate. In a stream that asked for usage from a provider that sends none, LiteLLM counts the
tokens itself (its tokenizer) and returns them as the usage chunk, unmarked: budgetspan records
them as reported (never 0, but LiteLLM's count, not the provider's).

Retries and fallbacks: LiteLLM catches any error inside it (also a refusal by budgetspan) and
tries again by calling itself (``num_retries``, ``fallbacks``, ``context_window_fallback_dict``).
Every request it begins after the first one of the call (``Logging.pre_call``, called once before
each request it sends) is a retry of the call, counted against ``max_retries`` and refused before
it is sent; the OpenAI SDK's own retries inside LiteLLM count as for the SDK. A refusal that
LiteLLM wrapped in its own exception reaches the caller as the ``BudgetExhausted`` it was.

Cost: budgetspan's price (genai-prices, ``BUDGETSPAN_PRICES``) by default, as for every other
library. ``BUDGETSPAN_LITELLM_COST=litellm`` takes LiteLLM's own figure instead (its
``response_cost``, or its price table for a stream's usage); the span then says
``budgetspan.cost.source=litellm``. Worst-case reservations are priced by budgetspan either way.
"""

from __future__ import annotations

import logging
import os
from contextvars import ContextVar
from dataclasses import replace
from typing import Any

from budgetspan import attributes as A
from budgetspan.accounting.budget import BudgetExhausted
from budgetspan.accounting.ledger import Spend
from budgetspan.calls.call import Call
from budgetspan.config import capture_content
from budgetspan.instrumentation.agents import budget_error
from budgetspan.instrumentation.observers import Observer, content_json
from budgetspan.instrumentation.openai import ChatObserver, _ask_for_stream_usage, provider_from_url
from budgetspan.instrumentation.patch_table import PatchInstrumentor
from budgetspan.instrumentation.patching import model_call, positive_int, wrapper_for
from budgetspan.instrumentation.sdk_call import CURRENT_CALL, in_model_call

log = logging.getLogger(__name__)

#: LiteLLM's provider names -> gen_ai.provider.name where they differ (semconv well-known values).
_PROVIDERS = {
    "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai",
    "vertex_ai_beta": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
    "mistral": "mistral_ai",
    "xai": "x_ai",
    "fireworks_ai": "fireworks",
    "text-completion-openai": "openai",
}

COST_BUDGETSPAN = "budgetspan"
COST_LITELLM = "litellm"
_warned_cost_value: set[str] = set()


def cost_source() -> str:
    """``BUDGETSPAN_LITELLM_COST``: whose price a LiteLLM call is charged at (budgetspan's unless
    ``litellm``). A value neither accepts stops configure() (ConfigError); one set later is said once in the
    log and the default kept."""
    value = os.environ.get(A.ENV_LITELLM_COST, "").strip().lower() or COST_BUDGETSPAN
    if value in (COST_BUDGETSPAN, COST_LITELLM):
        return value
    if value not in _warned_cost_value:
        _warned_cost_value.add(value)
        log.error(
            "budgetspan: %s=%r is not %s or %s; LiteLLM calls are priced by budgetspan",
            A.ENV_LITELLM_COST,
            value,
            COST_BUDGETSPAN,
            COST_LITELLM,
        )
    return COST_BUDGETSPAN


# --- request ------------------------------------------------------------------------------------

_routes: dict[tuple[str, str | None, str | None], tuple[str, str | None]] = {}


def route(model: str, custom_provider: Any, api_base: Any) -> tuple[str, str | None]:
    """(model as the provider knows it, LiteLLM's provider name or None), cached."""
    provider = custom_provider if isinstance(custom_provider, str) else None
    base = api_base if isinstance(api_base, str) else None
    key = (model, provider, base)
    found = _routes.get(key)
    if found is None:
        import litellm

        try:
            bare, name, _, _ = litellm.get_llm_provider(
                model=model, custom_llm_provider=provider, api_base=base
            )
            found = (bare, name)
        except Exception:  # a name LiteLLM cannot route: the call fails in LiteLLM, unpriced here
            found = (model, provider)
        if len(_routes) > 256:
            _routes.clear()
        _routes[key] = found
    return found


def _request(args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's arguments by name (``completion(model, messages, ...)`` is common)."""
    request = dict(kwargs)
    for index, name in enumerate(("model", "messages")):
        if len(args) > index:
            request.setdefault(name, args[index])
    return request


def _new_call(_instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Call, Observer]:
    """``completion`` / ``acompletion`` as one budgeted call; LiteLLM's own re-entries (and the
    OpenAI SDK requests it makes) run inside it uncounted (``wrapper_for``)."""
    request = _request(args, kwargs)
    api_base = request.get("api_base") or request.get("base_url")
    raw_model = request.get("model")
    model, litellm_provider = (
        route(raw_model, request.get("custom_llm_provider"), api_base)
        if isinstance(raw_model, str)
        else (None, None)
    )
    provider = _PROVIDERS.get(litellm_provider or "", litellm_provider or "litellm")
    _, host, port = provider_from_url(api_base) if isinstance(api_base, str) else (None, None, None)
    request["model"] = model
    max_tokens = positive_int(request.get("max_completion_tokens")) or positive_int(request.get("max_tokens"))
    streaming = request.get("stream") is True
    call = model_call(A.OP_CHAT, (provider, host, port), request, max_tokens, streaming)
    capture = capture_content()
    if capture:
        encoded = content_json(request.get("messages"))
        if encoded is not None:
            call.attributes[A.GEN_AI_INPUT_MESSAGES] = encoded
    observer = LiteLLMObserver(call, capture, litellm_provider, cost_source() == COST_LITELLM)
    if streaming and _takes_stream_options(model, litellm_provider) and _ask_for_stream_usage(call, kwargs):
        observer.hide_usage_chunk = True
    return call, observer


def _takes_stream_options(model: str | None, provider: str | None) -> bool:
    if not model:
        return False
    try:
        import litellm

        supported = litellm.get_supported_openai_params(model=model, custom_llm_provider=provider)
    except Exception:
        return False
    return isinstance(supported, list) and "stream_options" in supported


# --- results ------------------------------------------------------------------------------------


class LiteLLMObserver(ChatObserver):
    """OpenAI-shaped results; with ``BUDGETSPAN_LITELLM_COST=litellm``, LiteLLM's cost figure
    (where LiteLLM has none, budgetspan's price stands)."""

    def __init__(self, call: Call, capture: bool, litellm_provider: str | None, litellm_cost: bool) -> None:
        super().__init__(call, capture)
        self.litellm_provider = litellm_provider
        self.litellm_cost = litellm_cost

    def set_usage(self, spend: Spend | None) -> None:
        if spend is not None and spend.input_tokens == 0 and spend.output_tokens == 0:
            return  # LiteLLM's stand-in when the provider reported nothing: no call reads 0 tokens
        if spend is not None and self.litellm_cost and spend.cost_usd is None:
            spend = self._priced(spend, self._litellm_price(spend))
        super().set_usage(spend)

    def on_response(self, response: Any) -> None:
        super().on_response(response)
        usage = self.call.usage
        if self.litellm_cost and usage is not None:
            hidden = getattr(response, "_hidden_params", None)  # what LiteLLM charged this response
            cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
            self.call.usage = self._priced(usage, cost)

    def _priced(self, spend: Spend, cost: Any) -> Spend:
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 <= cost < float("inf"):
            return spend
        self.call.end_attributes[A.COST_SOURCE] = COST_LITELLM
        return replace(spend, cost_usd=float(cost))

    def _litellm_price(self, usage: Spend) -> float | None:
        """LiteLLM's price for reported usage (None: LiteLLM has no price either)."""
        model = self.call.model or self.call.response_model
        if not model or (usage.input_tokens is None and usage.output_tokens is None):
            return None
        try:
            import litellm

            prompt, completion = litellm.cost_per_token(
                model=model,
                custom_llm_provider=self.litellm_provider,
                prompt_tokens=usage.input_tokens or 0,
                completion_tokens=usage.output_tokens or 0,
                cache_read_input_tokens=usage.cache_read_tokens or 0,
            )
            return float(prompt) + float(completion)
        except Exception:
            return None


# --- wrappers -----------------------------------------------------------------------------------


class _Attempts:
    """The requests LiteLLM began within one budgeted call, and a refusal of one of them. Entered
    for the call's length: a refusal LiteLLM wrapped (or reported as the first attempt's error)
    leaves it as the ``BudgetExhausted`` it was."""

    __slots__ = ("_token", "begun", "refused")

    def __init__(self) -> None:
        self.begun = 0
        self.refused: BudgetExhausted | None = None

    def __enter__(self) -> None:
        self._token = _ATTEMPTS.set(self)

    def __exit__(self, et: Any, error: BaseException | None, tb: Any) -> None:
        _ATTEMPTS.reset(self._token)
        if isinstance(error, Exception):
            refusal = _refusal(self, error)
            if refusal is not None:
                raise refusal from None


#: Set for the length of a budgeted ``completion`` / ``acompletion`` (LiteLLM's re-entries, its
#: executor thread and its fallback loop see it: they run in a copy of the caller's context).
_ATTEMPTS: ContextVar[_Attempts | None] = ContextVar("budgetspan_litellm_attempts", default=None)

_factory = wrapper_for(_new_call, "litellm call setup")


def _refusal(attempts: _Attempts, error: Exception) -> BudgetExhausted | None:
    """The refusal the caller should see instead of ``error``: the one LiteLLM wrapped in it, or
    the one that stopped a later attempt (LiteLLM reports the first attempt's error)."""
    found = budget_error(error) or attempts.refused
    return None if found is error else found


def _counted(asynchronous: bool) -> Any:
    """The call wrapper of ``wrapper_for``, with the attempts of the call counted (``_pre_call``)
    and a refusal LiteLLM wrapped unwrapped. LiteLLM's re-entries go straight through."""
    inner = _factory(asynchronous)
    if asynchronous:

        async def awrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            if in_model_call():
                return await inner(wrapped, instance, args, kwargs)
            with _Attempts():
                return await inner(wrapped, instance, args, kwargs)

        return awrapper

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if in_model_call():
            return inner(wrapped, instance, args, kwargs)
        with _Attempts():
            return inner(wrapped, instance, args, kwargs)

    return wrapper


def _pre_call(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``Logging.pre_call``, which LiteLLM calls before each request it sends: past the first
    request of a budgeted call, one more attempt (``max_retries``), refused before it is sent."""
    attempts, call = _ATTEMPTS.get(), CURRENT_CALL.get()
    if attempts is not None and call is not None:
        attempts.begun += 1
        if attempts.begun > 1:
            try:
                call.retry()
            except BudgetExhausted as refused:
                attempts.refused = refused
                raise
    return wrapped(*args, **kwargs)


class LiteLLMInstrumentor(PatchInstrumentor):
    """``opentelemetry-instrument`` entry point ``budgetspan_litellm``; also used by configure()."""

    DEPENDENCIES = ("litellm >= 1.60",)
    #: ``litellm.completion`` and ``acompletion``, bound in both modules at import (``acompletion``
    #: calls ``litellm.main.completion``); the hook LiteLLM calls before each request.
    PATCHES = (
        *(
            (module, name, _counted(name == "acompletion"))
            for module in ("litellm", "litellm.main")
            for name in ("completion", "acompletion")
        ),
        ("litellm.litellm_core_utils.litellm_logging", "Logging.pre_call", _pre_call),
    )
