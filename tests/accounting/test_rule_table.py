"""One table of cases for THE rule, run through ``rule.refusal`` and through the Redis ledger's Lua
script on a real redis-server: the two cannot drift apart."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from budgetspan.accounting.budget import Budget, ToolLimits, Usage
from budgetspan.accounting.ledger import CallKind, LedgerRefused, Mode, Refusal, Spend
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.accounting.redis_ledger import RedisLedger
from budgetspan.accounting.redis_scripts import MIRROR
from budgetspan.accounting.rule import Held, refusal, spend_refusal, without_reserve
from tests.accounting.redis_server import needs_redis_server, redis, set_run_figures, start_redis, stop

pytestmark = needs_redis_server

MODEL, TOOL, RETRY = CallKind.MODEL, CallKind.TOOL, CallKind.RETRY


@dataclass
class Case:
    budget: Budget
    kind: CallKind
    expected: Refusal | None
    usage: Usage = field(default_factory=Usage)
    held: Held = field(default_factory=Held)
    worst: Held = field(default_factory=Held)  # this call's worst case (model calls only)
    tool: str | None = None
    defaults: ToolLimits | None = None  # the tool's own limits (from @tool)
    cancelled: bool = False
    past_deadline: bool = False
    final: bool = False  # a call of the final_response phase (may use reserve_for_final)


def _u(**figures: object) -> Usage:
    return Usage(**figures)  # type: ignore[arg-type]


SEARCH_1 = {"search": ToolLimits(max_calls=1, max_retries=0)}
KEEP_ONE_CALL = Budget(max_model_calls=6, reserve_for_final={"max_model_calls": 1})
KEEP_DOLLARS = Budget(max_cost_usd=0.25, reserve_for_final={"max_cost_usd": 0.05})

CASES: dict[str, Case] = {
    # --- count limits: the (N+1)-th call is refused -------------------------------------------
    "no limits": Case(Budget(), MODEL, None),
    "model calls below": Case(Budget(max_model_calls=2), MODEL, None, _u(model_calls=1)),
    "model calls reached": Case(
        Budget(max_model_calls=2), MODEL, Refusal("max_model_calls", 2), _u(model_calls=2)
    ),
    "model limit 0": Case(Budget(max_model_calls=0), MODEL, Refusal("max_model_calls", 0)),
    "tool limit leaves model calls": Case(Budget(max_tool_calls=1), MODEL, None, _u(tool_calls=1)),
    "tool calls reached": Case(
        Budget(max_tool_calls=1), TOOL, Refusal("max_tool_calls", 1), _u(tool_calls=1)
    ),
    "steps count both kinds": Case(
        Budget(max_steps=3), TOOL, Refusal("max_steps", 3), _u(model_calls=2, tool_calls=1)
    ),
    "steps below": Case(Budget(max_steps=3), MODEL, None, _u(model_calls=1, tool_calls=1)),
    "steps before model calls": Case(
        Budget(max_steps=2, max_model_calls=2), MODEL, Refusal("max_steps", 2), _u(model_calls=2)
    ),
    "per tool, from the budget": Case(
        Budget(tools=SEARCH_1),
        TOOL,
        Refusal("tool.max_calls", 1, "search"),
        _u(tool_calls=1, tool_calls_by_name={"search": 1}),
        tool="search",
    ),
    "per tool, another tool": Case(
        Budget(tools=SEARCH_1), TOOL, None, _u(tool_calls=1, tool_calls_by_name={"search": 1}), tool="fetch"
    ),
    "per tool, the tool's default": Case(
        Budget(),
        TOOL,
        Refusal("tool.max_calls", 2, "fetch"),
        _u(tool_calls=2, tool_calls_by_name={"fetch": 2}),
        tool="fetch",
        defaults=ToolLimits(max_calls=2),
    ),
    "per tool, the budget's entry wins": Case(
        Budget(tools=SEARCH_1),
        TOOL,
        Refusal("tool.max_calls", 1, "search"),
        _u(tool_calls=1, tool_calls_by_name={"search": 1}),
        tool="search",
        defaults=ToolLimits(max_calls=5),
    ),
    "tool calls before per tool": Case(
        Budget(max_tool_calls=1, tools=SEARCH_1),
        TOOL,
        Refusal("max_tool_calls", 1),
        _u(tool_calls=1, tool_calls_by_name={"search": 1}),
        tool="search",
    ),
    "retries reached": Case(Budget(max_retries=1), RETRY, Refusal("max_retries", 1), _u(retries=1)),
    "per tool retries": Case(
        Budget(tools=SEARCH_1), RETRY, Refusal("tool.max_retries", 0, "search"), tool="search"
    ),
    "per tool retries, the tool's default": Case(
        Budget(),
        RETRY,
        None,
        _u(retries=1, tool_retries_by_name={"fetch": 1}),
        tool="fetch",
        defaults=ToolLimits(max_retries=2),
    ),
    "a retry ignores call and spend limits": Case(
        Budget(max_model_calls=0, max_steps=0, max_cost_usd=0.1), RETRY, None, _u(cost_usd=0.2)
    ),
    # --- token and dollar limits --------------------------------------------------------------
    "dollars used up (>=)": Case(
        Budget(max_cost_usd=0.1), MODEL, Refusal("max_cost_usd", 0.1), _u(cost_usd=0.1)
    ),
    "dollar limit 0": Case(Budget(max_cost_usd=0.0), MODEL, Refusal("max_cost_usd", 0.0)),
    "dollars used up refuse a tool call": Case(
        Budget(max_cost_usd=0.1), TOOL, Refusal("max_cost_usd", 0.1), _u(cost_usd=0.25)
    ),
    "worst case exactly at the limit": Case(
        Budget(max_cost_usd=0.1), MODEL, None, _u(cost_usd=0.05), worst=Held(cost_usd=0.05)
    ),
    "worst case past the limit": Case(
        Budget(max_cost_usd=0.1), MODEL, Refusal("max_cost_usd", 0.1), _u(cost_usd=0.05), worst=Held(0.06)
    ),
    "held in flight + worst case past the limit": Case(
        Budget(max_cost_usd=0.1),
        MODEL,
        Refusal("max_cost_usd", 0.1),
        _u(cost_usd=0.05),
        held=Held(cost_usd=0.03),
        worst=Held(cost_usd=0.03),
    ),
    "held counts only against a known worst case": Case(
        Budget(max_cost_usd=0.1), MODEL, None, _u(cost_usd=0.05), held=Held(cost_usd=0.5)
    ),
    # 0.1 + (0.2 + 0.3) == 0.6 but (0.1 + 0.2) + 0.3 > 0.6: the sums must be made in the rule's order
    "float sums in the rule's order": Case(
        Budget(max_cost_usd=0.6), MODEL, None, _u(cost_usd=0.1), held=Held(cost_usd=0.2), worst=Held(0.3)
    ),
    "input tokens: worst case fits": Case(
        Budget(max_input_tokens=1000), MODEL, None, _u(input_tokens=900), worst=Held(input_tokens=100)
    ),
    "input tokens: worst case one past": Case(
        Budget(max_input_tokens=1000),
        MODEL,
        Refusal("max_input_tokens", 1000),
        _u(input_tokens=900),
        worst=Held(input_tokens=101),
    ),
    "input tokens: held in flight": Case(
        Budget(max_input_tokens=1000),
        MODEL,
        Refusal("max_input_tokens", 1000),
        _u(input_tokens=900),
        held=Held(input_tokens=50),
        worst=Held(input_tokens=60),
    ),
    "output tokens used up": Case(
        Budget(max_output_tokens=500), MODEL, Refusal("max_output_tokens", 500), _u(output_tokens=500)
    ),
    "output tokens: held + worst case past": Case(
        Budget(max_output_tokens=500),
        MODEL,
        Refusal("max_output_tokens", 500),
        _u(output_tokens=100),
        held=Held(output_tokens=300),
        worst=Held(output_tokens=101),
    ),
    "total tokens: input and output, spent, held and worst": Case(
        Budget(max_total_tokens=1000),
        MODEL,
        Refusal("max_total_tokens", 1000),
        _u(input_tokens=400, output_tokens=400),
        held=Held(input_tokens=100, output_tokens=50),
        worst=Held(output_tokens=51),
    ),
    "total tokens: exactly at the limit": Case(
        Budget(max_total_tokens=1000),
        MODEL,
        None,
        _u(input_tokens=400, output_tokens=400),
        held=Held(input_tokens=100, output_tokens=50),
        worst=Held(output_tokens=50),
    ),
    "total tokens used up": Case(
        Budget(max_total_tokens=1000),
        MODEL,
        Refusal("max_total_tokens", 1000),
        _u(input_tokens=600, output_tokens=400),
    ),
    "dollars before tokens": Case(
        Budget(max_cost_usd=1.0, max_input_tokens=10),
        MODEL,
        Refusal("max_cost_usd", 1.0),
        _u(cost_usd=2.0, input_tokens=20),
    ),
    "count limits before spend limits": Case(
        Budget(max_model_calls=1, max_cost_usd=1.0),
        MODEL,
        Refusal("max_model_calls", 1),
        _u(model_calls=1, cost_usd=2.0),
    ),
    # --- cancellation and the wall clock ---------------------------------------------------------
    "cancelled": Case(Budget(), TOOL, Refusal("cancelled", None), cancelled=True),
    "past the deadline": Case(
        Budget(max_wall_clock_s=5.0), MODEL, Refusal("max_wall_clock_s", 5.0), past_deadline=True
    ),
    "before the deadline": Case(Budget(max_wall_clock_s=5.0), MODEL, None),
    "cancelled before the deadline": Case(
        Budget(max_wall_clock_s=5.0, max_model_calls=0),
        MODEL,
        Refusal("cancelled", None),
        cancelled=True,
        past_deadline=True,
    ),
    # --- budget kept for the final answer ---------------------------------------------------------
    "the reserve refuses a call outside the final phase": Case(
        KEEP_ONE_CALL, MODEL, Refusal("max_model_calls", 5), _u(model_calls=5)
    ),
    "below the reserve": Case(KEEP_ONE_CALL, MODEL, None, _u(model_calls=4)),
    "the final phase may use the reserve": Case(KEEP_ONE_CALL, MODEL, None, _u(model_calls=5), final=True),
    "the final phase stops at the whole limit": Case(
        KEEP_ONE_CALL, MODEL, Refusal("max_model_calls", 6), _u(model_calls=6), final=True
    ),
    "a dollar reserve": Case(KEEP_DOLLARS, MODEL, Refusal("max_cost_usd", 0.2), _u(cost_usd=0.2)),
    "a worst case that would eat into the reserve": Case(
        KEEP_DOLLARS, MODEL, Refusal("max_cost_usd", 0.2), _u(cost_usd=0.1), worst=Held(cost_usd=0.15)
    ),
    "a worst case that fits the reserve in the final phase": Case(
        KEEP_DOLLARS, MODEL, None, _u(cost_usd=0.1), worst=Held(cost_usd=0.15), final=True
    ),
    "a reserve larger than the limit": Case(
        Budget(max_tool_calls=1, reserve_for_final={"max_tool_calls": 3}), TOOL, Refusal("max_tool_calls", 0)
    ),
    "a step reserve holds tool calls": Case(
        Budget(max_steps=4, reserve_for_final={"max_steps": 1}),
        TOOL,
        Refusal("max_steps", 3),
        _u(model_calls=3),
    ),
    "the deadline before counts": Case(
        Budget(max_wall_clock_s=5.0, max_model_calls=0),
        MODEL,
        Refusal("max_wall_clock_s", 5.0),
        past_deadline=True,
    ),
}


def _rule(case: Case, quoted: bool = False) -> Refusal | None:
    """The rule's refusal; without ``worst`` (the amount the explanation quotes, which the table
    leaves out) unless ``quoted``: the ledgers give it too (the Redis one works it out in the
    process from the reply)."""
    found = refusal(
        case.budget if case.final else without_reserve(case.budget),
        case.usage,
        case.kind,
        tool=case.tool,
        defaults=case.defaults,
        held=case.held,
        worst=case.worst,
        cancelled=case.cancelled,
        past_deadline=case.past_deadline,
    )
    return found if found is None or quoted else dataclasses.replace(found, worst=None)


def _hash_fields(usage: Usage, held: Held) -> dict[str, int | float]:
    """The run's figures as the Redis ledger keeps them in the run's hash (by name)."""
    u = usage
    fields: dict[str, int | float] = {
        "model_calls": u.model_calls,
        "tool_calls": u.tool_calls,
        "retries": u.retries,
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cost_usd": u.cost_usd,
        "held:cost_usd": held.cost_usd,
        "held:input_tokens": held.input_tokens,
        "held:output_tokens": held.output_tokens,
    }
    fields.update({f"tool:{name}:calls": n for name, n in u.tool_calls_by_name.items()})
    fields.update({f"tool:{name}:retries": n for name, n in u.tool_retries_by_name.items()})
    return fields


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    proc, port = start_redis(tmp_path_factory.mktemp("redis"))
    yield redis.Redis(port=port, socket_timeout=5)
    stop(proc)


def _on_redis(client: redis.Redis, name: str, case: Case) -> RedisLedger:
    """A run in the Redis ledger whose hash holds ``case``'s budget and figures."""
    ledger = RedisLedger(client)
    ledger.open(name, case.budget, Mode.ENFORCE)
    key = ledger.key(name)
    fields = _hash_fields(case.usage, case.held)
    figures = {name: value for name, value in fields.items() if name in MIRROR}
    figures["cancelled"] = 1 if case.cancelled else 0
    set_run_figures(client, key, figures)  # (packed in one field: see redis_scripts.py)
    per_tool = {name: value for name, value in fields.items() if name not in MIRROR}
    if per_tool:
        client.hset(key, mapping=per_tool)
    if case.past_deadline:  # started longer ago than the wall-clock limit, on the server's clock
        sec, _usec = client.time()
        client.hset(key, "started_at", sec - 2 * (case.budget.max_wall_clock_s or 0) - 1)
        ledger.open(name, case.budget, Mode.ENFORCE)  # (as a process opening it now reckons it)
    return ledger


def _reserve(ledger: RedisLedger | InMemoryLedger, name: str, case: Case) -> Refusal | None:
    """Reserve ``case``'s call in ``ledger``: the refusal it says, or None when it lets it through."""
    try:
        ledger.reserve(
            name,
            case.kind,
            tool=case.tool,
            tool_limits=case.defaults,
            worst_case_cost=case.worst.cost_usd,
            worst_case_input_tokens=case.worst.input_tokens,
            worst_case_tokens=case.worst.output_tokens,
            final=case.final,
        )
    except LedgerRefused as refused:
        return refused.refusal
    return None


@pytest.mark.parametrize("name", list(CASES))
def test_the_lua_script_refuses_exactly_as_the_rule(client: redis.Redis, name: str) -> None:
    case = CASES[name]
    assert case.kind is MODEL or case.worst == Held()  # the ledgers hold worst cases of model calls only
    expected = _rule(case)
    assert expected == case.expected  # the table says what the rule says
    ledger = _on_redis(client, name, case)
    assert _reserve(ledger, name, case) == _rule(case, quoted=True)


@pytest.mark.parametrize("name", list(CASES))
def test_the_memory_ledger_refuses_exactly_as_the_rule(name: str) -> None:
    case = CASES[name]
    ledger = InMemoryLedger()
    ledger.open(name, case.budget, Mode.ENFORCE, started_at=-1e9 if case.past_deadline else None)
    book = ledger._runs[name]
    book.usage, book.held, book.cancelled = case.usage.copy(), dataclasses.replace(case.held), case.cancelled
    assert _reserve(ledger, name, case) == _rule(case, quoted=True)


@pytest.mark.parametrize("name", list(CASES))
def test_the_settle_script_says_the_used_up_limit_as_the_rule(client: redis.Redis, name: str) -> None:
    """What a commit returns (computed in the settle script) is ``spend_refusal`` with nothing in
    flight and no worst case: the limit the run has used up."""
    case = CASES[name]
    ledger = _on_redis(client, "settle " + name, case)
    assert ledger.add_spend("settle " + name, Spend()) == spend_refusal(case.budget, case.usage)
