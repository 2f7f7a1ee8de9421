"""Instrumentors, one module per instrumented library (each imports its SDK lazily).

``INSTRUMENTORS`` is the patch table ``configure()`` walks; the same classes are registered
under the ``opentelemetry_instrumentor`` entry point for ``opentelemetry-instrument``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
import threading
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

# (module inside budgetspan.instrumentation, class name, the library it needs)
INSTRUMENTORS: tuple[tuple[str, str, str], ...] = (
    ("openai", "OpenAIInstrumentor", "openai"),
    ("anthropic", "AnthropicInstrumentor", "anthropic"),
    ("google_genai", "GoogleGenAIInstrumentor", "google.genai"),
    ("litellm", "LiteLLMInstrumentor", "litellm"),
    ("bedrock", "BedrockInstrumentor", "botocore"),
    # mistralai >= 2 is a namespace package, whose import fires no post-import hook: its
    # ``client`` package does. 1.x is a plain package (its ``client`` a legacy stub).
    ("mistral", "MistralInstrumentor", "mistralai.client"),
    ("mistral", "MistralInstrumentor", "mistralai"),
    ("langchain", "LangChainInstrumentor", "langchain_core"),
    ("llamaindex", "LlamaIndexInstrumentor", "llama_index.core"),
    # ``langgraph`` is a namespace package (its import fires no post-import hook); ``graph`` is
    # what every app imports (``StateGraph``, and ``prebuilt`` through it), and ``pregel`` is whole
    # once it is (``pregel`` itself would fire while ``graph`` is half-imported). The ToolNode
    # guard waits for ``prebuilt.tool_node`` itself (``langgraph.py``).
    ("langgraph", "LangGraphInstrumentor", "langgraph.graph"),
    # the Functional API (``@entrypoint``, ``@task``) builds its Pregel without ``langgraph.graph``
    ("langgraph", "LangGraphInstrumentor", "langgraph.func"),
    ("llamaindex_agents", "LlamaIndexAgentsInstrumentor", "llama_index.core.agent.workflow"),
    # a FunctionTool is also called outside agents (``llm.predict_and_call(tools)``, ``tool.call``):
    # counted and refused from ``llama_index.core`` on (the agents then cost ~20 ms more to import)
    ("llamaindex_agents", "LlamaIndexAgentsInstrumentor", "llama_index.core"),
    ("mcp", "MCPInstrumentor", "mcp"),
    ("chroma", "ChromaInstrumentor", "chromadb"),
    ("qdrant", "QdrantInstrumentor", "qdrant_client"),
    ("openai_agents", "OpenAIAgentsInstrumentor", "agents"),
    ("pydantic_ai", "PydanticAIInstrumentor", "pydantic_ai"),
    ("threads", "ThreadsInstrumentor", "threading"),  # the run follows the work into threads
)


#: Import names too common to trust alone (a project's own ``agents`` package): the distribution
#: that must be installed for the name to be that library.
_DISTRIBUTION_OF = {"agents": "openai-agents"}


def library_present(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it: ``find_spec`` of a dotted name
    imports its parents, so only the top-level package is looked up."""
    try:
        if importlib.util.find_spec(name.split(".")[0]) is None:
            return False
    except (ImportError, ValueError):
        return False
    dist = _DISTRIBUTION_OF.get(name)
    if dist is None:
        return True
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _load_instrumentor(module: str, cls: str) -> Any | None:
    try:
        mod = importlib.import_module(f"budgetspan.instrumentation.{module}")
        return getattr(mod, cls)()
    except Exception:
        log.warning("budgetspan: cannot load the %s instrumentation", module, exc_info=True)
        return None


#: Instrumentations under way: one that imports another of its triggers (LlamaIndex's agents, from
#: ``llama_index.core``) fires that trigger's hook before it is marked instrumented.
_instrumenting: set[str] = set()


def _instrument(module: str, cls: str, provider: Any) -> None:
    inst = _load_instrumentor(module, cls)
    if inst is None or module in _instrumenting:
        return
    _instrumenting.add(module)
    try:
        if not inst.is_instrumented_by_opentelemetry:
            inst.instrument(tracer_provider=provider)
    except Exception:
        log.warning("budgetspan: %s failed to instrument", cls, exc_info=True)
    finally:
        _instrumenting.discard(module)


_hooked: set[tuple[str, str]] = set()  # (module, library): two instrumentors may share a library
_hook_lock = threading.Lock()


def instrument_all(provider: Any, only: Iterable[str] | None = None) -> list[str]:
    """Instrument every installed library (or those named in ``only``, by module name).

    A library that is already imported is patched now; one that is not yet imported is patched
    by a post-import hook when the program imports it, so start-up never pays for importing
    chromadb or llama_index that the program may not use. Returns the modules patched or hooked.
    """
    import wrapt

    from budgetspan.instrumentation.threads import enabled as threads_enabled

    wanted = None if only is None else set(only)
    done = []
    for module, cls, library in INSTRUMENTORS:
        if wanted is not None and module not in wanted and library not in wanted:
            continue
        if module == "threads" and not threads_enabled():
            continue
        if not library_present(library):
            continue
        if library in sys.modules:
            _instrument(module, cls, provider)
        else:
            with _hook_lock:
                if (module, library) in _hooked:
                    continue
                _hooked.add((module, library))

            def hook(_mod: Any, module: str = module, cls: str = cls) -> None:
                _instrument(module, cls, provider)

            wrapt.register_post_import_hook(hook, library)
        if module not in done:  # (one module may be reached through two libraries)
            done.append(module)
    return done


def available_instrumentors() -> list[Any]:
    """Instances of every instrumentor whose library is installed; the rest are skipped quietly."""
    found: list[Any] = []
    for module, cls, library in INSTRUMENTORS:
        if not library_present(library) or any(type(i).__name__ == cls for i in found):
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
