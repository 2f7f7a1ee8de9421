"""Anthropic SDK instrumentation: ``messages.create`` (incl. ``stream=True``), ``messages.parse``
and ``messages.stream``, sync and async, and the same three under ``beta.messages``.

Anthropic's ``input_tokens`` excludes cache reads and writes (unlike OpenAI); ``_usage`` adds them
so spans follow the OpenTelemetry convention. In a stream, ``message_delta`` carries the
*cumulative* output count, which replaces the provisional one from ``message_start``.

``messages.stream`` builds its request lazily and sends it when the manager is entered, so the
call is reserved there; the helper's raw event stream is swapped for our proxy before any event is
read, so iteration, ``text_stream``, ``get_final_message()`` and ``close()`` all end the call once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import wrapt

from budgetspan import attributes as A
from budgetspan.accounting.ledger import Spend
from budgetspan.calls.call import Call
from budgetspan.calls.pricing import call_cost
from budgetspan.config import capture_content
from budgetspan.events import internal_error
from budgetspan.instrumentation.observers import Observer, capture_input_messages
from budgetspan.instrumentation.openai import provider_from_url
from budgetspan.instrumentation.patch_table import PatchInstrumentor, sync_and_async
from budgetspan.instrumentation.patching import (
    ResultObserver,
    given,
    model_call,
    positive_int,
    retry_patches,
    wrapper_for,
)
from budgetspan.instrumentation.sdk_call import in_model_call
from budgetspan.instrumentation.streams import AsyncStreamProxy, SyncStreamProxy
from budgetspan.instrumentation.tool_fees import (
    FeePlan,
    anthropic_block,
    anthropic_container,
    anthropic_plan,
)
from budgetspan.instrumentation.tool_fees import anthropic_usage as server_tool_usage
from budgetspan.instrumentation.usage import (
    AnthropicStreamUsage,
    anthropic_one_hour_writes,
    anthropic_usage,
    field,
)


def _provider(instance: Any) -> tuple[str, str | None, int | None]:
    client = getattr(instance, "_client", None)
    name = type(client).__name__ if client is not None else ""
    _, host, port = provider_from_url(str(getattr(client, "base_url", "") or ""))
    if "Bedrock" in name:
        return "aws.bedrock", host, port
    if "Vertex" in name:
        return "gcp.vertex_ai", host, port
    return "anthropic", host, port


def _new_call(instance: Any, kwargs: dict[str, Any], streaming: bool) -> tuple[Call, MessagesObserver]:
    max_tokens = positive_int(kwargs.get("max_tokens"))
    call = model_call(A.OP_CHAT, _provider(instance), kwargs, max_tokens, streaming)
    capture = capture_content()
    if capture:
        capture_input_messages(call.attributes, given(kwargs.get("messages")), given(kwargs.get("system")))
    return call, MessagesObserver(call, capture, anthropic_plan(call.provider, kwargs, call.attributes))


class MessagesObserver(ResultObserver):
    """A Message (or dict) or the raw stream events of one Messages call.

    Anthropic has one ``stop_reason``, the latest seen: ``finish_reasons`` holds it alone.
    """

    def __init__(self, call: Call, capture: bool = False, fees: FeePlan | None = None) -> None:
        super().__init__(call, capture)
        self.stream_usage = AnthropicStreamUsage()
        self.one_hour_writes = 0  # cache writes of a one-hour TTL (priced 2x input, not 1.25x)
        #: Server tools' fees (web search, code execution), counted in the cost (``tool_fees``).
        self.fees = fees if fees is not None else FeePlan(call.provider)

    def set_usage(self, spend: Spend | None) -> None:
        spend = self.fees.into(spend)
        if spend is not None and self.one_hour_writes and spend.cost_usd is None:
            spend = one_hour_priced(self.call, spend, self.one_hour_writes)
        super().set_usage(spend)

    def _stop_reason(self, reason: Any) -> None:
        if isinstance(reason, str):
            self.finish_reasons = [reason] if reason else []

    def on_response(self, response: Any) -> None:
        self._head(response)
        self._stop_reason(field(response, "stop_reason"))
        if not self.text:
            for block in field(response, "content") or ():
                kind = field(block, "type")
                if kind == "text" and isinstance(field(block, "text"), str):
                    self.text.append(field(block, "text"))
                elif kind == "tool_use":
                    self.tool_calls.append({"id": field(block, "id"), "name": field(block, "name")})
        content = field(response, "content")
        for block in content if isinstance(content, list) else ():
            anthropic_block(self.fees, block)
        anthropic_container(self.fees, field(response, "container"))
        usage = field(response, "usage")
        server_tool_usage(self.fees, usage)
        self.one_hour_writes = anthropic_one_hour_writes(usage)
        self.set_usage(anthropic_usage(usage))

    def on_item(self, item: Any) -> None:
        kind = field(item, "type")
        if kind == "content_block_delta":
            self.call.first_token()
            delta = field(item, "delta")
            if field(delta, "type") == "text_delta" and isinstance(field(delta, "text"), str):
                self.text.append(field(delta, "text"))
            return
        if kind == "content_block_start":
            block = field(item, "content_block")
            if field(block, "type") == "tool_use":
                self.tool_calls.append({"id": field(block, "id"), "name": field(block, "name")})
            anthropic_block(self.fees, block)
            return
        if kind == "message_start":
            self._head(field(item, "message"))
            self.one_hour_writes = anthropic_one_hour_writes(field(field(item, "message"), "usage"))
        elif kind == "message_delta":
            self._stop_reason(field(field(item, "delta"), "stop_reason"))
            anthropic_container(self.fees, field(field(item, "delta"), "container"))
            server_tool_usage(self.fees, field(item, "usage"))
        else:
            return
        if self.stream_usage.on_event(item):
            self.set_usage(self.stream_usage.spend())

    def finish(self) -> None:
        self.fees.write(self.call.end_attributes)
        super().finish()
        if self.stream_usage.raw_input is not None and not self.stream_usage.final:
            self.charge_received_output()  # left or cut before its final count


def one_hour_priced(call: Call, spend: Spend, one_hour: int) -> Spend:
    """``spend`` with its cost: the price of its figures (every cache write at the five-minute
    rate, 1.25x input) and 0.75x the input rate more for each one-hour write; unpriced stays so."""
    cost = call_cost(call.provider, call.model, call.response_model, spend)
    plain = call_cost(call.provider, call.model, call.response_model, Spend(spend.input_tokens, 0))
    if cost is None or plain is None or not spend.input_tokens:
        return spend
    return replace(
        spend, cost_usd=cost + min(one_hour, spend.input_tokens) * 0.75 * plain / spend.input_tokens
    )


# --- messages.create / parse -------------------------------------------------------------------


def _create_call(instance: Any, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Call, Observer]:
    return _new_call(instance, kwargs, given(kwargs.get("stream")) is True)


_create_factory = wrapper_for(_create_call, "anthropic call setup")


# --- messages.stream ---------------------------------------------------------------------------


def _adopt_stream(message_stream: Any, call: Call, observer: Observer, asynchronous: bool) -> None:
    """Swap the helper's raw event stream for our proxy; failing that, end the call unobserved."""
    try:
        raw = getattr(message_stream, "_raw_stream", None)
        if raw is None:  # an SDK without the attribute: the call ends now, usage unreported
            call.end(stream_end="unobserved")
            return
        cls = AsyncStreamProxy if asynchronous else SyncStreamProxy
        message_stream._raw_stream = cls(raw, call, observer)
    except Exception:
        internal_error("anthropic stream adopt")
        call.end(stream_end="unobserved")


class _StreamManager(wrapt.ObjectProxy[Any]):
    """``messages.stream(...)``: the call starts (and is reserved) when the manager is entered."""

    def __init__(self, wrapped: Any, instance: Any, kwargs: dict[str, Any]) -> None:
        super().__init__(wrapped)
        self._self_instance = instance
        self._self_kwargs = kwargs

    def _self_new_call(self) -> tuple[Call, MessagesObserver] | None:
        try:
            return _new_call(self._self_instance, self._self_kwargs, True)
        except Exception:
            internal_error("anthropic stream setup")
            return None

    def __enter__(self) -> Any:
        built = None if in_model_call() else self._self_new_call()
        if built is None:
            return self.__wrapped__.__enter__()
        call, observer = built
        call.start()
        try:
            with call.activate():
                message_stream = self.__wrapped__.__enter__()
        except BaseException as e:
            call.end(e)
            raise
        _adopt_stream(message_stream, call, observer, asynchronous=False)
        return message_stream

    def __exit__(self, et: Any, exc: Any, tb: Any) -> Any:
        return self.__wrapped__.__exit__(et, exc, tb)

    async def __aenter__(self) -> Any:
        built = None if in_model_call() else self._self_new_call()
        if built is None:
            return await self.__wrapped__.__aenter__()
        call, observer = built
        call.start()
        try:
            with call.activate():
                async with call.deadline():
                    message_stream = await self.__wrapped__.__aenter__()
        except BaseException as e:
            call.end(e)
            raise
        _adopt_stream(message_stream, call, observer, asynchronous=True)
        return message_stream

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> Any:
        return await self.__wrapped__.__aexit__(et, exc, tb)


def _stream_factory(asynchronous: bool) -> Callable[..., Any]:
    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        manager = wrapped(*args, **kwargs)
        try:
            return _StreamManager(manager, instance, dict(kwargs))
        except Exception:
            internal_error("anthropic stream manager")
            return manager

    return wrapper


_MESSAGES = "anthropic.resources.messages.messages"
_BETA = "anthropic.resources.beta.messages.messages"  # same shapes (BetaMessage, beta events)
_BASE = "anthropic._base_client"


class AnthropicInstrumentor(PatchInstrumentor):
    """``opentelemetry-instrument`` entry point ``budgetspan_anthropic``; also used by configure()."""

    DEPENDENCIES = ("anthropic >= 0.40",)
    PATCHES = (
        *sync_and_async(_MESSAGES, _create_factory, "Messages.create", "Messages.parse"),
        *sync_and_async(_MESSAGES, _stream_factory, "Messages.stream"),
        *sync_and_async(_BETA, _create_factory, "Messages.create", "Messages.parse"),
        *sync_and_async(_BETA, _stream_factory, "Messages.stream"),
        *retry_patches(_BASE),
    )
