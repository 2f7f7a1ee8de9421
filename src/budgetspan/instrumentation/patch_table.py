"""Patch tables: one row per wrapped SDK method, applied where the installed version has it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import wrapt
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, unwrap

from budgetspan.events import internal_error

# --- patch tables -------------------------------------------------------------------------------

#: (module, "Class.method", wrapper factory taking ``asynchronous``) — one row per patched method.
Patch = tuple[str, str, Callable[[bool], Callable[..., Any]], bool]


def apply_patches(table: tuple[Patch, ...]) -> list[tuple[str, str]]:
    """Wrap every row whose target exists in this SDK version; return what was wrapped."""
    done: list[tuple[str, str]] = []
    for module, target, factory, asynchronous in table:
        try:
            mod = importlib.import_module(module)
            owner_name, method = target.rsplit(".", 1)
            owner = getattr(mod, owner_name, None)
            if owner is None or not hasattr(owner, method):
                continue  # not in this SDK version
            wrapt.wrap_function_wrapper(mod, target, factory(asynchronous))
            done.append((f"{module}.{owner_name}", method))
        except Exception:
            internal_error(f"patch {module}.{target}")
    return done


def remove_patches(done: list[tuple[str, str]]) -> None:
    for owner, method in done:
        try:
            unwrap(owner, method)
        except Exception:
            internal_error(f"unpatch {owner}.{method}")
    done.clear()


def use_provider(provider: Any) -> None:
    """``instrument(tracer_provider=...)``: budgetspan's spans go to that provider."""
    if provider is not None:
        from budgetspan.runs.context import set_tracer_provider

        set_tracer_provider(provider)


def suppressed() -> bool:
    """Inside OpenTelemetry's ``suppress_instrumentation()``: every wrapper lets the call through
    untouched (no span, no accounting), as the official instrumentations do."""
    return not is_instrumentation_enabled()


# --- module-level functions (``litellm.completion``, helpers the SDK calls by module name) ---------

#: (module, function name, asynchronous)
FunctionPatch = tuple[str, str, bool]


def patch_functions(
    table: tuple[FunctionPatch, ...], factory: Callable[[bool], Callable[..., Any]]
) -> list[tuple[Any, str]]:
    """Wrap each module-level function the installed version has; return (module, name) wrapped."""
    done: list[tuple[Any, str]] = []
    for module, name, asynchronous in table:
        try:
            mod = importlib.import_module(module)
            if not callable(getattr(mod, name, None)):
                continue  # not in this version
            wrapt.wrap_function_wrapper(mod, name, factory(asynchronous))
            done.append((mod, name))
        except Exception:
            internal_error(f"patch {module}.{name}")
    return done


def unpatch_functions(done: list[tuple[Any, str]]) -> None:
    while done:
        owner, name = done.pop()
        try:
            unwrap(owner, name)
        except Exception:
            internal_error(f"unpatch {name}")
