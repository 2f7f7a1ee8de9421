"""``budgetspan report`` on a file with no spans says so and fails (an empty trace is a lost trace)."""

from __future__ import annotations

from pathlib import Path

from tests.report.cli import report


def _report(*argv: str) -> tuple[int, str]:
    code, _, err = report(*argv)
    return code, err


def test_empty_file_is_an_error_that_says_no_spans(tmp_path: Path) -> None:
    empty = tmp_path / "budgetspan-demo.jsonl"
    empty.write_text("")
    code, err = _report(str(empty))
    assert code == 1
    assert f"no spans in {empty}" in err


def test_a_file_of_empty_requests_has_no_spans_either(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text('{"resourceSpans": []}\n')
    code, err = _report(str(f))
    assert code == 1 and "no spans" in err
