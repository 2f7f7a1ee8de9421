"""The demo's routing trial: the drafting step on two routes, and which is cheaper per resolved
ticket.

The same tickets are drafted by a cheap model and by a stronger one (``budgetspan.step`` names
the steps: ``draft_reply``, ``review_draft``). The embedded server makes the cheap model leave
the facts out of some drafts (the reviewer sends them back: a revision, counted as rework) and
answers some of its first attempts with 429 (the SDK retries). A draft rejected twice falls back
to the strong model (``budgetspan.fallback``). After the run, a simulated quality check of the
sent replies reports human edits and reopened tickets with ``budgetspan.record_outcome``, as a
review that arrives later would. The table at the end is the report's routing evaluation.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import budgetspan
from budgetspan.demo.agent import DRAFT_SYSTEM, SupportAgent
from budgetspan.demo.data import TICKETS, Ticket
from budgetspan.demo.server import share
from budgetspan.runs.run import Run

TRIAL_WORKFLOW = "draft_routing"
CHEAP, STRONG = "gpt-4o-mini", "gpt-4o"
TRIAL_TICKETS = 16  # per route
# A later quality check of sent replies: the share that needed a human edit, and the share the
# customer reopened (the run is then a failure after all), by the route's model.
HUMAN_EDIT = {CHEAP: 0.25, STRONG: 0.05}
REOPENED = {CHEAP: 0.12, STRONG: 0.02}


def trial_tickets(n: int = TRIAL_TICKETS) -> list[Ticket]:
    """``n`` simple tickets (one order, no refund over the limit) made from the demo's own."""
    simple = [
        t for t in TICKETS if len(t.orders) == 1 and t.refund_usd == 0 and t.id not in ("T-1002", "T-1006")
    ]
    return [
        dataclasses.replace(simple[i % len(simple)], id=f"R-{i + 1:03d}", profile="background", story="")
        for i in range(n)
    ]


async def _approved(agent: SupportAgent, run: Run, facts: str, draft: str) -> bool:
    async with budgetspan.phase("verification", label="Checking the draft"), budgetspan.step("review_draft"):
        verdict = await agent._review(run, facts, draft)
    return verdict.get("verdict") != "revise"


async def _draft(agent: SupportAgent, run: Run, model: str, prompt: str, label: str) -> str:
    async with budgetspan.phase("model_decision", label=label), budgetspan.step("draft_reply"):
        return await agent._chat(run, model, DRAFT_SYSTEM, prompt, stream=False, max_tokens=400)


async def resolve_on_route(agent: SupportAgent, ticket: Ticket, model: str) -> tuple[str, bool, bool]:
    """One ticket with its draft written by ``model``; returns (run id, fell back, reply sent)."""
    fell_back = False
    async with budgetspan.run(TRIAL_WORKFLOW, budget="background") as run:
        async with budgetspan.phase("context_assembly", label="Searching policy"):
            policy = await agent.search_policy(ticket.query)
        async with budgetspan.phase("tool_execution", label="Checking order status"):
            orders = [await agent.check_order_status(o) for o in ticket.orders]
            history = await agent.customer_history(ticket.customer)
        facts = agent._facts(ticket, orders, history, policy)
        draft = await _draft(agent, run, model, facts, "Preparing draft")
        if not await _approved(agent, run, facts, draft):
            run.record_rework("reviewer_correction")
            fix = f"{facts}\n\nRevise this draft: it leaves out the facts.\n\n{draft}"
            draft = await _draft(agent, run, model, fix, "Revising draft")
            if not await _approved(agent, run, facts, draft) and model != STRONG:
                run.record_rework("reviewer_correction")
                fell_back = True
                async with budgetspan.fallback(model, "rejected"):
                    draft = await _draft(agent, run, STRONG, facts, "Drafting with the stronger model")
                if not await _approved(agent, run, facts, draft):
                    run.fail("the reviewer rejected every draft")
                    return run.id, fell_back, False
        async with budgetspan.phase("final_response", label="Sending the reply"):
            await agent.send_reply(ticket.id, draft)
        run.succeed(draft)
    return run.id, fell_back, True


def quality_check(run_id: str, ticket: Ticket, model: str) -> None:
    """The later review of a sent reply (deterministic per ticket and route)."""
    key = ticket.id + model
    if share("reopened" + key) < REOPENED[model]:
        budgetspan.record_outcome(run_id, outcome="failure", rework={"reopened": 1}, workflow=TRIAL_WORKFLOW)
    elif share("edit" + key) < HUMAN_EDIT[model]:
        budgetspan.record_outcome(run_id, rework={"human_edit": 1}, score=0.7, workflow=TRIAL_WORKFLOW)


async def run_trial(make_agent: Any, n: int = TRIAL_TICKETS) -> dict[str, int]:
    """Both routes over the same tickets, all at once; returns fallbacks per route."""
    tickets = trial_tickets(n)
    fallbacks = {CHEAP: 0, STRONG: 0}
    for model in (CHEAP, STRONG):
        agent: SupportAgent = make_agent(model)
        done = await asyncio.gather(
            *(resolve_on_route(agent, t, model) for t in tickets), return_exceptions=True
        )
        for t, result in zip(tickets, done, strict=True):
            if isinstance(result, BaseException):
                continue  # the run's outcome says what happened
            run_id, fell_back, sent = result
            fallbacks[model] += fell_back
            if sent:
                quality_check(run_id, t, model)
    return fallbacks
