"""Scope budgets in the process-local ledger and their parts: windows, where a budget comes from
(code, lookup, config), the explanation, one reservation in the run and every scope."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import budgetspan
from budgetspan import config as bs_config
from budgetspan.accounting.budget import Budget
from budgetspan.accounting.ledger import CallKind, Ledger, LedgerRefused, Mode, Spend
from budgetspan.accounting.memory import InMemoryLedger
from budgetspan.accounting.redis_ledger import RedisLedger
from budgetspan.accounting.scopes import REGISTRY, Scope, ScopeBudget, explain_scope
from budgetspan.accounting.windows import Window, parse_window
from tests.conftest import SCOPE_T0 as T0


def _scope(kind: str, name: str, budget: Budget, window: str | None = "day", **kw: Any) -> Any:
    return Scope(kind, name, ScopeBudget(budget, parse_window(window), **kw)).ref()


def test_calendar_windows_in_a_time_zone() -> None:
    paris = Window("day", tz="Europe/Paris").bounds(T0)
    assert paris.label == "2025-12-05" and paris.end is not None and paris.end - paris.start == 86_400
    assert Window("day", tz="America/Los_Angeles").bounds(T0).label == "2025-12-04"
    assert Window("hour").bounds(T0).label == "2025-12-05T02"
    month = Window("month").bounds(T0)
    assert month.label == "2025-12" and month.end == 1_767_225_600.0  # 2026-01-01 00:00 UTC
    # The day the clocks go back in Paris lasts 25 hours.
    fall = Window("day", tz="Europe/Paris").bounds(1_761_480_000.0)
    assert fall.label == "2025-10-26" and fall.end is not None and fall.end - fall.start == 25 * 3600
    assert Window(None).bounds(T0).end is None and Window("day", rolling=True).bounds(T0).label == "rolling"
    with pytest.raises(ValueError, match="week"):
        parse_window("week")
    with pytest.raises(ValueError, match="zone"):
        Window("day", tz="Mars/Olympus")


def test_the_explanation_names_the_scope_and_the_reset(scope_clock: list[float]) -> None:
    ref = _scope("tenant", "acme", Budget(max_cost_usd=200))
    text = explain_scope(ref, "max_cost_usd", 200.0, 200.0, None)
    assert text == "Stopped: tenant acme has spent $200.00 of its $200 daily budget; resets at 00:00 UTC."
    large = _scope("tenant", "globex", Budget(max_cost_usd=1_500_000))
    assert "spent $1,500,000.00 of its $1,500,000 daily budget" in explain_scope(
        large, "max_cost_usd", 1.5e6, 1.5e6, None
    )
    month = _scope("user", "ann", Budget(max_total_tokens=2_000_000), "month")
    assert explain_scope(month, "max_total_tokens", 2e6, 1_999_990, 500) == (
        "Stopped: user ann has used 1,999,990 of its 2,000,000 monthly total tokens (the next call "
        "could have used up to 500 more); resets on 2026-01-01 at 00:00 UTC."
    )


def test_one_reservation_in_the_run_and_every_scope(scope_clock: list[float], ledger: Ledger) -> None:
    tenant = _scope("tenant", "acme", Budget(max_model_calls=3))
    user = _scope("user", "ann", Budget(max_cost_usd=1.0))
    ledger.open("r1", Budget(max_model_calls=10), Mode.ENFORCE)
    res = ledger.reserve("r1", CallKind.MODEL, worst_case_cost=0.6, scopes=(user, tenant))
    # The user's dollars: the worst case in flight is held, the next one would pass the limit.
    with pytest.raises(LedgerRefused) as info:
        ledger.reserve("r1", CallKind.MODEL, worst_case_cost=0.6, scopes=(user, tenant))
    assert info.value.refusal.scope is user and info.value.refusal.reason == "max_cost_usd"
    assert ledger.usage("r1").model_calls == 1  # the refused call changed nothing anywhere
    ledger.commit(res, Spend(cost_usd=0.1))
    ledger.open("r2", Budget(), Mode.ENFORCE)
    ledger.reserve("r2", CallKind.MODEL, scopes=(user, tenant))
    gone = ledger.reserve("r2", CallKind.MODEL, scopes=(user, tenant))
    ledger.release(gone)  # a call that never started gives its slot back
    ledger.reserve("r2", CallKind.MODEL, scopes=(user, tenant))
    with pytest.raises(LedgerRefused) as info:
        ledger.reserve("r2", CallKind.MODEL, scopes=(user, tenant))
    assert (info.value.refusal.scope, info.value.refusal.spent) == (tenant, 3)
    assert ledger.usage("r2").model_calls == 2
    assert ledger.scope_usage(tenant.key).model_calls == 3  # type: ignore[union-attr]
    assert ledger.scope_usage(user.key).cost_usd == pytest.approx(0.1)  # type: ignore[union-attr]
    if isinstance(ledger, RedisLedger):  # the window's record goes a day after the day ends (UTC)
        assert (21 + 24) * 3600 < ledger.client.ttl("budgetspan:scope:" + tenant.key) <= (22 + 24) * 3600


def test_observe_mode_records_a_scope_refusal_and_refuses_nothing(
    scope_clock: list[float], ledger: Ledger
) -> None:
    tenant = _scope("tenant", "acme", Budget(max_model_calls=1))
    ledger.open("o", Budget(), Mode.OBSERVE)
    ledger.reserve("o", CallKind.MODEL, scopes=(tenant,))
    res = ledger.reserve("o", CallKind.MODEL, scopes=(tenant,))
    assert res.would_refuse is not None and res.would_refuse.scope is tenant
    assert ledger.scope_usage(tenant.key).model_calls == 2  # type: ignore[union-attr]


def test_budgets_from_code_lookup_and_config(
    scope_clock: list[float], tmp_path: Path, monkeypatch: Any
) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(
        """
[workflows.triage]
max_model_calls = 5
[workflows.triage.window]
max_cost_usd = 50
window = "hour"

[tenants.acme]
max_cost_usd = 200
window = "day"
tz = "Europe/Paris"
warn_at = 0.8

[tenants.default]
max_cost_usd = 5
window = "day"

[users.default]
max_total_tokens = 2000000
window = "month"
"""
    )
    monkeypatch.setenv("BUDGETSPAN_CONFIG", str(path))
    bs_config.set_config(None)
    cfg = bs_config.get_config()
    assert cfg.workflows["triage"].max_model_calls == 5  # the run's own budget is unchanged
    assert len(cfg.scopes) == 4
    acme = REGISTRY.find("tenant", "acme", cfg.scopes)
    assert acme is not None and acme.budget.max_cost_usd == 200 and acme.window.tz == "Europe/Paris"
    assert acme.warn_at == 0.8
    other = REGISTRY.find("tenant", "initech", cfg.scopes)
    assert other is not None and other.budget.max_cost_usd == 5
    triage = REGISTRY.find("workflow", "triage", cfg.scopes)
    assert triage is not None and triage.window == Window("hour")
    # The lookup (the customer's plan) comes before config, code before both.
    plans = {"initech": Budget(max_cost_usd=1000)}
    budgetspan.set_scope_lookup(lambda kind, name: plans.get(name) if kind == "tenant" else None)
    assert REGISTRY.find("tenant", "initech", cfg.scopes).budget.max_cost_usd == 1000  # type: ignore[union-attr]
    budgetspan.set_scope_budget("tenant", "initech", Budget(max_cost_usd=7), window="day")
    assert REGISTRY.find("tenant", "initech", cfg.scopes).budget.max_cost_usd == 7  # type: ignore[union-attr]


def test_a_bad_scope_table_is_a_config_error(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text('[tenants.acme]\nmax_cost_usd = 200\nwindow = "fortnight"\n')
    monkeypatch.setenv("BUDGETSPAN_CONFIG", str(path))
    with pytest.raises(bs_config.ConfigError, match=r"\[tenants.acme\].*fortnight"):
        bs_config.load_config()
    path.write_text("[tenants.acme]\nmax_dollars = 200\n")
    with pytest.raises(bs_config.ConfigError, match="max_dollars"):
        bs_config.load_config()


def test_a_nested_run_spends_once_in_its_scopes(scope_clock: list[float], tracing: object) -> None:
    budgetspan.set_scope_budget("tenant", "acme", Budget(max_model_calls=3), window="day")
    budgetspan.set_scope_budget("workflow", "triage", Budget(max_model_calls=100), window="hour")
    with budgetspan.run("triage", tenant="acme") as outer:
        with budgetspan.run("lookup") as inner:  # inherits the tenant; in triage's window too
            assert [s.kind for s in inner.scopes] == ["tenant", "workflow"]
            inner.commit(inner.reserve(CallKind.MODEL))
        outer.commit(outer.reserve(CallKind.MODEL))
    assert budgetspan.spend(tenant="acme").model_calls == 2
    assert budgetspan.spend(workflow="triage").model_calls == 2
    with pytest.raises(ValueError, match="exactly one"):
        budgetspan.spend(tenant="acme", user="ann")


def test_what_is_left_names_the_scopes(scope_clock: list[float], tracing: object) -> None:
    budgetspan.set_scope_budget("tenant", "acme", Budget(max_model_calls=3), window="day")
    with budgetspan.run("triage", tenant="acme", budget=Budget(max_model_calls=10)) as run:
        run.commit(run.reserve(CallKind.MODEL))
        assert run.remaining_text() == (
            "9 of 10 model calls left; tenant acme: 2 of 3 model calls left of its daily budget"
        )
    with budgetspan.run("chat", tenant="acme") as run:  # no limits of its own: the tenant's only
        assert run.remaining_text() == "tenant acme: 2 of 3 model calls left of its daily budget"


def test_a_failing_lookup_leaves_the_run_unscoped(
    scope_clock: list[float], tracing: object, caplog: Any
) -> None:
    def broken(kind: str, name: str) -> None:
        raise RuntimeError("plan service down")

    budgetspan.set_scope_lookup(broken)
    with budgetspan.run("chat", tenant="acme") as run:
        run.commit(run.reserve(CallKind.MODEL))
    assert run.scopes == () and "scope budgets" in caplog.text


def _tenant_limits_of_runs_started_together(n: int) -> list[float | None]:
    """The max_model_calls of the scopes of ``n`` runs of tenant acme started at once in threads."""
    import threading

    gate = threading.Barrier(n)
    limits: list[float | None] = []

    def start() -> None:
        gate.wait()
        with budgetspan.run("chat", tenant="acme") as run:
            limits.extend(s.limits.budget.max_model_calls for s in run.scopes)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return limits


def test_a_failed_lookup_is_not_asked_again_by_every_run_until_it_may_answer(
    scope_clock: list[float], tracing: object, caplog: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plans database down: each run start waited for the lookup to fail again (its timeout
    per run), and 20 runs waiting on one lookup asked again one after another. A failure counts as
    no answer for ``RETRY_FAILED_S`` (the config's or code's default applies meanwhile)."""
    import time

    from budgetspan.accounting import scopes

    monkeypatch.setattr(scopes, "RETRY_FAILED_S", 0.3)
    calls: list[str] = []
    down = [True]

    def plans(kind: str, name: str) -> Budget | None:
        if kind != "tenant":
            return None
        calls.append(name)
        time.sleep(0.05)
        if down[0]:
            raise TimeoutError("plans database")
        return Budget(max_model_calls=2)

    budgetspan.set_scope_lookup(plans)
    budgetspan.set_scope_budget("tenant", "default", Budget(max_model_calls=9))
    limits = _tenant_limits_of_runs_started_together(20)
    limits += _tenant_limits_of_runs_started_together(1)
    assert limits == [9] * 21  # the default meanwhile, never no budget
    assert calls == ["acme"], calls  # was 21 lookups, 20 of them one after another
    assert caplog.text.count("scope budgets") == 1
    down[0] = False
    time.sleep(0.35)
    with budgetspan.run("chat", tenant="acme") as run:
        assert run.scopes[0].limits.budget.max_model_calls == 2  # asked again: the plan applies
    assert calls == ["acme", "acme"]


def test_runs_starting_together_share_one_lookup_and_a_changed_plan_applies(
    scope_clock: list[float], tracing: object
) -> None:
    import time

    calls: list[tuple[str, str]] = []
    plans = {"acme": Budget(max_model_calls=2)}

    def slow_plans(kind: str, name: str) -> Budget | None:
        calls.append((kind, name))
        time.sleep(0.05)  # the plans database; the runs starting meanwhile wait for this answer
        return plans.get(name) if kind == "tenant" else None

    budgetspan.set_scope_lookup(slow_plans, ttl_s=0.3)
    limits = _tenant_limits_of_runs_started_together(20)
    assert limits == [2] * 20
    assert calls.count(("tenant", "acme")) == 1, calls  # was one per run
    plans["acme"] = Budget(max_model_calls=50)  # the customer upgraded
    with budgetspan.run("chat", tenant="acme") as run:
        assert run.scopes[0].limits.budget.max_model_calls == 2  # cached still
    time.sleep(0.35)
    with budgetspan.run("chat", tenant="acme") as run:
        assert run.scopes[0].limits.budget.max_model_calls == 50
    assert calls.count(("tenant", "acme")) == 2
    with pytest.raises(ValueError, match="ttl_s"):
        budgetspan.set_scope_lookup(slow_plans, ttl_s=0)


def test_scopes_in_use_only_are_kept(scope_clock: list[float]) -> None:
    ledger = InMemoryLedger()
    ledger.open("r", Budget(), Mode.ENFORCE)
    for i in range(50):
        ledger.commit(
            ledger.reserve("r", CallKind.MODEL, scopes=(_scope("user", f"u{i}", Budget(max_model_calls=9)),))
        )
    assert len(ledger.scope_books) == 50
    scope_clock[0] += 2 * 86_400 + 1  # every one of those windows (and the day they are kept after) is over
    for _ in range(1024):
        ledger.commit(
            ledger.reserve("r", CallKind.MODEL, scopes=(_scope("user", "u0", Budget(max_model_calls=9999)),))
        )
    assert len(ledger.scope_books) == 1


def test_another_instrumentations_call_spends_in_the_scopes(scope_clock: list[float], tracing: Any) -> None:
    budgetspan.set_scope_budget("tenant", "acme", Budget(max_model_calls=5), window="day")
    tracer = tracing.provider.get_tracer("other-instrumentation")
    with budgetspan.run("chat", tenant="acme"):
        with tracer.start_as_current_span("chat gpt-4o-mini", attributes={"gen_ai.operation.name": "chat"}):
            pass
    assert budgetspan.spend(tenant="acme").model_calls == 1


def test_a_final_answer_reserve_and_a_scope_window_in_one_reservation(
    scope_clock: list[float], ledger: Ledger
) -> None:
    """The two additions to the reserve step together (issues 18 and 22): the run's reserve for
    its final answer holds back only the run's own limit, never the scope's."""
    tenant = _scope("tenant", "acme", Budget(max_model_calls=4))
    ledger.open("f", Budget(max_model_calls=3, reserve_for_final={"max_model_calls": 1}), Mode.ENFORCE)
    ledger.reserve("f", CallKind.MODEL, scopes=(tenant,))
    ledger.reserve("f", CallKind.MODEL, scopes=(tenant,))
    with pytest.raises(LedgerRefused) as info:  # the third call would eat the final answer's call
        ledger.reserve("f", CallKind.MODEL, scopes=(tenant,))
    assert info.value.refusal.scope is None and info.value.refusal.reason == "max_model_calls"
    ledger.reserve("f", CallKind.MODEL, final=True, scopes=(tenant,))  # the answer uses the reserve
    assert ledger.usage("f").model_calls == 3
    assert ledger.scope_usage(tenant.key).model_calls == 3  # type: ignore[union-attr]
    ledger.open("g", Budget(max_model_calls=5, reserve_for_final={"max_model_calls": 1}), Mode.ENFORCE)
    ledger.reserve("g", CallKind.MODEL, scopes=(tenant,))
    with pytest.raises(LedgerRefused) as info:  # the tenant's fifth call: its window refuses it
        ledger.reserve("g", CallKind.MODEL, final=True, scopes=(tenant,))
    assert info.value.refusal.scope is tenant


def test_a_scope_without_a_window_lives_on_while_in_use(
    scope_clock: list[float], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conversation's record expires IDLE_TTL_S after its last use: its first call sets the
    expiry, and a granted call refreshes it when this process last did it a tenth of that ago or
    more (not every call: an EXPIRE per call and scope is dear on the server)."""
    import redis

    from budgetspan.accounting import redis_scopes
    from budgetspan.accounting.windows import IDLE_TTL_S

    clock = [1000.0]
    monkeypatch.setattr(redis_scopes, "_now", lambda: clock[0])
    ledger = RedisLedger(redis.Redis.from_url(redis_url))
    chat = _scope("conversation", "c-ttl", Budget(max_model_calls=100), None)
    key = "budgetspan:scope:" + chat.key
    ledger.open("r-ttl", Budget(), Mode.ENFORCE)
    ledger.reserve("r-ttl", CallKind.MODEL, scopes=(chat,))
    assert IDLE_TTL_S - 5 < ledger.client.ttl(key) <= IDLE_TTL_S
    ledger.client.expire(key, 50)
    clock[0] += IDLE_TTL_S / 10 - 1
    ledger.reserve("r-ttl", CallKind.MODEL, scopes=(chat,))
    assert 0 < ledger.client.ttl(key) <= 50  # refreshed lately: left alone
    clock[0] += 1
    ledger.reserve("r-ttl", CallKind.MODEL, scopes=(chat,))
    assert IDLE_TTL_S - 5 < ledger.client.ttl(key) <= IDLE_TTL_S
    ledger.close("r-ttl")
