"""Chroma (embedded, real) and Qdrant (local mode, real): searches become retrieval spans."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import chromadb
import pytest
from chromadb.config import Settings
from opentelemetry.trace import StatusCode
from qdrant_client import AsyncQdrantClient, QdrantClient, models

import budgetspan
from budgetspan import attributes as A
from budgetspan.instrumentation.chroma import ChromaInstrumentor
from budgetspan.instrumentation.qdrant import QdrantInstrumentor
from tests.conftest import Tracing
from tests.instrumentation.hidden_libraries import preamble, run_script

DOCS = {
    "refund": ([1.0, 0.0, 0.0], "Refunds are paid within 5 days."),
    "shipping": ([0.0, 1.0, 0.0], "Orders ship within 2 days."),
    "cancel": ([0.0, 0.0, 1.0], "Orders can be cancelled before they ship."),
}


class LetterEmbedding(chromadb.EmbeddingFunction[chromadb.Documents]):
    """A tiny deterministic embedding (letter counts), so no model is downloaded."""

    def __init__(self) -> None:
        pass

    def __call__(self, input: chromadb.Documents) -> chromadb.Embeddings:
        import numpy as np

        return [np.array([float(t.count(c)) for c in "aeiou"], dtype=np.float32) for t in input]

    @staticmethod
    def name() -> str:
        return "letters"

    def get_config(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> LetterEmbedding:
        return LetterEmbedding()


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.fixture
def instrumented(tracing: Tracing) -> Iterator[Tracing]:
    chroma, qdrant = ChromaInstrumentor(), QdrantInstrumentor()
    chroma.instrument()
    qdrant.instrument()
    yield tracing
    chroma.uninstrument()
    qdrant.uninstrument()


@pytest.fixture(scope="module")
def chroma_client() -> Any:
    return chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))


@pytest.fixture
def policies(chroma_client: Any) -> Any:
    col = chroma_client.create_collection(f"policies-{uuid.uuid4().hex[:8]}", embedding_function=None)
    col.add(
        ids=list(DOCS),
        embeddings=[v for v, _ in DOCS.values()],
        documents=[d for _, d in DOCS.values()],
    )
    yield col
    chroma_client.delete_collection(col.name)


def test_chroma_query_is_one_retrieval_span_with_documents(instrumented: Tracing, policies: Any) -> None:
    with budgetspan.run("support") as run:
        one = policies.query(query_embeddings=[[0.9, 0.1, 0.0]], n_results=2)
        batch = policies.query(query_embeddings=[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], n_results=3)
    assert one["ids"] == [["refund", "shipping"]]  # the result is the library's, untouched
    assert len(batch["ids"][0]) == 3
    (run_span,) = instrumented.spans("invoke_agent")
    spans = instrumented.spans(f"retrieval {policies.name}")
    assert len(spans) == 2
    first, second = (_attrs(s) for s in spans)
    assert first[A.GEN_AI_OPERATION_NAME] == "retrieval"
    assert first[A.GEN_AI_DATA_SOURCE_ID] == policies.name
    assert first[A.RETRIEVAL_SYSTEM] == "chroma"
    assert first[A.PHASE] == "context_assembly"
    assert first[A.READ_ONLY] is True
    assert first[A.RETRIEVAL_DOCUMENTS] == 2
    assert second[A.RETRIEVAL_DOCUMENTS] == 6  # both queries of the batch
    assert first[A.RUN_ID] == run.id
    assert all(s.parent.span_id == run_span.context.span_id for s in spans)
    # Retrievals are neither model nor tool calls, but their time is the run's busy time.
    assert run.usage.tool_calls == 0 and run.usage.model_calls == 0
    duration = sum((s.end_time - s.start_time) / 1e9 for s in spans)
    # Measured inside each span: more than nothing, never more than the spans cover (no timing
    # tolerance to flake under load).
    assert 0 < _attrs(run_span)[A.RUN_BUSY_S] <= duration + 1e-3


def test_chroma_query_texts_with_a_local_embedding_function(
    instrumented: Tracing, chroma_client: Any
) -> None:
    col = chroma_client.create_collection(f"faq-{uuid.uuid4().hex[:8]}", embedding_function=LetterEmbedding())
    col.add(ids=["a", "b"], documents=["aaa eee", "ooo uuu"])
    result = col.query(query_texts=["aa"], n_results=1)
    chroma_client.delete_collection(col.name)
    assert result["ids"] == [["a"]]
    (span,) = instrumented.spans("retrieval faq-")
    assert _attrs(span)[A.RETRIEVAL_DOCUMENTS] == 1


def test_phase_overrides_the_retrieval_default(instrumented: Tracing, policies: Any) -> None:
    with budgetspan.run("support"):
        with budgetspan.phase("verification"):
            policies.query(query_embeddings=[[0.0, 1.0, 0.0]], n_results=1)
    (span,) = instrumented.spans("retrieval")
    (phase,) = instrumented.spans("phase verification")
    assert _attrs(span)[A.PHASE] == "verification"
    assert span.parent.span_id == phase.context.span_id


def test_failed_query_is_an_error_span_and_the_error_is_the_libraries(
    instrumented: Tracing, policies: Any
) -> None:
    with budgetspan.run("support"), pytest.raises(Exception) as info:
        policies.query(query_embeddings=[[1.0, 0.0]], n_results=1)  # wrong dimension
    assert not isinstance(info.value, budgetspan.BudgetExhausted)
    (span,) = instrumented.spans("retrieval")
    assert span.status.status_code is StatusCode.ERROR
    assert _attrs(span)[A.ERROR_TYPE] == type(info.value).__qualname__
    assert A.RETRIEVAL_DOCUMENTS not in _attrs(span)


def test_a_stopped_run_does_no_more_retrievals(instrumented: Tracing, policies: Any) -> None:
    """Retrievals are not counted, but a cancelled (or timed-out, or over-spent) run does no more."""
    with pytest.raises(budgetspan.RunCancelled):
        with budgetspan.run("support") as run:
            policies.query(query_embeddings=[[1.0, 0.0, 0.0]], n_results=1)
            assert budgetspan.cancel(run.id)
            policies.query(query_embeddings=[[1.0, 0.0, 0.0]], n_results=1)
    assert len(instrumented.spans("retrieval")) == 1  # the second query never ran
    assert run.outcome is budgetspan.Outcome.CANCELLED


def test_count_limits_do_not_stop_retrievals(instrumented: Tracing, policies: Any) -> None:
    @budgetspan.tool
    def step() -> str:
        return "ok"

    with budgetspan.run("support", max_tool_calls=1, suppress_exhausted=True):
        step()
        with pytest.raises(budgetspan.BudgetExhausted):
            step()
        policies.query(query_embeddings=[[1.0, 0.0, 0.0]], n_results=1)
    assert len(instrumented.spans("retrieval")) == 1


def test_uninstrument_removes_the_wrappers(tracing: Tracing, policies: Any) -> None:
    inst = ChromaInstrumentor()
    inst.instrument()
    policies.query(query_embeddings=[[1.0, 0.0, 0.0]], n_results=1)
    inst.uninstrument()
    policies.query(query_embeddings=[[1.0, 0.0, 0.0]], n_results=1)
    assert len(tracing.spans("retrieval")) == 1


# --- Qdrant, local mode ------------------------------------------------------------------------


def _kb(client: Any) -> None:
    client.create_collection(
        "kb", vectors_config=models.VectorParams(size=3, distance=models.Distance.COSINE)
    )
    client.upsert(
        "kb",
        points=[
            models.PointStruct(id=i, vector=vec, payload={"topic": topic, "text": text})
            for i, (topic, (vec, text)) in enumerate(DOCS.items())
        ],
    )


def test_qdrant_searches_are_retrieval_spans(instrumented: Tracing) -> None:
    client = QdrantClient(":memory:")
    _kb(client)
    with budgetspan.run("support"):
        hits = client.query_points("kb", query=[0.9, 0.1, 0.0], limit=2)
        batch = client.query_batch_points(
            "kb",
            requests=[
                models.QueryRequest(query=[1.0, 0.0, 0.0], limit=1),
                models.QueryRequest(query=[0.0, 1.0, 0.0], limit=3),
            ],
        )
        groups = client.query_points_groups(
            collection_name="kb", query=[1.0, 1.0, 0.0], group_by="topic", limit=2
        )
    assert [p.payload["topic"] for p in hits.points] == ["refund", "shipping"]
    spans = instrumented.spans("retrieval kb")
    assert len(spans) == 3  # one per search, none from the local back end underneath
    docs = [_attrs(s)[A.RETRIEVAL_DOCUMENTS] for s in spans]
    assert docs == [2, 1 + len(batch[1].points), sum(len(g.hits) for g in groups.groups)]
    assert all(_attrs(s)[A.RETRIEVAL_SYSTEM] == "qdrant" for s in spans)
    assert all(_attrs(s)[A.GEN_AI_DATA_SOURCE_ID] == "kb" for s in spans)
    assert all(_attrs(s)[A.PHASE] == "context_assembly" for s in spans)


async def test_async_qdrant_search_is_a_retrieval_span(instrumented: Tracing) -> None:
    client = AsyncQdrantClient(":memory:")
    await client.create_collection(
        "kb", vectors_config=models.VectorParams(size=3, distance=models.Distance.COSINE)
    )
    await client.upsert("kb", points=[models.PointStruct(id=1, vector=[1.0, 0.0, 0.0], payload={"t": "x"})])
    async with budgetspan.run("support") as run:
        result = await client.query_points("kb", query=[1.0, 0.0, 0.0], limit=5)
    assert len(result.points) == 1
    (span,) = instrumented.spans("retrieval kb")
    assert _attrs(span)[A.RETRIEVAL_DOCUMENTS] == 1
    assert _attrs(span)[A.RUN_ID] == run.id


# --- a library that is not installed ------------------------------------------------------------

_HIDDEN_SCRIPT = (
    preamble(["langchain_core", "llama_index", "mcp", "chromadb", "qdrant_client"])
    + """
from budgetspan.instrumentation import INSTRUMENTORS, available_instrumentors
found = sorted(type(i).__name__ for i in available_instrumentors())
patched = {}
for module, cls, library in INSTRUMENTORS:
    if library.split(".")[0] not in HIDDEN:
        continue
    inst = getattr(importlib.import_module("budgetspan.instrumentation." + module), cls)()
    inst.instrument()  # the library's metadata is still there: this reaches _instrument
    patched[cls] = len(getattr(inst, "_patched", []))
    inst.uninstrument()
budgetspan.configure(instrument=True)
warnings_hidden = list(warnings)
leaked = sorted(n for n in HIDDEN if sys.modules.get(n) is not None)
for name in HIDDEN:  # now the libraries are back: configure() picks every one of them up
    del sys.modules[name]
budgetspan.configure(instrument=True)
for name in ("langchain_core", "llama_index.core", "llama_index.core.agent.workflow", "mcp", "chromadb", "qdrant_client"):
    importlib.import_module(name)  # configure() patches a library when the program imports it
after = {}
for module, cls, library in INSTRUMENTORS:
    if library.split(".")[0] in HIDDEN:
        inst = getattr(importlib.import_module("budgetspan.instrumentation." + module), cls)()
        after[cls] = len(getattr(inst, "_patched", [])) if inst.is_instrumented_by_opentelemetry else -1
print(json.dumps({
    "after": after,
    "found": found,
    "patched": patched,
    "warnings": warnings_hidden,
    "warnings_after": warnings[len(warnings_hidden):],
    "internal_errors": len(errors),
    "leaked": leaked,
}))
"""
)


def test_each_instrumentation_is_skipped_cleanly_without_its_library() -> None:
    report, _ = run_script(_HIDDEN_SCRIPT)
    ours = {
        "LangChainInstrumentor",
        "LlamaIndexInstrumentor",
        "LlamaIndexAgentsInstrumentor",
        "MCPInstrumentor",
        "ChromaInstrumentor",
        "QdrantInstrumentor",
    }
    assert ours.isdisjoint(report["found"])
    assert report["patched"] == dict.fromkeys(sorted(ours), 0)
    assert report["warnings"] == [] and report["internal_errors"] == 0
    assert report["leaked"] == []
    # The same process with the libraries present: configure() instruments each one.
    assert report["after"] == {
        "LangChainInstrumentor": 4,  # retriever invoke/ainvoke, tool run/arun
        "LlamaIndexInstrumentor": 2,
        # _call_tool x2, run x2, take_step x3, WorkflowHandler.stop_event_result, FunctionTool.call/acall
        "LlamaIndexAgentsInstrumentor": 10,
        # ClientSession.call_tool, Client.call_tool, list_tools (hints), dispatch_input_request (sampling)
        "MCPInstrumentor": 4,
        "ChromaInstrumentor": 2,
        "QdrantInstrumentor": 6,  # query_points, _batch_, _groups on both clients
    }
    assert report["warnings_after"] == []


def test_instrument_with_a_tracer_provider_sends_spans_there(tracing: Tracing, policies: Any) -> None:
    import importlib

    importlib.import_module("budgetspan.runs.context").set_tracer_provider(None)  # the global (no-op) one
    inst = ChromaInstrumentor()
    inst.instrument(tracer_provider=tracing.provider)
    try:
        policies.query(query_embeddings=[[1.0, 0.0, 0.0]], n_results=1)
    finally:
        inst.uninstrument()
    assert [s.name for s in tracing.spans("retrieval")] == [f"retrieval {policies.name}"]
