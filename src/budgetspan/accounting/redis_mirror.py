"""What a process knows about a run it keeps in Redis: the budget it opened with and a mirror of
the figures the scripts last returned, enough to restore the run if its key vanishes; and the
conversions between the hash's fields and the ledger's types.

**Clamped.** Token figures are clamped to ``TOKEN_CAP`` (10**15) and dollars to ``COST_CAP`` (10**12)
before they are sent, and every sum on the server stays at or below the same caps: a provider
reporting absurd usage (``prompt_tokens = 10**30``) can neither overflow a counter nor make a
figure inexact, and is never taken for an outage. Beyond the caps the Redis ledger stops counting
where ``InMemoryLedger`` goes on.
"""

from __future__ import annotations

import dataclasses
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from budgetspan.accounting.budget import FLOAT_LIMIT_NAMES, Budget, Limit, Usage
from budgetspan.accounting.ledger import Mode, Refusal
from budgetspan.accounting.redis_scripts import COST_CAP, MIRROR, TOKEN_CAP
from budgetspan.accounting.rule import Held


@dataclass
class RunMirror:
    """A run this process has open: its budget, and the mirror of what Redis last said about it."""

    budget: Budget
    mode: Mode
    #: When the run started, on this process's ``time.monotonic`` clock.
    started_monotonic: float
    #: How many scopes of this process opened the run and have not closed it.
    opens: int = 0
    #: ``started_at`` as stored in the hash (the server's clock), once known.
    started_at: Any = None
    #: The wall-clock limit on the hash (the first opener's budget sets it).
    wall_s: float | None = None
    #: The mirror: by script and tool ('' for none), the latest text of ``MIRROR`` figures that
    #: script returned for a call of that tool, with the ticket of the request that brought it (a
    #: slower reply to an earlier request never replaces a later one). See ``mirrored_fields``.
    seen: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    #: The latest of ``seen`` (ticket -1: none yet).
    latest: tuple[int, bytes] = (-1, b"")
    #: From when (on ``boot_clock``) a reservation has the server compare its clock with the run's
    #: deadline (``clock_from``; -inf: from the start, +inf: never, no wall-clock limit).
    clock_from: float = float("-inf")
    #: The same for a call outside the final phase, held to the deadline less the wall-clock time
    #: the hash keeps for the final answer (``keep:max_wall_clock_s``).
    clock_from_short: float = float("-inf")
    #: When this process last refreshed the hash's expiry (``time.monotonic``; ``RedisLedger``).
    refreshed: float = float("-inf")
    #: What was logged for this run already ("lost", "unreachable").
    logged: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def remember(self, ticket: int, script: str, text: bytes, tool: str | None = None) -> None:
        """Keep a reply's mirror text unless the reply to a later request was kept already."""
        key = (script, tool or "")
        with self.lock:
            kept = self.seen.get(key)
            if kept is None or kept[0] < ticket:
                self.seen[key] = (ticket, text)
                self.latest = max(self.latest, (ticket, text))

    @property
    def deadline(self) -> float | None:
        return None if self.wall_s is None else self.started_monotonic + self.wall_s


#: What a reservation's reckoning of the server's clock allows for besides the open's round trip
#: (``clock_from``): a second, and 1% of the wall-clock limit (clocks drift by far less).
CLOCK_MARGIN_S, CLOCK_DRIFT = 1.0, 0.01
#: This process's clock for that reckoning: counts a suspended machine's sleep where it can.
_BOOT = getattr(time, "CLOCK_BOOTTIME", None)


def boot_clock() -> float:
    return time.clock_gettime(_BOOT) if _BOOT is not None else time.monotonic()


def clock_from(sent: float, got: float, server_now: float, started_at: float, wall_s: float | None) -> float:
    """When (on ``boot_clock``) the run's deadline may be near, reckoned from the open's reply: the
    server's clock read ``server_now`` between ``sent`` and ``got`` (this process's clock), so the
    deadline ``started_at + wall_s`` comes at ``got + started_at + wall_s - server_now`` at the
    latest and at most the round trip earlier; less the margins. Until then a reservation leaves
    out the server's TIME (8k instructions of a reservation's ~110k, bench/README.md)."""
    if wall_s is None:
        return float("inf")
    latest = got + started_at + wall_s - server_now
    return latest - (got - sent) - CLOCK_MARGIN_S - CLOCK_DRIFT * wall_s


def clamp_tokens(value: int | float | None) -> int:
    """A token figure as the ledger keeps it: positive, whole, at most ``TOKEN_CAP``."""
    if type(value) is int and 0 < value <= TOKEN_CAP:  # (the usual figure: no min, no int)
        return value
    if value is None or not value > 0:  # None, 0, negatives and NaN add nothing
        return 0
    return int(min(value, TOKEN_CAP))


def clamp_dollars(value: float | None) -> float:
    """A dollar figure as the ledger keeps it: positive, at most ``COST_CAP``."""
    if type(value) is float and 0.0 < value <= COST_CAP:
        return value
    if value is None or not value > 0:
        return 0.0
    return float(min(value, COST_CAP))


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def refusal_from(reason: Any, limit: Any, tool: str | None) -> Refusal | None:
    """The refusal in a script's reply (``reason`` b'' for none), as ``rule.refusal`` gives it."""
    if not reason:
        return None
    name = as_text(reason)
    raw = as_text(limit)
    value: float | None
    if raw == "":
        value = None
    elif name in FLOAT_LIMIT_NAMES:
        value = float(raw)
    else:
        value = int(raw) if raw.isdigit() else int(float(raw))  # ('1e+17': a count past 17 digits)
    on_tool = tool if name in (Limit.TOOL_MAX_CALLS.value, Limit.TOOL_MAX_RETRIES.value) else None
    return Refusal(name, value, on_tool)


def with_worst(
    found: Refusal | None, worst: tuple[float, int, int], known: RunMirror | None
) -> Refusal | None:
    """A spend limit not used up that refused the call: its worst case (dollars, input, output
    tokens) would have passed it, which the explanation says (as ``rule._breaks`` does in memory):
    the reply names the limit only. What is spent comes from the scope's reply, or the run's mirror."""
    if found is None or found.limit is None:
        return found
    cost, held_in, held_out = worst
    own = Held(cost, held_in, held_out).toward(found.reason)
    if own <= 0:  # a count or time limit, or no worst case of that kind
        return found
    if found.scope is not None:
        spent = found.spent
    else:
        spent = None if known is None else usage_of(known).value_of(found.reason)
    if spent is None or spent >= found.limit:
        return found
    return dataclasses.replace(found, worst=own)


def usage_from(fields: dict[str, Any]) -> Usage:
    """A run's usage from its hash's fields (or a mirror of them)."""

    def i(name: str) -> int:
        v = fields.get(name)
        return 0 if v is None else int(v)

    cost = fields.get("cost_usd")
    u = Usage(
        model_calls=i("model_calls"),
        tool_calls=i("tool_calls"),
        retries=i("retries"),
        input_tokens=i("input_tokens"),
        output_tokens=i("output_tokens"),
        cache_read_tokens=i("cache_read_tokens"),
        cache_write_tokens=i("cache_write_tokens"),
        reasoning_tokens=i("reasoning_tokens"),
        cost_usd=0.0 if cost is None else float(cost),
        unpriced_calls=i("unpriced_calls"),
        unreported_usage_calls=i("unreported_usage_calls"),
        tools_finished=i("tools_finished"),
    )
    for k, v in fields.items():
        if k.startswith("tool:") and v is not None:  # tool:{name}:calls | tool:{name}:retries
            name, what = k[len("tool:") : k.rfind(":")], k[k.rfind(":") + 1 :]
            (u.tool_calls_by_name if what == "calls" else u.tool_retries_by_name)[name] = int(v)
    return u


#: The run's figures as the hash's ``F`` field and each reply's mirror keep them: ``MIRROR``'s, in
#: its order, as little-endian doubles (redis_scripts.py).
FIGURES = struct.Struct(f"<{len(MIRROR)}d")


def figures_of(packed: bytes) -> dict[str, float]:
    """The figures in a packed ``F`` field (or a mirror's first ``FIGURES.size`` bytes)."""
    return dict(zip(MIRROR, FIGURES.unpack_from(packed), strict=True))


def hash_fields(flat: list[Any]) -> dict[str, Any]:
    """A hash's fields from HGETALL's flat list: a run's packed figures by name, its packed
    limits left out; a scope window's text fields as they are."""
    fields: dict[str, Any] = {as_text(k): v for k, v in zip(flat[::2], flat[1::2], strict=True)}
    packed = fields.pop("F", None)
    fields.pop("L", None)
    if packed is not None:
        fields.update(figures_of(packed))
    return fields


def mirrored_fields(known: RunMirror) -> dict[str, Any]:
    """The run's hash as this process last heard of it: the figures and open count of the latest
    reply, and each tool's calls and retries from the latest reply that carried them (call with
    ``known.lock``)."""
    fields: dict[str, Any] = {}
    for (_script, tool), (_ticket, text) in sorted(known.seen.items(), key=lambda item: item[1][0]):
        fields.update(figures_of(text))
        opened, calls, retries = text[FIGURES.size + 1 :].split(b" ")
        if opened:
            fields["opened"] = opened
        if calls:
            fields[f"tool:{tool}:calls"] = calls
        if retries:
            fields[f"tool:{tool}:retries"] = retries
    return fields


#: A field longer than Redis's ``hash-max-listpack-value`` (64 bytes by default), so that Redis keeps
#: a run's hash as a hash table: in a listpack, its compact form for small hashes, every field is
#: found by a scan, and the reserve script then costs 12% more (bench/README.md).
ABOUT = "budgetspan run ledger; this field is longer than 64 bytes to keep the hash a hash table"


def budget_fields(budget: Budget, mode: Mode) -> dict[str, Any]:
    """The hash fields that hold a run's budget."""
    fields: dict[str, Any] = {"about": ABOUT, "mode": mode.value}
    for name, value in budget.limits().items():
        fields["limit:" + name] = value
    for name, amount in budget.reserve_for_final.items():
        fields["keep:" + name] = amount
    for tool, tl in budget.tools.items():
        if tl.max_calls is not None:
            fields[f"limit:tool:{tool}:max_calls"] = tl.max_calls
        if tl.max_retries is not None:
            fields[f"limit:tool:{tool}:max_retries"] = tl.max_retries
    return fields


def usage_of(known: RunMirror) -> Usage:
    """The run's usage as this process last heard it from Redis."""
    with known.lock:
        fields = mirrored_fields(known)
    u = usage_from(fields)
    u.wall_clock_s = max(0.0, time.monotonic() - known.started_monotonic)
    return u
