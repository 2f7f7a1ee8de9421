"""The Rust reader (``report/rsread/``): a fast path only, never a different reading.

Every line of ``test_fast_reading.py`` (hostile lines, hypothesis lines, odd values) is also read
by it there and compared; here, what it refuses is still read (or named) by Python, it does read
ordinary lines itself, whole reports are the same bytes with and without it (the demo's spans and
the benchmark's replicated file), and an edited ``.rs`` is never run from a stale build.
``scripts/test`` builds it (``native_build``, when rustc is there) and then sets
BUDGETSPAN_TEST_RUST=1: there a build that went missing fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from budgetspan import attributes as A
from budgetspan.report import fastread, native, rsnative
from budgetspan.report.analysis import REPORT_KEEP
from budgetspan.report.otlp import BadLine, parse_line
from tests.report.cli import report
from tests.report.test_fast_reading import _fields, _run_with
from tests.report.test_hostile_input import a_run, line

SRC = Path(native.__file__).resolve().parent.parent.parent  # .../src
RUST: Any = rsnative.reader()


@pytest.fixture(scope="module")
def rust() -> Any:
    if RUST is None:
        message = "the Rust reader is not built (python -m budgetspan.report.rsread_build)"
        if os.environ.get("BUDGETSPAN_TEST_RUST") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return RUST


def _rust(text: str | bytes) -> list[str] | None:
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    spans = RUST.read_line(raw, fastread._rs_state(REPORT_KEEP))
    return None if spans is None else [_fields(s) for s in spans]


def _python(text: str | bytes) -> list[str] | str:
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    try:
        return [_fields(s) for s in parse_line(raw, REPORT_KEEP)]
    except BadLine as e:
        return f"BadLine: {e}"


def test_ordinary_lines_are_read_by_rust_as_python_reads_them(rust: Any) -> None:
    """Not a fall back every time: escapes, floats, counts, booleans, events, status all read."""
    text = _run_with(
        {"key": A.GEN_AI_USAGE_COST, "value": {"doubleValue": 0.19652014300118026}},
        {"key": A.GEN_AI_USAGE_INPUT_TOKENS, "value": {"intValue": "0012"}},
        {"key": A.READ_ONLY, "value": {"boolValue": True}},
        {"key": A.WORKFLOW, "value": {"stringValue": 'a "quoted"\\n name \u00e9 \U0001f600'}},
        {"key": "not.read", "value": {"arrayValue": {"values": [{"doubleValue": 1e-300}]}}},
        span=0,
        status={"code": 2, "message": "x"},
        events=[{"name": A.EVENT_WOULD_EXHAUST, "attributes": []}],
    )
    assert "\\u00e9" in text and "\\ud83d\\ude00" in text  # json.dumps escapes them
    assert _rust(text) == _python(text)
    run_span = _run_with({"key": A.USAGE_PREFIX + "model_calls", "value": {"intValue": "3"}}, span=2)
    assert _rust(run_span) == _python(run_span)


@pytest.mark.parametrize(
    "extra",
    [
        {"key": A.GEN_AI_USAGE_INPUT_TOKENS, "value": {"intValue": "-12"}},  # the checked `_int`
        {"key": A.GEN_AI_USAGE_INPUT_TOKENS, "value": {"intValue": 12}},
        {"key": A.GEN_AI_USAGE_COST, "value": {"doubleValue": "NaN"}},
        {"key": A.PHASE, "value": {"arrayValue": {"values": []}}},
        {"key": "not\\u002eread", "value": {"stringValue": "x"}},  # an escaped key
        {"key": "x", "value": {"stringValue": "lone \ud800 surrogate"}},
        {"key": "x", "value": {"doubleValue": 1e308 * 10}},  # json.dumps: Infinity
        {"key": "x", "value": {"intValue": 10**30}},
        {"key": A.PHASE, "value": {"stringValue": None}},  # a type msgspec refuses: named
    ],
)
def test_what_rust_refuses_is_read_or_named_by_python(rust: Any, extra: dict[str, Any]) -> None:
    text = _run_with(extra).replace("not\\\\u002eread", "not\\u002eread")
    assert _rust(text) is None
    code_fast = fastread.parse_line_fast  # with the Rust reader in use, as the report reads
    fastread.use_rust(True)
    try:
        got: list[str] | str = [
            _fields(s) for s in code_fast(text.encode("utf-8", "surrogatepass"), REPORT_KEEP)
        ]
    except BadLine as e:
        got = f"BadLine: {e}"
    finally:
        fastread.use_rust(False)
    assert got == _python(text)


def test_lines_rust_refuses_before_reading() -> None:
    if RUST is None:
        pytest.skip("the Rust reader is not built")
    good = line(*a_run("r"))
    assert _rust(good) is not None
    for bad in (
        good.encode() + b"\xff",  # invalid UTF-8 anywhere
        good.replace('"spanId"', '"traceId": "b", "spanId"', 1),  # a key given twice
        good.replace('"kind"', '"k": 1e5, "kind"', 1) if '"kind"' in good else good + " 1",
        good[:-1],  # cut short
        good.replace('{"resourceSpans"', '{"deep": ' + "[" * 100 + "]" * 100 + ', "resourceSpans"', 1),
    ):
        assert _rust(bad) is None


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(x + "\n" for x in lines))
    return str(path)


def test_reports_are_the_same_bytes_with_and_without_rust(rust: Any, tmp_path: Path) -> None:
    """``report()`` runs the report compiled (with the Rust reader) and pure (without) and compares
    stdout and stderr; the benchmark's file: the demo's spans copied with new ids, interleaved."""
    sys.path.insert(0, str(SRC.parent / "bench"))
    try:
        import bench_report  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(SRC.parent / "bench"))
    replicated = bench_report.replicated(tmp_path, 3000)
    mixed = _write(tmp_path / "mixed.jsonl", [line(*a_run("r1")), "not json", _run_with(span=2, status=7)])
    for path in (str(replicated), mixed):
        for fmt in ("json", "table"):
            code, out, err = report(path, "--format", fmt)
            assert code in (0, 1), err
    code, out, _ = report(str(replicated), "--format", "json")
    assert len(json.loads(out)["runs"]) > 100


_PROBE = "from budgetspan.report import rsnative; print(rsnative.reader() is not None)"


def _uses_rust(src: Path) -> bool:
    env = {**os.environ, "PYTHONPATH": str(src)}
    env.pop(rsnative.PURE_ENV, None)
    run = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return run.stdout.strip() == "True"


def test_an_edited_rust_source_is_never_run_stale(rust: Any, tmp_path: Path) -> None:
    shutil.copytree(SRC / "budgetspan", tmp_path / "budgetspan", ignore=shutil.ignore_patterns("__pycache__"))
    assert _uses_rust(tmp_path)
    span_rs = tmp_path / "budgetspan" / "report" / rsnative.CRATE_DIR / "span.rs"
    span_rs.write_text(span_rs.read_text() + "\n// edited\n")
    assert not _uses_rust(tmp_path)
    (tmp_path / "budgetspan" / "report" / rsnative.NATIVE_DIR / rsnative.STAMP_FILE).write_bytes(
        rsnative.sources_on_disk(str(tmp_path / "budgetspan" / "report"))
    )
    assert not _uses_rust(tmp_path)  # the stamp alone is not enough: the library carries its own


def test_no_rustc_is_said_and_leaves_python_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from budgetspan.report import rsread_build

    monkeypatch.setattr(rsread_build.shutil, "which", lambda name: None)
    monkeypatch.setattr(rsread_build.Path, "home", staticmethod(lambda: tmp_path))
    assert rsread_build.main(["--quiet"]) == 1
    assert "Rust reader was not built (no rustc" in capsys.readouterr().err
