"""``budgetspan report``'s numeric options take the configuration's grammar (issue 15, harden8).

``type=int`` took ``--top -5`` (the contributor lists lost their last five instead), ``--top 0``,
``+3``, ``1_000`` and ``١٢``; ``--max-spans-in-flight 0`` was silently 1. Each is now an argparse
error: status 2, one ``usage`` line and one line naming the option and the value.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from budgetspan import cli


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--top", "-5"),
        ("--top", "0"),
        ("--top", "+3"),
        ("--top", "1_000"),
        ("--top", "١٢"),
        ("--top", str(10**23)),
        ("--max-spans-in-flight", "0"),
        ("--max-spans-in-flight", "-1"),
        ("--max-spans-in-flight", "2.5"),
        ("--html-max-timelines", "-1"),
    ],
)
def test_a_bad_count_option_is_an_argparse_error(
    option: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spans = tmp_path / "spans.jsonl"
    spans.write_text("")
    with pytest.raises(SystemExit) as info:
        cli.main(["report", str(spans), f"{option}={value}"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {option}: {value!r}" in err, err


@pytest.mark.parametrize(
    ("option", "value"), [("--top", "1"), ("--top", "007"), ("--max-spans-in-flight", "1")]
)
def test_a_good_count_option_runs_the_report(option: str, value: str, tmp_path: Path) -> None:
    spans = tmp_path / "spans.jsonl"
    spans.write_text("")
    assert cli.main(["report", str(spans), option, value, "--html-max-timelines", "0"]) in (0, 1)


def test_the_command_line_says_it_in_one_line() -> None:
    """The real command: exit status 2, and what was wrong on the last line of stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "budgetspan.cli", "report", "-", "--top", "-5"],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("argument --top: '-5' must be at least 1"), (
        proc.stderr
    )


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "1_0"])
def test_jobs_watch_timeout_takes_the_same_grammar(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """(``budgetspan jobs watch --timeout``, the command line's other number: ``float`` took these.)"""
    with pytest.raises(SystemExit) as info:
        cli.main(["jobs", "watch", "job-1", f"--timeout={value}"])
    assert info.value.code == 2 and f"argument --timeout: {value!r}" in capsys.readouterr().err
