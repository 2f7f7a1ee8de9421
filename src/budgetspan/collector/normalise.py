"""Other instrumentations' GenAI attribute names, read and written back under the GenAI conventions.

Services that run without budgetspan send the names their instrumentation chose: OpenLLMetry's
older ``gen_ai.usage.prompt_tokens`` and ``llm.request.type``, OpenInference's
``llm.token_count.*``, ``llm.model_name`` and ``openinference.span.kind``, OpenLIT's
``gen_ai.usage.reasoning_tokens``. Pricing, accounting, metrics and dashboards read one set of
names, so the tier adds the GenAI name next to the original (the original stays: a backend that
reads it keeps working). A GenAI name already on the span is never replaced.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Final

from budgetspan import attributes as A

#: (GenAI name, the names it is read from, first found wins). Token figures must be numbers.
TOKEN_SOURCES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    (
        A.GEN_AI_USAGE_INPUT_TOKENS,
        (A.GEN_AI_USAGE_PROMPT_TOKENS_LEGACY, A.OPENINFERENCE_PROMPT_TOKENS),
    ),
    (
        A.GEN_AI_USAGE_OUTPUT_TOKENS,
        (A.GEN_AI_USAGE_COMPLETION_TOKENS_LEGACY, A.OPENINFERENCE_COMPLETION_TOKENS),
    ),
    (
        A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
        (A.OPENLLMETRY_CACHE_READ_TOKENS, A.OPENINFERENCE_CACHE_READ_TOKENS),
    ),
    (
        A.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
        (A.OPENLLMETRY_CACHE_CREATION_TOKENS, A.OPENINFERENCE_CACHE_WRITE_TOKENS),
    ),
    (
        A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS,
        (A.OPENLIT_REASONING_TOKENS, A.OPENINFERENCE_REASONING_TOKENS),
    ),
)
TEXT_SOURCES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    (A.GEN_AI_PROVIDER_NAME, (A.GEN_AI_SYSTEM_DEPRECATED, A.OPENINFERENCE_PROVIDER, A.OPENINFERENCE_SYSTEM)),
    (A.GEN_AI_REQUEST_MODEL, (A.OPENINFERENCE_MODEL_NAME,)),
    (A.WORKFLOW, (A.OPENLLMETRY_WORKFLOW,)),
)
#: ``gen_ai.operation.name`` from OpenLLMetry's ``llm.request.type``.
OPERATION_BY_REQUEST_TYPE: Final = {
    "chat": A.OP_CHAT,
    "completion": A.OP_TEXT_COMPLETION,
    "embedding": A.OP_EMBEDDINGS,
}
#: ``gen_ai.operation.name`` from OpenInference's span kind.
OPERATION_BY_OPENINFERENCE_KIND: Final = {
    "LLM": A.OP_CHAT,
    "EMBEDDING": A.OP_EMBEDDINGS,
    "TOOL": A.OP_EXECUTE_TOOL,
    "RETRIEVER": A.OP_RETRIEVAL,
    "AGENT": A.OP_INVOKE_AGENT,
}
#: A span with an attribute under one of these prefixes may be a GenAI span or carry content;
#: any other span is looked at only to end its trace's run (the cheap path).
CANDIDATE_PREFIXES: Final = (
    "gen_ai.",
    "llm.",
    "budgetspan.",
    "openinference.",
    "traceloop.",
    "input.",
    "output.",
    "retrieval.",
    "embedding.",
    "tool.",
)


@functools.lru_cache(maxsize=4096)
def is_candidate(key: str) -> bool:
    """Whether an attribute key is under ``CANDIDATE_PREFIXES``, cached by key (the keys of
    plain spans recur span after span): with ``any(map(is_candidate, keys))`` the test of a
    span's keys runs without a Python frame. Measured (``bench_collector.py --instructions``, a
    plain span of 6 attributes in rotel): 42.7k -> 42.5k instructions; the rest is rotel making
    the attribute list Python objects and back, which any look at the keys costs."""
    return key.startswith(CANDIDATE_PREFIXES)


#: Every name ``normalised`` reads from, so that a span is scanned for them in one set operation.
SOURCE_KEYS: Final = frozenset(
    {source for _, sources in TOKEN_SOURCES + TEXT_SOURCES for source in sources}
    | {A.OPENLLMETRY_REQUEST_TYPE, A.OPENLLMETRY_SPAN_KIND, A.OPENINFERENCE_SPAN_KIND}
)


#: Every GenAI name ``normalised`` may write: whether the span has it changes what is read.
_TARGET_KEYS: Final = frozenset(
    {name for name, _ in TOKEN_SOURCES + TEXT_SOURCES} | {A.GEN_AI_OPERATION_NAME, A.GEN_AI_TOOL_NAME}
)
_OPERATION_KEYS: Final = frozenset(
    {A.OPENLLMETRY_REQUEST_TYPE, A.OPENLLMETRY_SPAN_KIND, A.OPENINFERENCE_SPAN_KIND}
)


def token_count(value: Any) -> int | None:
    """A usable token figure: a finite, non-negative number (a bool, NaN or text is not one)."""
    if type(value) is int:  # the usual case first (``type``: a bool is not one)
        return value if value >= 0 else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        if not math.isfinite(value) or value < 0:
            return None
        return int(value)
    except (OverflowError, ValueError):
        return None


#: What to read for one set of source names present and GenAI names set: (GenAI name, its sources
#: present in rank order, a token figure?) for each name to write, and whether to derive the
#: operation and the tool name.
Plan = tuple[tuple[tuple[str, tuple[str, ...], bool], ...], bool, bool]


@functools.lru_cache(maxsize=1024)
def _plan(present: frozenset[str], targets: frozenset[str]) -> Plan:
    fields = tuple(
        (name, found, is_tokens)
        for table, is_tokens in ((TOKEN_SOURCES, True), (TEXT_SOURCES, False))
        for name, sources in table
        if name not in targets and (found := tuple(s for s in sources if s in present))
    )
    op = A.GEN_AI_OPERATION_NAME not in targets and not present.isdisjoint(_OPERATION_KEYS)
    return fields, op, A.GEN_AI_TOOL_NAME not in targets


def plan_for(keys: AbstractSet[str] | Mapping[str, Any]) -> Plan | None:
    """What ``apply_plan`` reads for a span with these keys; None: no source name is present
    (the span is already under the GenAI names: budgetspan, openai-v2; the common case)."""
    present = SOURCE_KEYS.intersection(keys)
    if not present:
        return None
    return _plan(frozenset(present), _TARGET_KEYS.intersection(keys))


def normalised(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The GenAI attributes to add to a span so that it reads like the conventions say."""
    plan = plan_for(attrs)
    return {} if plan is None else apply_plan(attrs, plan)


def apply_plan(attrs: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    """``normalised`` with the plan known: planned once per set of source names present and GenAI
    names already set (``_plan``, cached: spans of one instrumentation share their names), and by
    the core once per set of keys (``shape.shape_of``), so a span costs only the reads. Measured
    (``bench_collector.py --instructions``, ``normalised`` alone on the bench's span with
    OpenLLMetry's older names): 18.1k -> 16.7k instructions a call; the plan from the shape
    saves the two set intersections on top."""
    out: dict[str, Any] = {}
    fields, derive_op, derive_tool = plan
    for name, sources, is_tokens in fields:
        for source in sources:  # the first usable one wins
            raw = attrs[source]
            value: int | str | None
            if is_tokens:
                value = raw if type(raw) is int and raw >= 0 else token_count(raw)
            else:
                value = raw if type(raw) is str and raw else None
            if value is not None:
                out[name] = value.lower() if type(value) is str and name == A.GEN_AI_PROVIDER_NAME else value
                break
    if derive_op:
        op = _operation(attrs)
        if op is not None:
            out[A.GEN_AI_OPERATION_NAME] = op
    if derive_tool and out.get(A.GEN_AI_OPERATION_NAME) == A.OP_EXECUTE_TOOL:
        for source in (A.OPENINFERENCE_TOOL_NAME, A.OPENLLMETRY_ENTITY_NAME):
            tool = attrs.get(source)
            if isinstance(tool, str) and tool:
                out[A.GEN_AI_TOOL_NAME] = tool
                break
    return out


def _operation(attrs: Mapping[str, Any]) -> str | None:
    rt = attrs.get(A.OPENLLMETRY_REQUEST_TYPE)
    if isinstance(rt, str) and rt in OPERATION_BY_REQUEST_TYPE:
        return OPERATION_BY_REQUEST_TYPE[rt]
    if attrs.get(A.OPENLLMETRY_SPAN_KIND) == "tool":
        return A.OP_EXECUTE_TOOL
    kind = attrs.get(A.OPENINFERENCE_SPAN_KIND)
    if isinstance(kind, str) and kind.upper() in OPERATION_BY_OPENINFERENCE_KIND:
        return OPERATION_BY_OPENINFERENCE_KIND[kind.upper()]
    return None
