"""Patch tables: one row per wrapped method, applied where the installed library version has it;
the instrumentor every library's instrumentation is (``PatchInstrumentor``)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

import wrapt
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, unwrap

from budgetspan.events import internal_error
from budgetspan.instrumentation.lazy import LazyInstrumentor

log = logging.getLogger(__name__)

# --- patch tables -------------------------------------------------------------------------------

#: (module, "Class.method" or "function", wrapper(wrapped, instance, args, kwargs)): one row per
#: patched method or module-level function (``litellm.completion``, helpers a library calls by
#: module name).
Patch = tuple[str, str, Callable[..., Any]]


def sync_and_async(
    module: str, factory: Callable[[bool], Callable[..., Any]], *targets: str
) -> tuple[Patch, ...]:
    """Rows for SDK resource methods and their async twins, which the SDKs name ``Async`` + the
    sync class: ``Messages.create`` also gives ``AsyncMessages.create``; ``factory(asynchronous)``
    makes the wrapper of each."""
    return tuple(
        (module, prefix + target, factory(bool(prefix))) for prefix in ("", "Async") for target in targets
    )


def apply_patches(table: tuple[Patch, ...]) -> list[tuple[Any, str]]:
    """Wrap every row whose target the installed library version defines; skip (quietly) the rows
    of modules it lacks and of methods it does not define itself (e.g. Qdrant's removed ``search``).
    Return the (owner, name) wrapped."""
    done: list[tuple[Any, str]] = []
    for module, target, wrapper in table:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            log.debug("budgetspan: %s is not installed; %s not instrumented", module, target)
            continue
        try:
            owner_name, _, name = target.rpartition(".")
            owner = getattr(mod, owner_name, None) if owner_name else mod
            if owner is None or name not in vars(owner):
                continue  # not in this version of the library
            wrapt.wrap_function_wrapper(mod, target, wrapper)
            done.append((owner, name))
        except Exception:
            internal_error(f"patch {module}.{target}")
    return done


def remove_patches(done: list[tuple[Any, str]]) -> None:
    """Undo what ``apply_patches`` (or another patch list of (owner, name)) wrapped, last first."""
    while done:
        owner, name = done.pop()
        try:
            # The wrapper as stored, not as read through the class: a method the library wraps
            # itself (LlamaIndex's dispatcher) would come back bound, not as the library left it.
            stored = None if isinstance(owner, str) else vars(owner).get(name)  # str: a module's name
            if isinstance(stored, wrapt.FunctionWrapper):
                setattr(owner, name, stored.__wrapped__)
            else:
                unwrap(owner, name)
        except Exception:
            internal_error(f"unpatch {owner!r}.{name}")


def use_provider(provider: Any) -> None:
    """``instrument(tracer_provider=...)``: budgetspan's spans go to that provider."""
    if provider is not None:
        from budgetspan.runs.context import set_tracer_provider

        set_tracer_provider(provider)


def suppressed() -> bool:
    """Inside OpenTelemetry's ``suppress_instrumentation()``: every wrapper lets the call through
    untouched (no span, no accounting), as the official instrumentations do."""
    return not is_instrumentation_enabled()


class PatchInstrumentor(LazyInstrumentor):
    """A BaseInstrumentor driven by a patch table; the library is imported only in ``_instrument``
    (when the program imports it: ``lazy.py``), so a missing library patches nothing."""

    DEPENDENCIES: tuple[str, ...] = ()
    PATCHES: tuple[Patch, ...] = ()

    _patched: list[tuple[Any, str]]

    def _instrument(self, **kwargs: Any) -> None:
        use_provider(kwargs.get("tracer_provider"))
        self._patched = apply_patches(self.PATCHES)

    def _uninstrument(self, **kwargs: Any) -> None:
        remove_patches(getattr(self, "_patched", []))
