"""AWS Bedrock Runtime through boto3 / botocore: Converse, ConverseStream, InvokeModel and
InvokeModelWithResponseStream, each one budgeted model ``Call``.

boto3 builds its client methods at run time, so the patch point is the one method every client
call goes through, ``botocore.client.BaseClient._make_api_call``; calls to other services and
other operations pass straight through (one dict lookup). The call is reserved before botocore
builds the request, so a refused call sends nothing.

- Converse: the worst case is ``inferenceConfig.maxTokens`` (else the model's maximum) plus the
  estimate of the messages, system prompt and tools.
- InvokeModel: the body is each model's own JSON; its output limit is read under the names the
  models use (``max_tokens``, Llama's ``max_gen_len``, Titan's ``maxTokenCount``, Nova's
  ``max_new_tokens``). The response body is read inside the call (so its text and usage are
  known when the call ends) and handed back as an unread ``StreamingBody`` over the same bytes;
  a connection lost while reading raises from ``invoke_model`` instead of from ``read()``.
- Streams (``response["stream"]`` / ``response["body"]``) come back behind a proxy that ends the
  call exactly once (consumed, closed, abandoned, error).
- botocore's retries (``Endpoint._needs_retry`` answering yes) count against ``max_retries``.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from budgetspan import attributes as A
from budgetspan.calls.call import Call
from budgetspan.config import capture_content
from budgetspan.events import internal_error
from budgetspan.instrumentation.bedrock_observers import BedrockObserver, ConverseObserver, InvokeObserver
from budgetspan.instrumentation.observers import capture_input_messages
from budgetspan.instrumentation.patch_table import PatchInstrumentor, suppressed
from budgetspan.instrumentation.patching import model_call, positive_int
from budgetspan.instrumentation.sdk_call import CURRENT_CALL, Sending, in_model_call, take_result
from budgetspan.instrumentation.streams import SyncStreamProxy, finish_now

PROVIDER = "aws.bedrock"
SERVICE = "bedrock-runtime"

#: operation -> the response key holding its event stream (None: a whole response)
_STREAM_KEY: dict[str, str | None] = {
    "Converse": None,
    "ConverseStream": "stream",
    "InvokeModel": None,
    "InvokeModelWithResponseStream": "body",
}


# --- the request ----------------------------------------------------------------------------


def _where(client: Any) -> tuple[str, str | None, int | None]:
    try:
        parts = urlsplit(str(client.meta.endpoint_url))
        port = parts.port or (443 if parts.scheme == "https" else 80 if parts.scheme == "http" else None)
        return PROVIDER, parts.hostname, port
    except Exception:
        return PROVIDER, None, None


def _converse_call(client: Any, params: dict[str, Any], streaming: bool) -> tuple[Call, BedrockObserver]:
    config = params.get("inferenceConfig")
    config = config if isinstance(config, dict) else {}
    request = {
        "model": params.get("modelId"),
        "temperature": config.get("temperature"),
        "messages": params.get("messages"),
        "system": params.get("system"),
        "tools": params.get("toolConfig"),
    }
    call = model_call(A.OP_CHAT, _where(client), request, positive_int(config.get("maxTokens")), streaming)
    capture = capture_content()
    if capture:
        capture_input_messages(call.attributes, params.get("messages"), params.get("system"))
    return call, ConverseObserver(call, capture)


def _request_body(params: dict[str, Any]) -> dict[str, Any]:
    """The InvokeModel body as JSON when it was given as bytes or text (a file is left unread)."""
    body = params.get("body")
    if isinstance(body, (bytes, bytearray, str)):
        try:
            parsed = json.loads(body)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return body if isinstance(body, dict) else {}


def _nested(body: dict[str, Any], outer: str, inner: str) -> Any:
    section = body.get(outer)
    return section.get(inner) if isinstance(section, dict) else None


def _body_max_tokens(body: dict[str, Any]) -> int | None:
    """The output limit under the names Bedrock's models use for it."""
    for value in (
        body.get("max_tokens"),  # Anthropic, Mistral, Cohere, OpenAI-style bodies
        body.get("max_gen_len"),  # Llama
        _nested(body, "textGenerationConfig", "maxTokenCount"),  # Titan
        _nested(body, "inferenceConfig", "max_new_tokens"),  # Nova
        _nested(body, "inferenceConfig", "maxTokens"),
    ):
        found = positive_int(value)
        if found is not None:
            return found
    return None


#: InvokeModel body fields read above (as messages, system, tools, prompt, input) or not text.
_READ_FIELDS = frozenset({"messages", "system", "tools", "prompt", "inputText", "texts", "input"})


def _other_text(body: dict[str, Any]) -> list[Any] | None:
    """The rest of an InvokeModel body's text and structures, whatever the model family names
    them (Cohere's ``message``, ``chat_history``, ``documents``, ``preamble``...): estimated too,
    so an unknown field's prompt is never 0 tokens (numbers and flags are left out)."""
    rest = [v for k, v in body.items() if k not in _READ_FIELDS and isinstance(v, (str, list, dict))]
    return rest or None


def _invoke_operation(model: Any, body: dict[str, Any]) -> str:
    if isinstance(model, str) and "embed" in model.lower():
        return A.OP_EMBEDDINGS
    if "messages" in body:
        return A.OP_CHAT
    return A.OP_TEXT_COMPLETION if ("prompt" in body or "inputText" in body) else A.OP_CHAT


def _invoke_call(client: Any, params: dict[str, Any], streaming: bool) -> tuple[Call, BedrockObserver]:
    body = _request_body(params)
    model = params.get("modelId")
    temperature = body.get("temperature")
    if temperature is None:
        temperature = _nested(body, "textGenerationConfig", "temperature")
    request = {
        "model": model,
        "temperature": temperature,
        "messages": body.get("messages"),
        "system": body.get("system"),
        "tools": body.get("tools"),
        "prompt": body.get("prompt"),
        "input": [body.get(k) for k in ("inputText", "texts", "input") if body.get(k) is not None] or None,
        "instructions": _other_text(body),
    }
    operation = _invoke_operation(model, body)
    max_tokens = None if operation == A.OP_EMBEDDINGS else _body_max_tokens(body)
    call = model_call(operation, _where(client), request, max_tokens, streaming)
    if operation == A.OP_EMBEDDINGS:
        call.worst_case_tokens = 0  # an embedding writes no tokens
    capture = capture_content()
    if capture:
        capture_input_messages(call.attributes, body.get("messages"), body.get("system"))
    return call, InvokeObserver(call, capture)


_BUILDERS: dict[str, Callable[[Any, dict[str, Any], bool], tuple[Call, BedrockObserver]]] = {
    "Converse": _converse_call,
    "ConverseStream": _converse_call,
    "InvokeModel": _invoke_call,
    "InvokeModelWithResponseStream": _invoke_call,
}


# --- the response ---------------------------------------------------------------------------


def buffer_body(result: Any, observer: BedrockObserver) -> None:
    """Read InvokeModel's body inside the call and hand the caller an unread one over the same
    bytes. A read error is the request's own (it propagates, and the call ends with it)."""
    body = result.get("body") if isinstance(result, dict) else None
    if body is None or not callable(getattr(body, "read", None)) or not isinstance(observer, InvokeObserver):
        return
    data = body.read()
    if not isinstance(data, bytes):
        return
    try:
        from botocore.response import StreamingBody

        result["body"] = StreamingBody(io.BytesIO(data), len(data))
        observer.body = data
    except Exception:
        internal_error("bedrock body")


class EventIterator:
    """botocore's ``EventStream`` (it has only ``__iter__``) as the iterator the stream proxy
    wraps; anything else (``close``, ``get_initial_response``) reaches the stream itself."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._events: Iterator[Any] | None = None

    def __next__(self) -> Any:
        if self._events is None:
            self._events = iter(self.stream)
        return next(self._events)

    def close(self) -> None:
        self.stream.close()

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # the proxy passes for the stream: isinstance(s, EventStream)
        return type(self.stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _adopt_stream(call: Call, observer: BedrockObserver, result: Any, key: str) -> Any:
    """Put the stream proxy where the caller will read the events; end the call if there is none."""
    try:
        events = result.get(key) if isinstance(result, dict) else None
        if events is not None and hasattr(type(events), "__iter__"):
            result[key] = SyncStreamProxy(EventIterator(events), call, observer)
            return result
    except Exception:
        internal_error("bedrock stream adopt")
    finish_now(call, observer)
    return result


def _run(
    call: Call, observer: BedrockObserver, stream_key: str | None, wrapped: Any, args: Any, kwargs: Any
) -> Any:
    call.start()  # BudgetExhausted here: nothing was sent
    with Sending(call), call.activate():
        result = wrapped(*args, **kwargs)
        if stream_key is None:
            buffer_body(result, observer)
    if stream_key is None:
        return take_result(call, observer, result, asynchronous=False)
    return _adopt_stream(call, observer, result, stream_key)


def _operation(args: Any, kwargs: Any) -> tuple[Any, Any]:
    if len(args) >= 2:
        return args[0], args[1]
    return kwargs.get("operation_name", args[0] if args else None), kwargs.get("api_params")


def api_call_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``BaseClient._make_api_call(operation_name, api_params)`` for every AWS client."""
    operation, params = _operation(args, kwargs)
    builder = _BUILDERS.get(operation) if isinstance(operation, str) else None
    if builder is None or in_model_call() or suppressed():
        return wrapped(*args, **kwargs)
    try:
        if instance.meta.service_model.service_name != SERVICE or not isinstance(params, dict):
            return wrapped(*args, **kwargs)
        call, observer = builder(instance, params, _STREAM_KEY[operation] is not None)
    except Exception:
        internal_error("bedrock call setup")
        return wrapped(*args, **kwargs)
    return _run(call, observer, _STREAM_KEY[operation], wrapped, args, kwargs)


def retry_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    """``Endpoint._needs_retry``: a yes is one more attempt of the running Bedrock call, counted
    against ``max_retries`` (BudgetExhausted stops it before it is sent)."""
    again = wrapped(*args, **kwargs)
    call = CURRENT_CALL.get()
    if again is True and call is not None and call.provider == PROVIDER:
        call.retry()
    return again


class BedrockInstrumentor(PatchInstrumentor):
    """``opentelemetry-instrument`` entry point ``budgetspan_bedrock``; also used by configure()."""

    DEPENDENCIES = ("botocore >= 1.34",)
    PATCHES = (
        ("botocore.client", "BaseClient._make_api_call", api_call_wrapper),
        ("botocore.endpoint", "Endpoint._needs_retry", retry_wrapper),
    )
