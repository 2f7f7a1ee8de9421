"""The one grammar for numbers read from configuration, and ``ConfigError``.

Every limit or setting written as text (``BUDGETSPAN_BUDGET``, a string in ``BUDGETSPAN_CONFIG``,
``BUDGETSPAN_COLLECTOR_*``, the metrics variables) is read here, so each means the same wherever
it is written:

- a count (calls, tokens, retries, runs, a port): ASCII decimal digits, at most ``MAX_COUNT``
  (2**53: a float, Redis's Lua number, carries every count up to it exactly);
- an amount (dollars, seconds, a share): a plain decimal or exponent number (``0.25``, ``.5``,
  ``2e-3``), finite and not negative.

No sign, no ``_``, no digits of other scripts (``int`` and ``float`` take ``١٢`` as 12), no
``0x``, no ``inf``. A TOML value that is already a number takes the same bounds: a count is an
integer (``3``, not ``3.0``), never a bool.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from budgetspan.accounting.budget import (
    COUNT_NAMES,
    LIMIT_NAMES,
    LOOP_ACTION_NAMES,
    LOOP_ACTIONS,
    LOOP_LIMIT_NAMES,
    MAX_COUNT,
    Budget,
    ToolLimits,
)

COUNT_FORM = "a whole number in ASCII digits, at most 2**53"
AMOUNT_FORM = "a plain decimal number (0.25, .5, 2e-3), finite and not negative"
_AMOUNT = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,4})?")


class ConfigError(ValueError):
    """A value that cannot be used, named with the form expected (a word over 200 characters cut)."""

    def __init__(self, message: str) -> None:
        super().__init__(_LONG_WORD.sub(lambda m: f"{m[0][:120]}...({len(m[0])} characters)", message))


_LONG_WORD = re.compile(r"\S{201,}")


def count_text(text: str) -> int:
    """A count written as text; ``ValueError`` (saying the form) when it is not one."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(_unlike(text, COUNT_FORM))
    if len(text) > 16 or int(text) > MAX_COUNT:  # (2**53 has 16 digits: 5,000 never reach int())
        raise ValueError("must be at most 2**53")
    return int(text)


def amount_text(text: str) -> float:
    """An amount written as text; ``ValueError`` (saying the form) when it is not one."""
    value = float(text) if text.isascii() and len(text) <= 64 and _AMOUNT.fullmatch(text) else math.inf
    if not math.isfinite(value):  # (also 1e400, which float() makes inf)
        raise ValueError(_unlike(text, AMOUNT_FORM))
    return value


def _unlike(text: str, form: str) -> str:
    return "must be >= 0" if text.startswith("-") else f"is not a number in the form accepted ({form})"


def check_count(value: object) -> None:
    """A count given as a typed value (TOML): an int, not a bool nor a float."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"is not {COUNT_FORM}")


def env_count(env: Mapping[str, str], name: str, default: int, least: int = 0) -> int:
    """The count in variable ``name`` (``default`` when unset or empty), at least ``least``."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = count_text(raw)
    except ValueError:
        value = least - 1
    if value < least:
        raise ConfigError(f"{name}={raw!r}: expected {COUNT_FORM}, at least {least}")
    return value


def env_amount(env: Mapping[str, str], name: str, default: float) -> float:
    """The positive amount in variable ``name`` (``default`` when unset or empty)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = amount_text(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ConfigError(f"{name}={raw!r}: expected {AMOUNT_FORM}, above 0")
    return value


def limit_value(source: str, name: str, raw: Any, form: str) -> Any:
    """One limit from text or TOML, checked (None: no limit); a ``ConfigError`` naming ``source``,
    the limit and the value, with ``form`` (what the source accepts)."""
    if name in LOOP_ACTION_NAMES:
        action = str(raw).strip().lower()
        if action not in LOOP_ACTIONS:
            raise ConfigError(f"{source}: {name}={raw!r}: expected one of {', '.join(LOOP_ACTIONS)}")
        return action
    value = raw
    count = name in COUNT_NAMES
    try:
        if isinstance(raw, str):  # the one grammar, whatever the source
            text = raw.strip().lower()
            if text in ("none", "off", "unlimited", ""):
                return None
            value = count_text(text) if count else amount_text(text)
        elif count and raw is not None:
            check_count(raw)  # TOML: 3, not 3.0 (as the text form says)
    except ValueError as e:
        raise ConfigError(f"{source}: {name}={raw!r} {e}") from None  # (the form: the value's)
    try:
        Budget(**{name: value}) if name in (*LIMIT_NAMES, *LOOP_LIMIT_NAMES) else ToolLimits(**{name: value})
    except ValueError as e:
        raise ConfigError(f"{source}: {e}; expected {form}") from None
    return value


def count_at_most(text: str, most: int) -> int:
    """The count in ``text`` (the grammar above) if at most ``most``, else -1."""
    try:
        value = count_text(text)
    except ValueError:
        return -1
    return value if value <= most else -1


def count_option(least: int, most: int = MAX_COUNT) -> Callable[[str], int]:
    """An ``argparse`` type: a count in the grammar above, from ``least`` to ``most`` (``int``
    took ``--top -5``, ``+3``, ``1_000`` and ``١٢``)."""

    def parse(text: str) -> int:
        try:
            value = count_text(text.strip())
        except ValueError as e:
            if not text.strip().startswith("-"):
                raise argparse.ArgumentTypeError(f"{text!r} {e}") from None
            value = -1
        if value < least:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {least}")
        if value > most:
            raise argparse.ArgumentTypeError(f"{text!r} must be at most {most}")
        return value

    return parse


def amount_option(text: str) -> float:
    """An ``argparse`` type: an amount in the grammar above (``float`` took ``nan`` and ``-1``)."""
    try:
        return amount_text(text.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} {e}") from None
