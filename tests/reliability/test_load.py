"""Load: 1,000 concurrent asyncio runs, each firing parallel model and tool calls at its limits.

Model calls go through the real ``openai.AsyncOpenAI`` SDK (instrumented) on a mock transport that
answers realistic chat completions with usage after a short await, so calls overlap. A third of
the runs are count-limited (more parallel calls than allowed), a third dollar-limited (waves of
parallel calls against ``max_cost_usd``), a third within budget. Checked for every run:

- count limits: zero overshoot, counted where it matters (requests that reached the transport,
  tool bodies that ran), not only in the ledger;
- dollars: overshoot never more than the calls already in flight when the limit was crossed;
- exactly one outcome per run; the exhaustion counter (events listener and the Prometheus
  counter of ``processors/metrics.py``) equals the runs that ended ``budget_exhausted``.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx2
import pytest
from prometheus_client import CollectorRegistry

import budgetspan
from budgetspan import events
from budgetspan.accounting.pricing import default_resolver
from budgetspan.processors.metrics import BudgetspanMetrics
from budgetspan.runs.run import Outcome
from tests.conftest import bs_implicit
from tests.reliability._support import MODEL, async_client, chat_body, openai_instrumented
from tests.reliability.conftest import Lean, scaled

RUNS = scaled(1_000, minimum=30)
MODEL_LIMIT, TOOL_LIMIT = 2, 3  # count-limited runs try 4 model + 5 tool calls at once
WAVES, WAVE_SIZE = 3, 3  # dollar-limited runs: 3 waves of 3 parallel model calls
TASK = re.compile(r"task=(\d+)")


@dataclass
class Ledgerless:
    """What really happened, seen from outside budgetspan."""

    requests: Counter[int] = field(default_factory=Counter)  # model requests that were sent
    tools_ran: Counter[int] = field(default_factory=Counter)  # tool bodies that ran
    inflight: Counter[int] = field(default_factory=Counter)
    max_inflight: Counter[int] = field(default_factory=Counter)


class Outcomes:
    def __init__(self) -> None:
        self.ends: Counter[str] = Counter()
        self.outcomes: dict[str, list[str]] = defaultdict(list)
        self.exhausted: Counter[str] = Counter()  # run id -> enforce-mode exhaustion events

    def on_run_end(self, run: budgetspan.Run) -> None:
        self.ends[run.id] += 1
        self.outcomes[run.id].append(run.outcome.value if run.outcome else "none")

    def on_exhausted(self, run: budgetspan.Run, reason: str, observe: bool) -> None:
        if not observe:
            self.exhausted[run.id] += 1


@pytest.fixture
def openai_on() -> Iterator[None]:
    with openai_instrumented():
        yield


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    total = 0.0
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


async def test_1000_concurrent_runs_hold_every_limit(lean: Lean, openai_on: None) -> None:
    seen = Ledgerless()
    outcomes = Outcomes()
    events.add_listener(outcomes)
    registry = CollectorRegistry()
    metrics = BudgetspanMetrics(registry=registry)
    events.add_listener(metrics)

    def answer(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        match = TASK.search(body["messages"][-1]["content"])
        assert match is not None
        seen.requests[int(match.group(1))] += 1
        return httpx2.Response(200, json=chat_body())

    client = async_client(answer, delay_s=0.002)
    c = default_resolver().cost("openai", "gpt-4o-mini-2024-07-18", 120, 30)
    assert c is not None and c > 0
    dollar_limit = 2.5 * c

    async def model_call(i: int, max_tokens: int | None) -> None:
        seen.inflight[i] += 1
        seen.max_inflight[i] = max(seen.max_inflight[i], seen.inflight[i])
        try:
            kwargs = {"max_tokens": max_tokens} if max_tokens else {}
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"task={i}"}], **kwargs
            )
        finally:
            seen.inflight[i] -= 1

    @budgetspan.tool(read_only=True)
    async def fetch(i: int) -> int:
        seen.tools_ran[i] += 1
        await asyncio.sleep(0.001)
        return i

    runs: dict[int, budgetspan.Run] = {}

    async def agent(i: int) -> None:
        kind = i % 3
        if kind == 0:
            scope = budgetspan.run("load", max_model_calls=10, max_tool_calls=10)
        elif kind == 1:
            scope = budgetspan.run("load", max_model_calls=MODEL_LIMIT, max_tool_calls=TOOL_LIMIT)
        else:
            scope = budgetspan.run("load", max_cost_usd=dollar_limit)
        async with scope as run:
            runs[i] = run
            if kind in (0, 1):
                calls = [model_call(i, None) for _ in range(4)] + [fetch(i) for _ in range(5)]
                random.Random(i).shuffle(calls)  # which limit is hit first varies by run
                results = await asyncio.gather(*calls, return_exceptions=True)
            else:
                results = []
                for wave in range(WAVES):  # half the runs state max_tokens (worst-case check)
                    max_tokens = 30 if i % 2 else None
                    wave_calls = [model_call(i, max_tokens) for _ in range(WAVE_SIZE)]
                    results += await asyncio.gather(*wave_calls, return_exceptions=True)
                    if wave == 0:
                        await fetch(i)
            errors = [r for r in results if isinstance(r, BaseException)]
            assert all(isinstance(e, budgetspan.BudgetExhausted) for e in errors), errors[:3]
            if errors:
                raise errors[0]

    results = await asyncio.gather(*(agent(i) for i in range(RUNS)), return_exceptions=True)
    assert all(r is None or isinstance(r, budgetspan.BudgetExhausted) for r in results)

    # every run ended exactly once, with one outcome, and nothing is left live
    assert len(runs) == RUNS
    assert all(outcomes.ends[run.id] == 1 for run in runs.values())
    assert all(len(outcomes.outcomes[run.id]) == 1 for run in runs.values())
    assert budgetspan.live_runs() == [] and len(lean.ledger) == 0 and not bs_implicit._trace_runs

    overshoot: list[float] = []
    for i, run in runs.items():
        u = run.usage
        kind = i % 3
        # ledger, transport and tool bodies agree: what was counted is what happened
        assert seen.requests[i] == u.model_calls, i
        assert seen.tools_ran[i] == u.tool_calls, i
        if kind == 0:
            assert run.outcome is Outcome.SUCCESS
            assert (u.model_calls, u.tool_calls) == (4, 5)
        elif kind == 1:  # zero overshoot on count limits, under parallel calls
            assert run.outcome is Outcome.BUDGET_EXHAUSTED and run.exhausted is not None
            assert u.model_calls <= MODEL_LIMIT and u.tool_calls <= TOOL_LIMIT
            # the limit that stopped the run was reached exactly; exhaustion is sticky after it
            reached = {"max_model_calls": u.model_calls, "max_tool_calls": u.tool_calls}
            assert reached[run.exhausted.reason] == run.exhausted.limit
        else:
            assert run.outcome is Outcome.BUDGET_EXHAUSTED
            over = u.cost_usd - dollar_limit
            overshoot.append(over)
            assert over <= seen.max_inflight[i] * c + 1e-12, (i, u.cost_usd, seen.max_inflight[i])
            assert u.model_calls <= WAVE_SIZE * 2  # no wave starts once the limit is reached

    exhausted_runs = [r for r in runs.values() if r.outcome is Outcome.BUDGET_EXHAUSTED]
    assert len(exhausted_runs) == sum(1 for i in runs if i % 3)
    assert sum(outcomes.exhausted.values()) == len(exhausted_runs)
    assert all(outcomes.exhausted[r.id] == 1 for r in exhausted_runs)
    assert _sample(registry, "budgetspan_budget_exhaustions_total") == len(exhausted_runs)
    assert _sample(registry, "budgetspan_runs_total", outcome="budget_exhausted") == len(exhausted_runs)
    assert _sample(registry, "budgetspan_runs_total") == RUNS
    assert _sample(registry, "budgetspan_live_runs") == 0
    worst = max(overshoot) / c if overshoot else 0.0
    print(
        f"\n[load] {RUNS} concurrent runs: {len(exhausted_runs)} exhausted, count overshoot 0, "
        f"dollar overshoot at most {worst:.2f} calls' cost (bound: calls in flight)"
    )
