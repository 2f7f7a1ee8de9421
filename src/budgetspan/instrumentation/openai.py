"""OpenAI SDK instrumentation: chat completions, Responses API, embeddings and the legacy
Completions API (still what many self-hosted servers are called through); sync and async.

Every patched method becomes one budgeted ``Call`` (reserved before the request). Streams come
back behind a proxy that ends the call once (see ``streams``). ``with_raw_response`` and
``with_streaming_response`` go through the same patched method, so they are counted once; their
usage is read from the body when the body is JSON. OpenAI-compatible servers are told apart by
``base_url`` and reported as their own ``gen_ai.provider.name``.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlsplit

from budgetspan import attributes as A
from budgetspan.accounting.ledger import Spend
from budgetspan.calls.call import Call
from budgetspan.config import capture_content
from budgetspan.instrumentation.observers import Observer, content_json
from budgetspan.instrumentation.openai_ws import patches as websocket_patches
from budgetspan.instrumentation.patch_table import PatchInstrumentor, sync_and_async
from budgetspan.instrumentation.patching import (
    ResultObserver,
    given,
    model_call,
    positive_int,
    request_text_tokens,
    retry_patches,
    wrapper_for,
)
from budgetspan.instrumentation.response_context import carried, remember
from budgetspan.instrumentation.tool_fees import FeePlan, chat_plan, openai_plan, openai_response
from budgetspan.instrumentation.usage import field, openai_embeddings_usage, openai_usage, pick

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
log = logging.getLogger(__name__)
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


# id(base_url object) -> (the object, client class, answer): ``str(httpx.URL)`` is not free, and a
# client's base URL object only changes when the client's base_url is set again.
_by_client_url: dict[int, tuple[Any, type, tuple[str, str | None, int | None]]] = {}


def _client_provider(instance: Any) -> tuple[str, str | None, int | None]:
    client = getattr(instance, "_client", None)
    url = getattr(client, "base_url", None)
    cached = _by_client_url.get(id(url))
    if cached is not None and cached[0] is url and cached[1] is type(client):
        return cached[2]
    if client is not None and "Azure" in type(client).__name__:
        _, host, port = provider_from_url(str(url or ""))
        found: tuple[str, str | None, int | None] = ("azure.ai.openai", host, port)
    else:
        found = provider_from_url(str(url or ""))
    if len(_by_client_url) > 256:
        _by_client_url.clear()
    _by_client_url[id(url)] = (url, type(client), found)
    return found


def _new_call(operation: str, instance: Any, kwargs: dict[str, Any], max_tokens: int | None) -> Call:
    streaming = kwargs.get("stream") is True
    return model_call(operation, _client_provider(instance), kwargs, max_tokens, streaming)


def _put_content(call: Call, key: str, value: Any) -> None:
    if isinstance(value, (list, tuple, str, dict)):
        text = content_json(value)
        if text is not None:
            call.attributes[key] = text


# --- observers --------------------------------------------------------------------------------


class _ChoicesObserver(ResultObserver):
    """Chat and legacy completions stream alike: pieces of ``choices[0]``, a finish reason, and
    the usage in a last chunk; only the piece differs (``delta`` vs ``text``)."""

    def on_item(self, item: Any) -> None:
        self._head(item)
        for choice in field(item, "choices") or ():
            if field(choice, "index") not in (0, None):
                continue
            self._piece(choice)
            self._reason(field(choice, "finish_reason"))
        usage = field(item, "usage")
        if usage is not None:
            self.set_usage(openai_usage(usage))

    def _piece(self, choice: Any) -> None:
        """The new output one streamed choice carries."""

    def _text(self, text: Any) -> None:
        if isinstance(text, str):
            if text:
                self.call.first_token()
            self.text.append(text)

    def _reason(self, reason: Any) -> None:
        if isinstance(reason, str):
            self.finish_reasons.append(reason)


_RESPONSE_FIELDS = ("id", "model", "choices", "usage")
_CHOICE_FIELDS = ("index", "finish_reason", "message")
_MESSAGE_FIELDS = ("content", "tool_calls")


class ChatObserver(_ChoicesObserver):
    """ChatCompletion / ParsedChatCompletion objects (or dicts) and ChatCompletionChunk items."""

    hide_usage_chunk = False  # set when budgetspan asked for the usage chunk (not the caller)

    def hidden(self, item: Any) -> bool:
        return self.hide_usage_chunk and not field(item, "choices") and field(item, "usage") is not None

    def undo_change(self, error: BaseException, kwargs: dict[str, Any]) -> bool:
        """A server that rejects the ``stream_options`` budgetspan added (400/422): remembered,
        and this request sent again without it (its usage is then estimated)."""
        if not self.hide_usage_chunk or getattr(error, "status_code", None) not in (400, 422):
            return False
        kwargs.pop("stream_options", None)
        self.hide_usage_chunk = False
        server = _server_of(self.call)
        _no_stream_options.add(server)
        log.info("budgetspan: %s rejects stream_options; its streams' usage will be estimated", server)
        return True

    def on_response(self, response: Any) -> None:
        rid, model, choices, usage = pick(response, _RESPONSE_FIELDS)
        self._id(rid)
        self._model(model)
        for choice in choices or ():
            index, reason, message = pick(choice, _CHOICE_FIELDS)
            self._reason(reason)
            if index in (0, None) and not self.text:
                content, tool_calls = pick(message, _MESSAGE_FIELDS)
                if isinstance(content, str):
                    self.text.append(content)
                for tc in tool_calls or ():
                    fn = field(tc, "function")
                    self.tool_calls.append({"id": field(tc, "id"), "name": field(fn, "name")})
        self.set_usage(openai_usage(usage))

    def _piece(self, choice: Any) -> None:
        delta = field(choice, "delta")
        self._text(field(delta, "content"))
        for tc in field(delta, "tool_calls") or ():
            self.call.first_token()
            name = field(field(tc, "function"), "name")
            if isinstance(name, str):
                self.tool_calls.append({"id": field(tc, "id"), "name": name})


class SearchChatObserver(ChatObserver):
    """A chat call with ``web_search_options`` (a search model): its search fee in its cost
    (``tool_fees.chat_plan``); a class apart, so other chat calls pay nothing for it."""

    def __init__(self, call: Call, capture: bool, fees: FeePlan) -> None:
        super().__init__(call, capture)
        self.fees = fees

    def set_usage(self, spend: Spend | None) -> None:
        super().set_usage(self.fees.into(spend))

    def finish(self) -> None:
        self.fees.write(self.call.end_attributes)
        super().finish()


class TextCompletionObserver(_ChoicesObserver):
    """The legacy Completions API (``choices[].text``), whole or streamed."""

    def on_response(self, response: Any) -> None:
        self.on_item(response)

    def _piece(self, choice: Any) -> None:
        self._text(field(choice, "text"))


class ResponsesObserver(ResultObserver):
    """Responses API: a Response (or dict), or its server-sent events; built-in tools' fees
    (web search, file search, code containers, images) counted in its cost (``tool_fees``)."""

    def __init__(self, call: Call, capture: bool = False, fees: FeePlan | None = None) -> None:
        super().__init__(call, capture)
        self.fees = fees if fees is not None else FeePlan(call.provider)

    def finish(self) -> None:
        self.fees.write(self.call.end_attributes)
        super().finish()

    def on_response(self, response: Any) -> None:
        self._head(response)
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
        openai_response(self.fees, response)
        usage = self.fees.into(openai_usage(field(response, "usage")))
        if usage is None and status in ("queued", "in_progress"):
            # ``background=True``: the server writes (and bills) the answer after the call
            # returned; unknown, never zero, so its output is charged at its worst case
            self.call.output_estimate = self.call.worst_case_tokens
        remember(response, usage)  # what a call chained to it will carry (``response_context``)
        self.set_usage(usage)

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
            self._head(field(item, "response"))
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self.on_response(field(item, "response"))


class EmbeddingsObserver(ResultObserver):
    def on_response(self, response: Any) -> None:
        self._model(field(response, "model"))
        self.set_usage(openai_embeddings_usage(field(response, "usage")))


# --- wrappers ---------------------------------------------------------------------------------


def _chat_call(instance: Any, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Call, Observer]:
    max_tokens = positive_int(kwargs.get("max_completion_tokens")) or positive_int(kwargs.get("max_tokens"))
    call = _new_call(A.OP_CHAT, instance, kwargs, max_tokens)
    capture = capture_content()
    if capture:
        _put_content(call, A.GEN_AI_INPUT_MESSAGES, given(kwargs.get("messages")))
    fees = chat_plan(call.provider, kwargs, call.attributes)
    observer = ChatObserver(call, capture) if fees is None else SearchChatObserver(call, capture, fees)
    if kwargs.get("stream") is True and _ask_for_stream_usage(call, kwargs):
        observer.hide_usage_chunk = True
    return call, observer


_RAW_HEADER = "X-Stainless-Raw-Response"  # with_raw_response / with_streaming_response


#: Servers (address, port) that answered 400/422 to ``stream_options``: not asked again.
_no_stream_options: set[tuple[Any, Any]] = set()


def _server_of(call: Call) -> tuple[Any, Any]:
    return call.attributes.get(A.SERVER_ADDRESS), call.attributes.get(A.SERVER_PORT)


def _ask_for_stream_usage(call: Call, kwargs: dict[str, Any]) -> bool:
    """Add ``stream_options.include_usage`` to a chat stream that did not ask for usage, so the
    stream's tokens are counted (OpenAI and most compatible servers, vLLM, Azure, LiteLLM,
    Ollama, DeepSeek..., send usage in streams only when asked).

    The extra last chunk (no choices, only usage) is read by budgetspan and hidden from the
    caller, who sees exactly the chunks they would have seen. Not done where the caller reads the
    raw body (``with_raw_response`` / ``with_streaming_response``). A server that rejects the
    option (400/422) is remembered and the request sent again without it (``auto``, the default);
    ``always`` asks every time, ``never`` never (usage is then estimated from the text).
    """
    policy = os.environ.get(A.ENV_OPENAI_STREAM_USAGE, "auto").strip().lower() or "auto"
    if policy == "never" or (policy == "auto" and _server_of(call) in _no_stream_options):
        return False
    if given(kwargs.get("stream_options")) is not None:
        return False  # the caller chose: their choice stands, and they see what they asked for
    headers = given(kwargs.get("extra_headers"))
    if isinstance(headers, dict) and any(str(k).lower() == _RAW_HEADER.lower() for k in headers):
        return False
    kwargs["stream_options"] = {"include_usage": True}
    return True


def responses_call(instance: Any, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Call, Observer]:
    call = _new_call(A.OP_CHAT, instance, kwargs, positive_int(kwargs.get("max_output_tokens")))
    context = carried(kwargs)
    if context:  # an earlier exchange the server prepends, billed as input: part of the worst case
        call.worst_case_input_tokens = context + request_text_tokens(kwargs)
    capture = capture_content()
    if capture:
        inp = given(kwargs.get("input"))
        instructions = given(kwargs.get("instructions"))
        if isinstance(inp, str):
            inp = [{"role": "user", "content": inp}]
        if isinstance(instructions, str) and isinstance(inp, list):
            inp = [{"role": "system", "content": instructions}, *inp]
        _put_content(call, A.GEN_AI_INPUT_MESSAGES, inp)
    return call, ResponsesObserver(call, capture, openai_plan(call.provider, kwargs, call.attributes))


def _text_completion_call(
    instance: Any, _args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Call, Observer]:
    call = _new_call(A.OP_TEXT_COMPLETION, instance, kwargs, positive_int(kwargs.get("max_tokens")))
    capture = capture_content()
    if capture:
        prompt = given(kwargs.get("prompt"))
        if isinstance(prompt, str):
            _put_content(call, A.GEN_AI_INPUT_MESSAGES, [{"role": "user", "content": prompt}])
    return call, TextCompletionObserver(call, capture)


def _embeddings_call(instance: Any, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Call, Observer]:
    call = _new_call(A.OP_EMBEDDINGS, instance, kwargs, None)
    return call, EmbeddingsObserver(call)


_CHAT_WRAPPER = wrapper_for(_chat_call, "openai call setup")
_RESPONSES_WRAPPER = wrapper_for(responses_call, "openai call setup")
_TEXT_WRAPPER = wrapper_for(_text_completion_call, "openai call setup")
_EMBEDDINGS_WRAPPER = wrapper_for(_embeddings_call, "openai call setup")

_CHAT = "openai.resources.chat.completions.completions"
_RESPONSES = "openai.resources.responses.responses"
_EMBEDDINGS = "openai.resources.embeddings"
_COMPLETIONS = "openai.resources.completions"
_BASE = "openai._base_client"


class OpenAIInstrumentor(PatchInstrumentor):
    """``opentelemetry-instrument`` entry point ``budgetspan_openai``; also used by configure()."""

    DEPENDENCIES = ("openai >= 1.40",)
    PATCHES = (
        *sync_and_async(_CHAT, _CHAT_WRAPPER, "Completions.create", "Completions.parse"),
        *sync_and_async(_RESPONSES, _RESPONSES_WRAPPER, "Responses.create", "Responses.parse"),
        *sync_and_async(_COMPLETIONS, _TEXT_WRAPPER, "Completions.create"),
        *sync_and_async(_EMBEDDINGS, _EMBEDDINGS_WRAPPER, "Embeddings.create"),
        *retry_patches(_BASE),
        *websocket_patches(responses_call),  # the Responses API over a WebSocket (``openai_ws``)
    )
