"""The ledger: reservation semantics, every limit, and the no-overshoot property under interleaving."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from budgetspan.accounting.budget import Budget, ToolLimits
from budgetspan.accounting.ledger import CallKind, LedgerRefused, Mode, Spend
from budgetspan.accounting.memory import InMemoryLedger


class FakeClock:
    """A monotonic clock the test moves by hand: deadlines without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ledger(budget: Budget, mode: Mode = Mode.ENFORCE) -> tuple[InMemoryLedger, FakeClock]:
    clock = FakeClock()
    ledger = InMemoryLedger(clock)
    ledger.open("r", budget, mode)
    return ledger, clock


def test_count_limit_refuses_the_n_plus_first_call_and_counts_nothing_for_it() -> None:
    ledger, _ = _ledger(Budget(max_model_calls=2))
    ledger.reserve("r", CallKind.MODEL)
    ledger.reserve("r", CallKind.MODEL)
    with pytest.raises(LedgerRefused) as info:
        ledger.reserve("r", CallKind.MODEL)
    assert info.value.refusal.reason == "max_model_calls"
    assert info.value.refusal.limit == 2
    assert ledger.usage("r").model_calls == 2


def test_release_gives_the_slot_back() -> None:
    ledger, _ = _ledger(Budget(max_tool_calls=1))
    res = ledger.reserve("r", CallKind.TOOL, tool="t")
    assert ledger.usage("r").tool_calls == 1  # positive control: the reservation counted
    ledger.release(res)
    ledger.release(res)  # twice is harmless
    assert ledger.usage("r").tool_calls == 0
    ledger.reserve("r", CallKind.TOOL, tool="t")
    with pytest.raises(LedgerRefused, match="max_tool_calls"):  # one slot, given back once only
        ledger.reserve("r", CallKind.TOOL, tool="t")


def test_steps_count_model_and_tool_calls_together() -> None:
    ledger, _ = _ledger(Budget(max_steps=3))
    ledger.reserve("r", CallKind.MODEL)
    ledger.reserve("r", CallKind.TOOL, tool="a")
    ledger.reserve("r", CallKind.MODEL)
    with pytest.raises(LedgerRefused, match="max_steps"):
        ledger.reserve("r", CallKind.TOOL, tool="a")


def test_per_tool_max_calls_from_budget_wins_over_decorator_default() -> None:
    ledger, _ = _ledger(Budget(tools={"search": ToolLimits(max_calls=1)}))
    ledger.reserve("r", CallKind.TOOL, tool="search", tool_limits=ToolLimits(max_calls=5))
    with pytest.raises(LedgerRefused) as info:
        ledger.reserve("r", CallKind.TOOL, tool="search", tool_limits=ToolLimits(max_calls=5))
    assert info.value.refusal.reason == "tool.max_calls" and info.value.refusal.tool == "search"
    ledger.reserve("r", CallKind.TOOL, tool="other")  # other tools are unaffected


def test_dollar_limit_checked_against_spent_and_again_after_each_commit() -> None:
    ledger, _ = _ledger(Budget(max_cost_usd=0.10))
    res = ledger.reserve("r", CallKind.MODEL)
    reached = ledger.commit(res, Spend(100, 10, cost_usd=0.06))
    assert reached is None
    res = ledger.reserve("r", CallKind.MODEL)  # $0.06 < $0.10: allowed
    reached = ledger.commit(res, Spend(100, 10, cost_usd=0.06))
    assert reached is not None and reached.reason == "max_cost_usd"
    with pytest.raises(LedgerRefused, match="max_cost_usd"):
        ledger.reserve("r", CallKind.MODEL)
    assert ledger.usage("r").cost_usd == pytest.approx(0.12)  # overshoot = the call in flight


def test_worst_case_cost_refuses_a_call_that_could_break_the_limit() -> None:
    ledger, _ = _ledger(Budget(max_cost_usd=0.10))
    res = ledger.commit(ledger.reserve("r", CallKind.MODEL), Spend(1, 1, cost_usd=0.05))
    assert res is None
    with pytest.raises(LedgerRefused, match="max_cost_usd"):
        ledger.reserve("r", CallKind.MODEL, worst_case_cost=0.06)
    ledger.reserve("r", CallKind.MODEL, worst_case_cost=0.04)


def test_worst_case_of_calls_in_flight_is_held_until_commit() -> None:
    ledger, _ = _ledger(Budget(max_cost_usd=0.10))
    first = ledger.reserve("r", CallKind.MODEL, worst_case_cost=0.06)
    with pytest.raises(LedgerRefused):
        ledger.reserve("r", CallKind.MODEL, worst_case_cost=0.06)  # 0.06 in flight + 0.06 > 0.10
    ledger.commit(first, Spend(10, 10, cost_usd=0.01))
    ledger.reserve("r", CallKind.MODEL, worst_case_cost=0.06)  # 0.01 spent + 0.06 fits


@pytest.mark.parametrize(
    ("limit", "spend"),
    [
        ("max_input_tokens", Spend(input_tokens=100, output_tokens=0)),
        ("max_output_tokens", Spend(input_tokens=0, output_tokens=100)),
        ("max_total_tokens", Spend(input_tokens=60, output_tokens=40)),
    ],
)
def test_token_limits(limit: str, spend: Spend) -> None:
    ledger, _ = _ledger(Budget(**{limit: 100}))
    reached = ledger.commit(ledger.reserve("r", CallKind.MODEL), spend)
    assert reached is not None and reached.reason == limit
    with pytest.raises(LedgerRefused, match=limit):
        ledger.reserve("r", CallKind.MODEL)


def test_output_token_worst_case_from_max_tokens() -> None:
    ledger, _ = _ledger(Budget(max_output_tokens=100))
    ledger.commit(ledger.reserve("r", CallKind.MODEL), Spend(5, 50))
    with pytest.raises(LedgerRefused, match="max_output_tokens"):
        ledger.reserve("r", CallKind.MODEL, worst_case_tokens=60)
    ledger.reserve("r", CallKind.MODEL, worst_case_tokens=50)


def test_wall_clock_deadline_refuses_calls_after_it() -> None:
    ledger, clock = _ledger(Budget(max_wall_clock_s=5))
    assert ledger.deadline("r") == pytest.approx(1005.0)
    clock.now = 1004.9
    ledger.reserve("r", CallKind.TOOL)
    clock.now = 1005.0
    with pytest.raises(LedgerRefused, match="max_wall_clock_s"):
        ledger.reserve("r", CallKind.TOOL)
    with pytest.raises(LedgerRefused, match="max_wall_clock_s"):
        ledger.reserve("r", CallKind.MODEL)


def test_retries_limit() -> None:
    ledger, _ = _ledger(Budget(max_retries=1))
    ledger.reserve("r", CallKind.RETRY)
    with pytest.raises(LedgerRefused, match="max_retries"):
        ledger.reserve("r", CallKind.RETRY)


def test_cancel_refuses_even_in_observe_mode() -> None:
    ledger, _ = _ledger(Budget(), Mode.OBSERVE)
    assert ledger.cancel("r")
    with pytest.raises(LedgerRefused, match="cancelled"):
        ledger.reserve("r", CallKind.MODEL)
    assert not ledger.cancel("unknown")


def test_observe_mode_counts_and_marks_what_enforce_would_refuse() -> None:
    ledger, _ = _ledger(Budget(max_model_calls=1), Mode.OBSERVE)
    assert ledger.reserve("r", CallKind.MODEL).would_refuse is None
    second = ledger.reserve("r", CallKind.MODEL)
    assert second.would_refuse is not None and second.would_refuse.reason == "max_model_calls"
    assert ledger.usage("r").model_calls == 2


def test_unreported_and_unpriced_are_counted_not_zeroed() -> None:
    ledger, _ = _ledger(Budget(max_total_tokens=10))
    ledger.commit(ledger.reserve("r", CallKind.MODEL), None, unreported=True)
    ledger.commit(ledger.reserve("r", CallKind.MODEL), Spend(3, 3), unpriced=True)
    u = ledger.usage("r")
    assert (u.unreported_usage_calls, u.unpriced_calls, u.total_tokens, u.model_calls) == (1, 1, 6, 2)


def test_negative_spend_never_lowers_usage() -> None:
    ledger, _ = _ledger(Budget())
    ledger.commit(ledger.reserve("r", CallKind.MODEL), Spend(-5, -5, cost_usd=-1.0))
    u = ledger.usage("r")
    assert (u.input_tokens, u.output_tokens, u.cost_usd) == (0, 0, 0.0)


def test_close_returns_final_usage_and_forgets_the_run() -> None:
    ledger, _ = _ledger(Budget())
    ledger.reserve("r", CallKind.TOOL, tool="x")
    assert ledger.close("r").tool_calls == 1
    assert len(ledger) == 0
    with pytest.raises(KeyError):
        ledger.reserve("r", CallKind.TOOL)


def test_threads_racing_never_exceed_a_count_limit() -> None:
    ledger, _ = _ledger(Budget(max_tool_calls=37))
    granted: list[int] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(200):
            try:
                ledger.reserve("r", CallKind.TOOL, tool="t")
                granted.append(1)
            except LedgerRefused:
                pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 37 == ledger.usage("r").tool_calls


# An operation: (kind, action) where action is reserve / commit the oldest / release the oldest.
_ops = st.lists(
    st.tuples(
        st.sampled_from([CallKind.MODEL, CallKind.TOOL, CallKind.RETRY]),
        st.sampled_from(["reserve", "commit", "release"]),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    limits=st.fixed_dictionaries(
        {
            "max_model_calls": st.none() | st.integers(0, 6),
            "max_tool_calls": st.none() | st.integers(0, 6),
            "max_steps": st.none() | st.integers(0, 8),
            "max_retries": st.none() | st.integers(0, 3),
        }
    ),
    ops=_ops,
    mode=st.sampled_from([Mode.ENFORCE]),
)
def test_property_no_interleaving_exceeds_a_count_limit(limits: dict, ops: list, mode: Mode) -> None:  # type: ignore[type-arg]
    """Whatever order reservations, commits and releases come in, no count ever passes its limit."""
    ledger, _ = _ledger(Budget(**limits), mode)
    open_res = []
    for kind, action in ops:
        if action == "reserve":
            try:
                open_res.append(ledger.reserve("r", kind, tool="t"))
            except LedgerRefused:
                pass
        elif open_res:
            res = open_res.pop(0)
            ledger.commit(res) if action == "commit" else ledger.release(res)
        u = ledger.usage("r")
        for name, used in (
            ("max_model_calls", u.model_calls),
            ("max_tool_calls", u.tool_calls),
            ("max_steps", u.steps),
            ("max_retries", u.retries),
        ):
            if limits[name] is not None:
                assert used <= limits[name], (name, used, limits[name])
        assert min(u.model_calls, u.tool_calls, u.retries) >= 0


@settings(max_examples=60, deadline=None)
@given(limit=st.integers(0, 20), threads=st.integers(2, 8), attempts=st.integers(1, 30))
def test_property_threads_interleaving_grant_exactly_min_of_limit_and_attempts(
    limit: int, threads: int, attempts: int
) -> None:
    ledger, _ = _ledger(Budget(max_model_calls=limit))
    granted = []

    def worker() -> None:
        for _ in range(attempts):
            try:
                granted.append(ledger.reserve("r", CallKind.MODEL))
            except LedgerRefused:
                pass

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(granted) == min(limit, threads * attempts)


_figure = st.none() | st.integers(-5, 2000) | st.floats(allow_nan=True, allow_infinity=False, width=32)


@pytest.mark.parametrize(
    "limit", ["max_cost_usd", "max_input_tokens", "max_output_tokens", "max_total_tokens"]
)
@pytest.mark.parametrize("kind", [CallKind.MODEL, CallKind.TOOL])
def test_a_spend_limit_of_zero_refuses_the_first_call(limit: str, kind: CallKind) -> None:
    """A limit of 0 is used up before anything is spent (the used-up limit is known at open)."""
    ledger, _ = _ledger(Budget(**{limit: 0}))
    with pytest.raises(LedgerRefused) as refused:
        ledger.reserve("r", kind, tool="t")
    assert refused.value.refusal.reason == limit
    assert ledger.check("r") == refused.value.refusal  # check and reserve agree
    observe, _ = _ledger(Budget(**{limit: 0}), Mode.OBSERVE)
    res = observe.reserve("r", kind, tool="t")
    assert res.would_refuse is not None and res.would_refuse.reason == limit
    assert observe.commit(res) == res.would_refuse


def test_a_spend_committed_as_unreported_is_still_added() -> None:
    """``unreported`` counts a call whose tokens were not said; what was said (cost, cache) counts."""
    ledger, _ = _ledger(Budget(max_cost_usd=1.0))
    res = ledger.reserve("r", CallKind.MODEL)
    refusal = ledger.commit(res, Spend(cost_usd=2.0, cache_read_tokens=10), unreported=True)
    u = ledger.usage("r")
    assert (u.cost_usd, u.cache_read_tokens, u.unreported_usage_calls) == (2.0, 10, 1)
    assert refusal is not None and refusal.reason == "max_cost_usd"
