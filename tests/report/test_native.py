"""The compiled report (``report.native``): used only when built from the sources on disk, and
giving the same bytes as the pure modules.

Every in-process report of the report tests already runs both ways and compares them
(``tests/report/cli.py``); here, the guard against stale builds, the files of the hostile-input
tests all in one file, and the command line itself. ``scripts/test`` builds the compiled modules
and sets BUDGETSPAN_TEST_NATIVE=1, so there a missing build fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from budgetspan.report import native
from tests.report.test_hostile_input import HOSTILE, a_run, line

SRC = Path(native.__file__).resolve().parent.parent.parent  # .../src
_PROBE = """
import sys
from budgetspan.report import native
used = native.compiled() is not None
loaded = any(m.startswith("budgetspan.report._native.") for m in sys.modules)
print(used, loaded)
"""


@pytest.fixture(scope="module")
def built() -> None:
    if native.compiled() is None:
        if os.environ.get("BUDGETSPAN_TEST_NATIVE") == "1":
            pytest.fail("the compiled report is not built (python -m budgetspan.report.native_build)")
        pytest.skip("the compiled report is not built (python -m budgetspan.report.native_build)")


def _probe(src: Path) -> tuple[bool, bool]:
    """Whether the report would run compiled code from ``src``, and whether any was loaded."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    env.pop(native.PURE_ENV, None)
    run = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    used, loaded = run.stdout.split()
    return used == "True", loaded == "True"


def _uses_compiled(src: Path) -> bool:
    """Whether the report would run compiled code from ``src``; when not, none was even loaded."""
    used, loaded = _probe(src)
    assert used == loaded
    return used


def test_an_edited_source_is_never_run_stale(built: None, tmp_path: Path) -> None:
    """A copy of the package with its build: compiled until a hot module, or a module it imports
    (attributes.py), is edited; then pure, without loading any compiled module. Nothing compiled
    sits next to a ``.py``; without the stamp file, or with another build's, nothing is used."""
    shutil.copytree(SRC / "budgetspan", tmp_path / "budgetspan", ignore=shutil.ignore_patterns("__pycache__"))
    report = tmp_path / "budgetspan" / "report"
    assert _uses_compiled(tmp_path)
    for edited in (report / "fastread.py", tmp_path / "budgetspan" / "attributes.py"):
        original = edited.read_bytes()
        edited.write_bytes(original + b"\n# edited\n")
        assert not _uses_compiled(tmp_path), edited
        edited.write_bytes(original)
        assert _uses_compiled(tmp_path)
    stamp = report / native.NATIVE_DIR / native.STAMP_FILE
    built_from = stamp.read_bytes()
    stamp.unlink()  # a build interrupted half-way
    assert not _uses_compiled(tmp_path)
    # a stamp for other sources than the library's (files copied by hand): loaded, not used
    original = (report / "sweep.py").read_bytes()
    (report / "sweep.py").write_bytes(original + b"\n# edited\n")
    names = built_from.partition(b"\n")[0]
    stamp.write_bytes(
        names + b"\n" + native.sources_on_disk(str(tmp_path / "budgetspan"), names.decode().split())
    )
    assert _probe(tmp_path) == (False, True)
    (report / "sweep.py").write_bytes(original)
    stamp.write_bytes(built_from)
    assert _uses_compiled(tmp_path)
    compiled = [p for p in (tmp_path / "budgetspan").rglob("*") if p.suffix in (".so", ".pyd")]
    assert compiled and all(p.parent == report / native.NATIVE_DIR for p in compiled)
    assert [p.name for p in (report / native.NATIVE_DIR).glob("*.py")] == ["__init__.py"]


def test_every_file_the_build_depends_on_is_compared(built: None) -> None:
    from budgetspan.report import native_build

    found = native.compiled()
    assert found is not None
    assert tuple(native_build.sources()) == found[1].NATIVE_SOURCES
    assert "attributes.py" in found[1].NATIVE_SOURCES and "report/otlp_schema.py" in found[1].NATIVE_SOURCES


def _cli(path: Path, fmt: str, pure: bool) -> tuple[int, bytes, bytes]:
    env = {**os.environ, "PYTHONPATH": str(SRC), native.PURE_ENV: "1" if pure else "0"}
    run = subprocess.run(
        [sys.executable, "-m", "budgetspan.cli", "report", str(path), "--format", fmt],
        env=env,
        capture_output=True,
        check=False,
    )
    return run.returncode, run.stdout, run.stderr


@pytest.mark.parametrize("fmt", ["json", "table", "markdown"])
def test_the_command_gives_the_same_bytes_both_ways_on_every_hostile_line(
    built: None, fmt: str, tmp_path: Path
) -> None:
    """Every hostile line of the hostile-input tests in one file, between good runs."""
    path = tmp_path / "traces.jsonl"
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        for i, (kind, (text, _)) in enumerate(HOSTILE.items()):
            if "UTF-8" not in kind:
                f.write(line(*a_run(f"r{i}", workflow=f"wf{i % 3}")) + "\n" + text + "\n")
    with open(path, "ab") as f:
        f.write(b'{"resourceSpans": 7, "\xff": 1}\n')  # invalid UTF-8
    compiled, pure = _cli(path, fmt, pure=False), _cli(path, fmt, pure=True)
    assert compiled == pure
    code, out, err = compiled
    assert code == 1 and f"{len(HOSTILE)} bad lines skipped".encode() in err
    assert b"wf2" in out  # the good runs around them are reported


def test_a_build_killed_while_copying_leaves_no_part_file_after_the_next(tmp_path: Path) -> None:
    """``install`` writes each library as NAME.PID.part, then renames it; a build killed in between
    left the part file for good. The next build removes those of dead processes only: a build
    running at the same time (a live pid) keeps its own."""
    from budgetspan.report import native_build

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)  # a process that has exited
    (out / f"core__mypyc.so.{dead_pid}.part").write_bytes(b"half")
    (out / f"{native.STAMP_FILE}.{dead_pid}.part").write_bytes(b"half")
    live = out / f"analysis.so.{os.getppid()}.part"
    live.write_bytes(b"being written")
    library = tmp_path / "core__mypyc.so"
    library.write_bytes(b"library")
    native_build.install([library], out, ["report/analysis.py"], b"stamp")
    assert sorted(p.name for p in out.iterdir()) == sorted(["core__mypyc.so", native.STAMP_FILE, live.name])
