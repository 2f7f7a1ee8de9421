"""Token usage parsers for OpenAI and Anthropic responses and stream events.

Each parser takes an SDK object *or* a plain dict (raw-response bodies are parsed JSON) and returns
a ``Spend`` in OpenTelemetry terms (``input_tokens`` includes cache reads and writes), or ``None``
when the provider reported nothing usable. A malformed figure (a string, a negative number, a
bool, NaN) is *unreported* (``None``) for that field, never a guessed 0 and never an exception:
the SDKs build their models without validation, so whatever the server sent ends up here.
"""

from __future__ import annotations

import math
from operator import itemgetter
from typing import Any

from budgetspan.accounting.ledger import Spend

_ABSENT = object()
_GETTERS: dict[tuple[str, ...], Any] = {}


def _one(name: str) -> Any:
    """An ``itemgetter`` for one name that still returns a tuple."""
    return lambda values: (values[name],)


def field(obj: Any, name: str) -> Any:
    """``obj.name`` or ``obj[name]``; None when absent (SDK models and dicts alike).

    SDK models are pydantic: their fields live in ``__dict__`` (extras in ``__pydantic_extra__``);
    reading there first avoids pydantic's slow ``__getattr__`` for absent names.
    """
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    try:
        values = getattr(obj, "__dict__", None)
        if values is not None:
            value = values.get(name, _ABSENT)
            if value is not _ABSENT:
                return value
            if not hasattr(type(obj), name):
                extra = getattr(obj, "__pydantic_extra__", None)
                return extra.get(name) if isinstance(extra, dict) else None
        return getattr(obj, name, None)
    except Exception:
        return None


def pick(obj: Any, names: tuple[str, ...]) -> list[Any]:
    """``[field(obj, n) for n in names]`` in one call: an SDK model's ``__dict__`` is read once.

    This runs on every response; one call per object instead of one per field is most of what a
    response costs to read. Names absent from ``__dict__`` still go through ``field`` (extras).
    """
    if obj is None:
        return [None] * len(names)
    values = obj if isinstance(obj, dict) else getattr(obj, "__dict__", None)
    if not isinstance(values, dict):
        return [field(obj, n) for n in names]
    getter = _GETTERS.get(names)
    if getter is None:
        getter = _GETTERS[names] = itemgetter(*names) if len(names) > 1 else _one(names[0])
    try:
        return list(getter(values))  # every name present (SDK models carry all their fields)
    except KeyError:
        return [field(obj, n) for n in names]  # some absent: extras, properties, dict keys


def count(value: Any) -> int | None:
    """A token count, or None when the value is not a finite non-negative number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value >= 0 and value.is_integer():
        return int(value)
    return None


def _spend(
    inp: int | None, out: int | None, cr: int | None = None, cw: int | None = None, rs: int | None = None
) -> Spend | None:
    if inp is None and out is None:
        return None
    return Spend(inp, out, cr, cw, rs)


# --- OpenAI ---------------------------------------------------------------------------------


def openai_usage(usage: Any) -> Spend | None:
    """Chat Completions, Responses and Embeddings usage (OpenAI's input already includes cached).

    Chat: ``prompt_tokens`` / ``completion_tokens`` with ``prompt_tokens_details.cached_tokens``
    (cache reads), ``.cache_write_tokens`` (newer SDKs) and
    ``completion_tokens_details.reasoning_tokens``. Responses: ``input_tokens`` / ``output_tokens``
    with ``input_tokens_details`` / ``output_tokens_details``. Embeddings: ``prompt_tokens`` only.
    """
    if usage is None:
        return None
    pt, ct, ptd, ctd = pick(usage, _CHAT_USAGE_FIELDS)
    it = ot = itd = otd = None
    if pt is None or ct is None:  # the Responses API's names (read only when needed: not free)
        it, ot, itd, otd = pick(usage, _RESPONSES_USAGE_FIELDS)
    # ``x if type(x) is int and x >= 0 else count(x)``: the common case without a call.
    inp = pt if type(pt) is int and pt >= 0 else count(pt)
    if inp is None:
        inp = count(it)
    out = ct if type(ct) is int and ct >= 0 else count(ct)
    if out is None:
        out = count(ot)
    cached = written = reasoning = None
    details = ptd or itd
    if details is not None:
        cached, written = pick(details, _OPENAI_IN_DETAILS)
        cached = cached if type(cached) is int and cached >= 0 else count(cached)
        written = written if type(written) is int and written >= 0 else count(written)
    details = ctd or otd
    if details is not None:
        reasoning = pick(details, _OPENAI_OUT_DETAILS)[0]
        reasoning = reasoning if type(reasoning) is int and reasoning >= 0 else count(reasoning)
    if inp is not None and (cached or 0) + (written or 0) > inp:
        cached = written = None  # contradicts the total they are part of: not trustworthy
    if inp is None and out is None:
        return None
    return Spend(inp, out, cached, written, reasoning)


_CHAT_USAGE_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
)
_RESPONSES_USAGE_FIELDS = ("input_tokens", "output_tokens", "input_tokens_details", "output_tokens_details")
_OPENAI_IN_DETAILS = ("cached_tokens", "cache_write_tokens")
_OPENAI_OUT_DETAILS = ("reasoning_tokens",)


def openai_embeddings_usage(usage: Any) -> Spend | None:
    """Embeddings report input only; their output is no tokens at all (0, not unreported)."""
    inp = count(field(usage, "prompt_tokens"))
    if inp is None:
        return None
    return Spend(inp, 0)


# --- Anthropic ------------------------------------------------------------------------------


def anthropic_usage(usage: Any) -> Spend | None:
    """Anthropic usage: its ``input_tokens`` EXCLUDES cache reads and writes, so they are added."""
    if usage is None:
        return None
    raw_in, out, cr, cw = (count(v) for v in pick(usage, _ANTHROPIC_USAGE_FIELDS))
    inp = None if raw_in is None else raw_in + (cr or 0) + (cw or 0)
    return _spend(inp, out, cr, cw)


def anthropic_one_hour_writes(usage: Any) -> int:
    """The cache writes of a one-hour TTL (``cache_creation.ephemeral_1h_input_tokens``): they
    cost twice the input price, where five-minute writes (the rest) cost 1.25 times."""
    return count(field(field(usage, "cache_creation"), "ephemeral_1h_input_tokens")) or 0


_ANTHROPIC_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


class AnthropicStreamUsage:
    """Usage across a Messages stream.

    ``message_start`` carries the input side (and a small provisional output count);
    ``message_delta`` carries the *cumulative* output count (and, on newer API versions, may
    restate the input side). Cumulative means it replaces, never adds: 3 then 171 is 171.
    """

    __slots__ = ("cache_read", "cache_write", "final", "output", "raw_input")

    def __init__(self) -> None:
        self.raw_input: int | None = None
        self.output: int | None = None
        self.cache_read: int | None = None
        self.cache_write: int | None = None
        #: Whether the output count is the final one (a ``message_delta``'s), not the provisional
        #: one of ``message_start`` (1): a stream left or cut before it never had its count.
        self.final = False

    def _take(self, usage: Any) -> None:
        for attr, name in (
            ("raw_input", "input_tokens"),
            ("output", "output_tokens"),
            ("cache_read", "cache_read_input_tokens"),
            ("cache_write", "cache_creation_input_tokens"),
        ):
            value = count(field(usage, name))
            if value is not None:
                setattr(self, attr, value)

    def on_event(self, event: Any) -> bool:
        """Take the usage of one raw stream event; True when it carried usage."""
        kind = field(event, "type")
        if kind == "message_start":
            usage = field(field(event, "message"), "usage")
        elif kind == "message_delta":
            usage = field(event, "usage")
        else:
            return False
        if usage is None:
            return False
        self._take(usage)
        self.final = self.final or (kind == "message_delta" and self.output is not None)
        return True

    def spend(self) -> Spend | None:
        inp = None
        if self.raw_input is not None:
            inp = self.raw_input + (self.cache_read or 0) + (self.cache_write or 0)
        return _spend(inp, self.output, self.cache_read, self.cache_write)


# --- AWS Bedrock ----------------------------------------------------------------------------


def _with_cache(raw_in: int | None, out: int | None, cr: int | None, cw: int | None) -> Spend | None:
    """Bedrock, like Anthropic, counts cache reads and writes apart from its input figure."""
    inp = None if raw_in is None else raw_in + (cr or 0) + (cw or 0)
    return _spend(inp, out, cr, cw)


#: Bedrock's four figures as named in each place: input, output, cache read, cache write.
_CONVERSE_FIELDS = ("inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens")
_METRICS_FIELDS = (
    "inputTokenCount",
    "outputTokenCount",
    "cacheReadInputTokenCount",
    "cacheWriteInputTokenCount",
)


def _fields_with_cache(obj: Any, names: tuple[str, str, str, str]) -> Spend | None:
    if obj is None:
        return None
    raw_in, out, cr, cw = (count(field(obj, name)) for name in names)
    return _with_cache(raw_in, out, cr, cw)


def bedrock_converse_usage(usage: Any) -> Spend | None:
    """Converse / ConverseStream ``usage`` (and Nova's InvokeModel body): ``inputTokens``
    excludes ``cacheReadInputTokens`` and ``cacheWriteInputTokens``, which are added."""
    return _fields_with_cache(usage, _CONVERSE_FIELDS)


def _header_count(headers: Any, name: str) -> int | None:
    value = headers.get(name) if isinstance(headers, dict) else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return count(value)


def bedrock_header_usage(headers: Any) -> Spend | None:
    """InvokeModel's ``X-Amzn-Bedrock-*-Token-Count`` response headers (any model): Bedrock's
    own count, input excluding cache reads and writes."""
    prefix = "x-amzn-bedrock-"
    return _with_cache(
        _header_count(headers, prefix + "input-token-count"),
        _header_count(headers, prefix + "output-token-count"),
        _header_count(headers, prefix + "cache-read-input-token-count"),
        _header_count(headers, prefix + "cache-write-input-token-count"),
    )


def bedrock_metrics_usage(metrics: Any) -> Spend | None:
    """``amazon-bedrock-invocationMetrics`` in the last chunk of InvokeModelWithResponseStream."""
    return _fields_with_cache(metrics, _METRICS_FIELDS)


def bedrock_body_usage(body: Any) -> Spend | None:
    """The usage an InvokeModel body reports in its model's own shape: Anthropic (``usage``
    with ``input_tokens``), Nova (``usage`` with ``inputTokens``), Mistral / OpenAI
    (``prompt_tokens``), Llama (``prompt_token_count``), Titan (``inputTextTokenCount``)."""
    usage = field(body, "usage")
    if usage is not None:
        if field(usage, "input_tokens") is not None:
            return anthropic_usage(usage)
        if field(usage, "inputTokens") is not None:
            return bedrock_converse_usage(usage)
        return openai_usage(usage)
    llama_in = count(field(body, "prompt_token_count"))
    llama_out = count(field(body, "generation_token_count"))
    if llama_in is not None or llama_out is not None:
        return _spend(llama_in, llama_out)
    titan_in = count(field(body, "inputTextTokenCount"))
    if titan_in is not None:
        results = field(body, "results")
        outs = [count(field(r, "tokenCount")) for r in results] if isinstance(results, list) else []
        out = sum(o for o in outs if o is not None) if outs and None not in outs else None
        return _spend(titan_in, out)
    return None


# --- Mistral ----------------------------------------------------------------------------------


def mistral_usage(usage: Any, embeddings: bool = False) -> Spend | None:
    """Mistral's ``UsageInfo``: OpenAI's names (``prompt_tokens`` includes the cached
    ``prompt_tokens_details.cached_tokens``). The SDK fills an absent count with 0, so a count
    the server did not send (outside the model's ``model_fields_set``) is unreported, not 0.
    Embeddings have no output: 0 there, never unreported."""
    if usage is None:
        return None
    sent = getattr(usage, "model_fields_set", None)

    def reported(name: str) -> int | None:
        if sent is not None and name not in sent:
            return None
        return count(field(usage, name))

    inp = reported("prompt_tokens")
    out = 0 if embeddings and inp is not None else reported("completion_tokens")
    cached = count(field(field(usage, "prompt_tokens_details"), "cached_tokens"))
    if inp is not None and cached is not None and cached > inp:
        cached = None  # contradicts the total it is part of
    return None if inp is None and out is None else Spend(inp, out, cached)
