"""The progress API: readable milestones, deduplicated, without internal noise."""

from __future__ import annotations

import asyncio

import pytest

import budgetspan
from budgetspan import attributes as A
from budgetspan.accounting.ledger import Spend
from budgetspan.calls.call import Call


def _model_call(label: str | None = None) -> None:
    call = Call(A.OP_CHAT, "chat gpt-4o-mini", provider="openai", model="gpt-4o-mini", label=label).start()
    call.set_usage(Spend(input_tokens=10, output_tokens=5))
    call.end()


def _retrieval(label: str | None) -> None:
    call = Call(A.OP_RETRIEVAL, "retrieval kb", {A.GEN_AI_DATA_SOURCE_ID: "kb"}, label=label).start()
    call.documents = 2
    call.end()


@budgetspan.tool(read_only=True, label="Checking order status")
def check_order(order_id: str) -> str:
    return "shipped"


@budgetspan.tool
def lookup_customer(customer_id: str) -> str:
    return "gold"


@budgetspan.tool(label="Escalating")
def escalate_via_other_tool() -> str:
    # A tool that calls another instrumented tool: the inner call is not a milestone of its own.
    return lookup_customer("C-1")


def test_milestones_are_readable_ordered_and_deduplicated(tracing) -> None:
    with budgetspan.subscribe_progress() as sub:
        with budgetspan.run("support", budget={"max_model_calls": 5}) as run:
            with budgetspan.phase("context_assembly", label="Searching policy"):
                _retrieval("Searching policy")  # same label as the phase: reported once
                _retrieval("Searching policy")
            with budgetspan.phase("tool_execution"):
                check_order("A-1")
                lookup_customer("C-1")
            with budgetspan.phase("model_decision", label="Preparing draft"):
                _model_call()  # unlabelled model call: not progress
                _model_call()
            with budgetspan.approval():
                pass
            with budgetspan.phase("final_response"):
                _model_call(label="Writing the answer")
            run.succeed()
    labels = [m.label for m in sub.milestones]
    assert labels == [
        "Searching policy",
        "Running tools",
        "Checking order status",
        "Running lookup_customer",
        "Preparing draft",
        "Waiting for approval",
        "Writing the response",
        "Writing the answer",
        "Done",
    ]
    kinds = [m.kind for m in sub.milestones]
    assert kinds == ["phase", "phase", "tool", "tool", "phase", "phase", "phase", "model", "end"]
    assert all(m.run_id == run.id and m.workflow == "support" for m in sub.milestones)
    assert sub.milestones[-1].outcome == "success"
    assert [m.elapsed_s for m in sub.milestones] == sorted(m.elapsed_s for m in sub.milestones)
    assert not any("model" in m.label.lower() or "chat" in m.label.lower() for m in sub.milestones)


def test_nested_calls_are_not_milestones(tracing) -> None:
    with budgetspan.subscribe_progress() as sub, budgetspan.run("support"):
        escalate_via_other_tool()
    assert [m.label for m in sub.milestones] == ["Escalating", "Done"]
    # ...but the inner call did happen and is a span of its own
    assert len(tracing.spans("execute_tool lookup_customer")) == 1


def test_a_label_repeated_after_another_step_is_reported_again(tracing) -> None:
    with budgetspan.subscribe_progress() as sub, budgetspan.run("support"):
        for _ in range(2):
            with budgetspan.phase("model_decision", label="Preparing draft"):
                pass
            with budgetspan.phase("verification", label="Checking the draft"):
                pass
    assert [m.label for m in sub.milestones][:-1] == ["Preparing draft", "Checking the draft"] * 2


def test_subscription_filters_by_run_and_by_workflow(tracing) -> None:
    seen_by_run: list[budgetspan.Milestone] = []
    with budgetspan.subscribe_progress(workflow="billing") as by_workflow:
        with budgetspan.run("support") as first:
            sub = budgetspan.subscribe_progress(seen_by_run.append, run=first)
            check_order("A-1")
        with budgetspan.run("billing"):
            check_order("A-2")
        sub.close()
    assert [m.label for m in seen_by_run] == ["Checking order status", "Done"]
    assert {m.run_id for m in seen_by_run} == {first.id}
    assert [(m.workflow, m.label) for m in by_workflow.milestones] == [
        ("billing", "Checking order status"),
        ("billing", "Done"),
    ]


def test_end_milestone_names_the_outcome_of_an_exhausted_run(tracing) -> None:
    with budgetspan.subscribe_progress() as sub:
        with pytest.raises(budgetspan.BudgetExhausted):
            with budgetspan.run("support", budget={"max_tool_calls": 1}):
                check_order("A-1")
                check_order("A-2")  # refused before it starts: no milestone
    assert [m.label for m in sub.milestones] == ["Checking order status", "Stopped at its budget"]
    assert sub.milestones[-1].outcome == "budget_exhausted"


def test_a_failing_callback_never_breaks_the_run(tracing, caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def broken(m: budgetspan.Milestone) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("UI went away")

    with budgetspan.subscribe_progress(broken), budgetspan.run("support") as run:
        check_order("A-1")
        lookup_customer("C-1")
        run.succeed()
    assert run.outcome is budgetspan.Outcome.SUCCESS
    assert calls == 3  # two tools and the end, each tried
    assert sum("progress callback failed" in r.getMessage() for r in caplog.records) == 1


def test_closed_subscription_receives_nothing(tracing) -> None:
    sub = budgetspan.subscribe_progress()
    sub.close()
    with budgetspan.subscribe_progress() as open_sub:  # positive control: the run does report
        with budgetspan.run("support"):
            check_order("A-1")
    assert sub.milestones == []
    assert [m.label for m in open_sub.milestones] == ["Checking order status", "Done"]


async def test_parallel_async_tools_each_report_once(tracing) -> None:
    @budgetspan.tool(read_only=True, label="Checking order status")
    async def order(i: str) -> str:
        await asyncio.sleep(0.01)
        return i

    @budgetspan.tool(read_only=True, label="Checking customer history")
    async def history(i: str) -> str:
        await asyncio.sleep(0.01)
        return i

    with budgetspan.subscribe_progress() as sub:
        async with budgetspan.run("support"):
            await asyncio.gather(order("A-1"), order("A-2"), history("C-1"))
    labels = [m.label for m in sub.milestones]
    assert labels.count("Checking order status") == 1
    assert labels.count("Checking customer history") == 1
    assert labels[-1] == "Done"


async def test_async_iteration_follows_a_run_to_its_end(tracing) -> None:
    started = asyncio.Event()
    proceed = asyncio.Event()
    holder: dict[str, budgetspan.Run] = {}

    @budgetspan.tool(read_only=True, label="Checking order status")
    async def order(i: str) -> str:
        return i

    async def agent() -> None:
        async with budgetspan.run("support") as run:
            holder["run"] = run
            started.set()
            await proceed.wait()
            async with budgetspan.phase("context_assembly", label="Searching policy"):
                await order("A-1")
            async with budgetspan.approval():
                await asyncio.sleep(0.01)

    task = asyncio.create_task(agent())
    await started.wait()
    seen: list[str] = []
    async with budgetspan.subscribe_progress(run=holder["run"]) as sub:
        proceed.set()
        async for m in sub:  # ends by itself after the run's end milestone
            seen.append(m.label)
    await task
    assert seen == ["Searching policy", "Checking order status", "Waiting for approval", "Done"]


async def test_async_iteration_receives_milestones_from_threads_and_stops_at_close(tracing) -> None:
    sub = budgetspan.subscribe_progress(workflow="batch")

    def worker(n: int) -> None:
        with budgetspan.run("batch"):
            check_order(f"A-{n}")

    async def consume() -> list[budgetspan.Milestone]:
        return [m async for m in sub]

    consumer = asyncio.create_task(consume())
    await asyncio.gather(*(asyncio.to_thread(worker, n) for n in range(3)))
    sub.close()
    got = await asyncio.wait_for(consumer, timeout=5)
    assert sorted(m.label for m in got) == ["Checking order status"] * 3 + ["Done"] * 3
    assert len({m.run_id for m in got}) == 3


def test_a_callback_subscription_cannot_be_iterated(tracing) -> None:
    with budgetspan.subscribe_progress(print) as sub, pytest.raises(TypeError, match="callback"):
        sub.__aiter__()
