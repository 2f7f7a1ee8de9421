"""The report's JSON document (``budgetspan report --format json``): ``to_jsonable`` of the
analysis, indented by 2, written piece by piece so that a report of a million runs is never one
string (nor one tree of dicts) in memory.

The pieces are UTF-8 bytes, as ``orjson`` writes them; ``write_json`` hands them to the binary
buffer of the process's standard output, ``json_chunks`` decodes them for any other text stream.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

import orjson

from budgetspan.report.results import Analysis, RunStat
from budgetspan.report.textfmt import to_jsonable

# Runs (or other list items) written by one ``orjson.dumps`` call: ~2.7 kB of JSON a run, so ~86 kB
# a piece, which stays in the CPU's caches (measured at 1M spans, CPU time of the JSON output,
# medians of 5: 1 run 0.95 s, 8 0.91, 32 0.90, 128 0.91, 512 1.07; bench/README.md, tenth stop).
BATCH = 32
WRITE_SIZE = 64 * 1024  # bytes a write at least (``write_json``)


def write_json(a: Analysis, stdout: IO[str]) -> None:
    """Write the JSON document of ``a`` to ``stdout``: as bytes to its binary buffer when it is
    the process's own standard output and encodes UTF-8 with ``\\n`` line ends (the pieces are
    already those bytes: no decoding, no encoding again), else as text (``json_chunks``: a
    ``StringIO``, pytest's capture, a wrapper built by the caller).

    The pieces go out joined in chunks of at least ``WRITE_SIZE`` bytes, as the text layer wrote
    its own (8 kB and more): a write the buffer cannot hold goes straight to the file, so a
    closed pipe leaves nothing pending for the exit to fail on (same exit status, same stderr).

    Measured gain (with ``_items_json``' batches): the JSON output of 1M spans (68,697 runs) to
    /dev/null, CPU time in process, medians of 6 alternated runs: text layer, one dumps per run
    1.01 s; batches as text 0.87 s; batches as bytes 0.80 s (bench/README.md, tenth stop)."""
    sink = _utf8_buffer(stdout)
    if sink is None:
        stdout.writelines(json_chunks(a))
        return
    stdout.flush()  # anything already written as text goes first
    for chunk in _joined(json_bytes(a), WRITE_SIZE):
        view = memoryview(chunk)
        while view:  # a raw buffer (python -u) may write part of it
            view = view[sink.write(view) or 0 :]


def _joined(pieces: Iterable[bytes | memoryview], size: int) -> Iterator[bytes]:
    """``pieces`` joined in chunks of at least ``size`` bytes (the last one may be smaller)."""
    pending: list[bytes | memoryview] = []
    length = 0
    for piece in pieces:
        pending.append(piece)
        length += len(piece)
        if length >= size:
            yield b"".join(pending)
            pending = []
            length = 0
    if pending:
        yield b"".join(pending)


def _utf8_buffer(stdout: IO[str]) -> IO[bytes] | None:
    """The binary buffer under ``stdout`` when writing bytes there is the same as writing text:
    the process's standard output (newline translation known: none on POSIX), UTF-8."""
    if stdout is not sys.__stdout__ or os.linesep != "\n":
        return None
    buffer: IO[bytes] | None = getattr(stdout, "buffer", None)
    encoding = getattr(stdout, "encoding", None)
    if buffer is None or not encoding or codecs.lookup(encoding).name != "utf-8":
        return None
    return buffer


def json_chunks(a: Analysis) -> Iterator[str]:
    """The JSON document of ``to_jsonable(a)`` (indented), as text, piece by piece."""
    for piece in json_bytes(a):
        yield str(piece, "utf-8")


def json_bytes(a: Analysis) -> Iterator[bytes | memoryview]:
    """The JSON document of ``to_jsonable(a)`` (indented), as UTF-8 bytes, piece by piece: the
    items of a list field ``BATCH`` at a time (``_items_json``), each other field in one piece."""
    yield b"{"
    for i, field in enumerate(dataclasses.fields(a)):
        yield (b"," if i else b"") + f'\n  "{field.name}": '.encode()  # field names: identifiers
        value = getattr(a, field.name)
        if isinstance(value, list) and value:
            yield b"["
            for start in range(0, len(value), BATCH):
                if start:
                    yield b","
                yield _items_json(value[start : start + BATCH])
            yield b"\n  ]"
        else:
            yield _value_json(value)
    yield b"\n}\n"


_ITEMS_HEAD = len(b'{\n  "": [')  # what orjson writes around a list two levels deep
_ITEMS_TAIL = len(b"\n  ]\n}")


def _items_json(items: Sequence[Any]) -> bytes | memoryview:
    """``items``, each on its own line indented by 4 (a list's items in a field of the document),
    separated by commas, without the brackets: one ``orjson.dumps`` of ``{"": items}`` cut to its
    middle, which orjson indents as the document does (no indenting afterwards).

    Measured gain, with batches of ``BATCH`` runs against one dumps and one indent per run: see
    ``write_json`` (the ``_indent`` replace, a concatenation and a call per run are gone).
    orjson refuses a value (a lone surrogate, an integer beyond 64 bits): that batch item by
    item, as ``_dumps`` writes them."""
    shallow = [_run_json(x) if type(x) is RunStat else x for x in items]  # orjson writes dataclasses
    try:
        data = orjson.dumps({"": shallow}, option=orjson.OPT_INDENT_2)
    except TypeError:
        return b",".join(b"\n    " + _dumps(x).replace("\n", "\n    ").encode() for x in shallow)
    data = _terminal_safe(data)  # the cut is the same: what it cuts off is ASCII
    return memoryview(data)[_ITEMS_HEAD : len(data) - _ITEMS_TAIL]


def _value_json(value: Any) -> bytes:
    """``value`` indented as a field of the document (its lines after the first by 2)."""
    return _dumps(value).replace("\n", "\n  ").encode()


_RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunStat))


def _run_json(run: RunStat) -> dict[str, Any]:
    """``to_jsonable(run)`` one level deep: orjson writes the nested dicts and lists itself, in
    field order, with non-finite floats as null, as ``to_jsonable`` does (same bytes). Phases go
    as dicts: orjson writes a dataclass with slots field by field, ~6k instructions a phase here
    against ~1.5k for this dict (measured: 10k spans, 819 runs, -11M instructions in all).

    Measured gain: the JSON output of 100k spans (8,232 runs) went from 0.91 s to 0.20 s (CPU
    time, in process); the recursive ``to_jsonable`` made ~60 Python calls per run. With the
    ASCII test in ``_dumps``, ``budgetspan report`` on 10k spans went from 2,896M to 1,698M CPU
    instructions (callgrind, whole process, start-up included; see bench/README.md)."""
    d = {name: getattr(run, name) for name in _RUN_FIELDS}
    d["phases"] = {
        p: {
            "time_s": st.time_s,
            "cost_usd": st.cost_usd,
            "model_calls": st.model_calls,
            "tool_calls": st.tool_calls,
            "retrievals": st.retrievals,
        }
        for p, st in run.phases.items()
    }
    d["wall_s"] = run.wall_s
    return d


# Characters JSON allows raw that a terminal may obey: written as \u escapes (still the same JSON).
_JSON_UNSAFE = re.compile("[\u007f-\u009f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _dumps(value: Any) -> str:
    """Indented JSON: orjson (C, fast), with what a terminal could obey escaped; ``json`` for what
    orjson refuses (a lone surrogate, from spans given in memory)."""
    try:
        data = orjson.dumps(value, option=orjson.OPT_INDENT_2)
    except TypeError:
        import json

        return json.dumps(to_jsonable(value), indent=2)
    return _terminal_safe(data).decode()


def _terminal_safe(data: bytes) -> bytes:
    """``data`` (UTF-8 JSON) with the characters of ``_JSON_UNSAFE`` as ``\\u`` escapes."""
    if data.isascii() and b"\x7f" not in data:  # the usual case, and both tests run in C: no scan
        return data
    text = _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", data.decode())
    return text.encode()
