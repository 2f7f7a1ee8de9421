"""Patch tables: uninstrument puts back exactly what the library defined, also where the library
wraps its methods with wrapt itself; instrumenting again wraps once."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import wrapt

from budgetspan.instrumentation.patch_table import PatchInstrumentor


def _stored(patches: tuple[Any, ...]) -> dict[tuple[str, str], Any]:
    found = {}
    for module, target, _wrapper in patches:
        mod = importlib.import_module(module)
        owner_name, _, name = target.rpartition(".")
        owner = getattr(mod, owner_name, None) if owner_name else mod
        if owner is not None and name in vars(owner):
            found[(module, target)] = vars(owner)[name]
    return found


def test_a_method_the_library_wraps_itself_is_put_back_as_it_was() -> None:
    """LlamaIndex's retrievers are wrapt wrappers of its own (its dispatcher's spans)."""
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.base_retriever import BaseRetriever

    from budgetspan.instrumentation.llamaindex import LlamaIndexInstrumentor

    original = vars(BaseRetriever)["retrieve"]
    assert isinstance(original, wrapt.FunctionWrapper)  # the library's own
    inst: PatchInstrumentor = LlamaIndexInstrumentor()
    for _ in range(2):
        inst.instrument()
        ours = vars(BaseRetriever)["retrieve"]
        assert ours is not original and ours.__wrapped__ is original  # wrapped once
        inst.uninstrument()
        assert vars(BaseRetriever)["retrieve"] is original
