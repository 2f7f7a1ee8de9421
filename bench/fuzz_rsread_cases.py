"""The lines ``fuzz_rsread.py`` reads: seed lines changed in their structure or their bytes.

Structure: a value replaced by one of any type, an OTLP attribute added (every AnyValue type,
right or wrong, two fields in one), a key written twice, a key removed, deep nesting, fields the
reader skips; written back with odd spellings (escapes, surrogate pairs and lone surrogates,
whitespace). Bytes: flips, cuts, deletions, copies, spliced tokens (NUL, invalid UTF-8...), long
runs. The ``Keep``s read with, one of them made of run-time strings.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

from budgetspan import attributes as A
from budgetspan.report.analysis import REPORT_KEEP
from budgetspan.report.otlp import Keep
from budgetspan.report.runs_detail import DETAIL_KEEP


def _copy(s: str) -> str:
    return "".join(list(s))  # an equal str that is not the same object (not interned)


# keys made at run time: the reader must not rely on the kept keys being the module constants
ODD_KEEP = Keep(
    keys=frozenset(_copy(k) for k in (*REPORT_KEEP.keys, "budgetspan.limit.tokens")),
    events=frozenset({A.EVENT_WOULD_EXHAUST, "ev"}),
    prefixes=("budgetspan.", "x"),
    prefixes_on=(_copy(A.WORKFLOW), "wf"),
)
KEEPS = (REPORT_KEEP, DETAIL_KEEP, ODD_KEEP)

# --- generating -----------------------------------------------------------------------------


class Raw:
    """Text written as is (a number literal JSON may or may not allow)."""

    def __init__(self, text: str) -> None:
        self.text = text


class Dup:
    """An object written with its pairs as given (a key may come twice)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


NUMBERS = [
    "0",
    "-0",
    "1",
    "-1",
    "2",
    "7",
    "12",
    "0.0",
    "-0.0",
    "1.5",
    "-2.5",
    "1e5",
    "1E+5",
    "1e-5",
    "-1E-0",
    "0e999",
    "1e400",
    "-1e400",
    "1e-400",
    "4.9e-324",
    "2.4703282292062328e-324",
    "2.4703282292062327e-324",
    "1.7976931348623157e308",
    "1.7976931348623159e308",
    "2.2250738585072011e-308",
    "9007199254740993",
    "9007199254740993.0",
    "999999999999999999",
    "-99999999999999999",
    "1000000000000000000",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "0.1000000000000000055511151231257827",
    "1.00000000000000011102230246251565",
    "123456789012345678.5",
    "1e0000000000000000000000001",
    "00",
    "01",
    "-01",
    "1.",
    ".5",
    "+1",
    "0x10",
    "-",
    "1e",
    "1e+",
    "Infinity",
    "-Infinity",
    "NaN",
    "true",
    "false",
    "null",
]
TEXT_INTS = (
    "0",
    "12",
    "0012",
    "-12",
    "+7",
    " 7",
    "7 ",
    "1_000",
    "\u0661\u0662",
    "\u00b2",
    "",
    "x",
    "999999999999999999",
    "1000000000000000000",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "00000000000000000012",
    "-0",
)
TEXT_DOUBLES = ("NaN", "Infinity", "-Infinity", "nan", "inf", "1.5", " 1.5", "1e400", "", "x", "-0")
STRINGS = (
    "",
    "chat",
    "invoke_agent",
    "wf",
    "phase x",
    "phase ",
    "r",
    "success",
    "\u00e9",
    "\U0001f600",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udc00x",
    "\ud83d\ude00",
    "\\",
    '"',
    "\n\t\x7f",
    "x" * 70,
    "x" * 5000,
    "\u2028",
    "\ufeff",
    "STATUS_CODE_ERROR",
    "true",
)


def literal(rng: random.Random) -> str:
    """A random number literal up to ~34 characters: the edges of the length limits and of rounding."""
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 22)))
    out = rng.choice(["", "-"]) + (digits.lstrip("0") or "0")
    if rng.random() < 0.6:
        out += "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 17)))
    if rng.random() < 0.4:
        out += (
            rng.choice("eE")
            + rng.choice(["", "+", "-"])
            + str(rng.choice([0, 1, 5, 22, 300, 308, 309, 324, 400]))
        )
    return out


def number(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.2:
        return Raw(literal(rng))
    if r < 0.5:
        return Raw(rng.choice(NUMBERS))
    if r < 0.7:
        return rng.randint(-(2**70), 2**70) if rng.random() < 0.3 else rng.randint(-100, 10**6)
    return rng.choice([rng.uniform(-1e6, 1e6), rng.random() * 10.0 ** rng.randint(-323, 307), -0.0])


def text(rng: random.Random) -> str:
    return (
        rng.choice(STRINGS) if rng.random() < 0.7 else "".join(chr(rng.randint(0, 0x2FFFF)) for _ in range(4))
    )


def any_value(rng: random.Random, depth: int = 0) -> Any:
    """An OTLP AnyValue of any type, right or wrong, sometimes with two fields or none."""
    kinds: list[Callable[[], Any]] = [
        lambda: {"stringValue": text(rng)},
        lambda: {"boolValue": rng.random() < 0.5},
        lambda: {"intValue": rng.choice(TEXT_INTS) if rng.random() < 0.6 else number(rng)},
        lambda: {"doubleValue": number(rng) if rng.random() < 0.6 else rng.choice(TEXT_DOUBLES)},
        lambda: {"arrayValue": {"values": [any_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]}},
        lambda: {"kvlistValue": {"values": [kv(rng, depth + 1) for _ in range(rng.randint(0, 3))]}},
        lambda: {"bytesValue": rng.choice(["aGk=", "", 5])},
        lambda: {},
        lambda: {rng.choice(["stringValue", "boolValue", "intValue", "doubleValue"]): rng_json(rng)},
    ]
    if depth > 6:
        kinds = kinds[:4]
    v = rng.choice(kinds)()
    if rng.random() < 0.15:
        v.update(rng.choice(kinds)())
    return v


def plain_value(rng: random.Random) -> Any:
    """A well-formed scalar AnyValue, the kinds the Rust reader reads in place."""
    return rng.choice(
        [
            lambda: {"stringValue": text(rng)},
            lambda: {"boolValue": rng.random() < 0.5},
            lambda: {
                "intValue": str(rng.choice([0, 7, rng.randint(0, 10 ** rng.randint(1, 19))])).zfill(
                    rng.randint(0, 3)
                )
            },
            lambda: {"doubleValue": number(rng)},
            lambda: {"doubleValue": rng.uniform(-1e3, 1e3)},
            lambda: {"intValue": "5", "boolValue": rng.random() < 0.5},
        ]
    )()


def kv(rng: random.Random, depth: int = 0) -> Any:
    keys = sorted(REPORT_KEEP.keys | DETAIL_KEEP.keys | ODD_KEEP.keys)
    r = rng.random()
    key = (
        rng.choice(keys)
        if r < 0.6
        else rng.choice(["budgetspan.limit.x", "budgetspan.usage.y", "x1", text(rng)])
    )
    out: dict[str, Any] = {"key": key, "value": any_value(rng, depth)}
    if rng.random() < 0.05:
        del out["value"]
    return out


def rng_json(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 3 or r < 0.5:
        return rng.choice([None, True, False, text(rng), number(rng)])
    if r < 0.75:
        return [rng_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {text(rng): rng_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


# --- writing JSON with odd spellings ---------------------------------------------------------


def dump_str(s: str, rng: random.Random, ascii_only: bool, rate: float = 0.02) -> str:
    """A JSON string, some characters escaped as \\uXXXX (surrogates as pairs, or alone as given)."""
    out = ['"']
    for ch in s:
        c = ord(ch)
        if (
            ch in '"\\'
            or c < 0x20
            or 0xD800 <= c < 0xE000
            or (ascii_only and c > 0x7E)
            or rng.random() < rate
        ):
            if c > 0xFFFF:
                c -= 0x10000
                out.append(f"\\u{0xD800 + (c >> 10):04x}\\u{0xDC00 + (c & 0x3FF):04X}")
            elif ch in '"\\/' and rng.random() < 0.5:
                out.append("\\" + ch)
            else:
                out.append(f"\\u{c:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def dump(
    v: Any, rng: random.Random, ascii_only: bool = False, escape_keys: float = 0.0, rate: float = 0.0
) -> str:
    """JSON text of ``v``: ``rate`` of the string values' characters escaped, keys escaped by chance."""
    ws = rng.choice(["", "", " ", "\n", "\t ", "\r\n"]) if rng.random() < 0.1 else ""
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, (Dup, dict)):
        pairs = v.pairs if isinstance(v, Dup) else list(v.items())
        parts = []
        for k, x in pairs:
            key = dump_str(k, rng, ascii_only, 0.02 if rng.random() < escape_keys else 0.0)
            parts.append(f"{key}{ws}:{ws}{dump(x, rng, ascii_only, escape_keys, rate)}")
        return "{" + ws + ("," + ws).join(parts) + ws + "}"
    if isinstance(v, list):
        return "[" + ws + ("," + ws).join(dump(x, rng, ascii_only, escape_keys, rate) for x in v) + ws + "]"
    if isinstance(v, str):
        return dump_str(v, rng, ascii_only, rate)
    if isinstance(v, float) and v != v:
        return "NaN"
    return json.dumps(v)


# --- mutating --------------------------------------------------------------------------------


def nodes(v: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    yield v, path
    if isinstance(v, dict):
        for k, x in v.items():
            yield from nodes(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from nodes(x, (*path, i))


def _attr_lists(tree: Any) -> list[list[Any]]:
    return [v for v, p in nodes(tree) if p and p[-1] == "attributes" and isinstance(v, list)]


def tree_mutation(rng: random.Random, tree: Any) -> Any:
    """One change to a parsed line: a value replaced, an attribute added, a key doubled or removed."""
    r = rng.random()
    lists = _attr_lists(tree)
    if r < 0.35 and lists:
        items = rng.choice(lists)
        items.insert(rng.randint(0, len(items)), kv(rng))
        return tree
    all_nodes = list(nodes(tree))
    node, path = rng.choice(all_nodes)
    parent = tree
    for p in path[:-1]:
        parent = parent[p]
    if r < 0.55 and path:
        parent[path[-1]] = rng.choice([rng_json(rng), any_value(rng), number(rng), text(rng), None, {}, []])
    elif r < 0.7 and isinstance(node, dict) and node:
        pairs = list(node.items())
        k, x = rng.choice(pairs)
        twin = x if rng.random() < 0.5 else rng_json(rng)
        pairs.insert(rng.randint(0, len(pairs)), (k, twin))
        if path:
            parent[path[-1]] = Dup(pairs)
        else:
            return Dup(pairs)
    elif r < 0.8 and isinstance(node, dict) and node:
        del node[rng.choice(list(node))]
    elif r < 0.9 and path:
        deep = rng.choice([10, 60, 63, 64, 65, 66, 70, 200])
        wrapped: Any = parent[path[-1]]
        for _ in range(deep):
            wrapped = [wrapped] if rng.random() < 0.5 else {"d": wrapped}
        parent[path[-1]] = wrapped
    elif isinstance(node, dict) and "spanId" in node and rng.random() < 0.5:
        node["events"] = [event(rng) for _ in range(rng.randint(0, 3))]
    elif isinstance(node, dict) and "spanId" in node:
        field = rng.choice(list(SPAN_FIELDS))
        node[field] = rng.choice(SPAN_FIELDS[field])
    elif isinstance(node, dict):
        node[rng.choice(["kind", "flags", "x", "status", "events", "parentSpanId", "code"])] = rng_json(rng)
    return tree


_TIMES = ["0", "1", "18446744073709551615", "18446744073709551616", "00000000000000000001", "-1", " 1", "+1"]
_TIMES += ["1e3", "", "\u0661", 5, None, "123456789012345678901"]
_IDS = ["", "a", "b3a27b8a4b408221", "x" * 100, "\u00e9", None, 5]
SPAN_FIELDS: dict[str, list[Any]] = {
    "status": [{"code": c} for c in (2, 1, 0, "STATUS_CODE_ERROR", "STATUS_CODE_OK", "2", -0, True, None)]
    + [{"code": Raw(c)} for c in ("2.0", "-0", "2e0", "02", "99999999999999999999")]
    + [{}, None, {"message": "x", "code": 2}, [], "error"],
    "startTimeUnixNano": _TIMES,
    "endTimeUnixNano": _TIMES,
    "traceId": _IDS,
    "spanId": _IDS,
    "parentSpanId": _IDS,
    "name": ["phase x", "phase", "phase ", "Phase x", "", "chat", None, 5],
    "attributes": [None, [], {}, "x", [None], [{}], [{"key": "budgetspan.phase"}]],
}


def event(rng: random.Random) -> Any:
    """A span event, mostly one a ``Keep`` reads (its attributes then read by ``otlp._events``)."""
    name = rng.choice(["ev", A.EVENT_WOULD_EXHAUST, text(rng), 5])
    out: dict[str, Any] = {
        "name": name,
        "timeUnixNano": "1",
        "attributes": [kv(rng) for _ in range(rng.randint(0, 2))],
    }
    if rng.random() < 0.1:
        del out["name"]
    return out


TOKENS = [
    b'"',
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-0",
    b"1e400",
    b"\\ud800",
    b"\\u0000",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    b"\xed\xa0\x80",
    b" ",
    b"\n",
    b"0",
    b"\\u",
    b"\x7f",
    b"\t",
]


def byte_mutation(rng: random.Random, b: bytes) -> bytes:
    if not b:
        return rng.choice(TOKENS)
    i = rng.randrange(len(b))
    r = rng.random()
    if r < 0.25:
        return (
            b[:i]
            + bytes([rng.randrange(256) if rng.random() < 0.5 else b[i] ^ (1 << rng.randrange(8))])
            + b[i + 1 :]
        )
    if r < 0.4:
        return b[:i]
    if r < 0.55:
        return b[:i] + b[i + rng.randint(1, 40) :]
    if r < 0.7:
        j = min(len(b), i + rng.randint(1, 200))
        return b[:j] + b[i:j] + b[j:]
    if r < 0.9:
        return b[:i] + rng.choice(TOKENS) + b[i:]
    # a string's text made long, or a digit run made long
    return b[:i] + bytes([b[i]]) * rng.choice([17, 18, 19, 21, 65, 5000]) + b[i + 1 :]


def case(rng: random.Random, seeds: list[str]) -> bytes:
    """One fuzzed line: a seed line changed in its structure, in its bytes, or both."""
    line = rng.choice(seeds)
    r = rng.random()
    if r < 0.25:  # values the reader reads itself, mostly: a fast path compared, not only refused
        tree = json.loads(line)
        lists = _attr_lists(tree)
        for _ in range(rng.randint(1, 4)):
            if lists:
                items = rng.choice(lists)
                items.insert(rng.randint(0, len(items)), {"key": kv(rng)["key"], "value": plain_value(rng)})
        return dump(tree, rng, rng.random() < 0.3, 0.0, rng.choice([0.0, 0.0, 0.01])).encode(
            "utf-8", "surrogatepass"
        )
    if r < 0.75:
        tree = json.loads(line)
        for _ in range(rng.choice([1, 1, 1, 2, 3, 6])):
            if isinstance(tree, Dup):
                break
            tree = tree_mutation(rng, tree)
        rate = rng.choice([0.0, 0.0, 0.02])
        text_ = dump(tree, rng, rng.random() < 0.2, rng.choice([0.0, 0.0, 0.0, 0.05]), rate)
        b = text_.encode("utf-8", "surrogatepass")
        if rng.random() < 0.3:
            b = byte_mutation(rng, b)
        return b + rng.choice([b"", b"", b"\n", b"\r\n", b" \n"])
    b = line.encode()
    for _ in range(rng.choice([1, 1, 2, 4])):
        b = byte_mutation(rng, b)
    return b
