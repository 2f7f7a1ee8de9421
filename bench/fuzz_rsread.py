"""Differential fuzzing of the report's Rust reader (``report/rsread/``) against the Python reading.

The contract: for any bytes line, ``_rsread.read_line(line, state)`` returns exactly the spans the
Python reading (``fastread.parse_line_fast`` with the Rust reader off) returns (same values, same
types, same attribute order) or None; it never crashes the process nor raises. Each case is a
seed line (the demo's traces, the hostile-input test's runs) mutated: byte flips, cuts, spliced
tokens, duplicated keys, deep nesting, odd numbers, escapes (surrogates too), NUL bytes, long
strings, attribute values of every OTLP type. Cases run in worker subprocesses, so a crash is
seen (and its input written out by a traced re-run of the batch).

    PYTHONPATH=src:. python bench/fuzz_rsread.py --minutes 10      # the long run
    PYTHONPATH=src:. python bench/fuzz_rsread.py --leaks 1000000   # refcounts and RSS
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from budgetspan import attributes as A
from budgetspan.report import fastread, native, rsnative
from budgetspan.report.analysis import REPORT_KEEP
from budgetspan.report.otlp import BadLine, Keep
from budgetspan.report.runs_detail import DETAIL_KEEP

DEMO = Path("/work/main/budgetspan-demo.jsonl")


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

# --- comparing ------------------------------------------------------------------------------


def exact(v: Any) -> Any:
    """A value with its type at every level and its order kept (repr: NaN equals NaN, -0.0 is not 0.0)."""
    if isinstance(v, dict):
        return ("dict", [(exact(k), exact(x)) for k, x in v.items()])
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, [exact(x) for x in v])
    return (type(v).__name__, repr(v))


FIELDS = ("trace_id", "span_id", "parent_id", "name", "start_ns", "end_ns", "attrs", "error", "events")
FIELDS += ("operation", "is_phase")


def spans_exact(spans: Any) -> Any:
    return [(type(s).__module__, [exact(getattr(s, f)) for f in FIELDS]) for s in spans]


Reader = tuple[str, Any, tuple[Any, ...], type[Exception]]


def readers() -> list[Reader]:
    """The fastread modules to compare with (the pure one, and the compiled one when built), each
    with its own ``Keep``s and ``BadLine``."""
    found: list[Reader] = [("pure", fastread, KEEPS, BadLine)]
    if native.compiled() is not None:
        import importlib

        otlp = importlib.import_module(f"budgetspan.report.{native.NATIVE_DIR}.otlp")
        keeps = tuple(otlp.Keep(k.keys, k.events, k.prefixes, k.prefixes_on) for k in KEEPS)
        module = importlib.import_module(f"budgetspan.report.{native.NATIVE_DIR}.fastread")
        found.append(("compiled", module, keeps, otlp.BadLine))
    for _, module, _, _ in found:
        module.use_rust(False)
    return found


def compare(rs: Any, modules: list[Reader], line: bytes) -> list[str]:
    """What differs between the Rust reader and the Python reading of ``line`` (empty: nothing)."""
    problems = []
    for label, module, keeps, bad_line in modules:
        for n, keep in enumerate(keeps):
            state = module._rs_state(keep)
            try:
                got = rs.read_line(line, state)
            except BaseException as e:  # the contract: never raises
                problems.append(f"{label}: read_line raised {type(e).__name__}: {e}")
                continue
            if got is None:
                continue
            try:
                want: Any = spans_exact(module.parse_line_fast(line, keep))
            except bad_line as e:
                want = f"BadLine: {e}"
            except Exception as e:  # the Python reading's own bug: named too
                want = f"python raised {type(e).__name__}: {e}"
            if spans_exact(got) != want or type(got) is not list:
                problems.append(f"{label}/keep{n}: rust {spans_exact(got)!r:.3000} != {want!r:.3000}")
    return problems


# --- generating -----------------------------------------------------------------------------


class Raw:
    """Text written as is (a number literal JSON may or may not allow)."""

    def __init__(self, text: str) -> None:
        self.text = text


class Dup:
    """An object written with its pairs as given (a key may come twice)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


NUMBERS = ["0", "-0", "1", "-1", "2", "7", "12", "0.0", "-0.0", "1.5", "-2.5", "1e5", "1E+5", "1e-5", "-1E-0", "0e999", "1e400", "-1e400", "1e-400", "4.9e-324", "2.4703282292062328e-324", "2.4703282292062327e-324", "1.7976931348623157e308", "1.7976931348623159e308", "2.2250738585072011e-308", "9007199254740993", "9007199254740993.0", "999999999999999999", "-99999999999999999", "1000000000000000000", "9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809", "18446744073709551615", "18446744073709551616", "0.1000000000000000055511151231257827", "1.00000000000000011102230246251565", "123456789012345678.5", "1e0000000000000000000000001", "00", "01", "-01", "1.", ".5", "+1", "0x10", "-", "1e", "1e+", "Infinity", "-Infinity", "NaN", "true", "false", "null"]
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
        out += rng.choice("eE") + rng.choice(["", "+", "-"]) + str(rng.choice([0, 1, 5, 22, 300, 308, 309, 324, 400]))
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


def dump_str(s: str, rng: random.Random, ascii_only: bool) -> str:
    """A JSON string, some characters escaped as \\uXXXX (surrogates as pairs, or alone as given)."""
    out = ['"']
    for ch in s:
        c = ord(ch)
        if (
            ch in '"\\'
            or c < 0x20
            or 0xD800 <= c < 0xE000
            or (ascii_only and c > 0x7E)
            or rng.random() < 0.02
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


def dump(v: Any, rng: random.Random, ascii_only: bool = False, escape_keys: float = 0.0) -> str:
    ws = rng.choice(["", "", " ", "\n", "\t ", "\r\n"]) if rng.random() < 0.1 else ""
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, (Dup, dict)):
        pairs = v.pairs if isinstance(v, Dup) else list(v.items())
        parts = []
        for k, x in pairs:
            key = dump_str(k, random.Random(0) if rng.random() >= escape_keys else rng, ascii_only)
            parts.append(f"{key}{ws}:{ws}{dump(x, rng, ascii_only, escape_keys)}")
        return "{" + ws + ("," + ws).join(parts) + ws + "}"
    if isinstance(v, list):
        return "[" + ws + ("," + ws).join(dump(x, rng, ascii_only, escape_keys) for x in v) + ws + "]"
    if isinstance(v, str):
        return dump_str(v, rng, ascii_only)
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
    elif isinstance(node, dict):
        node[rng.choice(["kind", "flags", "x", "status", "events", "parentSpanId", "code"])] = rng_json(rng)
    return tree


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
    if r < 0.75:
        tree: Any = json.loads(line)
        for _ in range(rng.choice([1, 1, 1, 2, 3, 6])):
            if isinstance(tree, Dup):
                break
            tree = tree_mutation(rng, tree)
        text_ = dump(tree, rng, ascii_only=rng.random() < 0.2, escape_keys=rng.choice([0.0, 0.0, 0.0, 0.05]))
        b = text_.encode("utf-8", "surrogatepass")
        if rng.random() < 0.3:
            b = byte_mutation(rng, b)
        return b + rng.choice([b"", b"", b"\n", b"\r\n", b" \n"])
    b = line.encode()
    for _ in range(rng.choice([1, 1, 2, 4])):
        b = byte_mutation(rng, b)
    return b


# --- running ---------------------------------------------------------------------------------


def seed_lines() -> list[str]:
    """The demo's trace lines (whole, and one span each) and the hostile-input test's runs."""
    from tests.report.test_hostile_input import a_run, line

    found = [line(*a_run("r")), line(*a_run("r2"))]
    demo = DEMO.read_text().splitlines() if DEMO.exists() else []
    for raw in demo:
        found.append(raw)
        data = json.loads(raw)
        for rs in data.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for sp in ss.get("spans", [])[:40]:
                    one = {"resourceSpans": [{**rs, "scopeSpans": [{**ss, "spans": [sp]}]}]}
                    found.append(json.dumps(one, separators=(",", ":")))
    return found


def run_cases(seed: int, count: int, trace: Path | None = None, extra: int = 0) -> tuple[int, int, list[str]]:
    """``count`` cases from ``seed``: (cases, read by Rust, problems). With ``trace``, each case is
    written there before it is read (a crash leaves its input behind); after each, ``extra`` lines
    more, its bytes changed again, read by Rust only (a crash or a raise is all they can show)."""
    sys.setrecursionlimit(20000)
    rs = rsnative.reader()
    if rs is None:
        raise SystemExit("the Rust reader is not built (python -m budgetspan.report.rsread_build)")
    modules, seeds, rng = readers(), seed_lines(), random.Random(seed)
    read, problems = 0, []
    for _ in range(count):
        try:
            b = case(rng, seeds)
        except RecursionError:  # this script's own writer, on a value nested too deep for it
            continue
        if trace is not None:
            trace.write_bytes(b)
        found = compare(rs, modules, b)
        read += rs.read_line(b, modules[-1][1]._rs_state(modules[-1][2][0])) is not None
        if found:
            problems.append(json.dumps({"line": b.decode("latin-1"), "problems": found}))
        more = b
        for _ in range(extra):  # more bytes changed, read by Rust only: a crash or a raise is all we look for
            more = byte_mutation(rng, more)
            if trace is not None:
                trace.write_bytes(more)
            for keep in KEEPS:
                rs.read_line(more, fastread._rs_state(keep))
    return count, read, problems


def worker(seed: int, count: int, trace: str | None, extra: int) -> None:
    n, read, problems = run_cases(seed, count, Path(trace) if trace else None, extra)
    for p in problems:
        print(p)
    print(json.dumps({"cases": n, "read_by_rust": read, "rust_only": n * extra}))


def long_run(minutes: float, batch: int, out: Path, extra: int) -> None:
    """Batches in subprocesses until time is up; a crash is re-run traced to keep its input."""
    deadline, seed, total, read, bad, only = time.time() + minutes * 60, 0, 0, 0, 0, 0
    start = time.time()
    cmd = [sys.executable, __file__, "--worker", "--count", str(batch), "--extra", str(extra)]
    while time.time() < deadline:
        seed += 1
        run = subprocess.run([*cmd, "--seed", str(seed)], capture_output=True, text=True, check=False)
        if run.returncode < 0:  # killed by a signal: a crash
            trace = out.with_suffix(f".crash{seed}")
            again = subprocess.run(
                [*cmd, "--seed", str(seed), "--trace", str(trace)], capture_output=True, check=False
            )
            print(f"seed {seed}: worker exited {run.returncode} ({again.returncode} again); input: {trace}")
            print(run.stderr[-2000:])
            bad += 1
            continue
        if run.returncode != 0:  # this script's own failure
            raise SystemExit(f"seed {seed}: worker failed:\n{run.stderr[-3000:]}")
        *problems, summary = run.stdout.strip().splitlines()
        with out.open("a") as f:
            f.writelines(p + "\n" for p in problems)
        bad += len(problems)
        total += json.loads(summary)["cases"]
        read += json.loads(summary)["read_by_rust"]
        only += json.loads(summary)["rust_only"]
    print(f"{total} lines compared in {seed} batches ({read} read by Rust with the report's keep), {only} more")
    print(f"read by Rust only (x{len(KEEPS)} keeps), {time.time() - start:.0f}s: {bad} problems -> {out}")


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))


def leaks(reads: int) -> None:
    """Reads the same lines ``reads`` times in all (read whole, refused only at their end after
    every span was made, refused early), with each ``Keep`` (events read on the odd one), then
    lines whose texts are new each time (the shared-text cache filled and cleared); RSS and the
    refcounts of shared objects must not grow."""
    rs, seeds = rsnative.reader(), seed_lines()
    states = [fastread._rs_state(k) for k in KEEPS]
    good = [s.encode() for s in seeds[:40]]
    with_event = good[0].replace(b'"attributes"', b'"events":[{"name":"ev","attributes":[]}],"attributes"', 1)
    good.append(with_event)
    lines = good + [b + b" x" for b in good] + [b.replace(b'"spanId"', b'"spanId":"a","spanId"', 1) for b in good]
    first = rs.read_line(with_event, states[2])
    assert first and first[0].events == [("ev", {})], "the odd keep reads the event"
    watched = {"None": None, "True": True, "False": False, "a name": first[0].name, "a trace id": first[0].trace_id}
    watched.update({f"key {k}": k for k in list(states[0][0])[:3]})
    watched.update({"events fn": states[2][6], "state": states[0]})
    read = sum(rs.read_line(b, states[0]) is not None for b in lines)
    del first

    def counts() -> dict[str, int]:
        return {k: sys.getrefcount(v) for k, v in watched.items()}

    def churn(n: int, template: bytes) -> None:
        for i in range(n):
            rs.read_line(template.replace(b"@", str(i).encode()), states[i % 3])

    template = good[0].replace(b'"stringValue": "r"', b'"stringValue": "r@"').replace(b'"name": "', b'"name": "@')
    for i in range(30000):
        rs.read_line(lines[i % len(lines)], states[i % 3])
    churn(30000, template)
    before, rss0, t0 = counts(), rss_kb(), time.time()
    for i in range(reads):
        rs.read_line(lines[i % len(lines)], states[i % 3])
    rss1 = rss_kb()
    churn(reads // 4, template)
    after, rss2 = counts(), rss_kb()
    grew = {k: after[k] - before[k] for k in before if after[k] != before[k]}
    print(f"{reads} reads of {len(lines)} lines ({read} read, not refused) and {reads // 4} of new texts")
    print(f"in {time.time() - t0:.0f}s: RSS {rss0} -> {rss1} -> {rss2} kB; refcounts grew: {grew}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--batch", type=int, default=20000)
    p.add_argument("--out", default="fuzz-rsread-problems.jsonl")
    p.add_argument("--leaks", type=int, default=0, help="instead: read lines this many times, watch RSS")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--trace")
    p.add_argument("--extra", type=int, default=8, help="lines read by Rust only after each compared one")
    a = p.parse_args()
    if a.worker:
        worker(a.seed, a.count, a.trace, a.extra)
    elif a.leaks:
        leaks(a.leaks)
    else:
        long_run(a.minutes, a.batch, Path(a.out), a.extra)


if __name__ == "__main__":
    main()
