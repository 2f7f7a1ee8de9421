"""Patch tables: one row per wrapped SDK method, applied where the installed version has it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import wrapt
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, unwrap

from budgetspan.events import internal_error

# --- patch tables -------------------------------------------------------------------------------

#: (module, "Class.method" or "function", wrapper factory taking ``asynchronous``, asynchronous):
#: one row per patched method or module-level function (``litellm.completion``, helpers the SDK
#: calls by module name).
Patch = tuple[str, str, Callable[[bool], Callable[..., Any]], bool]


def sync_and_async(
    module: str, factory: Callable[[bool], Callable[..., Any]], *targets: str
) -> tuple[Patch, ...]:
    """Rows for SDK resource methods and their async twins, which the SDKs name ``Async`` + the
    sync class: ``Messages.create`` also gives ``AsyncMessages.create``."""
    return tuple(
        (module, prefix + target, factory, bool(prefix)) for prefix in ("", "Async") for target in targets
    )


def apply_patches(table: tuple[Patch, ...]) -> list[tuple[Any, str]]:
    """Wrap every row whose target exists in this SDK version; return (owner, name) wrapped."""
    done: list[tuple[Any, str]] = []
    for module, target, factory, asynchronous in table:
        try:
            mod = importlib.import_module(module)
            owner_name, _, name = target.rpartition(".")
            owner = getattr(mod, owner_name, None) if owner_name else mod
            if owner is None or not callable(getattr(owner, name, None)):
                continue  # not in this SDK version
            wrapt.wrap_function_wrapper(mod, target, factory(asynchronous))
            done.append((owner, name))
        except Exception:
            internal_error(f"patch {module}.{target}")
    return done


def remove_patches(done: list[tuple[Any, str]]) -> None:
    """Undo what ``apply_patches`` (or another patch list of (owner, name)) wrapped, last first."""
    while done:
        owner, name = done.pop()
        try:
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
