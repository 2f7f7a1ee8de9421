"""OpenAI SDK instrumentation: chat completions, Responses API, embeddings and the legacy
Completions API (still what many self-hosted servers are called through); sync and async.

Every patched method becomes one budgeted ``Call`` (reserved before the request). Streams come
back behind a proxy that ends the call once (see ``_streams``). ``with_raw_response`` and
``with_streaming_response`` go through the same patched method, so they are counted once; their
usage is read from the body when the body is JSON. OpenAI-compatible servers are told apart by
``base_url`` and reported as their own ``gen_ai.provider.name``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from budgetspan import attributes as A
from budgetspan.instrumentation._streams import (
    Observer,
    Patch,
    ainvoke,
    apply_patches,
    content_json,
    in_model_call,
    invoke,
    remove_patches,
    retry_patch,
    use_provider,
)
from budgetspan.instrumentation._usage import field, openai_embeddings_usage, openai_usage
from budgetspan.instrumentation.calls import Call, capture_content, internal_error

# --- provider detection -----------------------------------------------------------------------

# host suffix -> gen_ai.provider.name (semconv well-known values where there is one)
_HOSTS: tuple[tuple[str, str], ...] = (
    ("api.openai.com", "openai"),
    ("openai.azure.com", "azure.ai.openai"),
    ("cognitiveservices.azure.com", "azure.ai.openai"),
    ("azure-api.net", "azure.ai.openai"),
    ("services.ai.azure.com", "azure.ai.inference"),
    ("api.deepseek.com", "deepseek"),
    ("api.groq.com", "groq"),
    ("api.together.xyz", "together_ai"),
    ("api.together.ai", "together_ai"),
    ("api.fireworks.ai", "fireworks"),
    ("openrouter.ai", "openrouter"),
    ("api.mistral.ai", "mistral_ai"),
    ("api.x.ai", "x_ai"),
    ("api.perplexity.ai", "perplexity"),
    ("api.cerebras.ai", "cerebras"),
    ("generativelanguage.googleapis.com", "gcp.gemini"),
    ("api.moonshot.ai", "moonshotai"),
)
_LOCAL_PORTS = {11434: "ollama", 8000: "vllm", 1234: "lm_studio"}
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "host.docker.internal"}


_by_url: dict[str, tuple[str, str | None, int | None]] = {}


def provider_from_url(url: str) -> tuple[str, str | None, int | None]:
    """(gen_ai.provider.name, server.address, server.port) for a client's base URL (cached)."""
    found = _by_url.get(url)
    if found is None:
        found = _provider_from_url(url)
        if len(_by_url) > 256:
            _by_url.clear()
        _by_url[url] = found
    return found


def _provider_from_url(url: str) -> tuple[str, str | None, int | None]:
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80 if parts.scheme == "http" else None)
    except ValueError:
        return "openai_compatible", None, None
    for suffix, name in _HOSTS:
        if host == suffix or host.endswith("." + suffix):
            return name, host or None, port
    if "ollama" in host:
        return "ollama", host, port
    if "vllm" in host:
        return "vllm", host, port
    if host in _LOOPBACK or host.endswith(".local") or host.endswith(".localhost"):
        return _LOCAL_PORTS.get(port or 0, "openai_compatible"), host, port
    return "openai_compatible", host or None, port


def _client_provider(instance: Any) -> tuple[str, str | None, int | None]:
    client = getattr(instance, "_client", None)
    if client is not None and "Azure" in type(client).__name__:
        _, host, port = provider_from_url(str(getattr(client, "base_url", "")))
        return "azure.ai.openai", host, port
    return provider_from_url(str(getattr(client, "base_url", "") or ""))


def _given(value: Any) -> Any:
    """The SDK's ``omit`` / ``NOT_GIVEN`` sentinels (passed by its stream helpers) count as absent."""
    if value is None or type(value).__name__ in ("Omit", "NotGiven"):
        return None
    return value


def _int_arg(value: Any) -> int | None:
    value = _given(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _new_call(operation: str, instance: Any, kwargs: dict[str, Any], max_tokens: int | None) -> Call:
    provider, host, port = _client_provider(instance)
    model = _given(kwargs.get("model"))
    model = model if isinstance(model, str) else None
    attrs: dict[str, Any] = {A.GEN_AI_PROVIDER_NAME: provider}
    if model:
        attrs[A.GEN_AI_REQUEST_MODEL] = model
    if host:
        attrs[A.SERVER_ADDRESS] = host
    if port:
        attrs[A.SERVER_PORT] = port
    if max_tokens is not None:
        attrs[A.GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
    temperature = _given(kwargs.get("temperature"))
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        attrs[A.GEN_AI_REQUEST_TEMPERATURE] = float(temperature)
    if _given(kwargs.get("stream")) is True:
        attrs[A.STREAM] = True
    return Call(
        operation,
        f"{operation} {model}" if model else operation,
        attrs,
        provider=provider,
        model=model,
        worst_case_tokens=max_tokens,
    )


def _put_content(call: Call, key: str, value: Any) -> None:
    if isinstance(value, (list, tuple, str, dict)):
        text = content_json(value)
        if text is not None:
            call.attributes[key] = text


# --- observers --------------------------------------------------------------------------------


class _ResultObserver(Observer):
    """What every OpenAI observer keeps: id, model, finish reasons, answer text, tool calls."""

    def __init__(self, call: Call, capture: bool = False) -> None:
        super().__init__(call)
        self.capture = capture  # read once per call: the environment lookup is not free
        self.response_id: str | None = None
        self.finish_reasons: list[str] = []
        self.text: list[str] = []
        self.tool_calls: list[Any] = []

    def _model(self, model: Any) -> None:
        if isinstance(model, str) and model and self.call.response_model is None:
            self.call.response_model = model

    def _id(self, value: Any) -> None:
        if isinstance(value, str) and self.response_id is None:
            self.response_id = value

    def finish(self) -> None:
        call = self.call
        span = call.span
        text = "".join(self.text) or None
        if span is not None:
            attrs: dict[str, Any] = {}
            if self.response_id:
                attrs[A.GEN_AI_RESPONSE_ID] = self.response_id
            if self.finish_reasons:
                attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] = list(self.finish_reasons)
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
            span.set_attributes(attrs)
        if text and call.run is not None:
            call.run.record_model_answer(text)


class ChatObserver(_ResultObserver):
    """ChatCompletion / ParsedChatCompletion objects (or dicts) and ChatCompletionChunk items."""

    def on_response(self, response: Any) -> None:
        self._id(field(response, "id"))
        self._model(field(response, "model"))
        for choice in field(response, "choices") or ():
            reason = field(choice, "finish_reason")
            if isinstance(reason, str):
                self.finish_reasons.append(reason)
            message = field(choice, "message")
            if field(choice, "index") in (0, None) and not self.text:
                content = field(message, "content")
                if isinstance(content, str):
                    self.text.append(content)
                for tc in field(message, "tool_calls") or ():
                    fn = field(tc, "function")
                    self.tool_calls.append({"id": field(tc, "id"), "name": field(fn, "name")})
        self.set_usage(openai_usage(field(response, "usage")))

    def on_item(self, item: Any) -> None:
        self._id(field(item, "id"))
        self._model(field(item, "model"))
        for choice in field(item, "choices") or ():
            if field(choice, "index") not in (0, None):
                continue
            delta = field(choice, "delta")
            content = field(delta, "content")
            if isinstance(content, str):
                if content:
                    self.call.first_token()
                self.text.append(content)
            for tc in field(delta, "tool_calls") or ():
                self.call.first_token()
                name = field(field(tc, "function"), "name")
                if isinstance(name, str):
                    self.tool_calls.append({"id": field(tc, "id"), "name": name})
            reason = field(choice, "finish_reason")
            if isinstance(reason, str):
                self.finish_reasons.append(reason)
        usage = field(item, "usage")
        if usage is not None:
            self.set_usage(openai_usage(usage))


class TextCompletionObserver(_ResultObserver):
    """The legacy Completions API (``choices[].text``), whole or streamed."""

    def on_response(self, response: Any) -> None:
        self.on_item(response)

    def on_item(self, item: Any) -> None:
        self._id(field(item, "id"))
        self._model(field(item, "model"))
        for choice in field(item, "choices") or ():
            if field(choice, "index") not in (0, None):
                continue
            text = field(choice, "text")
            if isinstance(text, str):
                if text:
                    self.call.first_token()
                self.text.append(text)
            reason = field(choice, "finish_reason")
            if isinstance(reason, str):
                self.finish_reasons.append(reason)
        usage = field(item, "usage")
        if usage is not None:
            self.set_usage(openai_usage(usage))


class ResponsesObserver(_ResultObserver):
    """Responses API: a Response (or dict), or its server-sent events."""

    def on_response(self, response: Any) -> None:
        self._id(field(response, "id"))
        self._model(field(response, "model"))
        status = field(response, "status")
        if isinstance(status, str) and not self.finish_reasons:
            reason = field(field(response, "incomplete_details"), "reason")
            self.finish_reasons.append(reason if isinstance(reason, str) else status)
        if not self.text:
            for item in field(response, "output") or ():
                if field(item, "type") == "function_call":
                    self.tool_calls.append({"id": field(item, "call_id"), "name": field(item, "name")})
                for part in field(item, "content") or ():
                    if field(part, "type") == "output_text" and isinstance(field(part, "text"), str):
                        self.text.append(field(part, "text"))
        self.set_usage(openai_usage(field(response, "usage")))

    def on_item(self, item: Any) -> None:
        kind = field(item, "type")
        if kind == "response.output_text.delta":
            delta = field(item, "delta")
            if isinstance(delta, str):
                self.call.first_token()
                self.text.append(delta)
        elif isinstance(kind, str) and kind.endswith(".delta"):
            self.call.first_token()  # tool-call arguments, reasoning summaries, audio...
        elif kind in ("response.created", "response.in_progress"):
            response = field(item, "response")
            self._id(field(response, "id"))
            self._model(field(response, "model"))
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self.on_response(field(item, "response"))


class EmbeddingsObserver(_ResultObserver):
    def on_response(self, response: Any) -> None:
        self._model(field(response, "model"))
        self.set_usage(openai_embeddings_usage(field(response, "usage")))


# --- wrappers ---------------------------------------------------------------------------------


def _chat_call(instance: Any, kwargs: dict[str, Any]) -> tuple[Call, Observer]:
    max_tokens = _int_arg(kwargs.get("max_completion_tokens")) or _int_arg(kwargs.get("max_tokens"))
    call = _new_call(A.OP_CHAT, instance, kwargs, max_tokens)
    capture = capture_content()
    if capture:
        _put_content(call, A.GEN_AI_INPUT_MESSAGES, _given(kwargs.get("messages")))
    return call, ChatObserver(call, capture)


def _responses_call(instance: Any, kwargs: dict[str, Any]) -> tuple[Call, Observer]:
    call = _new_call(A.OP_CHAT, instance, kwargs, _int_arg(kwargs.get("max_output_tokens")))
    capture = capture_content()
    if capture:
        inp = _given(kwargs.get("input"))
        instructions = _given(kwargs.get("instructions"))
        if isinstance(inp, str):
            inp = [{"role": "user", "content": inp}]
        if isinstance(instructions, str) and isinstance(inp, list):
            inp = [{"role": "system", "content": instructions}, *inp]
        _put_content(call, A.GEN_AI_INPUT_MESSAGES, inp)
    return call, ResponsesObserver(call, capture)


def _text_completion_call(instance: Any, kwargs: dict[str, Any]) -> tuple[Call, Observer]:
    call = _new_call(A.OP_TEXT_COMPLETION, instance, kwargs, _int_arg(kwargs.get("max_tokens")))
    capture = capture_content()
    if capture:
        prompt = _given(kwargs.get("prompt"))
        if isinstance(prompt, str):
            _put_content(call, A.GEN_AI_INPUT_MESSAGES, [{"role": "user", "content": prompt}])
    return call, TextCompletionObserver(call, capture)


def _embeddings_call(instance: Any, kwargs: dict[str, Any]) -> tuple[Call, Observer]:
    call = _new_call(A.OP_EMBEDDINGS, instance, kwargs, None)
    return call, EmbeddingsObserver(call)


Builder = Callable[[Any, dict[str, Any]], tuple[Call, Observer]]


def wrapper_for(build: Builder) -> Callable[[bool], Callable[..., Any]]:
    """A wrapper factory (sync or async) that runs the SDK method as one budgeted call."""

    def factory(asynchronous: bool) -> Callable[..., Any]:
        if asynchronous:

            async def awrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
                if in_model_call():
                    return await wrapped(*args, **kwargs)
                try:
                    call, observer = build(instance, kwargs)
                except Exception:
                    internal_error("openai call setup")
                    return await wrapped(*args, **kwargs)
                return await ainvoke(call, observer, wrapped, args, kwargs)

            return awrapper

        def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            if in_model_call():
                return wrapped(*args, **kwargs)
            try:
                call, observer = build(instance, kwargs)
            except Exception:
                internal_error("openai call setup")
                return wrapped(*args, **kwargs)
            return invoke(call, observer, wrapped, args, kwargs)

        return wrapper

    return factory


_CHAT = "openai.resources.chat.completions.completions"
_RESPONSES = "openai.resources.responses.responses"
_EMBEDDINGS = "openai.resources.embeddings"
_COMPLETIONS = "openai.resources.completions"
_BASE = "openai._base_client"

PATCHES: tuple[Patch, ...] = (
    (_CHAT, "Completions.create", wrapper_for(_chat_call), False),
    (_CHAT, "Completions.parse", wrapper_for(_chat_call), False),
    (_CHAT, "AsyncCompletions.create", wrapper_for(_chat_call), True),
    (_CHAT, "AsyncCompletions.parse", wrapper_for(_chat_call), True),
    (_RESPONSES, "Responses.create", wrapper_for(_responses_call), False),
    (_RESPONSES, "Responses.parse", wrapper_for(_responses_call), False),
    (_RESPONSES, "AsyncResponses.create", wrapper_for(_responses_call), True),
    (_RESPONSES, "AsyncResponses.parse", wrapper_for(_responses_call), True),
    (_COMPLETIONS, "Completions.create", wrapper_for(_text_completion_call), False),
    (_COMPLETIONS, "AsyncCompletions.create", wrapper_for(_text_completion_call), True),
    (_EMBEDDINGS, "Embeddings.create", wrapper_for(_embeddings_call), False),
    (_EMBEDDINGS, "AsyncEmbeddings.create", wrapper_for(_embeddings_call), True),
    (_BASE, "SyncAPIClient._sleep_for_retry", retry_patch, False),
    (_BASE, "AsyncAPIClient._sleep_for_retry", retry_patch, True),
)


class OpenAIInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """``opentelemetry-instrument`` entry point ``budgetspan_openai``; also used by configure()."""

    _done: list[tuple[str, str]]

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("openai >= 1.40",)

    def _instrument(self, **kwargs: Any) -> None:
        import openai  # noqa: F401  (lazily: a missing SDK must not break our other instrumentors)

        use_provider(kwargs.get("tracer_provider"))
        self._done = apply_patches(PATCHES)

    def _uninstrument(self, **kwargs: Any) -> None:
        remove_patches(getattr(self, "_done", []))
