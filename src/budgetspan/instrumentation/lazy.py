"""Instrument a library when the program imports it, not before.

``opentelemetry-instrument`` calls ``instrument()`` on every installed instrumentor at start-up.
Importing each instrumented library then would cost seconds (chromadb, llama_index) and, for some,
work the program never asked for (LiteLLM fetches a price map from the network when imported).
So an instrumentor whose library is not imported yet registers a post-import hook and patches
when the program imports it, as ``configure()`` does.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Collection
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from budgetspan.events import internal_error

_lock = threading.Lock()
_pending: dict[type, bool] = {}  # instrumentor class -> still wanted when its library arrives


def libraries_of(cls: type) -> list[str]:
    """The import names whose import triggers ``cls`` (the instrumentor table's, installed ones):
    several when a library is used through more than one entry (LangGraph's ``graph`` and ``func``)."""
    from budgetspan.instrumentation import INSTRUMENTORS, library_present

    names = [library for _module, name, library in INSTRUMENTORS if name == cls.__name__]
    return [name for name in names if name in sys.modules or library_present(name)]


def instrument_when_imported(
    instrumentor: Any, instrument: Callable[..., Any], kwargs: dict[str, Any]
) -> Any:
    """Run ``instrument(**kwargs)`` now if the library is imported (or unknown), else at the import
    of whichever of its entries comes first."""
    cls = type(instrumentor)
    libraries = libraries_of(cls)
    if not libraries or "threading" in libraries or any(name in sys.modules for name in libraries):
        return instrument(**kwargs)
    with _lock:
        already = cls in _pending
        _pending[cls] = True
    if not already:

        def hook(_module: Any) -> None:
            with _lock:
                wanted = _pending.pop(cls, False)
            if wanted:
                try:
                    instrument(**kwargs)
                except Exception:
                    internal_error(f"instrument {cls.__name__}")

        for library in libraries:
            wrapt.register_post_import_hook(hook, library)
    return None


def cancel_pending(instrumentor: Any) -> None:
    """``uninstrument()`` before the library was imported: do not patch it later."""
    with _lock:
        if type(instrumentor) in _pending:
            _pending[type(instrumentor)] = False


class LazyInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """An instrumentor that patches its library when the program imports it."""

    DEPENDENCIES: tuple[str, ...] = ()

    def instrumentation_dependencies(self) -> Collection[str]:
        return self.DEPENDENCIES

    def instrument(self, **kwargs: Any) -> Any:
        """Patch now if the library is imported, else when the program imports it."""
        return instrument_when_imported(self, super().instrument, kwargs)

    def uninstrument(self, **kwargs: Any) -> Any:
        cancel_pending(self)
        return super().uninstrument(**kwargs)
