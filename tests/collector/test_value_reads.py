"""The rotel host fetches only the attribute values the core may read (``hosts._value_reads``: not
message content, not keys under no candidate prefix). If the core ever read one of the others,
spans given with those values missing would come out differently: this test feeds the same spans,
from every instrumentation the tier knows, to two tiers, once whole and once as the rotel host
reads them, and compares every edit and every metric."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from budgetspan import attributes as A
from budgetspan.collector.core import SpanFacts, Tier, TierOptions
from budgetspan.collector.hosts import _ALL, _value_reads
from budgetspan.config import load_config

_SPANS: list[tuple[int, bool, dict[str, Any]]] = [  # (trace, is root, attributes)
    (
        1,
        False,
        {  # OpenLLMetry, older names, with content and an HTTP attribute
            "llm.request.type": "chat",
            "gen_ai.system": "OpenAI",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.prompt_tokens": 1200,
            "gen_ai.usage.completion_tokens": 80,
            "gen_ai.usage.cache_read_input_tokens": 200,
            "gen_ai.prompt.0.content": "my secret",
            "gen_ai.completion.0.content": "an answer",
            "traceloop.workflow.name": "support",
            "http.url": "https://api.openai.com/v1/chat/completions",
        },
    ),
    (
        1,
        False,
        {  # OpenLLMetry tool
            "traceloop.span.kind": "tool",
            "traceloop.entity.name": "search",
            "traceloop.entity.input": "{...}",
            A.RETRIES: 2,
        },
    ),
    (1, True, {"traceloop.span.kind": "workflow", "traceloop.workflow.name": "support"}),
    (
        2,
        False,
        {  # OpenInference
            "openinference.span.kind": "LLM",
            "llm.model_name": "gpt-4o",
            "llm.provider": "openai",
            "llm.token_count.prompt": 1000,
            "llm.token_count.completion": 100,
            "input.value": "secret",
            "llm.input_messages.0.message.content": "secret",
        },
    ),
    (2, False, {"openinference.span.kind": "RETRIEVER", "retrieval.documents.0.document.content": "doc"}),
    (
        3,
        False,
        {  # budgetspan in-process: run id, phase, step, upstream cost, time to first chunk
            A.GEN_AI_OPERATION_NAME: "chat",
            A.GEN_AI_PROVIDER_NAME: "openai",
            A.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
            A.GEN_AI_USAGE_INPUT_TOKENS: 10,
            A.GEN_AI_USAGE_OUTPUT_TOKENS: 5,
            A.GEN_AI_USAGE_COST: 0.25,
            A.RUN_ID: "r3",
            A.WORKFLOW: "w3",
            A.BUDGET_PROFILE: "tight",
            A.PHASE: "planning",
            A.STEP: "draft",
            A.TIME_TO_FIRST_TOKEN_S: 0.2,
            A.GEN_AI_INPUT_MESSAGES: "[...]",
        },
    ),
    (3, False, {A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_REQUEST_MODEL: "gpt-4o-mini", A.RUN_ID: "r3"}),
    (3, False, {A.CACHE_RESULT: "hit", A.CACHE_NAME: "lookup", A.CACHE_SAVED_USD: 0.5, A.RUN_ID: "r3"}),
    (
        3,
        True,
        {  # the run span, over its budget
            A.GEN_AI_OPERATION_NAME: "invoke_agent",
            A.RUN_ID: "r3",
            A.WORKFLOW: "w3",
            A.RUN_OUTCOME: "budget_exhausted",
            A.EXHAUSTED_REASON: "max_model_calls",
            A.BUDGET_EXTENDED_LIMITS: "max_cost_usd",
            A.LOOP_STOPPED: "repeated_call",
        },
    ),
]


def _as_rotel_reads(attrs: dict[str, Any]) -> dict[str, Any]:
    keys = tuple(attrs)
    reads = _value_reads(keys)
    assert reads is not None, keys  # every span here is a candidate
    flags = [True] * len(keys) if reads is _ALL else reads
    return {k: v if r else None for (k, v), r in zip(attrs.items(), flags, strict=True)}


def _run(read: bool) -> tuple[list[Any], bytes]:
    registry = CollectorRegistry()
    tier = Tier(TierOptions(), load_config({A.ENV_BUDGET: "max_model_calls=1"}), registry=registry)
    edits = []
    for n, (trace, root, attrs) in enumerate(_SPANS):
        facts = SpanFacts(
            f"{trace:032x}", "" if root else f"{99:016x}", 1_000 + n, 5_000_000 + n, False, "svc"
        )
        edit = tier.process(facts, _as_rotel_reads(attrs) if read else dict(attrs))
        assert edit is not None
        edits.append((sorted(edit.set.items()), sorted(edit.remove), edit.redact_events))
    text = b"\n".join(line for line in generate_latest(registry).splitlines() if b"_created" not in line)
    return edits, text


def test_values_the_rotel_host_does_not_fetch_are_never_read_by_the_core() -> None:
    skipped = [k for _, _, attrs in _SPANS for k, v in _as_rotel_reads(attrs).items() if v is None]
    assert "gen_ai.prompt.0.content" in skipped and "http.url" in skipped and "input.value" in skipped
    whole, as_read = _run(read=False), _run(read=True)
    assert whole[0] == as_read[0]
    assert whole[1] == as_read[1]
    assert b"budgetspan_internal_errors_total{" not in whole[1]
    # what the spans exercise: pricing, the tool, the mark, the run's end with its reason
    assert b"budgetspan_cost_usd_total{" in whole[1] and b"budgetspan_tool_calls_total{" in whole[1]
    assert any(dict(e[0]).get(A.WOULD_REFUSE) for e in whole[0])
    assert b'budgetspan_budget_exhaustions_total{reason="max_model_calls"' in whole[1]
