"""Review 9: the compiled report (``report.native``) against the pure one, and its build.

mypyc divides two small ints as two doubles, where Python rounds the exact quotient once (past
2**53 ns the report's bytes differed); runs finished together came out in a set's order (other
bytes per process); a build copied its libraries in place (a report could load one half written);
an installed package could not be built at all (site-packages in MYPYPATH); both fast readings
took timestamps ``int()`` takes and OTLP does not ("1_000", " 7").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from budgetspan import attributes as A
from budgetspan.report import native, rsnative
from tests.report import test_native
from tests.report.cli import report
from tests.report.test_hostile_input import a_run, line, span
from tests.report.test_native import _PROBE

SRC = Path(native.__file__).resolve().parent.parent.parent  # .../src


built = test_native.built  # (the same fixture: skip, or fail under scripts/test, when not built)


def _at(d: dict[str, Any], start_ns: int, end_ns: int) -> dict[str, Any]:
    return {**d, "startTimeUnixNano": str(start_ns), "endTimeUnixNano": str(end_ns)}


def test_overlapping_phases_of_a_very_long_run_split_alike_both_ways(built: None, tmp_path: Path) -> None:
    """Three phases over the whole of a 2**60 ns run share it three ways: the same figure
    compiled and pure (``report`` compares the bytes)."""
    end = 2**60 + 12345
    base = {"budgetspan__run__id": "r1", "budgetspan__workflow": "wf"}
    phases = [
        _at(span(f"p{i}", f"phase ph{i}", 0, 0, "root", budgetspan__phase=f"ph{i}", **base), 0, end)
        for i in range(3)
    ]
    run = _at(
        span("root", "invoke_agent wf", 0, 0, gen_ai__operation__name=A.OP_INVOKE_AGENT, **base), 0, end
    )
    path = tmp_path / "long.jsonl"
    path.write_text(line(*phases, run) + "\n")
    for fmt in ("json", "table"):
        code, out, _ = report(str(path), "--format", fmt)
        assert code == 0 and "ph2" in out


def test_runs_finished_together_come_out_in_the_same_order_in_every_process(tmp_path: Path) -> None:
    """Six implicit runs of one trace, finished together a window after the trace's root: the same
    bytes whatever the process's string hashing (the runs were taken from a set: ties on their start
    came out in another order per process, so the compiled and pure commands could not be compared)."""
    calls = [
        span(f"c{i}", "chat m", 1, 2, "root", gen_ai__operation__name="chat", budgetspan__run__id=f"run{i}")
        for i in range(6)
    ]
    filler = [{**span(f"z{i}", "other", 0, 1), "traceId": f"other{i}"} for i in range(5)]
    path = tmp_path / "implicit.jsonl"
    path.write_text(line(*calls) + "\n" + line(span("root", "request", 0, 3)) + "\n" + line(*filler) + "\n")
    outputs = set()
    for seed in ("0", "1", "2", "3"):
        env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONHASHSEED": seed}
        argv = [sys.executable, "-m", "budgetspan.cli", "report", str(path), "--format", "json"]
        run = subprocess.run([*argv, "--max-spans-in-flight", "10"], env=env, capture_output=True, check=True)
        outputs.add(run.stdout)
    assert len(outputs) == 1


def test_a_report_never_loads_a_library_a_build_is_still_writing(
    built: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build of the package's copy (the same libraries as its own build), and, while it copies
    each library, a second build of the same sources ending (its stamp back) and a report starting:
    the report runs compiled, never loading a half-written library (a truncated one died of SIGBUS)."""
    from budgetspan.report import native_build, native_install

    shutil.copytree(SRC / "budgetspan", tmp_path / "budgetspan", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "budgetspan" / "report" / native.NATIVE_DIR
    libs = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".so", ".pyd")}
    stamp = (out / native.STAMP_FILE).read_bytes()

    def compiled_again(tmp: Path, quiet: bool) -> None:
        for name, data in libs.items():
            (tmp / "budgetspan" / "report" / native.NATIVE_DIR / name).write_bytes(data)

    probes: list[tuple[int, str]] = []
    copy = shutil.copy2

    def copy_while_a_report_starts(src: Path, dst: Path) -> object:
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])  # half written, when the other build ends
        (out / native.STAMP_FILE).write_bytes(stamp)
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        env.pop(native.PURE_ENV, None)
        run = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=False
        )
        probes.append((run.returncode, run.stdout.strip()))
        (out / native.STAMP_FILE).unlink()
        return copy(src, dst)

    monkeypatch.setattr(native_build, "_compile", compiled_again)
    monkeypatch.setattr(native_install.shutil, "copy2", copy_while_a_report_starts)
    native_build.build(out, quiet=True)
    assert probes == [(0, "True True")] * len(libs)
    assert (out / native.STAMP_FILE).read_bytes() == stamp
    rust_stamp = [rsnative.STAMP_FILE] if (out / rsnative.STAMP_FILE).exists() else []  # its own build's
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(
        [*libs, native.STAMP_FILE, "__init__.py", *rust_stamp]
    )


def test_an_installed_package_reports_pure_then_builds_and_reports_compiled(
    built: None, tmp_path: Path
) -> None:
    """budgetspan as a wheel installs it (in a fresh environment's site-packages; the dependencies
    from this one): the report runs pure, then the README's build command compiles it (mypy
    refused a site-packages directory in MYPYPATH: the build always failed there), then the report
    runs compiled with the same bytes. Compiles (~40 s; where the compiled report is built here)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    shutil.copytree(
        SRC / "budgetspan",
        Path(site) / "budgetspan",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", native.STAMP_FILE + "*"),
    )
    deps = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "deps.pth").write_text(deps + "\n")  # a path only: its own .pth files are not read
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", native.PURE_ENV)}
    path = tmp_path / "traces.jsonl"
    path.write_text(line(*a_run("r1", workflow="wé")) + "\n")

    def reports() -> tuple[bool, bytes]:
        used = subprocess.run(
            [python, "-c", "from budgetspan.report import native; print(native.compiled() is not None)"],
            env=env, capture_output=True, text=True, check=True, cwd=tmp_path,
        ).stdout.strip()  # fmt: skip
        argv = [python, "-m", "budgetspan.cli", "report", str(path), "--format", "json"]
        run = subprocess.run(argv, env=env, capture_output=True, check=True, cwd=tmp_path)
        return used == "True", run.stdout

    pure_used, pure_out = reports()
    assert not pure_used and "wé".encode() in pure_out
    build = subprocess.run(
        [python, "-m", "budgetspan.report.native_build", "--quiet"],
        env=env, capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    assert reports() == (True, pure_out)


@pytest.mark.parametrize("stamp", ["1_000", " 7", "+7", "\u0661\u0662"])
def test_a_timestamp_that_is_not_plain_digits_is_named(stamp: str, tmp_path: Path) -> None:
    """``int()`` takes underscores, blanks, a sign and other scripts' digits: the fast readings
    took such a timestamp, where the checked one (and OTLP) say it is not an integer."""
    bad = a_run("bad")
    bad[0]["startTimeUnixNano"] = stamp
    path = tmp_path / "traces.jsonl"
    path.write_text(line(*a_run("good")) + "\n" + line(*bad) + "\n", encoding="utf-8")
    code, _, err = report(str(path), "--format", "json")
    assert code == 1 and ":2: span 1: startTimeUnixNano is not an integer (a string)" in err
