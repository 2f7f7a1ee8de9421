"""Mistral SDK instrumentation (``mistralai`` 1.x and 2.x and later): ``chat.complete``,
``chat.stream``, ``embeddings.create`` and their ``_async`` variants, each one budgeted call.

The SDK moved its code from ``mistralai.chat`` (1.x) to ``mistralai.client.chat`` (2.x and
later, where ``mistralai`` is a namespace package); both are patched, whichever is installed.
``chat.parse`` and ``parse_stream`` go through ``complete`` / ``stream`` and are counted there.
The SDK's own retries (2.x and later: one ``utils.retries._get_sleep_interval`` per retry, sync
and async alike) count against ``max_retries``; 1.x computes its backoff inline, uncounted.

Mistral's usage reads like OpenAI's (``prompt_tokens`` includes the cached
``prompt_tokens_details.cached_tokens``); the SDK fills an absent count with 0, which is read
as unreported rather than as 0 (``usage.mistral_usage``). A stream carries its usage in the
last chunk; a stream cut before it is charged the estimate. Embeddings write no tokens.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import wrapt

from budgetspan import attributes as A
from budgetspan.calls.call import Call
from budgetspan.calls.estimate import request_tokens
from budgetspan.config import capture_content
from budgetspan.events import internal_error
from budgetspan.instrumentation.observers import Observer, content_json
from budgetspan.instrumentation.openai import provider_from_url
from budgetspan.instrumentation.patch_table import Patch, PatchInstrumentor, apply_patches, use_provider
from budgetspan.instrumentation.patching import (
    ResultObserver,
    given,
    model_call,
    positive_int,
    wrapper_for,
)
from budgetspan.instrumentation.sdk_call import retry_hook
from budgetspan.instrumentation.usage import field, mistral_usage

PROVIDER = "mistral_ai"


def _where(instance: Any) -> tuple[str, str | None, int | None]:
    try:
        url, _ = instance.sdk_configuration.get_server_details()
    except Exception:
        return PROVIDER, None, None
    _, host, port = provider_from_url(str(url or ""))
    return PROVIDER, host, port


# --- observers ------------------------------------------------------------------------------


def _content_text(content: Any) -> str | None:
    """A message's content: a string, or a list of chunks of which the text ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        pieces = [field(c, "text") for c in content]
        return "".join(p for p in pieces if isinstance(p, str)) or None
    return None


class ChatObserver(ResultObserver):
    """A ChatCompletionResponse, or the CompletionEvents of a stream (``event.data`` a chunk)."""

    def _choice(self, choice: Any, message: Any) -> None:
        reason = given(field(choice, "finish_reason"))
        if isinstance(reason, str):
            self.finish_reasons.append(reason)
        if field(choice, "index") not in (0, None):
            return
        text = _content_text(given(field(message, "content")))
        if text:
            self.text.append(text)
        for tc in given(field(message, "tool_calls")) or ():
            fn = field(tc, "function")
            self.tool_calls.append({"id": given(field(tc, "id")), "name": field(fn, "name")})

    def on_response(self, response: Any) -> None:
        self._head(response)
        for choice in field(response, "choices") or ():
            self._choice(choice, field(choice, "message"))
        self.set_usage(mistral_usage(field(response, "usage")))

    def on_item(self, item: Any) -> None:
        chunk = field(item, "data")
        if chunk is None:
            return
        self._head(chunk)
        for choice in field(chunk, "choices") or ():
            delta = field(choice, "delta")
            if _content_text(given(field(delta, "content"))) or given(field(delta, "tool_calls")):
                self.call.first_token()
            self._choice(choice, delta)
        usage = field(chunk, "usage")
        if usage is not None:
            self.set_usage(mistral_usage(usage))


class EmbeddingsObserver(ResultObserver):
    def on_response(self, response: Any) -> None:
        self._head(response)
        self.set_usage(mistral_usage(field(response, "usage"), embeddings=True))


# --- wrappers -------------------------------------------------------------------------------


def _chat(streaming: bool) -> Any:
    def build(instance: Any, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Call, Observer]:
        max_tokens = positive_int(kwargs.get("max_tokens"))
        call = model_call(A.OP_CHAT, _where(instance), kwargs, max_tokens, streaming)
        capture = capture_content()
        if capture:
            messages = given(kwargs.get("messages"))
            if isinstance(messages, (list, tuple)):
                encoded = content_json(list(messages))
                if encoded is not None:
                    call.attributes[A.GEN_AI_INPUT_MESSAGES] = encoded
        return call, ChatObserver(call, capture)

    return wrapper_for(build, "mistral call setup")


def _embeddings_call(instance: Any, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Call, Observer]:
    call = model_call(A.OP_EMBEDDINGS, _where(instance), kwargs, None, False)
    inputs = given(kwargs.get("inputs"))
    call.worst_case_input_tokens = request_tokens([[inputs] if isinstance(inputs, str) else inputs])
    call.worst_case_tokens = 0  # an embedding writes no tokens
    return call, EmbeddingsObserver(call)


_COMPLETE = _chat(streaming=False)
_STREAM = _chat(streaming=True)
_EMBED = wrapper_for(_embeddings_call, "mistral call setup")


def _rows(chat: str, embeddings: str) -> tuple[Patch, ...]:
    return (
        (chat, "Chat.complete", _COMPLETE(False)),
        (chat, "Chat.complete_async", _COMPLETE(True)),
        (chat, "Chat.stream", _STREAM(False)),
        (chat, "Chat.stream_async", _STREAM(True)),
        (embeddings, "Embeddings.create", _EMBED(False)),
        (embeddings, "Embeddings.create_async", _EMBED(True)),
    )


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except Exception:  # a parent that is a module, not a package (1.x's ``mistralai.client``)
        return False


#: (module, function) run once per retry of the SDK's backoff loop (2.x and later)
RETRY_POINT = ("mistralai.client.utils.retries", "_get_sleep_interval")


def _patch_retries() -> list[tuple[str, str]]:
    module, function = RETRY_POINT
    try:
        if not _present(module) or not hasattr(importlib.import_module(module), function):
            return []
        wrapt.wrap_function_wrapper(module, function, retry_hook)
    except Exception:
        internal_error("mistral retry patch")
        return []
    return [RETRY_POINT]  # ``unwrap`` reads it as (owner "package.module", attribute)


class MistralInstrumentor(PatchInstrumentor):
    """``opentelemetry-instrument`` entry point ``budgetspan_mistral``; also used by configure()."""

    DEPENDENCIES = ("mistralai >= 1.0",)
    PATCHES = (
        *_rows("mistralai.client.chat", "mistralai.client.embeddings"),  # 2.x and later
        *_rows("mistralai.chat", "mistralai.embeddings"),  # 1.x
    )

    def _instrument(self, **kwargs: Any) -> None:
        """Patch the rows of the layout this version has (1.x or 2.x+), nothing else."""
        use_provider(kwargs.get("tracer_provider"))
        present: dict[str, bool] = {}
        rows = tuple(r for r in self.PATCHES if present.setdefault(r[0], _present(r[0])))
        self._patched = apply_patches(rows) + _patch_retries()
