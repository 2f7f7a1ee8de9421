"""Budgets above the run tried as a demanding user would (review 5), through the real ``openai``
SDK against a local HTTP server, with the in-memory ledger and a real ``redis-server``: a scope's
token and dollar limits with calls in flight, a scope budget smaller than one call, a failing
lookup callback, odd scope names, the explanation of a rolling window.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import threading
from typing import Any

import openai
import pytest

import budgetspan
from budgetspan import attributes as A
from budgetspan import config as bs_config
from budgetspan.accounting.scopes import REGISTRY
from budgetspan.runs import context
from tests.instrumentation.llm_server import LLMServer
from tests.reliability.scoped_app import client_of, local_server, on_either_ledger

MODEL = "gpt-4o-mini"  # $0.15 / $0.60 per million input / output tokens
#: The server reports no more than each call's worst case (a short prompt, max_tokens=50): the
#: documented bound is then 0.
USAGE = {"prompt_tokens": 1, "completion_tokens": 50, "total_tokens": 51}
CALL_USD = 1 * 0.15e-6 + 50 * 0.60e-6


server = local_server
app = on_either_ledger(USAGE)


def _ask(client: openai.OpenAI, **kw: Any) -> Any:
    return client.chat.completions.create(
        model=kw.pop("model", MODEL), messages=[{"role": "user", "content": "hi"}], max_tokens=50, **kw
    )


def test_a_scope_dollar_limit_holds_the_worst_case_of_calls_in_flight(app: Any, server: LLMServer) -> None:
    """Streams opened and not yet read are calls in flight: with only the tenant's budget limiting
    dollars, each must hold its worst case there (was: no worst case priced, every stream sent)."""
    budgetspan.set_scope_budget(
        "tenant", "acme", budgetspan.Budget(max_cost_usd=CALL_USD * 2.5), window="day"
    )
    client = client_of(server)
    streams, refused = [], []
    with budgetspan.run("chat", tenant="acme", suppress_exhausted=True):
        for _ in range(4):
            try:
                streams.append(_ask(client, stream=True))
            except budgetspan.BudgetExhausted as e:
                refused.append(e)
        for stream in streams:
            for _ in stream:
                pass
    assert len(server.requests) == 2  # two worst cases held; a third would pass the limit
    assert [e.scope for e in refused] == ["tenant acme"] * 2
    assert budgetspan.spend(tenant="acme").cost_usd == pytest.approx(2 * CALL_USD)


def test_a_scope_dollar_limit_smaller_than_one_call_refuses_it_before_it_is_sent(
    app: Any, server: LLMServer
) -> None:
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_cost_usd=CALL_USD / 3), window="day")
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("chat", tenant="acme"):
            _ask(client_of(server))
    assert len(server.requests) == 0  # was: sent, and $0.00003 spent against $0.00001
    assert info.value.explanation.startswith("Stopped: tenant acme has spent $0.00 of its $1.005e-05 daily")


def test_an_unpriced_model_under_a_tenant_dollar_limit_follows_the_unpriced_policy(
    app: Any, server: LLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``BUDGETSPAN_UNPRICED=refuse`` with the only dollar limit on the tenant: the calls of a model
    with no price cannot be counted there (was: sent, the tenant's dollars never moved)."""
    monkeypatch.setenv("BUDGETSPAN_UNPRICED", "refuse")
    bs_config.set_config(None)  # read again, with the policy
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_cost_usd=1.0), window="day")
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("chat", tenant="acme"):
            _ask(client_of(server), model="house-model-7b")
    assert info.value.reason == "unpriced_model"
    assert len(server.requests) == 0


def _runs(client: openai.OpenAI, attempts: int, **members: str) -> list[str]:
    """``attempts`` runs of one call each in the scopes ``members``: 'ok' or the explanation."""
    said = []
    for _ in range(attempts):
        try:
            with budgetspan.run("chat", **members):
                _ask(client)
            said.append("ok")
        except budgetspan.BudgetExhausted as e:
            said.append(e.explanation)
    return said


def test_a_lookup_that_fails_for_one_scope_leaves_the_other_budgets_in_force(
    app: Any, server: LLMServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The plans database is down: the lookup raises. The tenant's budget set in code, and the
    kind's default for the scope looked up, still hold (was: every scope of the run dropped, 4 of
    4 sent under 2); the failure is logged as an internal error."""
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_model_calls=2), window="day")
    budgetspan.set_scope_budget("user", "default", budgetspan.Budget(max_model_calls=3), window="day")

    def plans(kind: str, name: str) -> budgetspan.Budget | None:
        if kind == "user":
            raise ConnectionError("plans database unreachable")
        return None

    budgetspan.set_scope_lookup(plans)
    said = _runs(client_of(server), 4, tenant="acme", user="ann")
    assert said[:2] == ["ok", "ok"] and len(server.requests) == 2
    assert said[2] == "Stopped: tenant acme has made 2 of its 2 daily model calls; resets at 00:00 UTC."
    assert _runs(client_of(server), 4, tenant="globex", user="bob").count("ok") == 3  # the users' default
    assert "internal error in scope budgets: ConnectionError" in caplog.text


def test_a_lookup_answer_of_the_wrong_type_is_an_internal_error_not_a_lost_budget(
    app: Any, server: LLMServer
) -> None:
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_model_calls=1), window="day")
    budgetspan.set_scope_lookup(lambda kind, name: {"max_model_calls": 5} if kind == "user" else None)
    assert _runs(client_of(server), 3, tenant="acme", user="ann").count("ok") == 1


def test_a_stream_read_after_its_run_ended_is_spent_in_the_tenant_window(app: Any, server: LLMServer) -> None:
    """A web handler returns the stream from inside ``budgetspan.run`` and the framework reads it
    after the block: the run has closed, but the tenant's day has not. The stream's cost lands in
    the tenant's window (was: lost, the tenant's spend 0 and its worst case held all day)."""
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_cost_usd=1.0), window="day")
    client = client_of(server)
    with budgetspan.run("chat", tenant="acme"):
        stream = _ask(client, stream=True)
    for _ in stream:
        pass
    assert budgetspan.spend(tenant="acme").cost_usd == pytest.approx(CALL_USD)
    assert budgetspan.spend(tenant="acme").model_calls == 1


def test_work_that_outlives_its_run_is_still_held_to_the_tenant_budget(app: Any, server: LLMServer) -> None:
    """A thread started in a run (it carries the run) goes on calling after the block ended: no
    run limit applies any more, but the tenant's day is not over (was: 5 of 5 sent under the
    tenant's 2, and none counted in its window)."""
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_model_calls=2), window="day")
    client = client_of(server)
    go, said = threading.Event(), []

    def later() -> None:
        go.wait(10)
        for _ in range(5):
            try:
                _ask(client)
                said.append("ok")
            except budgetspan.BudgetExhausted as e:
                said.append(e.explanation)

    with budgetspan.run("chat", tenant="acme"):
        carried = contextvars.copy_context()  # what budgetspan's thread carrying does
        worker = threading.Thread(target=carried.run, args=(later,))
        worker.start()
    go.set()
    worker.join(30)
    assert len(server.requests) == 2 and said.count("ok") == 2
    assert said[2] == "Stopped: tenant acme has made 2 of its 2 daily model calls; resets at 00:00 UTC."
    assert budgetspan.spend(tenant="acme").model_calls == 2


def test_a_rolling_window_says_when_it_resets_from_its_first_call(app: Any, server: LLMServer) -> None:
    """A rolling hour starts at its first call (02:00): refused at 02:30, the explanation must not
    say 03:30 (was: the hour counted from the refused run's start)."""
    clock = app
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_model_calls=2), window="rolling-hour")
    client = client_of(server)
    assert _runs(client, 2, tenant="acme") == ["ok", "ok"]
    clock[0] += 1800
    [said] = _runs(client, 1, tenant="acme")
    assert said.startswith("Stopped: tenant acme has made 2 of its 2 rolling 1-hour model calls; resets ")
    assert "03:30" not in said
    if isinstance(context.get_ledger(), budgetspan.RedisLedger):  # its window's start stays on Redis
        assert said.endswith("; resets 1 h after the window's first call.")
    else:
        assert said.endswith("; resets at 03:00 UTC.")


def test_the_repeated_hour_at_the_end_of_summer_time_is_a_window_of_its_own(
    app: Any, server: LLMServer
) -> None:
    """2026-10-25 in Paris: 02:00-03:00 happens twice (CEST, then CET). Each is its own hourly
    window (was: one record for both, the second hour refused from its start)."""
    clock = app
    clock[0] = 1_792_888_200.0  # 2026-10-25 00:30 UTC: 02:30 CEST
    budgetspan.set_scope_budget(
        "tenant", "acme", budgetspan.Budget(max_model_calls=2), window="hour", tz="Europe/Paris"
    )
    client = client_of(server)
    assert _runs(client, 3, tenant="acme")[:2] == ["ok", "ok"]
    clock[0] += 3600  # 01:30 UTC: 02:30 CET, the second 02:00 hour
    assert _runs(client, 1, tenant="acme") == ["ok"]
    assert budgetspan.spend(tenant="acme").model_calls == 1
    assert budgetspan.spend(tenant="acme", at=clock[0] - 3600).model_calls == 2


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        # a limit a scope does not have is refused, not silently ignored
        ("[tenants.acme]\nmax_wall_clock_s = 3600\n", "max_wall_clock_s applies to runs only"),
        # a misspelt section: the message shows where scope budgets go
        ("[tenant.acme]\nmax_cost_usd = 5\n", "[tenants.NAME]"),
        # a misspelt key: the message lists a scope table's keys, not a run's
        ("[tenants.acme]\nmax_cost = 5\n", "window (hour, day, month"),
        # review 7: the workflow's form on a tenant (was 'window "{'max-cost-usd':-5}": expected
        # one of hour, ...'); an empty name (was accepted); "rolling" alone
        ("[tenants.acme.window]\nmax_cost_usd = 5\n", "[tenants.acme]: window is a value here"),
        ('[tenants.""]\nmax_cost_usd = 5\n', "an empty name names no scope"),
        ('[users.default]\nmax_cost_usd = 5\nwindow = "rolling"\n', "rolling-hour, rolling-day"),
    ],
)
def test_a_scope_table_mistake_is_a_config_error_that_says_what_a_scope_takes(
    tmp_path: Any, toml: str, says: str
) -> None:
    path = tmp_path / "budgetspan.toml"
    path.write_text(toml)
    with pytest.raises(bs_config.ConfigError) as info:
        bs_config.load_config({"BUDGETSPAN_CONFIG": str(path)})
    assert says in str(info.value)


def test_a_run_only_limit_on_a_scope_budget_in_code_is_refused() -> None:
    with pytest.raises(ValueError, match="max_wall_clock_s applies to runs only"):
        budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_wall_clock_s=3600), window="day")
    assert REGISTRY.find("tenant", "acme") is None


def test_a_scope_refusal_by_the_next_calls_worst_case_says_so(app: Any, server: LLMServer) -> None:
    """The tenant has spent less than its limit; the next call's worst case does not fit. The
    explanation must say so, not read 'has spent $0.00 of its ...' alone."""
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_cost_usd=CALL_USD / 3), window="day")
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("chat", tenant="acme"):
            _ask(client_of(server))
    said = info.value.explanation
    assert re.search(
        r"has spent \$0\.00 of its \$1\.005e-05 daily budget \(the next call could have cost up to \$0\.0000[1-9]\d more\)",
        said,
    ), said


@pytest.mark.parametrize("decision", ["extend", "stop"])
def test_a_scope_refusal_is_not_put_to_the_runs_on_limit_policy(
    app: Any, server: LLMServer, decision: str
) -> None:
    """``on_limit`` decides about the run's own limits: an ``Extend`` cannot raise a tenant's. A
    scope's refusal stops the call as without a policy and names the scope (was: the policy asked
    3 times, its Extend raising the run's limits for nothing, and with ``Stop()`` the explanation
    read 'Stopped after 2 of 2 model calls' for a run without that limit)."""
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_model_calls=2), window="day")
    asked: list[str] = []

    def supervisor(reached: budgetspan.LimitReached) -> budgetspan.Decision:
        asked.append(reached.reason)
        return budgetspan.Extend(max_model_calls=5) if decision == "extend" else budgetspan.Stop()

    client = client_of(server)
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("chat", tenant="acme", on_limit=supervisor):
            for _ in range(4):
                _ask(client)
    assert asked == [] and len(server.requests) == 2
    assert info.value.scope == "tenant acme"
    assert info.value.explanation == (
        "Stopped: tenant acme has made 2 of its 2 daily model calls; resets at 00:00 UTC."
    )


def test_a_numeric_id_is_the_same_scope_as_its_text(app: Any, server: LLMServer) -> None:
    """Ids from a database are often ints: ``tenant=123`` is the tenant the config's
    ``[tenants.123]`` (a TOML key is text) or ``set_scope_budget("tenant", "123", ...)`` names,
    and the other way round (was: no budget found, 4 of 4 sent under 2, spend 0)."""
    budgetspan.set_scope_budget("tenant", "123", budgetspan.Budget(max_model_calls=2), window="day")
    budgetspan.set_scope_budget("user", 7, budgetspan.Budget(max_model_calls=3), window="day")  # type: ignore[arg-type]
    client = client_of(server)
    assert _runs(client, 4, tenant=123).count("ok") == 2  # type: ignore[arg-type]
    assert budgetspan.spend(tenant=123).model_calls == 2  # type: ignore[arg-type]
    assert _runs(client, 4, user="7").count("ok") == 3
    assert budgetspan.spend(user="7").model_calls == 3


def test_a_nested_runs_cost_counts_once_in_the_tenant_cost_metric(app: Any, server: LLMServer) -> None:
    """``budgetspan_tenant_cost_usd_total``: a call of a nested run spends from its parent too,
    and the parent's cost includes it (was: counted at both runs' ends, twice)."""
    from prometheus_client import CollectorRegistry

    from budgetspan import events
    from budgetspan.processors.scope_metrics import ScopeMetrics

    server.settings.openai_usage = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}
    registry = CollectorRegistry()
    metrics = ScopeMetrics(registry, tenants="globex")
    events.add_listener(metrics)
    try:
        with budgetspan.run("triage", tenant="globex"), budgetspan.run("lookup"):
            _ask(client_of(server))
        with budgetspan.run("triage", tenant="globex"), budgetspan.run("bill", tenant="initech"):
            _ask(client_of(server))  # spent in globex's run and initech's: one call for each tenant
    finally:
        events.remove_listener(metrics)
    call = 1000 * 0.15e-6 + 50 * 0.60e-6
    got = registry.get_sample_value(A.M_TENANT_COST + "_total", {"tenant": "globex"})
    assert got == pytest.approx(2 * call)  # was 3 calls' worth
    assert registry.get_sample_value(A.M_TENANT_COST + "_total", {"tenant": "other"}) == pytest.approx(call)


def test_an_empty_scope_name_is_no_scope_and_says_so(app: Any, server: LLMServer) -> None:
    """``tenant=""`` (a missing header) is no tenant: a budget set for the empty name would never
    apply, so setting one is an error (was: accepted and never applied)."""
    with pytest.raises(ValueError, match="empty name"):
        budgetspan.set_scope_budget("tenant", "", budgetspan.Budget(max_model_calls=1), window="day")
    with pytest.raises(ValueError, match="empty name"):
        budgetspan.spend(tenant="")


def test_a_run_refusal_by_the_next_calls_worst_case_says_so(app: Any, server: LLMServer) -> None:
    """Two streams in flight hold 100 of the run's 120 output tokens; the third is refused by its
    worst case. The explanation must say so, not 'Stopped at 0 of 120 output tokens' alone."""
    client = client_of(server)
    streams = []
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("chat", max_output_tokens=120):
            for _ in range(3):
                streams.append(_ask(client, stream=True))
    for stream in streams:
        stream.close()
    assert len(server.requests) == 2
    assert "the next call could have used up to 50 tokens more" in info.value.explanation


def test_an_async_on_warn_callback_runs(app: Any, server: LLMServer) -> None:
    """``on_warn=async def ...`` in an async app (and from sync code): the coroutine is run, not
    dropped unawaited (was: never ran, only a RuntimeWarning)."""
    heard: list[tuple[str, float]] = []

    async def notify(warning: budgetspan.ScopeWarning) -> None:
        await asyncio.sleep(0)
        heard.append((warning.name, warning.used))

    for name in ("sync-co", "async-co"):
        budgetspan.set_scope_budget(
            "tenant", name, budgetspan.Budget(max_model_calls=4), window="day", warn_at=0.5, on_warn=notify
        )
    assert _runs(client_of(server), 3, tenant="sync-co") == ["ok"] * 3
    aclient = openai.AsyncOpenAI(api_key="t", base_url=server.base_url + "/v1", max_retries=0)

    async def main() -> None:
        for _ in range(3):
            async with budgetspan.run("chat", tenant="async-co"):
                await aclient.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=50
                )
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert heard == [("sync-co", 2), ("async-co", 2)]


def test_a_window_without_a_limit_counts_every_tenants_spend_and_refuses_nothing(
    app: Any, server: LLMServer
) -> None:
    """``[tenants.default]`` with a window alone, the README's way to ``spend()`` any tenant: it was
    no scope at all, and ``spend()`` answered 0 calls and $0 for tenants that had spent."""
    budgetspan.set_scope_budget("tenant", "default", budgetspan.Budget(), window="day")
    client = client_of(server)
    for tenant, calls in (("zz", 3), ("yy", 12)):
        with budgetspan.run("chat", tenant=tenant):
            for _ in range(calls):
                _ask(client)
    assert len(server.requests) == 15  # nothing refused
    assert budgetspan.spend(tenant="zz").model_calls == 3
    yy = budgetspan.spend(tenant="yy", window="day")
    assert (yy.model_calls, yy.output_tokens) == (12, 600)
    assert yy.cost_usd == pytest.approx(12 * CALL_USD)
