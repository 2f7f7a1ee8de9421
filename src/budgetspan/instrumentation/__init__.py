"""Instrumentors, one module per instrumented library (each imports its SDK lazily).

``INSTRUMENTORS`` is the patch table ``configure()`` walks; the same classes are registered
under the ``opentelemetry_instrumentor`` entry point for ``opentelemetry-instrument``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any

log = logging.getLogger(__name__)

# (module inside budgetspan.instrumentation, class name, the library it needs)
INSTRUMENTORS: tuple[tuple[str, str, str], ...] = (
    ("openai", "OpenAIInstrumentor", "openai"),
    ("anthropic", "AnthropicInstrumentor", "anthropic"),
    ("langchain", "LangChainInstrumentor", "langchain_core"),
    ("llamaindex", "LlamaIndexInstrumentor", "llama_index.core"),
    ("mcp", "MCPInstrumentor", "mcp"),
    ("chroma", "ChromaInstrumentor", "chromadb"),
    ("qdrant", "QdrantInstrumentor", "qdrant_client"),
)


def _library_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def available_instrumentors() -> list[Any]:
    """Instances of every instrumentor whose library is installed; the rest are skipped quietly."""
    found = []
    for module, cls, library in INSTRUMENTORS:
        if not _library_present(library):
            continue
        try:
            mod = importlib.import_module(f"budgetspan.instrumentation.{module}")
            found.append(getattr(mod, cls)())
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("budgetspan"):
                continue  # not built yet in this version
            log.warning("budgetspan: cannot load the %s instrumentation", module, exc_info=True)
        except Exception:
            log.warning("budgetspan: cannot load the %s instrumentation", module, exc_info=True)
    return found
