"""Budgets above the run tried at their edges (review 7), through the real ``openai`` SDK against a
local HTTP server, with the in-memory ledger and a real ``redis-server``: a rolling window that
rolls over with calls in flight, what ``budgetspan.spend`` answers for a window it does not keep,
threads and tasks of one tenant at its limit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
from typing import Any

import openai
import pytest

import budgetspan
from budgetspan import config as bs_config
from budgetspan.runs import context
from tests.accounting.redis_server import redis
from tests.instrumentation.llm_server import LLMServer
from tests.reliability.scoped_app import T0, client_of, local_server, on_either_ledger

MODEL = "gpt-4o-mini"  # $0.15 / $0.60 per million input / output tokens
#: The server reports far less than each call's worst case (max_tokens=50): what a call holds
#: while in flight is mostly given back when it settles.
USAGE = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
CALL_USD = 1 * 0.15e-6 + 2 * 0.60e-6
#: What one such call holds while in flight: its prompt's estimate (16 tokens) and max_tokens.
WORST_USD = 16 * 0.15e-6 + 50 * 0.60e-6

server = local_server
app = on_either_ledger(USAGE)


def _ask(client: openai.OpenAI, **kw: Any) -> Any:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=50, **kw
    )


def _open_streams(client: openai.OpenAI, at_most: int) -> tuple[list[Any], str | None]:
    """Streams opened (calls in flight, each holding its worst case) until one is refused."""
    streams: list[Any] = []
    for _ in range(at_most):
        try:
            streams.append(_ask(client, stream=True))
        except budgetspan.BudgetExhausted as e:
            return streams, e.explanation
    return streams, None


class _Holding:
    """A run (in a thread of its own) with ``n`` streams opened and not read until ``read()``."""

    def __init__(self, client: openai.OpenAI, n: int) -> None:
        self.opened = 0
        self._ready, self._go = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(client, n), daemon=True)
        self._thread.start()
        assert self._ready.wait(30)

    def _run(self, client: openai.OpenAI, n: int) -> None:
        with budgetspan.run("chat", tenant="acme", suppress_exhausted=True):
            streams, _ = _open_streams(client, n)
            self.opened = len(streams)
            self._ready.set()
            self._go.wait(30)
            _read(streams)

    def read(self) -> None:
        self._go.set()
        self._thread.join(30)


def _in_one_run(client: openai.OpenAI, at_most: int) -> tuple[int, str | None]:
    """How many streams one run of the tenant gets in flight, and what refused the next."""
    with budgetspan.run("chat", tenant="acme", suppress_exhausted=True):
        streams, said = _open_streams(client, at_most)
        _read(streams)
    return len(streams), said and said.removeprefix("Stopped: tenant acme has ").split(" ")[0]


def _read(streams: list[Any]) -> None:
    for stream in streams:
        for _ in stream:
            pass


@pytest.mark.parametrize("window", ["rolling-hour", "hour"])
def test_calls_in_flight_when_a_window_rolls_over_settle_nothing_in_the_next_one(
    app: Any, server: LLMServer, request: pytest.FixtureRequest, window: str
) -> None:
    """Two streams hold their worst cases in the tenant's window; the window ends before they are
    read, and the next one has begun (a call made in it). Their settlement must not give back, in
    the new window, worst cases it never held: that let 4 streams be in flight in it where its
    dollars allow 2 (a rolling window's next record has the same key as the one before)."""
    clock = app
    budgetspan.set_scope_budget(
        "tenant", "acme", budgetspan.Budget(max_cost_usd=2.5 * WORST_USD), window=window
    )
    client = client_of(server)
    before = _Holding(client, 2)  # a run whose two streams are read after its window ended
    try:
        _roll_over(request, client, clock, window, before)
    finally:
        before.read()  # (idempotent: a failed assertion leaves no thread waiting)
    assert budgetspan.spend(tenant="acme").cost_usd == pytest.approx(2 * CALL_USD)
    if window == "hour":  # each window pays for the calls reserved in it (streams read late too)
        assert budgetspan.spend(tenant="acme", at=T0).cost_usd == pytest.approx(2 * CALL_USD)


def _roll_over(
    request: pytest.FixtureRequest, client: openai.OpenAI, clock: list[float], window: str, before: _Holding
) -> None:
    assert _in_one_run(client, 1) == (0, "spent")  # the window holds 2 worst cases at most
    clock[0] += 3600
    if window.startswith("rolling") and isinstance(context.get_ledger(), budgetspan.RedisLedger):
        # Redis expires a rolling window on its own clock (its ttl): the hour is up there too.
        redis.Redis.from_url(request.getfixturevalue("redis_url")).delete(
            "budgetspan:scope:tenant:acme:rolling"
        )
    after = _Holding(client, 2)  # the next window: two streams in flight, its 2 worst cases
    try:
        assert after.opened == 2
        before.read()  # the settlement of the window before: nothing to give back in this one
        assert _in_one_run(client, 2) == (0, "spent")  # was 2: 4 in flight where the limit allows 2
    finally:
        after.read()


def _spend_in(client: openai.OpenAI, calls: int, **members: str) -> None:
    with budgetspan.run("chat", **members):
        for _ in range(calls):
            _ask(client)


def test_spend_for_a_window_the_budget_does_not_keep_says_so_instead_of_zero(
    app: Any, server: LLMServer
) -> None:
    """acme's budget is monthly: what it spent today is not kept. Asking for its day answered
    $0.00 and 0 calls (it had made 3); asking for a Tokyo day answered the UTC day's figures."""
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_cost_usd=1.0), window="month")
    budgetspan.set_scope_budget("tenant", "globex", budgetspan.Budget(max_cost_usd=1.0), window="day")
    client = client_of(server)
    _spend_in(client, 3, tenant="acme")
    _spend_in(client, 2, tenant="globex")
    assert budgetspan.spend(tenant="acme").model_calls == 3
    assert budgetspan.spend(tenant="acme", window="month", tz="UTC").model_calls == 3
    with pytest.raises(ValueError, match=r"tenant acme: its budget's window is monthly \(UTC\)"):
        budgetspan.spend(tenant="acme", window="day")
    with pytest.raises(ValueError, match=r"tenant globex: its budget's window is daily \(UTC\)"):
        budgetspan.spend(tenant="globex", window="day", tz="Asia/Tokyo")  # 11:00 in Tokyo, same date
    with pytest.raises(ValueError, match="tenant globex"):
        budgetspan.spend(tenant="globex", window="rolling-day")
    assert budgetspan.spend(tenant="globex", window="day").model_calls == 2
    with pytest.raises(ValueError, match="initech has no budget"):  # nothing kept: not an answer of 0
        budgetspan.spend(tenant="initech", window="day")


def test_spend_at_a_past_time_of_a_rolling_window_says_so(app: Any, server: LLMServer) -> None:
    """A rolling window's record is the current one: ``at=`` yesterday answered today's figures."""
    budgetspan.set_scope_budget("user", "ann", budgetspan.Budget(max_model_calls=9), window="rolling-day")
    _spend_in(client_of(server), 2, user="ann")
    assert budgetspan.spend(user="ann").model_calls == 2
    with pytest.raises(ValueError, match="rolling"):
        budgetspan.spend(user="ann", at=T0 - 86_400)


def test_yesterdays_spend_is_readable_all_of_today(
    app: Any, server: LLMServer, request: pytest.FixtureRequest
) -> None:
    """The README's ``budgetspan.spend(..., at=yesterday_ts)``: at 10:00 the next day it
    answered 0 calls (the window had 2), on both ledgers (Redis: the hash expired 01:00)."""
    clock = app
    budgetspan.set_scope_budget("user", "ann", budgetspan.Budget(max_model_calls=9), window="day")
    _spend_in(client_of(server), 2, user="ann")
    if isinstance(context.get_ledger(), budgetspan.RedisLedger):  # Redis expires on its own clock
        ttl = redis.Redis.from_url(request.getfixturevalue("redis_url")).ttl(
            "budgetspan:scope:user:ann:2025-12-05"
        )
        assert ttl >= (22 + 24) * 3600  # to the end of the next day at least (was 23 h)
        return
    clock[0] += 22 * 3600 + 10 * 3600  # the next day, 10:00 UTC
    assert budgetspan.spend(user="ann").model_calls == 0
    assert budgetspan.spend(user="ann", at=T0).model_calls == 2


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ('warn_at = "80%"', "warn_at='80%' is not a number"),
        ("warn_at = [0.8]", "warn_at=[0.8] is not a number"),
        ("warn_at = true", "warn_at=True is not a number"),  # was taken as 1.0
        ("warn_at = 80", "warn_at must be a share in (0, 1], got 80"),
    ],
)
def test_a_mistaken_warn_at_in_the_config_file_names_the_key(tmp_path: Any, line: str, said: str) -> None:
    path = tmp_path / "budgets.toml"
    path.write_text(f'[users.default]\nmax_total_tokens = 2000000\nwindow = "month"\n{line}\n')
    with pytest.raises(bs_config.ConfigError) as info:
        bs_config.load_config({"BUDGETSPAN_CONFIG": str(path)})
    assert "[users.default]: " + said in str(info.value)


def test_a_thread_pool_of_one_tenants_runs_at_its_limit_sends_not_one_call_over(
    app: Any, server: LLMServer
) -> None:
    """32 runs at once of one tenant (8 threads), 2 calls each, under the tenant's 20 calls and
    its dollars for 12 worst cases in flight: 20 calls reach the server, the dollars spent stay
    within the limit (each call spends less than its worst case: the documented bound is 0)."""
    budgetspan.set_scope_budget(
        "tenant", "acme", budgetspan.Budget(max_model_calls=20, max_cost_usd=12 * WORST_USD), window="day"
    )
    client = client_of(server)

    def one(_: int) -> int:
        made = 0
        with budgetspan.run("chat", tenant="acme", suppress_exhausted=True):
            for _ in range(2):
                _ask(client)
                made += 1
        return made

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        made = sum(pool.map(one, range(32)))
    assert made == len(server.requests) == 20
    spent = budgetspan.spend(tenant="acme")
    assert spent.model_calls == 20 and spent.cost_usd == pytest.approx(20 * CALL_USD)


def test_asyncio_gather_of_one_tenants_runs_at_its_limit_sends_not_one_call_over(
    app: Any, server: LLMServer
) -> None:
    """50 runs gathered on one loop, streams held open across awaits: the tenant's dollars allow
    6 worst cases in flight at once and 15 calls in all."""
    budgetspan.set_scope_budget(
        "tenant", "acme", budgetspan.Budget(max_model_calls=15, max_cost_usd=6.5 * WORST_USD), window="day"
    )
    aclient = openai.AsyncOpenAI(api_key="t", base_url=server.base_url + "/v1", max_retries=0)
    in_flight, most = [0], [0]

    async def one() -> int:
        async with budgetspan.run("chat", tenant="acme", suppress_exhausted=True):
            stream = await aclient.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=50, stream=True
            )
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            await asyncio.sleep(0.01)
            async for _ in stream:
                pass
            in_flight[0] -= 1
            return 1
        return 0

    async def main() -> int:
        return sum(await asyncio.gather(*(one() for _ in range(50))))

    made = asyncio.run(main())
    assert made == len(server.requests) <= 15
    assert most[0] <= 6
    spent = budgetspan.spend(tenant="acme")
    assert spent.model_calls == made and spent.cost_usd == pytest.approx(made * CALL_USD)


def _process(redis_url: str, base_url: str, out: Any) -> None:
    """One of 4 processes: its own ledger client and budgets, the same Redis; 10 runs of user ann
    in conversation s-1 (the warning at 50% of ann's 40 calls; the conversation's 6 calls)."""
    budgetspan.set_ledger(budgetspan.RedisLedger(redis.Redis.from_url(redis_url)))
    warned: list[Any] = []
    budgetspan.set_scope_budget(
        "user", "ann", budgetspan.Budget(max_model_calls=40), window="day", warn_at=0.5, on_warn=warned.append
    )
    budgetspan.set_scope_budget("conversation", "s-1", budgetspan.Budget(max_model_calls=6))
    from budgetspan.instrumentation.openai import OpenAIInstrumentor

    OpenAIInstrumentor().instrument()
    client = openai.OpenAI(api_key="t", base_url=base_url + "/v1", max_retries=0)
    granted = [0, 0]
    for i in range(10):
        members = {"conversation_id": "s-1"} if i % 2 else {}
        try:
            with budgetspan.run("chat", user="ann", **members):
                _ask(client)
            granted[i % 2] += 1
        except budgetspan.BudgetExhausted:
            pass
    out.put((granted, [(w.limit, w.used) for w in warned]))


@pytest.mark.usefixtures("app")
def test_four_processes_warn_once_and_share_one_conversation(
    server: LLMServer, request: pytest.FixtureRequest
) -> None:
    if not isinstance(context.get_ledger(), budgetspan.RedisLedger):
        pytest.skip("processes share a budget on Redis only")
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    url = request.getfixturevalue("redis_url")
    procs = [ctx.Process(target=_process, args=(url, server.base_url, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(10)
    assert sum(g[1] for g, _ in results) == 6  # the conversation's calls, across the processes
    assert sum(g[0] for g, _ in results) == 20  # the runs outside it: all granted
    warnings = [w for _, said in results for w in said]
    assert len(warnings) == 1 and warnings[0][0] == "max_model_calls" and warnings[0][1] >= 20


def test_an_async_lookup_is_refused_when_set_not_dropped_at_each_run(
    app: Any, server: LLMServer, caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    """``async def plans(kind, name)``, natural in an async app, was accepted; each run then got a
    coroutine (never awaited), logged a TypeError and ran without the tenant's budget: 3 of 3 sent
    under the plan's 1."""

    async def plans(kind: str, name: str) -> budgetspan.Budget | None:
        return budgetspan.Budget(max_model_calls=1) if kind == "tenant" else None

    with pytest.raises(TypeError, match="async"):
        budgetspan.set_scope_lookup(plans)
    coroutine_in_disguise: Any = lambda kind, name: plans(kind, name)  # noqa: E731
    budgetspan.set_scope_lookup(coroutine_in_disguise)
    budgetspan.set_scope_budget("tenant", "default", budgetspan.Budget(max_model_calls=2))
    said = [_in_one_run(client_of(server), 1)[0] for _ in range(3)]
    assert said == [1, 1, 0]  # the kind's default still holds
    assert "internal error in scope budgets: TypeError" in caplog.text
    gc.collect()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


@pytest.mark.parametrize(
    ("start", "tz", "window", "resets"),
    [
        ("2028-02-29T23:59:59+00:00", "UTC", "month", "resets at 00:00 UTC"),  # a leap year's end
        ("2027-01-31T23:59:59+00:00", "UTC", "month", "resets at 00:00 UTC"),
        ("2027-12-31T23:59:59+14:00", "Pacific/Kiritimati", "day", "resets at 00:00 Pacific/Kiritimati"),
        ("2027-12-31T23:59:59-12:00", "Etc/GMT+12", "day", "resets at 00:00 Etc/GMT+12"),
        ("2027-06-30T23:59:59+05:45", "Asia/Kathmandu", "day", "resets at 00:00 Asia/Kathmandu"),
        ("2027-03-28T00:59:59+05:30", "Asia/Kolkata", "hour", "resets at 01:00 Asia/Kolkata"),
        ("2027-03-27T23:59:59+01:00", "Europe/Paris", "day", "resets at 00:00 Europe/Paris"),  # 23 h
    ],
)
def test_a_window_ends_at_its_calendar_edge(
    app: Any, server: LLMServer, start: str, tz: str, window: str, resets: str
) -> None:
    """The last second of a window refuses, the next one grants, the old window stays readable."""
    from datetime import datetime

    clock = app
    clock[0] = datetime.fromisoformat(start).timestamp()
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_model_calls=1), window=window, tz=tz)
    client = client_of(server)
    assert _in_one_run(client, 1) == (1, None)
    assert _in_one_run(client, 1) == (0, "made")
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("chat", tenant="acme"):
            _ask(client)
    assert info.value.explanation.endswith(f"; {resets}.")
    last = clock[0]
    clock[0] += 1
    assert _in_one_run(client, 1) == (1, None)
    assert budgetspan.spend(tenant="acme").model_calls == 1
    assert budgetspan.spend(tenant="acme", at=last).model_calls == 1
    assert len(server.requests) == 2


def _spender(redis_url: str, base_url: str, calls: int) -> None:
    """An app process: 3 calls of tenant acme on Redis, then it exits (a restart or a deploy)."""
    budgetspan.set_ledger(budgetspan.RedisLedger(redis.Redis.from_url(redis_url)))
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_cost_usd=1.0), window="day")
    from budgetspan.instrumentation.openai import OpenAIInstrumentor

    OpenAIInstrumentor().instrument()
    with budgetspan.run("chat", tenant="acme"):
        for _ in range(calls):
            _ask(openai.OpenAI(api_key="t", base_url=base_url + "/v1", max_retries=0))


@pytest.mark.usefixtures("app")
def test_spend_after_the_app_process_restarted_is_what_it_spent(
    server: LLMServer, request: pytest.FixtureRequest
) -> None:
    if not isinstance(context.get_ledger(), budgetspan.RedisLedger):
        pytest.skip("an in-memory ledger ends with its process")
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    url = request.getfixturevalue("redis_url")
    for _ in range(2):  # the app, then the app restarted
        p = ctx.Process(target=_spender, args=(url, server.base_url, 3))
        p.start()
        p.join(60)
        assert p.exitcode == 0
    # (its clock is the wall clock: ask for the window it is in now)
    import time

    assert budgetspan.spend(tenant="acme", window="day", at=time.time()).model_calls == 6
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_cost_usd=1.0), window="day")
    got = budgetspan.spend(tenant="acme", at=time.time())
    assert got.model_calls == 6 and got.cost_usd == pytest.approx(6 * CALL_USD)


def test_a_workflow_window_and_the_users_default_from_the_config_file(
    app: Any, server: LLMServer, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a user writes them: the workflow's per-run limit and its hourly window side by side, and
    every user's monthly tokens (USAGE: 3 tokens a call, its worst case 66)."""
    path = tmp_path / "budgets.toml"
    path.write_text(
        "[workflows.triage]\nmax_model_calls = 2\n\n"
        '[workflows.triage.window]\nmax_model_calls = 3\nwindow = "hour"\ntz = "Asia/Kolkata"\n\n'
        '[users.default]\nmax_total_tokens = 70\nwindow = "month"\n'
    )
    monkeypatch.setenv("BUDGETSPAN_CONFIG", str(path))
    bs_config.set_config(None)
    client = client_of(server)
    said = []
    for user in ("ann", "bob", "cy"):
        try:
            with budgetspan.run("triage", user=user):
                _ask(client)
                _ask(client)
                _ask(client)  # the run's own limit: 2
        except budgetspan.BudgetExhausted as e:
            said.append(e.explanation)
    assert said[0].startswith("Stopped after 2 of 2 model calls")
    assert (
        said[1]
        == "Stopped: workflow triage has made 3 of its 3 hourly model calls; resets at 08:00 Asia/Kolkata."
    )
    assert len(server.requests) == 3
    assert budgetspan.spend(workflow="triage").model_calls == 3
    assert budgetspan.spend(user="ann").total_tokens == 6
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("other", user="ann"):
            _ask(client)  # its worst case (16 + 50 tokens) passes ann's 70
    assert info.value.explanation.startswith("Stopped: user ann has used 6 of its 70 monthly total tokens")


@pytest.mark.parametrize("limit", ["max_model_calls", "max_cost_usd", "max_total_tokens"])
def test_a_tenant_blocked_with_a_zero_limit_sends_nothing(app: Any, server: LLMServer, limit: str) -> None:
    """A suspended customer's plan: 0 calls, $0 or 0 tokens a day; not taken for 'no limit'."""
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(**{limit: 0}), window="day", warn_at=0.5)
    assert _in_one_run(client_of(server), 1)[0] == 0
    assert len(server.requests) == 0


def test_the_tenant_cost_metric_counts_a_stream_read_after_its_run(app: Any, server: LLMServer) -> None:
    """A web handler returns the stream from its run; the framework reads it after the block. The
    tenant paid for it (``spend``); ``budgetspan_tenant_cost_usd_total`` said 0 (counted at run end)."""
    from prometheus_client import CollectorRegistry

    from budgetspan import events
    from budgetspan.processors.scope_metrics import ScopeMetrics

    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_cost_usd=1.0), window="day")
    registry = CollectorRegistry()
    metrics = ScopeMetrics(registry, "acme")
    events.add_listener(metrics)
    try:
        client = client_of(server)
        with budgetspan.run("chat", tenant="acme"):
            stream = _ask(client, stream=True, stream_options={"include_usage": True})
        _read([stream])
        with budgetspan.run("chat", tenant="acme"):
            with budgetspan.run("lookup"):  # a nested run's late stream: its parent's figure has it
                inner = _ask(client, stream=True, stream_options={"include_usage": True})
            _read([inner])
    finally:
        events.remove_listener(metrics)
    counted = registry.get_sample_value("budgetspan_tenant_cost_usd_total", {"tenant": "acme"})
    assert budgetspan.spend(tenant="acme").cost_usd == pytest.approx(2 * CALL_USD)
    assert counted == pytest.approx(2 * CALL_USD)  # was one call: the first stream left out


def test_a_default_set_in_code_comes_before_the_config_files_default(
    app: Any, server: LLMServer, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Code before config, for the kind's default too: every tenant held to the 1 call set in code
    (was: the config file's default of 3 won, 3 of 3 sent); a tenant's own table still comes first."""
    path = tmp_path / "budgets.toml"
    path.write_text("[tenants.default]\nmax_model_calls = 3\n\n[tenants.globex]\nmax_model_calls = 2\n")
    monkeypatch.setenv("BUDGETSPAN_CONFIG", str(path))
    bs_config.set_config(None)
    budgetspan.set_scope_budget("tenant", "default", budgetspan.Budget(max_model_calls=1), window="day")
    client = client_of(server)
    assert [_in_one_run(client, 1)[0] for _ in range(3)] == [1, 0, 0]  # acme: the default set in code
    outcomes = []
    for _ in range(3):
        with budgetspan.run("chat", tenant="globex", suppress_exhausted=True) as run:
            _ask(client)
        outcomes.append(run.outcome.value)
    assert outcomes == ["success", "success", "budget_exhausted"]  # its own table: 2


def test_top_n_tenants_in_capitals_is_not_a_tenant_named_so() -> None:
    """``BUDGETSPAN_METRICS_TENANTS=TOP:5`` was an allow-list of one tenant named 'TOP:5'."""
    from budgetspan.processors.scope_metrics import TenantLabels

    assert TenantLabels("TOP:5").top == 5
    with pytest.raises(bs_config.ConfigError):
        bs_config.load_config({"BUDGETSPAN_METRICS_TENANTS": "Top:x"})


def test_every_refusal_of_a_run_stopped_by_a_scope_says_what_the_scope_spent(
    app: Any, server: LLMServer
) -> None:
    """An agent loop catches the refusal and tries again: the run stays stopped, and each refusal
    must say what the tenant made (was: 'has made 0 of its 2 daily model calls' from the second on)."""
    budgetspan.set_scope_budget("tenant", "acme", budgetspan.Budget(max_model_calls=2), window="day")
    client = client_of(server)
    said = []
    with budgetspan.run("chat", tenant="acme", suppress_exhausted=True):
        for _ in range(4):
            try:
                _ask(client)
            except budgetspan.BudgetExhausted as e:
                said.append(e.explanation)
    expected = "Stopped: tenant acme has made 2 of its 2 daily model calls; resets at 00:00 UTC."
    assert said == [expected, expected]
