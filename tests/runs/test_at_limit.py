"""At a limit and in a loop (issue 18): per-tool caps refuse the tool, budget kept for the final
answer, the on_limit policy (extend, stop, escalate, clarify; sync and async), loops without
progress, and the remaining budget. Model calls go through the real OpenAI SDK over a recording
local transport."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import budgetspan
from budgetspan import attributes as A
from tests.conftest import Tracing, events_to
from tests.replay import Recorder, chat_completion, json_response

USAGE = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}
ARGS: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _client(rec: Recorder) -> openai.OpenAI:
    return openai.OpenAI(api_key="test", http_client=rec.sync(), max_retries=0)


def _answer(text: str = "an answer") -> Recorder:
    return Recorder(json_response(chat_completion(text=text, usage=USAGE)))


class Seen:
    """Records the events issue 18 adds."""

    def __init__(self) -> None:
        self.extended: list[tuple[str, str]] = []
        self.refused: list[tuple[str, str]] = []
        self.loops: list[tuple[str, str]] = []

    def on_budget_extended(self, run: budgetspan.Run, limit: str) -> None:
        self.extended.append((run.workflow, limit))

    def on_tool_refused(self, run: budgetspan.Run, tool: str, reason: str) -> None:
        self.refused.append((tool, reason))

    def on_loop(self, run: budgetspan.Run, kind: str, status: str) -> None:
        self.loops.append((kind, status))


@pytest.fixture
def seen() -> Iterator[Seen]:
    with events_to(Seen()) as s:
        yield s


# --- per-tool caps refuse the tool, not the run ---------------------------------------------------


def test_a_tool_past_its_cap_is_refused_and_the_run_goes_on(instrumented: Tracing, seen: Seen) -> None:
    @budgetspan.tool(max_calls=1)
    def lookup(order: str) -> str:
        return "shipped"

    rec = _answer()
    with budgetspan.run("support") as run:
        assert lookup("A-1") == "shipped"
        with pytest.raises(budgetspan.ToolRefused) as info:
            lookup("A-2")
        _client(rec).chat.completions.create(**ARGS)  # the next model call still goes through
    assert isinstance(info.value, budgetspan.BudgetExhausted)
    assert info.value.reason == "tool.max_calls" and info.value.tool == "lookup"
    assert "Refused: tool 'lookup'" in info.value.explanation
    assert run.exhausted is None and run.outcome is budgetspan.Outcome.SUCCESS
    assert len(rec.requests) == 1 and run.usage.tool_calls == 1
    assert seen.refused == [("lookup", "tool.max_calls")]
    (span,) = instrumented.spans("invoke_agent support")
    assert A.EVENT_TOOL_REFUSED in [e.name for e in span.events]


# --- budget kept for the final answer ---------------------------------------------------------------


def test_a_reserve_lets_the_final_answer_through_at_the_limit(instrumented: Tracing) -> None:
    rec = _answer("final reply")
    c = _client(rec)
    with budgetspan.run(
        "support", max_model_calls=3, reserve_for_final={"max_model_calls": 1}, suppress_exhausted=True
    ) as run:
        c.chat.completions.create(**ARGS)
        c.chat.completions.create(**ARGS)
        with pytest.raises(budgetspan.BudgetExhausted) as info:
            c.chat.completions.create(**ARGS)  # a third decision would eat into the reserve
        with budgetspan.phase("final_response"):
            reply = c.chat.completions.create(**ARGS)  # the answer uses what was kept for it
        with budgetspan.phase("final_response"), pytest.raises(budgetspan.BudgetExhausted):
            c.chat.completions.create(**ARGS)  # and no more than the whole limit
    assert reply.choices[0].message.content == "final reply"
    assert len(rec.requests) == 3 and run.usage.model_calls == 3
    assert info.value.reason == "max_model_calls" and info.value.limit == 3
    assert info.value.explanation.startswith(
        "Stopped after 2 of 3 model calls; 1 model call kept for the final answer;"
    )
    assert run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED


def test_a_dollar_reserve_holds_back_model_decisions(instrumented: Tracing) -> None:
    rec = _answer()
    c = _client(rec)  # gpt-4o-mini: 1000 in + 100 out = $0.00021 per call
    with budgetspan.run(
        "support", max_cost_usd=0.0005, reserve_for_final={"max_cost_usd": 0.0003}, suppress_exhausted=True
    ):
        c.chat.completions.create(max_tokens=100, **ARGS)
        with pytest.raises(budgetspan.BudgetExhausted) as info:
            c.chat.completions.create(max_tokens=100, **ARGS)
        with budgetspan.phase("final_response"):
            c.chat.completions.create(max_tokens=100, **ARGS)
    assert info.value.reason == "max_cost_usd" and len(rec.requests) == 2
    assert "$0.0003 kept for the final answer" in info.value.explanation


# --- the on_limit policy -------------------------------------------------------------------------


def test_an_extension_continues_the_run_and_is_recorded(instrumented: Tracing, seen: Seen) -> None:
    asked: list[budgetspan.LimitReached] = []

    def approve(reached: budgetspan.LimitReached) -> budgetspan.Decision:
        asked.append(reached)
        if len(asked) == 1:
            return budgetspan.Extend(max_model_calls=1, reason="approval")
        return budgetspan.Stop()

    rec = _answer()
    c = _client(rec)
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("support", max_model_calls=1, on_limit=approve) as run:
            c.chat.completions.create(**ARGS)
            c.chat.completions.create(**ARGS)  # extended: goes through
            c.chat.completions.create(**ARGS)  # asked again: stop
    assert len(rec.requests) == 2 and run.budget.max_model_calls == 2
    assert [a.reason for a in asked] == ["max_model_calls", "max_model_calls"]
    assert asked[0].kind == "model" and asked[0].usage.model_calls == 1
    assert "extended once by 1 model call after approval" in info.value.explanation
    assert seen.extended == [("support", "max_model_calls")]
    (span,) = instrumented.spans("invoke_agent support")
    assert A.EVENT_BUDGET_EXTENDED in [e.name for e in span.events]
    assert dict(span.attributes or {})[A.BUDGET_EXTENSIONS] == 1
    assert dict(span.attributes or {})[A.BUDGET_EXTENDED_LIMITS] == "max_model_calls"  # for the tier


def test_escalate_and_clarify_end_the_run_with_their_outcomes(tracing: Tracing) -> None:
    @budgetspan.tool
    def lookup() -> str:
        return "x"

    with pytest.raises(budgetspan.RunEscalated) as esc:
        with budgetspan.run(
            "support", max_tool_calls=1, on_limit=lambda r: budgetspan.Escalate("refund over $500")
        ) as run:
            lookup()
            lookup()
    assert run.outcome is budgetspan.Outcome.ESCALATED
    assert "handed to a person (refund over $500)" in esc.value.explanation

    with pytest.raises(budgetspan.ClarificationNeeded) as clar:
        with budgetspan.run(
            "support", max_tool_calls=0, on_limit=lambda r: budgetspan.Clarify("Which order?")
        ) as run2:
            lookup()
    assert clar.value.question == "Which order?"
    assert run2.outcome is budgetspan.Outcome.NEEDS_CLARIFICATION
    assert run2.partial["clarification_question"] == "Which order?"


def test_an_async_policy_is_awaited_from_async_calls_and_run_from_sync_ones(tracing: Tracing) -> None:
    asked: list[str] = []

    async def supervisor(reached: budgetspan.LimitReached) -> budgetspan.Decision:
        await asyncio.sleep(0)
        asked.append(reached.tool or "")
        return budgetspan.Extend(max_tool_calls=1, reason="approval")

    @budgetspan.tool
    async def fetch(i: int) -> int:
        return i

    @budgetspan.tool
    def lookup(i: int) -> int:
        return i

    async def main() -> budgetspan.Run:
        async with budgetspan.run("support", max_tool_calls=1, on_limit=supervisor) as run:
            await fetch(1)
            await fetch(2)  # awaited policy
            lookup(3)  # a sync call inside the loop: the policy runs on a loop of its own
        return run

    run = asyncio.run(main())
    assert asked == ["fetch", "lookup"] and run.usage.tool_calls == 3
    assert run.outcome is budgetspan.Outcome.SUCCESS
    assert run.explanation == "Extended twice by 2 tool calls after approval."


def test_a_policy_that_fails_stops_the_run(tracing: Tracing) -> None:
    def broken(reached: budgetspan.LimitReached) -> budgetspan.Decision:
        raise RuntimeError("policy bug")

    @budgetspan.tool
    def lookup() -> str:
        return "x"

    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("support", max_tool_calls=1, on_limit=broken):
            lookup()
            lookup()
    assert info.value.reason == "max_tool_calls"


def test_extend_rejects_unknown_limits() -> None:
    with pytest.raises(ValueError, match="max_turns"):
        budgetspan.Extend(max_turns=3)
    with pytest.raises(ValueError, match="positive"):
        budgetspan.Extend(max_cost_usd=-1)


# --- loops without progress ------------------------------------------------------------------------


def test_a_loop_is_stopped_at_the_third_identical_call(tracing: Tracing, seen: Seen) -> None:
    ran: list[str] = []

    @budgetspan.tool
    def lookup_order(order_id: str) -> dict[str, str]:
        ran.append(order_id)
        return {"order": order_id, "status": "unknown"}

    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("support", max_repeated_calls=3) as run:
            lookup_order("A-1")
            lookup_order(order_id="A-2")  # other arguments: not a repeat
            lookup_order("A-1")
            lookup_order("A-1")
    assert ran == ["A-1", "A-2", "A-1"]  # the third identical call never ran
    exc = info.value
    assert exc.reason == "no_progress" and exc.tool == "lookup_order"
    assert exc.explanation.startswith(
        "Stopped: lookup_order called 3 times with the same arguments and the same result;"
    )
    assert len(exc.partial["tool_results"]) == 3  # the partial result is kept
    assert run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED
    assert seen.loops == [("repeated_call", "stopped")]
    (span,) = tracing.spans("invoke_agent support")
    assert dict(span.attributes or {})[A.EXHAUSTED_REASON] == "no_progress"
    assert dict(span.attributes or {})[A.LOOP_STOPPED] == "repeated_call"  # for the tier
    assert A.EVENT_LOOP_DETECTED in [e.name for e in span.events]


def test_a_new_result_is_progress(tracing: Tracing) -> None:
    counter = iter(range(100))

    @budgetspan.tool
    def poll(job: str) -> int:
        return next(counter)  # the same call, a new result each time: not a loop

    with budgetspan.run("support", max_repeated_calls=3, max_steps_without_progress=2) as run:
        for _ in range(6):
            poll("j")
    assert run.outcome is budgetspan.Outcome.SUCCESS and run.usage.tool_calls == 6


def test_a_ping_pong_is_detected(tracing: Tracing, seen: Seen) -> None:
    @budgetspan.tool
    def search(q: str) -> str:
        return "no match"

    @budgetspan.tool
    def refine(q: str) -> str:
        return q

    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("support", max_repeated_calls=5):
            for _ in range(3):
                search("blue shoes")
                refine("blue shoes")
    assert info.value.reason == "no_progress" and info.value.tool == "search"
    assert "search and refine called in turn (A-B-A-B)" in info.value.explanation
    assert seen.loops == [("ping_pong", "stopped")]


def test_steps_without_progress_stop_the_run_after_the_mth(tracing: Tracing) -> None:
    @budgetspan.tool
    def check(i: int) -> str:
        return "pending"  # different arguments, never a new result

    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("support", max_steps_without_progress=3) as run:
            for i in range(10):
                check(i)
    assert run.usage.tool_calls == 4  # the first result is new; three more without progress
    assert info.value.explanation.startswith("Stopped: no new result in the last 3 tool steps")


def test_warn_records_the_loop_and_goes_on(tracing: Tracing, seen: Seen) -> None:
    @budgetspan.tool
    def lookup(i: int) -> str:
        return "same"

    with budgetspan.run("support", max_repeated_calls=2, repeated_calls_action="warn") as run:
        for _ in range(3):
            lookup(1)
    assert run.outcome is budgetspan.Outcome.SUCCESS and run.usage.tool_calls == 3
    assert seen.loops == [("repeated_call", "warned"), ("repeated_call", "warned")]


def test_loop_state_is_digests_not_results(tracing: Tracing) -> None:
    secret = "card 4111-1111-1111-1111"

    @budgetspan.tool
    def lookup(i: int) -> str:
        return secret

    with budgetspan.run("support", max_repeated_calls=9) as run:
        lookup(1)
    assert run.loops is not None
    assert secret not in repr(vars(run.loops))


# --- the remaining budget --------------------------------------------------------------------------


def test_remaining_and_its_one_line_text(instrumented: Tracing) -> None:
    c = _client(_answer())
    with budgetspan.run("support", max_model_calls=6, max_cost_usd=0.25) as run:
        for _ in range(3):
            c.chat.completions.create(**ARGS)
        left = run.remaining()
        text = run.remaining_text()
    assert left["max_model_calls"] == 3
    assert left["max_cost_usd"] == pytest.approx(0.25 - 3 * 0.00021)
    assert text == "3 of 6 model calls and $0.25 of $0.25 left"
