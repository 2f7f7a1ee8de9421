"""What the OpenAI and Anthropic instrumentations share above the stream machinery of ``streams``.

The two SDKs are built alike (Stainless): the same ``omit`` / ``NOT_GIVEN`` sentinels, the same
request fields, the same wrapped-method shape and the same lazy import. One piece of code serves
both so that a fix to the request attributes, the answer attributes or the setup error handling
reaches both providers at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from budgetspan import attributes as A
from budgetspan.accounting.model_limits import max_output_tokens
from budgetspan.accounting.pricing import default_resolver
from budgetspan.calls.call import Call
from budgetspan.calls.estimate import request_tokens, text_tokens
from budgetspan.calls.pricing import reported
from budgetspan.events import internal_error
from budgetspan.instrumentation.observers import Observer, content_json
from budgetspan.instrumentation.patch_table import Patch, suppressed
from budgetspan.instrumentation.sdk_call import ainvoke, in_model_call, invoke, retry_patch
from budgetspan.instrumentation.usage import field

#: (gen_ai.provider.name, server.address, server.port)
Where = tuple[str, str | None, int | None]


_SENTINELS = ("Omit", "NotGiven", "Unset")  # (Unset: the Speakeasy-built SDKs, e.g. mistralai)


def given(value: Any) -> Any:
    """The SDK's ``omit`` / ``NOT_GIVEN`` / ``UNSET`` sentinels count as absent."""
    if value is None or type(value).__name__ in _SENTINELS:
        return None
    return value


def positive_int(value: Any) -> int | None:
    """A request's token limit when it is a real positive int (not a bool, not a sentinel)."""
    value = given(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def model_call(
    operation: str, where: Where, kwargs: dict[str, Any], max_tokens: int | None, streaming: bool
) -> Call:
    """A not-yet-started model ``Call`` with the request attributes both SDKs take alike."""
    provider, host, port = where
    model = kwargs.get("model")
    model = model if isinstance(model, str) else None  # (the SDK's sentinels are not strings)
    attrs: dict[str, Any] = {A.GEN_AI_PROVIDER_NAME: provider}
    if model:
        attrs[A.GEN_AI_REQUEST_MODEL] = model
    if host:
        attrs[A.SERVER_ADDRESS] = host
    if port:
        attrs[A.SERVER_PORT] = port
    if max_tokens is not None:
        attrs[A.GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
    temperature = kwargs.get("temperature")  # (the SDK's sentinels are not numbers)
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        attrs[A.GEN_AI_REQUEST_TEMPERATURE] = float(temperature)
    if streaming:
        attrs[A.STREAM] = True
    return Call(
        operation,
        f"{operation} {model}" if model else operation,
        attrs,
        provider=provider,
        model=model,
        worst_case_tokens=worst_output_tokens(model, max_tokens, kwargs.get("n"), provider),
        input_estimate=lambda: request_text_tokens(kwargs),
    )


def request_text_tokens(kwargs: dict[str, Any]) -> int:
    """The estimated input tokens of a request's own text (``calls.estimate``)."""
    return request_tokens(given(kwargs[k]) for k in _REQUEST_TEXT if k in kwargs)


#: The request fields whose text the model reads (OpenAI chat, responses, completions; Anthropic).
_REQUEST_TEXT = ("messages", "system", "tools", "functions", "input", "instructions", "prompt")


def worst_output_tokens(
    model: str | None, max_tokens: int | None, n: Any = None, provider: str = ""
) -> int | None:
    """The most output tokens a request can bring back: its limit (or the model's maximum, also
    of the model a deployment name answered as) for each of its ``n`` choices; None when neither
    is known."""
    per_choice = (
        max_tokens
        or max_output_tokens(model)
        or max_output_tokens(default_resolver().answered_as(provider, model))
    )
    if per_choice is None:
        return None
    return per_choice * (positive_int(n) or 1)


def encodable(text: str) -> str:
    """``text`` with its lone surrogates (valid JSON, ``"gpt-\\ud800"``) as U+FFFD: the OTLP
    encoder drops an attribute it cannot encode in UTF-8 and logs a traceback, span after span."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class ResultObserver(Observer):
    """What every model observer keeps: id, model, finish reasons, answer text, tool calls."""

    def __init__(self, call: Call, capture: bool = False) -> None:
        super().__init__(call)
        self.capture = capture  # read once per call: the environment lookup is not free
        self.response_id: str | None = None
        self.finish_reasons: list[str] = []
        self.text: list[str] = []
        self.tool_calls: list[Any] = []

    def _model(self, model: Any) -> None:
        if isinstance(model, str) and model and self.call.response_model is None:
            self.call.response_model = model if model.isascii() else encodable(model)

    def _id(self, value: Any) -> None:
        if isinstance(value, str) and self.response_id is None:
            self.response_id = value if value.isascii() else encodable(value)

    def _head(self, response: Any) -> None:
        """The first id and model seen (a whole response, a chunk, a start event)."""
        self._id(field(response, "id"))
        self._model(field(response, "model"))

    def finish(self) -> None:
        call = self.call
        text = "".join(self.text) or None
        if (text or self.tool_calls) and not reported(call.usage):  # what the caller received:
            # its estimate is charged when the provider reports no usage (else nothing reads it)
            calls_text = content_json(self.tool_calls) if self.tool_calls else None
            call.output_estimate = text_tokens((text or "") + (calls_text or ""))
        elif (text or self.tool_calls) and call.usage is not None and call.usage.output_tokens is None:
            self.charge_received_output()  # left before the output count (Gemini's comes last)
        if call.span is not None:
            attrs = call.end_attributes
            if self.response_id:
                attrs[A.GEN_AI_RESPONSE_ID] = self.response_id
            if self.finish_reasons:
                attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] = tuple(self.finish_reasons)
            if self.capture and (text or self.tool_calls):
                message: dict[str, Any] = {"role": "assistant", "parts": []}
                if text:
                    message["parts"].append({"type": "text", "content": text})
                for tc in self.tool_calls:
                    message["parts"].append({"type": "tool_call", **tc})
                if self.finish_reasons:
                    message["finish_reason"] = self.finish_reasons[0]
                encoded = content_json([message])
                if encoded is not None:
                    attrs[A.GEN_AI_OUTPUT_MESSAGES] = encoded
        if text and call.run is not None:
            call.run.record_model_answer(text)

    def charge_received_output(self) -> None:
        """A stream left or cut before its final output count: the count it has is a
        provisional one (Anthropic's ``message_start`` says 1), and the server bills what it
        wrote. The text received is estimated (``budgetspan.usage.estimated.output_tokens``)
        and charged where it is more."""
        usage = self.call.usage
        if usage is None:
            return
        calls_text = content_json(self.tool_calls) if self.tool_calls else None
        received = text_tokens("".join(self.text) + (calls_text or ""))
        if received > (usage.output_tokens or 0):
            self.call.end_attributes[A.USAGE_ESTIMATED_OUTPUT] = received
            self.set_usage(replace(usage, output_tokens=received, cost_usd=None))


#: Builds the call and its observer from the patched method's ``instance``, ``args`` and ``kwargs``
#: (the SDK clients take keywords only; LiteLLM's functions also take positional arguments).
Builder = Callable[[Any, tuple[Any, ...], dict[str, Any]], tuple[Call, Observer]]


def wrapper_for(build: Builder, where: str) -> Callable[[bool], Callable[..., Any]]:
    """A wrapper factory (sync or async) that runs the SDK method as one budgeted call.

    A failure in ``build`` is ours: it is reported as ``where`` and the method runs uninstrumented.
    """

    def factory(asynchronous: bool) -> Callable[..., Any]:
        if asynchronous:

            async def awrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
                if in_model_call() or suppressed():
                    return await wrapped(*args, **kwargs)
                try:
                    call, observer = build(instance, args, kwargs)
                except Exception:
                    internal_error(where)
                    return await wrapped(*args, **kwargs)
                return await ainvoke(call, observer, wrapped, args, kwargs)

            return awrapper

        def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            if in_model_call() or suppressed():
                return wrapped(*args, **kwargs)
            try:
                call, observer = build(instance, args, kwargs)
            except Exception:
                internal_error(where)
                return wrapped(*args, **kwargs)
            return invoke(call, observer, wrapped, args, kwargs)

        return wrapper

    return factory


def retry_patches(base_client_module: str) -> tuple[Patch, ...]:
    """The SDK client's ``_sleep_for_retry`` (sync and async): each extra attempt is a retry."""
    return (
        (base_client_module, "SyncAPIClient._sleep_for_retry", retry_patch(False)),
        (base_client_module, "AsyncAPIClient._sleep_for_retry", retry_patch(True)),
    )
