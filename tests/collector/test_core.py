"""The processing core over plain-dict spans: normalisation of the common variants, pricing that
never overwrites, bounded run state, run-id runs, and no exception ever escaping."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from budgetspan import attributes as A
from budgetspan.accounting.pricing import default_resolver
from budgetspan.collector.core import Tier, TierOptions
from budgetspan.collector.hosts import dict_spans
from budgetspan.config import load_config


def _tier(budget: str = "", **options: Any) -> Tier:
    return Tier(TierOptions(**options), load_config({A.ENV_BUDGET: budget}), registry=CollectorRegistry())


def _span(trace: int, span: int, parent: int | None, attrs: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {
        "trace_id": f"{trace:032x}",
        "span_id": f"{span:016x}",
        "parent_span_id": "" if parent is None else f"{parent:016x}",
        "name": kw.get("name", "span"),
        "start_time_unix_nano": kw.get("start", 1_000),
        "end_time_unix_nano": kw.get("end", 2_000_000),
        "status_code": kw.get("status", 0),
        "attributes": attrs,
        "events": kw.get("events", []),
    }


def test_openinference_and_openlit_names_are_normalised_and_priced() -> None:
    tier = _tier()
    oi = _span(
        1,
        1,
        9,
        {
            "openinference.span.kind": "LLM",
            "llm.model_name": "gpt-4o-mini",
            "llm.provider": "openai",
            "llm.token_count.prompt": 1000,
            "llm.token_count.completion": 100,
            "input.value": "secret",
        },
    )
    lit = _span(
        2,
        2,
        9,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.input_tokens": 10,
            "gen_ai.usage.output_tokens": 5,
            "gen_ai.usage.reasoning_tokens": 3,
            "gen_ai.usage.cost": 0.0,
        },
    )
    dict_spans(tier, "svc", [oi, lit])
    a = oi["attributes"]
    assert a[A.GEN_AI_OPERATION_NAME] == "chat" and a[A.GEN_AI_REQUEST_MODEL] == "gpt-4o-mini"
    assert a[A.GEN_AI_USAGE_COST] == default_resolver().cost("openai", "gpt-4o-mini", 1000, 100)
    assert "input.value" not in a and a[A.CONTENT_REDACTED] == 1
    b = lit["attributes"]
    assert b[A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] == 3
    assert b[A.GEN_AI_USAGE_COST] == 0.0 and A.COST_SOURCE not in b  # upstream's figure, even a 0, stays


def test_content_is_kept_when_configured() -> None:
    tier = _tier(keep_content=True)
    s = _span(
        1,
        1,
        9,
        {"gen_ai.operation.name": "chat", "gen_ai.input.messages": "[...]"},
        events=[{"name": "gen_ai.user.message", "attributes": {"content": "hi"}}],
    )
    dict_spans(tier, "svc", [s])
    assert s["attributes"]["gen_ai.input.messages"] == "[...]" and s["events"][0]["attributes"] == {
        "content": "hi"
    }


def test_run_state_is_bounded_and_idle_runs_close_as_unknown() -> None:
    tier = _tier(max_runs=10)
    spans = [
        _span(t, 1, 9, {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"}) for t in range(1, 101)
    ]
    dict_spans(tier, "svc", spans)
    assert len(tier.window.runs) <= 10
    unknown = tier.metrics.runs.child("svc", "unknown", "svc").value
    assert unknown == 90
    tier.window.window_s = 0.0
    tier.sweep()
    assert not tier.window.runs and tier.metrics.runs.child("svc", "unknown", "svc").value == 100


def test_spans_of_a_run_before_its_run_id_join_the_run() -> None:
    tier = _tier("max_model_calls=1")
    chat = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 1,
    }
    first = _span(1, 1, 5, dict(chat))
    second = _span(1, 2, 5, {**chat, A.RUN_ID: "r1"})
    run = _span(
        1,
        5,
        None,
        {A.GEN_AI_OPERATION_NAME: "invoke_agent", A.RUN_ID: "r1", A.WORKFLOW: "w", A.RUN_OUTCOME: "success"},
    )
    dict_spans(tier, "svc", [first, second, run])
    assert A.WOULD_REFUSE not in first["attributes"]
    assert second["attributes"][A.WOULD_REFUSE] == "max_model_calls"
    assert tier.metrics.runs.child("w", "success", "svc").value == 1
    assert not [s for s in tier.window.runs.values() if not s.ended]


def test_nothing_escapes_and_a_bad_span_passes_unchanged() -> None:
    tier = _tier()
    bad = _span(
        1,
        1,
        9,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.usage.input_tokens": float("nan"),
            "gen_ai.request.model": object(),
        },
    )
    odd = {"attributes": {"gen_ai.operation.name": "chat"}}  # no ids at all
    dict_spans(tier, "svc", [bad, odd])
    assert bad["attributes"][A.USAGE_UNREPORTED] is True
    assert odd["attributes"] == {"gen_ai.operation.name": "chat"}
    assert tier.metrics.internal_errors.child("collector.dict_span", "collector").value == 1


def test_of_several_source_names_the_first_listed_wins_and_a_genai_name_is_never_replaced() -> None:
    from budgetspan.collector.normalise import normalised

    both = {
        "llm.token_count.prompt": 7,  # OpenInference's, listed after OpenLLMetry's
        "gen_ai.usage.prompt_tokens": 100,
        "llm.system": "OpenAI",  # listed last for the provider
        "gen_ai.system": "Anthropic",
        "gen_ai.usage.completion_tokens": "20",  # text is no token figure: the next source is read
        "llm.token_count.completion": 5,
        "gen_ai.usage.output_tokens": 3,  # the GenAI name itself: kept as it is
        "llm.request.type": "chat",
    }
    for order in (both, dict(reversed(both.items()))):
        assert normalised(order) == {
            A.GEN_AI_USAGE_INPUT_TOKENS: 100,
            A.GEN_AI_PROVIDER_NAME: "anthropic",
            A.GEN_AI_OPERATION_NAME: A.OP_CHAT,
        }
    assert normalised({"llm.token_count.completion": 5, "gen_ai.usage.completion_tokens": -1}) == {
        A.GEN_AI_USAGE_OUTPUT_TOKENS: 5
    }


def test_time_to_first_chunk_under_the_conventions_name_or_the_old_one_and_token_parts_apart() -> None:
    """The tier reads the GenAI name (gen_ai.response.time_to_first_chunk) and, from spans of an
    older budgetspan, budgetspan.time_to_first_token_s; cache reads go to the token-details series,
    so budgetspan_tokens_total sums to input + output."""
    reg = CollectorRegistry()
    tier = Tier(TierOptions(), load_config({A.ENV_BUDGET: ""}), registry=reg)
    chat = {
        A.GEN_AI_OPERATION_NAME: "chat",
        A.GEN_AI_PROVIDER_NAME: "openai",
        A.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
        A.GEN_AI_USAGE_INPUT_TOKENS: 100,
        A.GEN_AI_USAGE_OUTPUT_TOKENS: 10,
        A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 40,
    }
    new = _span(1, 1, None, {**chat, A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: 0.2})
    old = _span(2, 2, None, {**chat, A.TIME_TO_FIRST_TOKEN_S_LEGACY: 0.4})
    dict_spans(tier, "svc", [new, old])
    labels = {"provider": "openai", "model": "gpt-4o-mini", "service": "svc"}
    assert reg.get_sample_value(A.M_TIME_TO_FIRST_TOKEN + "_count", labels) == 2
    assert reg.get_sample_value(A.M_TIME_TO_FIRST_TOKEN + "_sum", labels) == pytest.approx(0.6)
    kinds = {
        s.labels["type"]: s.value
        for fam in reg.collect()
        for s in fam.samples
        if s.name == A.M_TOKENS + "_total"
    }
    assert kinds == {"input": 200, "output": 20}
    details = {
        s.labels["type"]: s.value
        for fam in reg.collect()
        for s in fam.samples
        if s.name == A.M_TOKEN_DETAILS + "_total"
    }
    assert details == {"cache_read": 80}


# --- review11: the tier's series cap and its log lines ------------------------------------------


def _series(registry: CollectorRegistry) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    families: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_created")):
                continue
            labels = tuple(sorted(sample.labels.items()))
            families.setdefault(family.name, set()).add(labels)
    return families


def test_the_tier_caps_series_per_family_as_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-label caps alone let a family grow as their product (issue 15); the tier had no series
    cap: 30 workflows x 30 models x 10 tools gave 19,198 exposition lines. With
    BUDGETSPAN_METRICS_MAX_SERIES=40 each family holds 40 series plus its folded ones, and every
    call is still counted (in ``other``)."""
    monkeypatch.setenv(A.ENV_METRICS_MAX_SERIES, "40")
    reg = CollectorRegistry()
    tier = Tier(TierOptions(), load_config({}), registry=reg)
    spans, n = [], 0
    for w in range(30):
        for m in range(30):
            n += 1
            chat = {
                A.GEN_AI_OPERATION_NAME: "chat",
                A.GEN_AI_PROVIDER_NAME: "openai",
                A.GEN_AI_REQUEST_MODEL: f"model-{m}",
                A.WORKFLOW: f"wf-{w}",
                A.GEN_AI_USAGE_INPUT_TOKENS: 1,
                A.GEN_AI_USAGE_OUTPUT_TOKENS: 1,
            }
            spans.append(_span(n, 1, None, chat))
    dict_spans(tier, "svc", spans)
    families = _series(reg)
    for name, sets in families.items():
        assert len(sets) <= 40 + 2, (name, len(sets))  # + one folded series per fixed label value
    calls = sum(s.value for fam in reg.collect() for s in fam.samples if s.name == A.M_MODEL_CALLS + "_total")
    assert calls == 900


def test_a_tier_error_is_logged_without_its_message(caplog: pytest.LogCaptureFixture) -> None:
    """An exception's text may quote what a span carried (``int('<the field>')``): the tier's log
    names the error's type, as budgetspan's in-process ``internal_error`` does, never its text."""
    caplog.set_level(logging.DEBUG)
    tier = _tier()
    bad = _span(1, 1, None, {A.GEN_AI_OPERATION_NAME: "chat"}, start="SECRET-start-field")
    dict_spans(tier, "svc", [bad])
    assert tier.metrics.internal_errors.child("collector.dict_span", "collector").value == 1
    logged = "\n".join(
        r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
        for r in caplog.records
    )
    assert "collector.dict_span" in logged and "ValueError" in logged
    assert "SECRET" not in logged


def test_an_exception_event_quoting_the_prompt_is_redacted_on_a_genai_span() -> None:
    """review11: a provider's 400 quoting the prompt, recorded by a foreign instrumentation
    (OpenLLMetry, pydantic-ai: the SDK's ``record_exception``) as an ``exception`` event: its
    message and its stack trace (whose last line is the message) went through the tier with
    content redaction on. The type stays; with ``keep_content`` everything stays."""
    quoted = "openai.BadRequestError: Error code: 400 - Invalid content: 'PROMPT-SECRET'"
    event = {
        "name": "exception",
        "attributes": {
            "exception.type": "openai.BadRequestError",
            "exception.message": quoted,
            "exception.stacktrace": 'Traceback (most recent call last):\n  File "a.py", line 1\n' + quoted,
            "exception.escaped": "False",
        },
    }
    chat = {A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_REQUEST_MODEL: "gpt-4o-mini"}
    redacted = _span(1, 1, None, dict(chat), status=2, events=[json.loads(json.dumps(event))])
    kept = _span(2, 1, None, dict(chat), status=2, events=[json.loads(json.dumps(event))])
    dict_spans(_tier(), "svc", [redacted])
    dict_spans(_tier(keep_content=True), "svc", [kept])
    assert redacted["events"][0]["attributes"] == {
        "exception.type": "openai.BadRequestError",
        "exception.escaped": "False",
    }
    assert "PROMPT-SECRET" in kept["events"][0]["attributes"]["exception.message"]


def test_huge_distinct_model_names_are_not_held_whole_by_the_tier() -> None:
    """review11: as in-process, the tier's caches kept raw label values as keys (any service's
    spans reach it): 1,000 model names of 100,000 characters are now held as cut labels."""
    import gc
    import tracemalloc

    tier = _tier()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            chat = {A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_REQUEST_MODEL: f"{i:05d}" + "m" * 100_000}
            dict_spans(tier, "svc", [_span(i + 1, 1, None, chat)])
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 20_000_000, f"{held / 1e6:.0f} MB held"
