"""The demo's support-ticket agent, written the way an application would use budgetspan.

Per ticket: search the policy (a retrieval), check the order and the customer's history (two
read-only tools, in parallel), draft a reply with the model, have a second model review it, wait
for approval, send the reply. Each step is a phase with a label, so progress reads as
"Searching policy", "Checking order status", "Preparing draft", "Waiting for approval".

The model calls go through the real ``openai`` SDK (instrumented by ``budgetspan.configure()``),
either to the loopback server or to a real provider.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import SpanKind

import budgetspan
from budgetspan import attributes as A
from budgetspan.accounting.budget import BudgetExhausted
from budgetspan.calls.call import Call
from budgetspan.demo.data import CUSTOMERS, FLAKY_HISTORY, ORDERS, POLICIES, Order, PolicyDoc, Ticket
from budgetspan.runs.run import Run

WORKFLOW = "resolve_ticket"
POLICY_SOURCE = "support-policies"
#: Every ticket's run serves the shop (the tenant) for one customer (the principal): the policy
#: search is cached per tenant, so no other shop could ever be answered from it.
TENANT = "demo-shop"
AGENT_PERMISSIONS = frozenset({"support_agent"})
APPROVAL_LIMIT_USD = 500.0

DRAFT_SYSTEM = (
    "You are a customer support agent for an online shop. Write a short, friendly reply to the "
    "customer. Use only the facts and the policy given; do not promise anything the policy does "
    "not allow. Address the customer by first name, list the facts that matter, state the next "
    "step, and sign as 'Support team'."
)
FINAL_SYSTEM = (
    "You are a customer support agent. The work on this ticket stopped before it was finished. "
    "Write a short, honest reply with what is known so far and say that a colleague will follow up."
)
SECTION_SYSTEM = (
    "You are a customer support agent. Write two or three sentences about ONE order for a reply "
    "that covers several orders. Use only the facts and the policy given."
)
REVIEW_SYSTEM = (
    "You review a support reply before it is sent. Check that it mentions every order number "
    "in the facts and promises nothing the policy forbids. Answer with JSON only: "
    '{"verdict": "approve" | "revise", "issues": [strings]}.'
)


class OrderNotFound(LookupError):
    pass


@dataclass
class TicketResult:
    ticket: Ticket
    run_id: str = ""
    outcome: str = "unknown"
    reply: str | None = None
    exhausted: BudgetExhausted | None = None
    error: BaseException | None = None
    escalation: str | None = None
    cost_usd: float = 0.0
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def _jitter(key: str, low: float, high: float) -> float:
    """A stable pseudo-random duration in [low, high] for ``key`` (same every run)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") / 2**32
    return low + (high - low) * h


class SupportAgent:
    """Resolves tickets. ``scale`` multiplies every simulated wait (tests run faster)."""

    def __init__(
        self,
        client: Any,
        *,
        draft_model: str = "gpt-4o",
        review_model: str = "gpt-4o-mini",
        scale: float = 1.0,
    ) -> None:
        self.client = client
        self.draft_model = draft_model
        self.review_model = review_model
        self.scale = scale
        self._history_attempts: dict[str, int] = {}
        self._make_tools()
        self._cached_search = budgetspan.cached(
            self._search_policy_ids,
            name="search_policy",
            cache=budgetspan.Cache("tenant", ttl_s=600, version="policies-2024"),
        )

    def reset(self) -> None:
        """Forget the simulated services' state (the flaky one fails once again)."""
        self._history_attempts.clear()

    async def _wait(self, key: str, low: float, high: float) -> None:
        await asyncio.sleep(_jitter(key, low, high) * self.scale)

    # tools ----------------------------------------------------------------------------------
    def _make_tools(self) -> None:
        agent = self

        @budgetspan.tool(
            name="check_order_status", read_only=True, timeout_s=2.0, label="Checking order status"
        )
        async def check_order_status(order_id: str) -> Order:
            await agent._wait("order" + order_id, 0.10, 0.16)
            order = ORDERS.get(order_id)
            if order is None:
                raise OrderNotFound(f"order {order_id} does not exist")
            return order

        @budgetspan.tool(
            name="customer_history",
            read_only=True,
            timeout_s=2.0,
            max_retries=2,
            label="Checking customer history",
        )
        async def customer_history(customer_id: str) -> list[str]:
            attempt = agent._history_attempts.get(customer_id, 0) + 1
            agent._history_attempts[customer_id] = attempt
            await agent._wait("history" + customer_id, 0.14, 0.20)
            if customer_id in FLAKY_HISTORY and attempt == 1:
                raise ConnectionError("the customer-history service did not answer")
            return list(CUSTOMERS[customer_id].history)

        @budgetspan.tool(name="send_reply", label="Sending the reply")
        async def send_reply(ticket_id: str, text: str) -> str:
            await agent._wait("send" + ticket_id, 0.04, 0.06)
            return f"sent {len(text)} characters to the customer of {ticket_id}"

        @budgetspan.tool(name="track_parcel", read_only=True, label="Asking the carrier")
        async def track_parcel(order_id: str) -> dict[str, str]:
            await agent._wait("track" + order_id, 0.05, 0.08)
            return {"order": order_id, "status": ORDERS[order_id].status, "detail": ORDERS[order_id].detail}

        self.check_order_status = check_order_status
        self.customer_history = customer_history
        self.send_reply = send_reply
        self.track_parcel = track_parcel

    async def search_policy(self, query: str) -> list[PolicyDoc]:
        """The policy documents for ``query``, from the tenant's cache when it has them."""
        by_id = {d.id: d for d in POLICIES}
        return [by_id[i] for i in await self._cached_search(query)]

    async def _search_policy_ids(self, query: str) -> list[str]:
        """A retrieval over the bundled policy (keyword overlap), measured as a retrieval span.
        Returns the documents' ids: plain data the cache can hold."""
        call = Call(
            A.OP_RETRIEVAL,
            A.SPAN_RETRIEVAL.format(source=POLICY_SOURCE),
            {A.GEN_AI_DATA_SOURCE_ID: POLICY_SOURCE, A.READ_ONLY: True},
            span_kind=SpanKind.INTERNAL,
            label="Searching policy",
        ).start()
        try:
            with call.activate():
                async with call.deadline(2.0):
                    await self._wait("policy" + query, 0.06, 0.09)
                    words = set(query.lower().split())
                    scored = sorted(((len(words & d.keywords), d.id, d) for d in POLICIES), reverse=True)
                    docs = [d for score, _id, d in scored if score > 0][:2]
            call.documents = len(docs)
        except BaseException as e:
            call.end(e)
            raise
        call.end()
        return [d.id for d in docs]

    # model ----------------------------------------------------------------------------------
    async def _chat(
        self, run: Run, model: str, system: str, user: str, *, stream: bool, max_tokens: int
    ) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if stream:
            response = await self.client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
            parts: list[str] = []
            async for chunk in response:
                if chunk.choices and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
            text = "".join(parts)
        else:
            completion = await self.client.chat.completions.create(
                model=model, messages=messages, max_tokens=max_tokens
            )
            text = completion.choices[0].message.content or ""
        run.record_model_answer(text)
        return text

    @staticmethod
    def _facts(ticket: Ticket, orders: list[Order], history: list[str], policy: list[PolicyDoc]) -> str:
        customer = CUSTOMERS[ticket.customer]
        lines = [
            f"Ticket {ticket.id}: {ticket.subject}",
            f"Customer: {customer.name} ({customer.id}, customer since {customer.since}, {customer.tier} tier)",
            f"Request: {ticket.request}.",
            "Facts:",
            *(f"- order {o.id} is {o.status}: {o.detail}" for o in orders),
            *(f"- history: {h}" for h in history),
            *(f"Policy: {d.text}" for d in policy),
        ]
        return "\n".join(lines)

    async def _review(self, run: Run, facts: str, draft: str) -> dict[str, Any]:
        text = await self._chat(
            run, self.review_model, REVIEW_SYSTEM, f"{facts}\n\nDraft:\n{draft}", stream=False, max_tokens=150
        )
        try:
            verdict = json.loads(text.strip().strip("`").removeprefix("json").strip())
            if isinstance(verdict, dict):
                return verdict
        except json.JSONDecodeError:
            pass
        return {"verdict": "revise" if "revise" in text.lower() else "approve", "issues": [text[:200]]}

    # the run ----------------------------------------------------------------------------------
    async def resolve(self, ticket: Ticket) -> TicketResult:
        """One ticket, one budgeted run. Never raises: the outcome says what happened."""
        result = TicketResult(ticket)
        started: Run | None = None
        try:
            async with budgetspan.run(
                WORKFLOW,
                budget=ticket.profile,
                on_limit=self._supervisor(ticket),
                tenant=TENANT,
                user=ticket.customer,
                permissions=AGENT_PERMISSIONS,
            ) as run:
                started = run
                result.run_id = run.id
                run.add_partial("ticket", ticket.id)
                try:
                    await self._work(run, ticket, result)
                except BudgetExhausted as stop:
                    await self._answer_from_reserve(run, ticket, stop, result)
                    raise
        except BudgetExhausted as e:
            result.exhausted = e
        except Exception as e:
            result.error = e
        if started is not None:
            result.cost_usd = started.usage.cost_usd
            result.duration_s = started.duration_s or 0.0
            if started.extensions and started.explanation:
                result.notes.append(started.explanation)
        if started is not None and started.outcome is not None:
            result.outcome = started.outcome.value
        elif result.error is not None:
            result.outcome = "failure"
        return result

    async def work_in(self, run: Run, ticket: Ticket) -> str | None:
        """One ticket inside a run that is open already (a background job's, whose budget came
        with the job); its reply. BudgetExhausted and errors go to the job, which records them."""
        run.add_partial("ticket", ticket.id)
        result = TicketResult(ticket, run_id=run.id)
        await self._work(run, ticket, result)
        return result.reply

    # long: the support agent's steps in order, as a reader of the demo follows them
    async def _work(self, run: Run, t: Ticket, result: TicketResult) -> None:
        async with budgetspan.phase("context_assembly", label="Searching policy"):
            policy = await self.search_policy(t.query)
        run.add_partial("policy", [d.id for d in policy])

        async with budgetspan.phase("tool_execution", label="Checking order status"):
            if t.parallel_lookups:
                found = await asyncio.gather(
                    asyncio.gather(*(self.check_order_status(o) for o in t.orders)),
                    self.customer_history(t.customer),
                    return_exceptions=True,
                )
                for item in found:
                    if isinstance(item, BaseException):
                        raise item
                orders, history = list(found[0]), list(found[1])  # type: ignore[arg-type]
            else:
                orders = [await self.check_order_status(o) for o in t.orders]
                history = await self.customer_history(t.customer)
        if t.track_until_delivered:
            async with budgetspan.phase("tool_execution", label="Asking the carrier"):
                for _ in range(5):  # until the parcel moves (a loop when the carrier says the same)
                    if (await self.track_parcel(t.orders[0]))["status"] == "delivered":
                        break
        facts = self._facts(t, orders, history, policy)

        async with (
            budgetspan.phase("model_decision", label="Preparing draft"),
            budgetspan.step("draft_reply"),
        ):
            if len(orders) > 1:
                answered: list[dict[str, str]] = []
                run.add_partial("answered_orders", answered)  # grows as sections are written
                for order in orders:
                    one = self._facts(t, [order], history, policy)
                    text = await self._chat(
                        run, self.draft_model, SECTION_SYSTEM, one, stream=False, max_tokens=200
                    )
                    answered.append({"order": order.id, "answer": text})
                draft = "\n\n".join(a["answer"] for a in answered)
            else:
                draft = await self._chat(
                    run, self.draft_model, DRAFT_SYSTEM, facts, stream=True, max_tokens=400
                )
        run.add_partial("draft", draft)

        async with budgetspan.phase("verification", label="Checking the draft"):
            # The reviewer checks against the policy as it stands: the same search, from the cache.
            policy = await self.search_policy(t.query)
            async with budgetspan.step("review_draft"):
                verdict = await self._review(run, facts, draft)
            if verdict.get("verdict") == "revise":
                result.notes.append(
                    "review asked for a revision: " + "; ".join(map(str, verdict.get("issues", [])))
                )
                fix = f"{facts}\n\nRevise this draft. Reviewer's notes: {verdict.get('issues')}\n\n{draft}"
                async with budgetspan.step("draft_reply"):
                    draft = await self._chat(
                        run, self.draft_model, DRAFT_SYSTEM, fix, stream=False, max_tokens=400
                    )

        async with budgetspan.approval("Waiting for approval"):
            approved = await self._approval(t)

        reply = draft
        if not approved:
            reply = (
                f"Hi {CUSTOMERS[t.customer].name.split()[0]}, a supervisor is looking at your request "
                "and will get back to you today. Support team"
            )
        async with budgetspan.phase("final_response", label="Sending the reply"):
            await self.send_reply(t.id, reply)
        result.reply = reply
        if approved:
            run.succeed(reply)
        else:
            result.escalation = (
                f"a refund of {t.refund_usd:.0f} USD is above the agents' "
                f"{APPROVAL_LIMIT_USD:.0f} USD limit; a supervisor took over"
            )
            run.escalate(result.escalation)

    def _supervisor(self, t: Ticket) -> Any:
        """The run's on_limit policy: a supervisor approves one more model call for the tickets
        that may have it (after a short look: an async policy, awaited by the refused call)."""

        async def supervisor(reached: budgetspan.LimitReached) -> budgetspan.Decision:
            if t.supervisor_extends and not reached.run.extensions and reached.reason == "max_model_calls":
                await self._wait("supervisor" + t.id, 0.15, 0.25)
                return budgetspan.Extend(max_model_calls=1, reason="a supervisor's approval")
            return budgetspan.Stop()

        return supervisor

    async def _answer_from_reserve(
        self, run: Run, t: Ticket, stop: BudgetExhausted, result: TicketResult
    ) -> None:
        """A run stopped before its answer: write and send one from the budget kept for it."""
        if not run.budget.reserve_for_final or isinstance(stop, budgetspan.RunCancelled):
            return
        known = [f"- {a['order']}: {a['answer']}" for a in run.partial.get("answered_orders") or []]
        known += [f"- {r['tool']}: {r['result']}" for r in run.partial["tool_results"][-3:]]
        ask = f"Ticket {t.id}: {t.subject}\nWhat is known so far:\n" + "\n".join(known)
        try:
            async with budgetspan.phase("final_response", label="Writing the answer from what is known"):
                reply = await self._chat(
                    run, self.draft_model, FINAL_SYSTEM, ask, stream=False, max_tokens=200
                )
                await self.send_reply(t.id, reply)
        except BudgetExhausted:
            return  # not even the reserve was enough: the partial result is what is left
        result.reply = reply

    async def _approval(self, t: Ticket) -> bool:
        """A simulated human approval: quick for routine replies, and refunds over the limit go up."""
        await self._wait("approve" + t.id, 0.25, 0.40)
        return t.refund_usd <= APPROVAL_LIMIT_USD
