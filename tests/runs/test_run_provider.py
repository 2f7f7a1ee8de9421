"""``gen_ai.provider.name`` on the run span: set when every model call of the run (and of the runs
nested in it) used one provider, absent when there were several or none."""

from __future__ import annotations

import threading

import budgetspan
from budgetspan import attributes as A
from tests.conftest import Tracing
from tests.processors.test_metrics import model_call


def run_span(tracing: Tracing, workflow: str) -> dict[str, object]:
    (span,) = tracing.spans(f"invoke_agent {workflow}")
    return dict(span.attributes or {})


def test_one_provider_is_on_the_run_span(tracing: Tracing) -> None:
    with budgetspan.run("single"):
        model_call(provider="openai")
        model_call(model="gpt-4o", provider="openai")
    assert run_span(tracing, "single")[A.GEN_AI_PROVIDER_NAME] == "openai"


def test_several_providers_or_none_leave_it_out(tracing: Tracing) -> None:
    with budgetspan.run("mixed"):
        model_call(provider="openai")
        model_call(model="claude-3-5-haiku-latest", provider="anthropic")
        model_call(provider="openai")
    with budgetspan.run("no_model"):
        pass
    assert A.GEN_AI_PROVIDER_NAME not in run_span(tracing, "mixed")
    assert A.GEN_AI_PROVIDER_NAME not in run_span(tracing, "no_model")


def test_a_nested_runs_calls_count_for_the_enclosing_run(tracing: Tracing) -> None:
    with budgetspan.run("outer"):
        model_call(provider="openai")
        with budgetspan.run("inner"):
            model_call(model="claude-3-5-haiku-latest", provider="anthropic")
    assert run_span(tracing, "inner")[A.GEN_AI_PROVIDER_NAME] == "anthropic"
    assert A.GEN_AI_PROVIDER_NAME not in run_span(tracing, "outer")


def test_calls_from_threads_never_lose_the_second_provider(tracing: Tracing) -> None:
    with budgetspan.run("threads") as run:
        workers = [
            threading.Thread(target=lambda p=p: [run.saw_provider(p) for _ in range(2000)])
            for p in ("openai", "anthropic") * 4
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert run.provider == ""
    assert A.GEN_AI_PROVIDER_NAME not in run_span(tracing, "threads")
