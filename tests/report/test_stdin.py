"""``budgetspan report -`` reads standard input: a pipe (``zcat traces.jsonl.gz | budgetspan report -``)
gives the same report as the file, and its bad lines are named ``<stdin>:N``."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from tests.report import synthetic


def _report(*argv: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "budgetspan.cli", "report", *argv],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def _runs_file(tmp_path: Path) -> Path:
    runs = synthetic.random_runs(random.Random(7), 40, 0.6, 0.01)
    return synthetic.write(tmp_path / "traces.jsonl", runs)


def test_a_pipe_gives_the_same_report_as_the_file(tmp_path: Path) -> None:
    path = _runs_file(tmp_path)
    from_file = _report(str(path), "--format", "json", stdin=b"")
    piped = _report("-", "--format", "json", stdin=path.read_bytes())
    assert from_file.returncode == piped.returncode == 0, piped.stderr
    assert piped.stdout == from_file.stdout
    assert json.loads(piped.stdout)["spans"] > 40


def test_standard_input_and_a_file_are_read_together(tmp_path: Path) -> None:
    path = _runs_file(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    first, rest = tmp_path / "first.jsonl", b"".join(lines[20:])
    first.write_bytes(b"".join(lines[:20]))
    whole = _report(str(path), "--format", "json", stdin=b"")
    split = _report(str(first), "-", "--format", "json", stdin=rest)
    assert split.returncode == 0, split.stderr
    assert json.loads(split.stdout) == json.loads(whole.stdout)


def test_bad_lines_on_standard_input_are_named_by_line(tmp_path: Path) -> None:
    good = _runs_file(tmp_path).read_bytes().splitlines(keepends=True)[0]
    done = _report("-", stdin=good + b"not json\n" + good)
    assert done.returncode == 1  # as for a file: the report covers the rest, and says a line was bad
    assert "<stdin>:2: not valid JSON" in done.stderr.decode()
    assert "1 bad line skipped" in done.stderr.decode()


def test_empty_standard_input_says_so() -> None:
    done = _report("-", stdin=b"")
    assert done.returncode == 1
    assert "no spans in standard input" in done.stderr.decode()


def test_a_closed_standard_input_is_named_not_a_crash() -> None:
    done = subprocess.run(
        f"{sys.executable} -m budgetspan.cli report - <&-",
        shell=True,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert b"Traceback" not in done.stderr
    assert b"<stdin>:0: cannot read the file (closed)" in done.stderr
