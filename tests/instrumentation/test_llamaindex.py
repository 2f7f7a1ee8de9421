"""LlamaIndex (llama-index-core): real in-memory retrievers, no model and no network.

``SimpleKeywordTableIndex`` extracts keywords with a regex (no LLM call, no embeddings), so its
retriever is a real LlamaIndex retriever that runs offline; ``MockLLM`` only keeps LlamaIndex from
resolving a default OpenAI LLM at construction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core import Document, Settings, SimpleKeywordTableIndex, SummaryIndex
from llama_index.core.llms import MockLLM
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle

import budgetspan
from budgetspan import attributes as A
from budgetspan.instrumentation.llamaindex import LlamaIndexInstrumentor
from tests.conftest import Tracing, instrumentors_on

DOCS = [
    Document(text="Refunds are paid within 5 days."),
    Document(text="Shipping takes 2 days within Europe."),
    Document(text="Orders can be cancelled before shipping."),
]


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.fixture(scope="module")
def keyword_index() -> Any:
    Settings.llm = MockLLM()
    return SimpleKeywordTableIndex.from_documents(DOCS)


@pytest.fixture
def instrumented(tracing: Tracing) -> Iterator[Tracing]:
    with instrumentors_on(LlamaIndexInstrumentor()):
        yield tracing


async def test_keyword_retriever_sync_and_async(instrumented: Tracing, keyword_index: Any) -> None:
    retriever = keyword_index.as_retriever(retriever_mode="simple")
    async with budgetspan.run("support") as run:
        nodes = retriever.retrieve("shipping")
        anodes = await retriever.aretrieve("refunds")
    assert len(nodes) == 2 and len(anodes) == 1  # the library's own results
    for a in instrumented.retrievals("KeywordTableSimpleRetriever", [2, 1]):
        assert a[A.RETRIEVAL_SYSTEM] == "llamaindex" and a[A.PHASE] == "context_assembly"
        assert a[A.RUN_ID] == run.id and a[A.READ_ONLY] is True
    assert run.usage.model_calls == 0 and run.usage.tool_calls == 0


class FusionRetriever(BaseRetriever):
    """Delegates to two retrievers and merges: one read from the agent's point of view."""

    def __init__(self, *parts: BaseRetriever) -> None:
        super().__init__()
        self.parts = parts

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        seen: dict[str, NodeWithScore] = {}
        for part in self.parts:
            for n in part.retrieve(query_bundle):
                seen.setdefault(n.node.get_content(), n)
        return list(seen.values())


def test_delegating_retriever_is_one_span(instrumented: Tracing, keyword_index: Any) -> None:
    summary = SummaryIndex.from_documents(DOCS).as_retriever()
    fusion = FusionRetriever(keyword_index.as_retriever(retriever_mode="simple"), summary)
    with budgetspan.run("support"), budgetspan.phase("verification"):
        nodes = fusion.retrieve("shipping")
    assert len(nodes) == 3
    (span,) = instrumented.spans("retrieval")  # the two inner retrievals are folded in
    assert span.name == "retrieval FusionRetriever"
    assert _attrs(span)[A.RETRIEVAL_DOCUMENTS] == 3
    assert _attrs(span)[A.PHASE] == "verification"
    assert A.RETRIEVAL_NESTED_SYSTEMS not in _attrs(span)  # same system: nothing to name


def test_retriever_error_is_recorded_and_raised_unchanged(instrumented: Tracing) -> None:
    class Broken(BaseRetriever):
        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            raise LookupError("index offline")

    with budgetspan.run("support"), pytest.raises(LookupError, match="index offline"):
        Broken().retrieve("x")
    (span,) = instrumented.spans("retrieval Broken")
    assert _attrs(span)[A.ERROR_TYPE] == "LookupError"
