"""Google Gen AI SDK (``google-genai``) instrumentation: Gemini API and Vertex AI, sync and async,
whole responses and streams; the Python functions the SDK calls itself (automatic function
calling) are budgeted tool calls, and the SDK's own retries (``HttpRetryOptions``) count against
``max_retries``, each refused at the limit before it is sent.

``client.models.generate_content`` may send several requests: automatic function calling calls
the model again after running the functions, and automatic continuation resumes a long answer
with a continuation token. Every request is a model call (reserved before it leaves, counted
against ``max_model_calls``, with its own usage), so the SDK's per-request methods
(``Models._generate_content`` / ``_generate_content_stream`` and their ``AsyncModels`` twins,
present since google-genai 1.0) are the ones patched; the public methods, ``chats`` and the
``aio`` variants all go through them.

Usage (``usage_metadata``) in OpenTelemetry terms: input = ``prompt_token_count`` (which includes
``cached_content_token_count``, the cache reads) + ``tool_use_prompt_token_count``; output =
``candidates_token_count`` + ``thoughts_token_count`` (thinking is billed as output, as OpenAI's
reasoning tokens are part of its completion tokens); reasoning = ``thoughts_token_count``. Input
plus output is then the API's ``total_token_count``. In a stream each chunk carries the running
totals of its request, so the last one is the request's usage.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from budgetspan import attributes as A
from budgetspan.accounting.ledger import Spend
from budgetspan.calls.call import Call
from budgetspan.config import capture_content
from budgetspan.instrumentation.observers import Observer, content_json
from budgetspan.instrumentation.openai import provider_from_url
from budgetspan.instrumentation.patch_table import PatchInstrumentor, sync_and_async
from budgetspan.instrumentation.patching import ResultObserver, Where, model_call, positive_int, wrapper_for
from budgetspan.instrumentation.retrieval import atraced_tool, traced_tool
from budgetspan.instrumentation.sdk_call import CURRENT_CALL
from budgetspan.instrumentation.usage import count, field, pick

SYSTEM = "google_genai"

# --- request ------------------------------------------------------------------------------------


def model_id(model: Any) -> str | None:
    """The bare model id prices and limits are known by: ``models/gemini-2.5-flash``,
    ``publishers/google/models/...``, ``projects/p/locations/l/publishers/google/models/...`` and
    ``google/gemini-2.5-flash`` all name ``gemini-2.5-flash``; tuned models keep their name."""
    if not isinstance(model, str) or not model:
        return None
    if model.startswith("tunedModels/") or "/endpoints/" in model:
        return model
    return model.rsplit("/", 1)[-1] or None


def _where(instance: Any) -> Where:
    api = getattr(instance, "_api_client", None)
    options = getattr(api, "_http_options", None)
    base = field(options, "base_url")
    _, host, port = provider_from_url(base if isinstance(base, str) else "")
    return ("gcp.vertex_ai" if getattr(api, "vertexai", False) else "gcp.gemini", host, port)


def _setting(config: Any, name: str, camel: str) -> Any:
    """A ``GenerateContentConfig`` field, or a dict key in either spelling the SDK accepts."""
    value = field(config, name)
    if value is None and isinstance(config, dict):
        value = config.get(camel)
    return value


def _new_call(instance: Any, kwargs: dict[str, Any], streaming: bool) -> tuple[Call, Observer]:
    config = kwargs.get("config")
    contents = kwargs.get("contents")
    request = {
        "model": model_id(kwargs.get("model")),
        "n": _setting(config, "candidate_count", "candidateCount"),
        "temperature": _setting(config, "temperature", "temperature"),
        "messages": contents,
        "system": _setting(config, "system_instruction", "systemInstruction"),
        "tools": _declarations(_setting(config, "tools", "tools")),
    }
    max_tokens = positive_int(_setting(config, "max_output_tokens", "maxOutputTokens"))
    call = model_call(A.OP_GENERATE_CONTENT, _where(instance), request, max_tokens, streaming)
    capture = capture_content()
    if capture:
        messages = [{"role": "user", "content": contents}] if isinstance(contents, str) else contents
        encoded = content_json(messages)
        if encoded is not None:
            call.attributes[A.GEN_AI_INPUT_MESSAGES] = encoded
    return call, GeminiObserver(call, capture)


def _declarations(tools: Any) -> Any:
    """What the model reads of the tools: declarations, not the Python functions behind them."""
    if not isinstance(tools, (list, tuple)):
        return None
    return [t for t in tools if not callable(t)]


def _call(instance: Any, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Call, Observer]:
    return _new_call(instance, kwargs, streaming=False)


def _stream_call(instance: Any, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Call, Observer]:
    return _new_call(instance, kwargs, streaming=True)


# --- results ------------------------------------------------------------------------------------

_USAGE_FIELDS = (
    "prompt_token_count",
    "candidates_token_count",
    "cached_content_token_count",
    "thoughts_token_count",
    "tool_use_prompt_token_count",
)


def gemini_usage(usage: Any) -> Spend | None:
    """``usage_metadata`` as a ``Spend`` (see the module's docstring); None when nothing usable.

    The API leaves out zero counts (an empty answer has no ``candidates_token_count``): an absent
    part of a reported figure is 0; a figure with no part at all is unreported.
    """
    if usage is None:
        return None
    prompt, candidates, cached, thoughts, tool_prompt = (count(v) for v in pick(usage, _USAGE_FIELDS))
    inp = None if prompt is None and tool_prompt is None else (prompt or 0) + (tool_prompt or 0)
    out = None if candidates is None and thoughts is None else (candidates or 0) + (thoughts or 0)
    if inp is None and out is None:
        return None
    if cached is not None and (inp is None or cached > inp):
        cached = None  # contradicts the total it is part of: not trustworthy
    return Spend(inp, out, cached, None, thoughts)


class GeminiObserver(ResultObserver):
    """A ``GenerateContentResponse``, whole or as the chunks of a stream (same type)."""

    def on_response(self, response: Any) -> None:
        self._read(response)

    def on_item(self, item: Any) -> None:
        self._read(item)

    def _read(self, response: Any) -> None:
        self._id(field(response, "response_id"))
        self._model(field(response, "model_version"))
        for candidate in field(response, "candidates") or ():
            if field(candidate, "index") not in (0, None):
                continue
            reason = field(candidate, "finish_reason")
            reason = getattr(reason, "value", reason)
            if isinstance(reason, str) and reason:
                self.finish_reasons = [reason]
            for part in field(field(candidate, "content"), "parts") or ():
                self._part(part)
        self.set_usage(gemini_usage(field(response, "usage_metadata")))

    def _part(self, part: Any) -> None:
        text, thought, function_call = pick(part, ("text", "thought", "function_call"))
        if isinstance(text, str) and text:
            self.call.first_token()
            if not thought:  # thought summaries are not the answer
                self.text.append(text)
        if function_call is not None:
            self.call.first_token()
            self.tool_calls.append({"id": field(function_call, "id"), "name": field(function_call, "name")})


# --- automatic function calling: the SDK runs the user's functions --------------------------------


def _function_name(args: Any, kwargs: Any) -> str:
    function = kwargs.get("function_to_invoke", args[1] if len(args) > 1 else None)
    name = getattr(function, "__name__", None)
    return name if isinstance(name, str) and name else "function"


def _function_wrapper(asynchronous: bool) -> Callable[..., Any]:
    """``invoke_function_from_dict_args(_async)``: one budgeted ``execute_tool`` call each, refused
    before the function runs. The SDK turns any exception of the function into an error result
    for the model, so a refusal is seen again by the next model request, which raises it."""
    if asynchronous:

        async def awrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            name = _function_name(args, kwargs)
            return await atraced_tool(wrapped, args, kwargs, name=name, system=SYSTEM)

        return awrapper

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return traced_tool(wrapped, args, kwargs, name=_function_name(args, kwargs), system=SYSTEM)

    return wrapper


# --- the SDK's own retries ----------------------------------------------------------------------

#: The model call whose first request has been sent in this context: the SDK's retries
#: (``HttpRetryOptions``, off unless asked for) send the same request again below the patched
#: method, each one ``_request_once`` more.
_SENT: ContextVar[Call | None] = ContextVar("budgetspan_genai_sent", default=None)


def _attempt() -> None:
    """Past a call's first request, one more attempt: a retry, refused before it is sent at
    ``max_retries`` (``BudgetExhausted`` is no error the SDK retries)."""
    call = CURRENT_CALL.get()
    if call is None:
        return
    if _SENT.get() is call:
        call.retry()
    else:
        _SENT.set(call)


def _request_once(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    _attempt()
    return wrapped(*args, **kwargs)


async def _async_request_once(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    _attempt()
    return await wrapped(*args, **kwargs)


# --- patch table --------------------------------------------------------------------------------

_WRAPPER = wrapper_for(_call, "google-genai call setup")
_STREAM_WRAPPER = wrapper_for(_stream_call, "google-genai call setup")
_MODELS = "google.genai.models"

_FUNCTIONS = "google.genai._extra_utils"


class GoogleGenAIInstrumentor(PatchInstrumentor):
    """``opentelemetry-instrument`` entry point ``budgetspan_google_genai``; also used by configure()."""

    DEPENDENCIES = ("google-genai >= 1.0",)
    PATCHES = (
        *sync_and_async(_MODELS, _WRAPPER, "Models._generate_content"),
        *sync_and_async(_MODELS, _STREAM_WRAPPER, "Models._generate_content_stream"),
        (_FUNCTIONS, "invoke_function_from_dict_args", _function_wrapper(False)),
        (_FUNCTIONS, "invoke_function_from_dict_args_async", _function_wrapper(True)),
        ("google.genai._api_client", "BaseApiClient._request_once", _request_once),
        ("google.genai._api_client", "BaseApiClient._async_request_once", _async_request_once),
    )
