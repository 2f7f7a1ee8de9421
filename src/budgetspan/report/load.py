"""Reading spans for ``budgetspan report``: OTLP JSON lines (the Collector file exporter's format).

Files are read one line at a time (bytes; parsed by ``otlp``). A bad line is reported with its
file and line number and skipped; the rest of the file is still read. ``read_spans`` streams the
spans line by line and keeps at most ``max_errors`` errors (the rest are counted); ``load_files``
holds every span and error in memory, keeping spans seen twice (the same file given twice, a
retried export) once.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Final

from budgetspan.report.fastread import parse_line_fast
from budgetspan.report.otlp import BadLine, Keep, SpanRec, parse_line, parse_request

#: A longer line is named and skipped, read past in pieces: a file without newlines (a disk image,
#: a 2 GB line) was held whole, twice over (a 1 GB line: 2.0 GB resident). Room for a large
#: export batch with message content.
MAX_LINE_BYTES: Final = 256 * 2**20
_SKIP_BYTES: Final = 2**20
#: The read buffer. Export lines are tens to hundreds of kB: with the default 8 kB buffer
#: ``readline`` gathers a line from many reads and joins the pieces; with a buffer several lines
#: long most lines are found whole and copied once. Measured (CPU time, reading every line): the
#: 1M-span bench file (1 GB, lines ~27 kB) 0.67-0.78 s with the default buffer, 0.14-0.15 s with
#: 1 or 4 MiB; a file of 0.6-0.9 MB lines (900 MB) 0.64-0.71 s, 0.25-0.63 s with 1 MiB, 0.12-0.20 s
#: with 4 MiB (16 MiB: no better).
READ_BUFFER_BYTES: Final = 4 * 2**20
STDIN: Final = "-"  # a path that reads standard input (a file named "-" is "./-")
STDIN_NAME: Final = "<stdin>"  # its name in messages


def _bounded_lines(f: IO[bytes], limit: int) -> Iterator[bytes | None]:
    """The file's lines (newline included); None for one longer than ``limit`` bytes."""
    readline = f.readline
    while line := readline(limit + 1):
        if len(line) <= limit:
            yield line
            continue
        while not line.endswith(b"\n") and (line := readline(_SKIP_BYTES)):
            pass
        yield None


@dataclass(frozen=True)
class LoadError:
    """A line that could not be read."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class Progress:
    """A one-line progress bar on stderr for long reads; silent unless enabled."""

    def __init__(self, total_bytes: int, enabled: bool, stream: IO[str] | None = None) -> None:
        self.total = max(1, total_bytes)
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self._last = 0.0
        self._shown = False

    def advance(self, nbytes: int, spans: int) -> None:
        self.done += nbytes
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        share = min(1.0, self.done / self.total)
        bar = "#" * int(share * 30)
        self.stream.write(f"\rReading spans [{bar:<30}] {share:4.0%}  {spans:,} spans")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * 70 + "\r")
            self.stream.flush()


def _total_size(paths: Sequence[str]) -> int:
    total = 0
    for p in paths:
        try:
            total += os.path.getsize(p)
        except OSError:
            pass
    return total


@dataclass(kw_only=True, eq=False)  # a reader, compared by identity
class SpanReader:
    """Streams the spans of OTLP JSON lines files, one line's spans at a time.

    Errors go to ``on_error`` as they are found; the first ``max_errors`` are kept in ``errors``
    (all of them when None) and ``error_count`` counts every one, so a file of garbage does not
    fill memory with error records.
    """

    keep: Keep | None = None
    progress: bool = False
    progress_stream: IO[str] | None = None
    on_error: Callable[[LoadError], None] | None = None
    max_errors: int | None = None
    max_line_bytes: int = MAX_LINE_BYTES
    errors: list[LoadError] = field(init=False)
    error_count: int = field(init=False)
    spans_read: int = field(init=False)

    def __post_init__(self) -> None:  # set here: compiled (``native``), a default is not applied
        self.errors = []
        self.error_count = 0
        self.spans_read = 0

    def _error(self, err: LoadError) -> None:
        self.error_count += 1
        if self.max_errors is None or len(self.errors) < self.max_errors:
            self.errors.append(err)
        if self.on_error is not None:
            self.on_error(err)

    def read(self, paths: Sequence[str]) -> Iterator[list[SpanRec]]:
        """The spans of each good line, file after file, in file order."""
        bar = Progress(_total_size([p for p in paths if p != STDIN]), self.progress, self.progress_stream)
        try:
            for p in paths:
                name = STDIN_NAME if p == STDIN else p
                try:
                    if p != STDIN:
                        with open(p, "rb", buffering=READ_BUFFER_BYTES) as f:
                            yield from self._lines(_bounded_lines(f, self.max_line_bytes), p, bar)
                        continue
                    # a pipe: ``zcat traces.jsonl.gz | budgetspan report -``
                    stdin = getattr(sys.stdin, "buffer", None)  # None: closed (``<&-``)
                    if stdin is None:
                        raise OSError(errno.EBADF, "closed")
                    yield from self._lines(_bounded_lines(stdin, self.max_line_bytes), name, bar)
                except OSError as e:
                    self._error(LoadError(name, 0, f"cannot read the file ({e.strerror})"))
        finally:
            bar.close()

    def _lines(self, lines: Iterable[bytes | None], path: str, bar: Progress) -> Iterator[list[SpanRec]]:
        keep = self.keep
        for number, line in enumerate(lines, start=1):
            if line is None:
                self._error(
                    LoadError(path, number, f"line longer than {self.max_line_bytes:,} bytes; skipped")
                )
                continue
            bar.advance(len(line), self.spans_read)
            if line.isspace() or not line:
                continue
            try:
                spans = parse_line(line, None) if keep is None else parse_line_fast(line, keep)
            except BadLine as e:
                self._error(LoadError(path, number, str(e)))
                continue
            self.spans_read += len(spans)
            yield spans


def load_files(
    paths: Sequence[str],
    *,
    progress: bool = False,
    progress_stream: IO[str] | None = None,
    on_error: Callable[[LoadError], None] | None = None,
) -> tuple[list[SpanRec], list[LoadError]]:
    """Read every file into memory; returns (spans, errors). A missing file is an error, not an
    exception. Every attribute is read (``read_spans`` can read only those the report uses)."""
    reader = SpanReader(progress=progress, progress_stream=progress_stream, on_error=on_error)
    spans: list[SpanRec] = []
    seen: set[tuple[str, str]] = set()
    for batch in reader.read(paths):
        for s in batch:
            key = (s.trace_id, s.span_id)
            if key not in seen:
                seen.add(key)
                spans.append(s)
    return spans, reader.errors


__all__ = [
    "BadLine",
    "LoadError",
    "SpanReader",
    "SpanRec",
    "load_files",
    "parse_line",
    "parse_request",
]
