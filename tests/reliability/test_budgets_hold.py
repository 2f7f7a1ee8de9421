"""Where budgets hold: one test per execution pattern of issue 13's table, through the real
``openai`` SDK (over a recording transport: every request that reached the wire is counted).

Each test asserts the requests sent and the run's usage; a budget that silently does not hold
fails here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from opentelemetry import context as otel_context

import budgetspan
from budgetspan import attributes as A
from budgetspan import config as bs_config
from budgetspan.accounting.pricing import set_default_resolver
from budgetspan.instrumentation.openai import OpenAIInstrumentor
from budgetspan.instrumentation.threads import ThreadsInstrumentor
from tests.reliability._support import chat_body
from tests.replay import Recorder, chat_chunks, json_response, openai_sse, sse_response

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def wire(lean: Any) -> Iterator[Recorder]:
    """OpenAI and thread instrumentation on; a transport answering 120/30-token completions."""
    OpenAIInstrumentor().instrument()
    ThreadsInstrumentor().instrument()
    rec = Recorder(json_response(chat_body()))
    try:
        yield rec
    finally:
        OpenAIInstrumentor().uninstrument()
        ThreadsInstrumentor().uninstrument()


def client(rec: Recorder, base_url: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(api_key="t", http_client=rec.sync(), max_retries=0, base_url=base_url)


def aclient(rec: Recorder) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="t", http_client=rec.asynchronous(), max_retries=0)


def chat(c: openai.OpenAI, **kw: Any) -> Any:
    kw.setdefault("max_tokens", 50)
    kw.setdefault("model", MODEL)
    return c.chat.completions.create(messages=MESSAGES, **kw)


def attempts(n: int, fn: Any) -> tuple[int, int]:
    """Call ``fn`` n times; (calls that went through, calls refused)."""
    ok = refused = 0
    for _ in range(n):
        try:
            fn()
            ok += 1
        except budgetspan.BudgetExhausted:
            refused += 1
    return ok, refused


# --- the run follows the work --------------------------------------------------------------------


def _counted_tool() -> tuple[Any, list[int]]:
    ran: list[int] = []

    @budgetspan.tool
    def lookup(i: int) -> int:
        ran.append(i)
        return i

    return lookup, ran


@pytest.mark.parametrize("pattern", ["submit", "map", "thread", "run_in_executor", "to_thread"])
def test_tools_in_threads_and_executors_spend_from_the_run(wire: Recorder, pattern: str) -> None:
    lookup, ran = _counted_tool()
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            lookup(i)
        except budgetspan.BudgetExhausted as e:
            errors.append(e)

    with budgetspan.run("threads", max_tool_calls=2, suppress_exhausted=True) as run:
        if pattern == "submit":
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                for f in [pool.submit(guarded, i) for i in range(6)]:
                    f.result()
        elif pattern == "map":
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                list(pool.map(guarded, range(6)))
        elif pattern == "thread":
            threads = [threading.Thread(target=guarded, args=(i,)) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:

            async def main() -> None:
                loop = asyncio.get_running_loop()
                for i in range(6):
                    if pattern == "run_in_executor":
                        await loop.run_in_executor(None, guarded, i)
                    else:
                        await asyncio.to_thread(guarded, i)

            asyncio.run(main())
    assert len(ran) == 2 and len(errors) == 4
    assert run.usage.tool_calls == 2 and run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED


@pytest.mark.parametrize("pattern", ["map", "starmap", "apply_async", "imap_unordered"])
def test_tools_in_a_thread_pool_made_before_the_run_spend_from_it(wire: Recorder, pattern: str) -> None:
    """``multiprocessing.pool.ThreadPool`` starts its workers when it is made (often at import,
    long before the run): each task must carry the run it was given in (review10; was: 6 of 6
    bodies ran under ``max_tool_calls=2``, the run saw 0 tool calls)."""
    from multiprocessing.pool import ThreadPool

    lookup, ran = _counted_tool()

    def guarded(i: int) -> bool:
        try:
            lookup(i)
            return True
        except budgetspan.BudgetExhausted:
            return False

    with ThreadPool(3) as pool:
        pool.map(abs, range(3))  # the workers are up before the run
        with budgetspan.run("pool", max_tool_calls=2, suppress_exhausted=True) as run:
            if pattern == "map":
                done = pool.map(guarded, range(6))
            elif pattern == "starmap":
                done = pool.starmap(guarded, [(i,) for i in range(6)])
            elif pattern == "apply_async":
                done = [r.get() for r in [pool.apply_async(guarded, (i,)) for i in range(6)]]
            else:
                done = list(pool.imap_unordered(guarded, range(6)))
    assert len(ran) == 2 and sorted(done) == [False] * 4 + [True] * 2
    assert run.usage.tool_calls == 2 and run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED


def test_a_process_pool_is_left_alone(wire: Recorder) -> None:
    """The control: a process pool's function must stay picklable (each process counts apart)."""
    import multiprocessing

    with budgetspan.run("pool"), multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]
        assert pool.apply_async(abs, (-3,)).get(timeout=10) == 3


def test_an_inbound_requests_thread_pool_spends_from_its_trace_run(wire: Recorder, lean: Any) -> None:
    """No run declared (zero-code): each inbound request's trace is the run, also for the calls
    its handler makes in a thread pool (review10; was: those went to the process's run, so a
    request's budget did not see them and every request's threads shared one budget: 2 of 4
    sent in the first request, 0 of 4 in the second)."""
    from budgetspan.config import load_config, set_config

    set_config(load_config({"BUDGETSPAN_BUDGET": "max_model_calls=2"}))
    tracer = lean.provider.get_tracer("server")
    sent_per_request = []
    for _request in range(2):
        before = len(wire.requests)
        with tracer.start_as_current_span("POST /answer"), concurrent.futures.ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(lambda _: attempts(1, lambda: chat(client(wire))), range(4)))
        sent_per_request.append(len(wire.requests) - before)
        assert sum(ok for ok, _ in outcomes) == sent_per_request[-1]
    assert sent_per_request == [2, 2]


@pytest.mark.parametrize("kind", ["executor", "thread_pool"])
def test_a_pools_workers_keep_no_run_of_their_own(wire: Recorder, kind: str) -> None:
    """A pool's worker threads start at its first task, often inside a run: a task given
    outside any run later must not run in that (ended) run, whose limits no longer apply
    (review10; was: 3 of 3 sent, charged to the ended run, past the process's own budget)."""
    from multiprocessing.pool import ThreadPool

    from budgetspan.config import load_config, set_config

    set_config(load_config({"BUDGETSPAN_BUDGET": "max_model_calls=1"}))  # the process's run

    def one(_: Any = None) -> tuple[int, int]:
        return attempts(1, lambda: chat(client(wire)))

    pool: Any = None
    try:
        with budgetspan.run("first", max_model_calls=5) as first:
            pool = concurrent.futures.ThreadPoolExecutor(1) if kind == "executor" else ThreadPool(1)
            (pool.submit(one).result() if kind == "executor" else pool.apply(one))  # workers start here
        results = [pool.submit(one).result() if kind == "executor" else pool.apply(one) for _ in range(3)]
    finally:
        pool.shutdown() if kind == "executor" else pool.terminate()
    assert first.usage.model_calls == 1
    assert [ok for ok, _ in results] == [1, 0, 0]  # the process's run: one model call
    assert len(wire.requests) == 2


def test_a_thread_with_only_the_otel_context_spends_from_the_declared_run(wire: Recorder) -> None:
    ThreadsInstrumentor().uninstrument()  # only the OpenTelemetry context travels, as with otel's own
    c = client(wire)
    results: list[str] = []

    def worker(ctx: Any) -> None:
        token = otel_context.attach(ctx)
        try:
            chat(c)
            results.append("sent")
        except budgetspan.BudgetExhausted:
            results.append("refused")
        finally:
            otel_context.detach(token)

    with budgetspan.run("otel-only", max_model_calls=1, suppress_exhausted=True) as run:
        for _ in range(3):
            t = threading.Thread(target=worker, args=(otel_context.get_current(),))
            t.start()
            t.join()
    assert results == ["sent", "refused", "refused"] and len(wire.requests) == 1
    assert run.usage.model_calls == 1


def test_one_scope_object_entered_from_two_threads_gives_two_runs(wire: Recorder) -> None:
    scope = budgetspan.run("shared-scope", max_model_calls=1)
    runs: list[Any] = []
    barrier = threading.Barrier(2)

    def worker() -> None:
        with scope as run:
            barrier.wait()
            chat(client(wire))
            runs.append(run)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.id for r in runs}) == 2 and len(wire.requests) == 2
    assert all(r.usage.model_calls == 1 for r in runs)


# --- nested runs, generators, one run id twice --------------------------------------------------


def test_a_nested_run_spends_from_its_parent(wire: Recorder) -> None:
    c = client(wire)
    with budgetspan.run("outer", max_model_calls=2, suppress_exhausted=True) as outer:
        with budgetspan.run("inner", suppress_exhausted=True) as inner:
            sent, refused = attempts(5, lambda: chat(c))
    assert (sent, refused) == (2, 3) and len(wire.requests) == 2
    assert outer.usage.model_calls == 2 and inner.usage.model_calls == 2
    assert outer.usage.input_tokens == inner.usage.input_tokens == 240
    assert outer.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED


def test_the_inner_runs_own_limit_applies_too(wire: Recorder) -> None:
    c = client(wire)
    with budgetspan.run("outer", max_model_calls=5) as outer:
        with budgetspan.run("inner", max_model_calls=1, suppress_exhausted=True):
            assert attempts(3, lambda: chat(c)) == (1, 2)
        chat(c)  # the outer run goes on
    assert outer.usage.model_calls == 2 and len(wire.requests) == 2


def test_run_decorator_on_a_generator_spans_the_iteration(wire: Recorder) -> None:
    c = client(wire)

    @budgetspan.run("gen", max_model_calls=1, suppress_exhausted=True)
    def answers() -> Iterator[str]:
        for _ in range(4):
            yield chat(c).choices[0].message.content

    got = list(answers())
    assert len(got) == 1 and len(wire.requests) == 1


def test_run_decorator_on_an_async_generator_spans_the_iteration(wire: Recorder) -> None:
    c = aclient(wire)

    @budgetspan.run("agen", max_model_calls=1, suppress_exhausted=True)
    async def answers() -> Any:
        for _ in range(4):
            r = await c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=50)
            yield r.choices[0].message.content

    async def main() -> list[Any]:
        return [a async for a in answers()]

    assert len(asyncio.run(main())) == 1 and len(wire.requests) == 1


def test_one_run_id_used_twice_in_a_process_is_one_budget(wire: Recorder) -> None:
    c = client(wire)
    sent = 0
    with budgetspan.run("twice", max_model_calls=4, run_id="job-1", suppress_exhausted=True):
        with budgetspan.run("twice", max_model_calls=4, run_id="job-1", suppress_exhausted=True):
            sent += attempts(3, lambda: chat(c))[0]
        # the first scope to end must not delete the shared record
        sent += attempts(10, lambda: chat(c))[0]
    assert sent == 4 and len(wire.requests) == 4


# --- streams, worst cases, prices ----------------------------------------------------------------


def test_streams_to_other_servers_are_counted(lean: Any) -> None:
    OpenAIInstrumentor().instrument()
    usage = {"prompt_tokens": 120, "completion_tokens": 80, "total_tokens": 200}

    def vllm(request: httpx2.Request) -> httpx2.Response:
        asked = (json.loads(request.content).get("stream_options") or {}).get("include_usage")
        return sse_response(openai_sse(chat_chunks(usage=usage if asked else None)))(request)

    rec = Recorder(vllm)
    c = client(rec, base_url="http://127.0.0.1:8000/v1")
    try:
        with budgetspan.run("vllm", max_total_tokens=300, suppress_exhausted=True) as run:
            sent, _ = attempts(
                6, lambda: list(c.chat.completions.create(model="llama-3-8b", messages=MESSAGES, stream=True))
            )
    finally:
        OpenAIInstrumentor().uninstrument()
    assert sent == 2 and len(rec.requests) == 2 and run.usage.total_tokens == 400


def test_a_big_prompt_is_refused_by_its_worst_case_cost(wire: Recorder) -> None:
    big = [{"role": "user", "content": "lorem ipsum dolor sit amet " * 15_000}]  # ~100k tokens
    with budgetspan.run("big", max_cost_usd=0.01, suppress_exhausted=True) as run:
        client(wire).chat.completions.create(model="gpt-4o", messages=big, max_tokens=10)
    assert wire.requests == [] and run.usage.cost_usd == 0
    assert run.exhausted is not None and run.exhausted.reason == "max_cost_usd"


def test_n_choices_multiply_the_output_worst_case(wire: Recorder) -> None:
    with budgetspan.run("n", max_output_tokens=1500, suppress_exhausted=True) as run:
        chat(client(wire), n=8, max_tokens=1000)
    assert wire.requests == [] and run.exhausted is not None
    assert run.exhausted.reason == "max_output_tokens" and "8,000 tokens" in run.exhausted.explanation


def test_concurrent_calls_without_max_tokens_cannot_pass_a_dollar_limit(lean: Any) -> None:
    OpenAIInstrumentor().instrument()

    async def slow(request: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(0.01)
        return httpx2.Response(200, json=chat_body(prompt_tokens=20_000, completion_tokens=2_000))

    c = openai.AsyncOpenAI(
        api_key="t", http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(slow)), max_retries=0
    )

    async def main() -> list[Any]:
        async with budgetspan.run("fan-out", max_cost_usd=0.01, suppress_exhausted=True) as run:
            results = await asyncio.gather(
                *(c.chat.completions.create(model=MODEL, messages=MESSAGES) for _ in range(50)),
                return_exceptions=True,
            )
        return [run, results]

    try:
        run, results = asyncio.run(main())
    finally:
        OpenAIInstrumentor().uninstrument()
    sent = [r for r in results if not isinstance(r, BaseException)]
    assert 1 <= len(sent) < 50
    assert run.usage.cost_usd <= 0.01  # each call's worst case held: overshoot zero


def test_a_fine_tuned_model_is_priced_from_its_base(wire: Recorder) -> None:
    with budgetspan.run("ft", max_cost_usd=1.0) as run:
        chat(client(wire), model="ft:gpt-4o-mini-2024-07-18:acme::abc123")
    assert run.usage.cost_usd > 0 and run.usage.unpriced_calls == 0


def test_an_unpriced_model_is_said_or_refused_under_a_dollar_limit(
    wire: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire.answers = [json_response({**chat_body(), "model": "acme-llm-7"})]
    with budgetspan.run("unpriced", max_cost_usd=1.0) as run:
        chat(client(wire), model="acme-llm-7")
    assert len(wire.requests) == 1 and run.usage.unpriced_calls == 1 and run.usage.cost_usd == 0
    monkeypatch.setenv(A.ENV_UNPRICED, "refuse")
    bs_config.set_config(None)
    with budgetspan.run("unpriced", max_cost_usd=1.0, suppress_exhausted=True) as run:
        chat(client(wire), model="acme-llm-7")
    assert len(wire.requests) == 1 and run.exhausted is not None
    assert run.exhausted.reason == "unpriced_model"


def test_a_malformed_price_file_fails_at_start_and_never_stops_counting(
    wire: Recorder, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    bad = tmp_path / "prices.toml"
    bad.write_text('["openai/gpt-4o-mini"]\ninput_mtok = "cheap"\n')
    monkeypatch.setenv(A.ENV_PRICES, str(bad))
    with pytest.raises(budgetspan.ConfigError, match="prices.toml"):
        budgetspan.configure(instrument=False)
    with pytest.raises(budgetspan.ConfigError, match="input_mtok"):  # the first run, without configure()
        budgetspan.run("prices")
    # A file that breaks after start-up: logged once, prices from genai-prices, usage still counted.
    bs_config.set_config(bs_config.Config())
    set_default_resolver(None)
    with budgetspan.run("prices", max_total_tokens=10_000) as run:
        chat(client(wire))
    assert run.usage.input_tokens == 120 and run.usage.output_tokens == 30
    set_default_resolver(None)


# --- the wall clock ------------------------------------------------------------------------------


def test_a_sync_call_that_ends_past_the_deadline_stops_the_run(lean: Any) -> None:
    OpenAIInstrumentor().instrument()

    def slow(request: httpx2.Request) -> httpx2.Response:
        time.sleep(0.3)
        return httpx2.Response(200, json=chat_body())

    rec = Recorder(slow)
    try:
        with budgetspan.run("late", max_wall_clock_s=0.2, suppress_exhausted=True) as run:
            chat(client(rec))
            chat(client(rec))
    finally:
        OpenAIInstrumentor().uninstrument()
    assert len(rec.requests) == 1 and run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED
    assert run.exhausted is not None and run.exhausted.reason == "max_wall_clock_s"


def test_a_sync_stream_stops_at_its_next_chunk_after_the_deadline(lean: Any) -> None:
    OpenAIInstrumentor().instrument()

    class Slow(httpx2.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            for chunk in chat_chunks(pieces=tuple("abcdefghij")):
                time.sleep(0.05)
                yield openai_sse([chunk], done=False)
            yield b"data: [DONE]\n\n"

    rec = Recorder(
        lambda r: httpx2.Response(200, stream=Slow(), headers={"content-type": "text/event-stream"})
    )
    seen: list[Any] = []
    try:
        with budgetspan.run("late-stream", max_wall_clock_s=0.2, suppress_exhausted=True) as run:
            for chunk in chat(client(rec), stream=True):
                seen.append(chunk)
    finally:
        OpenAIInstrumentor().uninstrument()
    assert 2 <= len(seen) < 10  # stopped mid-way, not at the end of a 0.5 s stream
    assert run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED


def test_stuck_sync_tools_do_not_starve_later_tools(lean: Any) -> None:
    release = threading.Event()

    @budgetspan.tool(timeout_s=0.01)
    def stuck() -> None:
        release.wait(30)

    @budgetspan.tool(timeout_s=5)
    def quick() -> str:
        return "ok"

    try:
        with budgetspan.run("stuck"):
            for _ in range(40):  # more than any bounded pool would hold
                with pytest.raises(budgetspan.ToolTimeout):
                    stuck()
        with budgetspan.run("after") as run:
            assert quick() == "ok"
        assert run.usage.tools_finished == 1
    finally:
        release.set()
