"""LangChain (langchain-core): retrievers and tools through every entry point, each counted once."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.messages import ToolMessage
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import StructuredTool, ToolException, tool
from opentelemetry.trace import StatusCode

import budgetspan
from budgetspan import attributes as A
from budgetspan.instrumentation.chroma import ChromaInstrumentor
from budgetspan.instrumentation.langchain import LangChainInstrumentor
from tests.conftest import Tracing, instrumentors_on

POLICIES = [
    "Refunds are paid within 5 days.",
    "Orders ship within 2 days.",
    "Orders can be cancelled before they ship.",
]


class KeywordRetriever(BaseRetriever):
    """A real langchain-core retriever: documents that share a word with the query."""

    texts: list[str]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        words = set(query.lower().split())
        return [Document(page_content=t) for t in self.texts if words & set(t.lower().split())]


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.fixture
def instrumented(tracing: Tracing) -> Iterator[Tracing]:
    with instrumentors_on(LangChainInstrumentor()):
        yield tracing


@pytest.fixture
def tool_limits(config_file: Callable[[str], None]) -> None:
    config_file(
        "[tools.slow_sync]\ntimeout_s = 0.2\n\n[tools.slow_async]\ntimeout_s = 0.2\n\n"
        "[tools.refund]\nmax_calls = 1\n\n[tools.flaky]\nmax_retries = 2\n"
    )


# --- retrievers -----------------------------------------------------------------------------------


async def test_retriever_invoke_and_ainvoke_are_retrieval_spans(instrumented: Tracing) -> None:
    retriever = KeywordRetriever(texts=POLICIES)
    async with budgetspan.run("support") as run:
        docs = retriever.invoke("when do orders ship")
        adocs = await retriever.ainvoke("refunds")
    assert len(docs) == 2 and len(adocs) == 1
    for a in instrumented.retrievals("KeywordRetriever", [2, 1]):
        assert a[A.PHASE] == "context_assembly" and a[A.RETRIEVAL_SYSTEM] == "langchain"
        assert a[A.GEN_AI_DATA_SOURCE_ID] == "KeywordRetriever" and a[A.RUN_ID] == run.id
    assert run.usage.tool_calls == 0


def test_retriever_over_chroma_is_one_span_not_two(instrumented: Tracing) -> None:
    """A LangChain retriever that queries Chroma is one read: the inner query is folded in."""
    import chromadb
    from chromadb.config import Settings

    client = chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))
    col = client.create_collection(f"lc-{uuid.uuid4().hex[:8]}", embedding_function=None)
    col.add(ids=["a", "b"], embeddings=[[1.0, 0.0], [0.0, 1.0]], documents=POLICIES[:2])

    class ChromaRetriever(BaseRetriever):
        def _get_relevant_documents(
            self, query: str, *, run_manager: CallbackManagerForRetrieverRun
        ) -> list[Document]:
            vec = [1.0, 0.0] if "refund" in query else [0.0, 1.0]
            found = col.query(query_embeddings=[vec], n_results=1)
            return [Document(page_content=d) for d in found["documents"][0]]

    chroma = ChromaInstrumentor()
    chroma.instrument()
    try:
        with budgetspan.run("support"):
            docs = ChromaRetriever().invoke("refund policy")
            col.query(query_embeddings=[[0.0, 1.0]], n_results=2)  # on its own: its own span
    finally:
        chroma.uninstrument()
        client.delete_collection(col.name)
    assert docs[0].page_content == POLICIES[0]
    outer, alone = instrumented.spans("retrieval")
    assert outer.name == "retrieval ChromaRetriever"
    assert _attrs(outer)[A.RETRIEVAL_NESTED_SYSTEMS] == ("chroma",)
    assert alone.name == f"retrieval {col.name}" and _attrs(alone)[A.RETRIEVAL_DOCUMENTS] == 2


# --- tools --------------------------------------------------------------------------------------


@tool
def lookup(order_id: str) -> str:
    """Status of one order."""
    return f"order {order_id}: shipped"


async def test_every_tool_entry_point_counts_exactly_once(instrumented: Tracing) -> None:
    ran: list[str] = []

    def refund(order_id: str) -> str:
        ran.append(order_id)
        return f"refunded {order_id}"

    sync_only = StructuredTool.from_function(func=refund, name="refund", description="Refund.")
    async with budgetspan.run("support") as run:
        assert lookup.invoke({"order_id": "1"}) == "order 1: shipped"
        assert lookup.run({"order_id": "2"}) == "order 2: shipped"
        assert await lookup.ainvoke({"order_id": "3"}) == "order 3: shipped"
        assert await lookup.arun({"order_id": "4"}) == "order 4: shipped"
        # ainvoke of a sync-only tool runs invoke -> run in a thread: still one call.
        assert await sync_only.ainvoke({"order_id": "5"}) == "refunded 5"
    spans = instrumented.spans("execute_tool")
    assert [s.name for s in spans] == ["execute_tool lookup"] * 4 + ["execute_tool refund"]
    (run_span,) = instrumented.spans("invoke_agent")
    assert all(s.parent.span_id == run_span.context.span_id for s in spans)  # none nested
    assert all(_attrs(s)[A.PHASE] == "tool_execution" for s in spans)
    assert all(_attrs(s)[A.TOOL_SYSTEM] == "langchain" for s in spans)
    assert run.usage.tool_calls == 5 and run.usage.tools_finished == 5
    assert ran == ["5"]
    assert [r["result"] for r in run.partial["tool_results"]][:2] == [
        "order 1: shipped",
        "order 2: shipped",
    ]


def test_tool_call_input_carries_the_call_id(instrumented: Tracing) -> None:
    with budgetspan.run("support"):
        msg = lookup.invoke(
            {"name": "lookup", "args": {"order_id": "9"}, "id": "call_42", "type": "tool_call"}
        )
    assert isinstance(msg, ToolMessage) and msg.tool_call_id == "call_42"
    (span,) = instrumented.spans("execute_tool lookup")
    assert _attrs(span)[A.GEN_AI_TOOL_CALL_ID] == "call_42"


def test_handled_tool_error_is_an_error_span(instrumented: Tracing) -> None:
    def fails(order_id: str) -> str:
        raise ToolException("order system down")

    handled = StructuredTool.from_function(
        func=fails, name="fails", description="Fails.", handle_tool_error=True
    )
    with budgetspan.run("support") as run:
        msg = handled.invoke({"name": "fails", "args": {"order_id": "1"}, "id": "c1", "type": "tool_call"})
        with pytest.raises(ValueError, match="boom"):
            StructuredTool.from_function(
                func=lambda order_id: (_ for _ in ()).throw(ValueError("boom")),
                name="raises",
                description="Raises.",
            ).invoke({"order_id": "1"})
    assert msg.status == "error"  # LangChain turned the error into content
    handled_span, raised_span = instrumented.spans("execute_tool")
    assert handled_span.status.status_code is StatusCode.ERROR
    assert raised_span.status.status_code is StatusCode.ERROR
    assert _attrs(raised_span)[A.ERROR_TYPE] == "ValueError"
    assert run.usage.tool_calls == 2 and run.usage.tools_finished == 0
    assert run.partial["tool_results"] == []


def test_sync_tool_past_its_timeout_is_abandoned_and_recorded(
    instrumented: Tracing, tool_limits: None
) -> None:
    gate = threading.Event()

    def slow_sync() -> str:
        gate.wait(5)
        return "late"

    slow = StructuredTool.from_function(func=slow_sync, name="slow_sync", description="Slow.")
    try:
        with budgetspan.run("support") as run, pytest.raises(budgetspan.ToolTimeout) as info:
            slow.invoke({})
    finally:
        gate.set()
    assert info.value.timeout_s == 0.2
    (span,) = instrumented.spans("execute_tool slow_sync")
    assert _attrs(span)[A.TOOL_TIMED_OUT] is True and _attrs(span)[A.TOOL_TIMEOUT_S] == 0.2
    assert run.usage.tools_finished == 0


async def test_async_tool_past_its_timeout_is_cancelled_and_recorded(
    instrumented: Tracing, tool_limits: None
) -> None:
    seen: list[str] = []

    async def slow_async() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return "late"

    slow = StructuredTool.from_function(coroutine=slow_async, name="slow_async", description="Slow.")
    async with budgetspan.run("support") as run:
        with pytest.raises(budgetspan.ToolTimeout):
            await slow.ainvoke({})
    assert seen == ["cancelled"]  # the tool itself was cancelled, not left running
    (span,) = instrumented.spans("execute_tool slow_async")
    assert _attrs(span)[A.TOOL_TIMED_OUT] is True
    assert span.status.status_code is StatusCode.ERROR
    assert run.outcome is budgetspan.Outcome.SUCCESS


def test_tool_over_max_calls_is_refused_before_it_runs(instrumented: Tracing, tool_limits: None) -> None:
    ran: list[str] = []

    def refund(order_id: str) -> str:
        ran.append(order_id)
        return "ok"

    t = StructuredTool.from_function(func=refund, name="refund", description="Refund.")
    with pytest.raises(budgetspan.BudgetExhausted) as info:
        with budgetspan.run("support") as run:
            t.invoke({"order_id": "1"})
            t.invoke({"order_id": "2"})
    assert ran == ["1"]
    assert info.value.reason == budgetspan.Limit.TOOL_MAX_CALLS.value
    assert len(instrumented.spans("execute_tool refund")) == 1
    assert run.outcome is budgetspan.Outcome.BUDGET_EXHAUSTED


def test_retries_from_configuration(instrumented: Tracing, tool_limits: None) -> None:
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "ok"

    t = StructuredTool.from_function(func=flaky, name="flaky", description="Flaky.")
    with budgetspan.run("support") as run:
        assert t.invoke({}) == "ok"
    assert len(attempts) == 3
    (span,) = instrumented.spans("execute_tool flaky")
    assert _attrs(span)[A.RETRIES] == 2 and _attrs(span)[A.ATTEMPTS] == 3
    assert run.usage.tool_calls == 1 and run.usage.retries == 2


async def test_parallel_tools_overlap_and_show_in_parallelism(instrumented: Tracing) -> None:
    async def wait(ms: int) -> str:
        await asyncio.sleep(ms / 1000)
        return "done"

    a = StructuredTool.from_function(coroutine=wait, name="wait_a", description="Wait.")
    b = StructuredTool.from_function(coroutine=wait, name="wait_b", description="Wait.")
    async with budgetspan.run("support") as run:
        await asyncio.gather(a.ainvoke({"ms": 150}), b.ainvoke({"ms": 150}))
    sa, sb = instrumented.spans("execute_tool")
    assert sa.start_time < sb.end_time and sb.start_time < sa.end_time  # they overlapped
    busy = sum((s.end_time - s.start_time) / 1e9 for s in (sa, sb))
    (run_span,) = instrumented.spans("invoke_agent")
    ra = _attrs(run_span)
    assert 0.299 <= ra[A.RUN_BUSY_S] <= busy + 1e-3  # both 150 ms waits, measured inside the spans
    assert ra[A.RUN_BUSY_S] > ra[A.RUN_WALL_S]  # more work than wall time: it ran in parallel
    assert ra[A.RUN_PARALLELISM] == pytest.approx(ra[A.RUN_BUSY_S] / ra[A.RUN_WALL_S])
    assert run.usage.tool_calls == 2


# --- chat models --------------------------------------------------------------------------------


def test_chat_model_without_an_instrumented_sdk_makes_no_model_span(instrumented: Tracing) -> None:
    """Decision: LangChain chat models are not wrapped (the SDK instrumentation makes the one
    span). A fake model sends nothing and costs nothing, so it is not a model call."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    model = GenericFakeChatModel(messages=iter([AIMessage(content="hello")]))
    with budgetspan.run("support") as run:
        assert model.invoke("hi").content == "hello"
    assert [s.name for s in instrumented.exporter.get_finished_spans()] == ["invoke_agent support"]
    assert run.usage.model_calls == 0


def test_chat_model_backed_by_the_openai_sdk_is_one_model_span(instrumented: Tracing) -> None:
    """A LangChain chat model that calls the OpenAI SDK: the SDK instrumentation makes the one
    span (with tokens and cost); LangChain adds none, so the model call is counted once."""
    import openai
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    from budgetspan.instrumentation.openai import OpenAIInstrumentor
    from tests.replay import replay, requests_of

    cassette = "openai/test_chat__test_chat.yaml"

    class SDKChat(BaseChatModel):
        model: str = "gpt-3.5-turbo"

        @property
        def _llm_type(self) -> str:
            return "sdk-chat"

        def _generate(
            self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
        ) -> ChatResult:
            client = openai.OpenAI(api_key="test", max_retries=0)
            body = [{"role": "user", "content": str(m.content)} for m in messages]
            out = client.chat.completions.create(model=self.model, messages=body)  # type: ignore[arg-type]
            text = out.choices[0].message.content or ""
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    sdk = OpenAIInstrumentor()
    sdk.instrument()
    try:
        prompt = requests_of(cassette)[0]["messages"][0]["content"]
        with budgetspan.run("support") as run, replay(cassette):
            reply = SDKChat().invoke(prompt)
    finally:
        sdk.uninstrument()
    assert "baggage" in str(reply.content)
    names = [s.name for s in instrumented.exporter.get_finished_spans()]
    assert names == ["chat gpt-3.5-turbo", "invoke_agent support"]
    assert run.usage.model_calls == 1
    assert run.usage.input_tokens == 15 and run.usage.output_tokens == 19


def test_async_wrappers_work_off_asyncio(tracing: Tracing) -> None:
    """Under another event loop (trio through anyio, as MCP allows) there is no asyncio task:
    the call must still run and be recorded, just without an asyncio deadline."""
    from budgetspan.instrumentation.retrieval import atraced_retrieval, atraced_tool

    async def answer(x: int) -> list[int]:
        return [x, x]

    def drive(coro: Any) -> Any:
        with pytest.raises(StopIteration) as stop:
            coro.send(None)  # no event loop at all: asyncio.current_task() raises
        return stop.value.value

    with budgetspan.run("support") as run:
        got = drive(atraced_tool(answer, (1,), {}, name="t", system="test"))
        docs = drive(atraced_retrieval(answer, (2,), {}, source=lambda: "kb", system="test", count=len))
    assert got == [1, 1] and docs == [2, 2]
    assert [s.name for s in tracing.spans("execute_tool")] == ["execute_tool t"]
    (retrieval,) = tracing.spans("retrieval kb")
    assert _attrs(retrieval)[A.RETRIEVAL_DOCUMENTS] == 2
    assert run.usage.tool_calls == 1 and run.usage.tools_finished == 1


def test_vector_store_retriever_is_named_after_its_store(instrumented: Tracing) -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore(embedding=DeterministicFakeEmbedding(size=8))
    store.add_texts(POLICIES)
    with budgetspan.run("support"):
        docs = store.as_retriever(search_kwargs={"k": 2}).invoke("refund")
    assert len(docs) == 2
    (span,) = instrumented.spans("retrieval")
    assert span.name == "retrieval InMemoryVectorStore"
    assert _attrs(span)[A.RETRIEVAL_DOCUMENTS] == 2


def test_read_only_tools_are_marked(instrumented: Tracing) -> None:
    def status(order_id: str) -> str:
        return "shipped"

    reads = StructuredTool.from_function(
        func=status, name="status", description="Status.", metadata={"readOnlyHint": True}
    )
    writes = StructuredTool.from_function(func=status, name="cancel", description="Cancel.")
    with budgetspan.run("support"):
        reads.invoke({"order_id": "1"})
        writes.invoke({"order_id": "1"})
    read_span, write_span = instrumented.spans("execute_tool")
    assert _attrs(read_span)[A.READ_ONLY] is True
    assert A.READ_ONLY not in _attrs(write_span)


async def test_langchain_tool_over_a_budgetspan_tool_counts_once(instrumented: Tracing) -> None:
    """``@tool`` over ``@budgetspan.tool``: the decorator's budgeted call is the one call."""

    @tool
    @budgetspan.tool(read_only=True)
    def stock(sku: str) -> str:
        """Stock level."""
        return f"{sku}: 3"

    @tool
    @budgetspan.tool
    async def price(sku: str) -> str:
        """Price."""
        return f"{sku}: $5"

    async with budgetspan.run("support") as run:
        assert stock.invoke({"sku": "A"}) == "A: 3"
        assert await price.ainvoke({"sku": "A"}) == "A: $5"
    assert [s.name for s in instrumented.spans("execute_tool")] == [
        "execute_tool stock",
        "execute_tool price",
    ]
    assert run.usage.tool_calls == 2
