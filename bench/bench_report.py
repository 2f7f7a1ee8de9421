"""`budgetspan report` throughput and peak memory on large trace files, and phase splitting at scale.

    .venv/bin/python bench/bench_report.py                          # 10k, 100k and 1M spans + overlap
    .venv/bin/python bench/bench_report.py --spans 10000 100000     # fewer sizes
    .venv/bin/python bench/bench_report.py --overlap-only
    .venv/bin/python bench/bench_report.py --instructions --spans 10000 100000
    .venv/bin/python bench/bench_report.py --instructions --stages --spans 10000
    .venv/bin/python bench/bench_report.py --pure ...                # the pure-Python report

The report runs compiled (``python -m budgetspan.report.native_build``) when built from the
sources it runs, else pure Python; ``--pure`` measures the pure path either way.

``--instructions`` counts CPU instructions (valgrind's callgrind, whole process, bytecode already
written) of the orjson loop and of the report on the same file: a figure the machine's load does
not move, unlike wall and CPU time on a shared machine.

Files (in ``--dir``, /tmp by default; never in the repository):

- the demo's own spans (``budgetspan demo --traces``), replicated with new trace, span and run ids
  and shifted timestamps until the file holds N spans. Copies are interleaved line by line, 64 at a
  time, as many concurrent agents appending to one file would be;
- one run of N tool calls that all overlap (each starts before the previous one ends), for the
  phase split.

Measured, each in its own process (wall clock; peak RSS from ``wait4``'s ``ru_maxrss``), loop and
report alternated ``--repeat`` times (5 by default), the medians shown with the range of the
rounds' CPU ratios (CPU time on a shared machine moves ±20% from one run to the next):

- ``orjson loop``: ``for line in file: orjson.loads(line)`` plus a count of the spans, the floor
  for anything that reads every line;
- ``report``: ``python -m budgetspan.cli report FILE --format json`` (output to /dev/null);
- overlap: the report on one run of N overlapping calls, timed inside the process (reading +
  analysis, without the interpreter's start-up), so the growth from 2k to 32k calls shows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
_TOKEN = re.compile(
    r'"(traceId|spanId|parentSpanId)":"([0-9a-f]+)"'
    r'|"(startTimeUnixNano|endTimeUnixNano)":"(\d+)"'
    r'|"budgetspan\.run\.id","value":\{"stringValue":"([0-9a-f]+)"'
)
INTERLEAVE = 64  # copies written line by line together
LAST_CPU = [0.0]  # CPU seconds of the last ``measure``


def demo_traces(directory: Path) -> Path:
    path = directory / "bench-report-demo.jsonl"
    if not path.exists():
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BUDGETSPAN_", "OPENAI_", "OTEL_"))}
        subprocess.run(
            [PY, "-m", "budgetspan.cli", "demo", "--traces", str(path), "--latency-scale", "0.05"],
            cwd=directory,
            env=env,
            check=True,
            capture_output=True,
        )
    return path


def _template(line: str) -> list[str | tuple[str, str]]:
    """A line as text pieces and (kind, value) tokens to renumber per copy."""
    parts: list[str | tuple[str, str]] = []
    pos = 0
    for m in _TOKEN.finditer(line):
        parts.append(line[pos : m.start()])
        if m.group(1):
            parts.append((m.group(1), m.group(2)))
        elif m.group(3):
            parts.append(("time:" + m.group(3), m.group(4)))
        else:
            parts.append(("run", m.group(5)))
        pos = m.end()
    parts.append(line[pos:])
    return parts


def _copy(template: list[str | tuple[str, str]], k: int, shift_ns: int) -> str:
    out = []
    for p in template:
        if isinstance(p, str):
            out.append(p)
        elif p[0].startswith("time:"):
            out.append(f'"{p[0][5:]}":"{int(p[1]) + shift_ns}"')
        else:
            new = p[1][:-8] + f"{k:08x}"
            out.append(
                f'"budgetspan.run.id","value":{{"stringValue":"{new}"'
                if p[0] == "run"
                else f'"{p[0]}":"{new}"'
            )
    return "".join(out)


def replicated(directory: Path, spans: int) -> Path:
    """The demo's spans copied with new ids until the file holds ``spans`` spans."""
    path = directory / f"bench-report-{spans}.jsonl"
    if path.exists():
        return path
    lines = demo_traces(directory).read_text().splitlines()
    per_copy = sum(
        len(ss["spans"]) for ln in lines for rs in json.loads(ln)["resourceSpans"] for ss in rs["scopeSpans"]
    )
    templates = [_template(ln) for ln in lines]
    copies = max(1, spans // per_copy)
    with open(str(path) + ".part", "w") as f:
        for first in range(0, copies, INTERLEAVE):
            group = range(first, min(copies, first + INTERLEAVE))
            for t in templates:
                for k in group:
                    f.write(_copy(t, k, k * 60_000_000_000) + "\n")
    os.replace(str(path) + ".part", path)
    return path


def overlapping(directory: Path, calls: int) -> Path:
    """One run of ``calls`` tool calls, each overlapping the next, in batches of 512 spans."""
    path = directory / f"bench-report-overlap-{calls}.jsonl"
    if path.exists():
        return path
    s = 1_000_000_000
    tid, run = "ab" * 16, "cd" * 16

    def attrs(**kv: str) -> list[dict[str, object]]:
        return [{"key": k.replace("__", "."), "value": {"stringValue": v}} for k, v in kv.items()]

    spans = []
    for i in range(calls):
        spans.append(
            {
                "traceId": tid,
                "spanId": f"{i + 1:016x}",
                "parentSpanId": f"{0:016x}"[:-1] + "f",
                "name": f"execute_tool t{i % 7}",
                "startTimeUnixNano": str(s + i * 1000),
                "endTimeUnixNano": str(s + 10 * s + i * 1000),
                "attributes": attrs(
                    gen_ai__operation__name="execute_tool",
                    budgetspan__run__id=run,
                    budgetspan__phase=("tool_execution", "verification", "context_assembly")[i % 3],
                ),
            }
        )
    spans.append(
        {
            "traceId": tid,
            "spanId": f"{0:016x}"[:-1] + "f",
            "name": "invoke_agent overlap",
            "startTimeUnixNano": str(0),
            "endTimeUnixNano": str(20 * s + calls * 1000),
            "attributes": attrs(
                gen_ai__operation__name="invoke_agent",
                budgetspan__run__id=run,
                budgetspan__workflow="overlap",
            ),
        }
    )
    with open(path, "w") as f:
        for i in range(0, len(spans), 512):
            f.write(json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans[i : i + 512]}]}]}) + "\n")
    return path


ORJSON_LOOP = """
import sys, orjson
n = 0
with open(sys.argv[1], "rb") as f:
    for line in f:
        d = orjson.loads(line)
        for rs in d["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                n += len(ss["spans"])
print(n)
"""

# The report cut short after stage N (1 read spans, 2 group them into runs, 3 the runs' figures);
# 0 imports what the report imports and stops. Differences between stages say where it goes.
STAGES = """
import gc, sys
from budgetspan.report import native, render  # the report's imports
load, analysis = native.modules()  # compiled when built from these sources, as the report runs
gc.disable()  # as the report runs
stage = int(sys.argv[1])
batches = load.SpanReader(keep=analysis.REPORT_KEEP).read([sys.argv[2]])
if stage == 1:
    sum(len(b) for b in batches)
elif stage >= 2:
    analyzer = analysis.Analyzer()
    asm = analysis.RunAssembler(analyzer.add_runs if stage == 3 else (lambda runs, traces: None))
    for b in batches:
        asm.add_batch(b)
    asm.close()
    if stage == 3:
        analysis.finish(analyzer, asm, None, 5)
"""

OVERLAP = """
import sys, time
from budgetspan.report import native
t0 = time.perf_counter()
load, analysis = native.modules()  # compiled when built from these sources, as the report runs
a = analysis.analyze_stream(load.SpanReader(keep=analysis.REPORT_KEEP).read([sys.argv[1]]))
took = time.perf_counter() - t0
(run,) = a.runs
assert abs(sum(p.time_s for p in run.phases.values()) - run.wall_s) < 1e-6
print(took)
"""


# Bytecode is written and reused, as for an installed package: with PYTHONDONTWRITEBYTECODE set
# every run would compile the report's modules again (~210M more instructions at start-up).
# The report runs its compiled modules when they are built from these sources (report/native.py);
# --pure sets BUDGETSPAN_REPORT_PURE=1 to measure the pure-Python path.
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
PURE_ENV = "BUDGETSPAN_REPORT_PURE"  # report.native.PURE_ENV


def measure(argv: list[str], keep_output: bool = True) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of one process; its CPU seconds (user + system, less
    moved by other load on a shared machine than wall time) in ``LAST_CPU``. Without
    ``keep_output`` its stdout is written to a file and not read back: a child started by
    ``subprocess`` (vfork, then exec) inherits this process's peak RSS in its own, so a report's
    JSON read here made every later child's peak look as large (370 MB for the orjson loop)."""
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL, cwd=ROOT, env=_ENV)
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.perf_counter() - t0
        LAST_CPU[0] = usage.ru_utime + usage.ru_stime
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{argv} failed with {proc.returncode}")
        out.seek(0)
        return took, usage.ru_maxrss / 1024, out.read() if keep_output else ""


def throughput(directory: Path, sizes: list[int], repeat: int) -> None:
    """Loop and report run one after the other ``repeat`` times per size (alternated, so a slow
    spell of the shared machine falls on both); the figures are the medians of the rounds, and
    the last column the range of the per-round CPU ratios."""
    print(
        "| spans | file | orjson loop | report | report ÷ loop | CPU loop / report (÷) "
        "| CPU ÷ per round | peak RSS loop | peak RSS report |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    measure(
        [PY, "-m", "budgetspan.cli", "report", str(demo_traces(directory))], keep_output=False
    )  # bytecode
    report_argv = ["-m", "budgetspan.cli", "report", "--format", "json", "--max-spans-in-flight", "250000"]
    for n in sizes:
        path = replicated(directory, n)
        rounds = []
        for _ in range(repeat):
            loop_s, loop_mb, counted = measure([PY, "-c", ORJSON_LOOP, str(path)])
            loop_cpu = LAST_CPU[0]
            rep_s, rep_mb, _ = measure([PY, *report_argv, str(path)], keep_output=False)
            rounds.append((loop_s, loop_cpu, loop_mb, rep_s, LAST_CPU[0], rep_mb))
        loop_s, loop_cpu, loop_mb, rep_s, rep_cpu, rep_mb = (
            statistics.median(r[i] for r in rounds) for i in range(6)
        )
        ratios = sorted(r[4] / r[1] for r in rounds)
        spans = int(counted)
        size = path.stat().st_size / 1e6
        print(
            f"| {spans:,} | {size:,.0f} MB | {loop_s:.2f} s ({spans / loop_s / 1000:,.0f}k/s) "
            f"| {rep_s:.2f} s ({spans / rep_s / 1000:,.0f}k/s) | {rep_s / loop_s:.2f} "
            f"| {loop_cpu:.2f} / {rep_cpu:.2f} s (**{rep_cpu / loop_cpu:.2f}**) "
            f"| {ratios[0]:.2f}-{ratios[-1]:.2f} ({repeat}) | {loop_mb:,.0f} MB | {rep_mb:,.0f} MB |",
            flush=True,
        )


def instructions(argv: list[str]) -> int:
    """CPU instructions of one process under callgrind (the whole process, start-up included)."""
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        cwd=ROOT,
        env={**_ENV, "PYTHONHASHSEED": "0"},  # the same dict and set layouts from run to run
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from valgrind for {argv}")
    return int(found.group(1))


def instruction_ratios(directory: Path, sizes: list[int], stages: bool) -> None:
    print("| spans | orjson loop | report | report ÷ loop |")
    print("|---:|---:|---:|---:|")
    measure(
        [PY, "-m", "budgetspan.cli", "report", str(demo_traces(directory))], keep_output=False
    )  # bytecode
    for n in sizes:
        path = replicated(directory, n)
        loop = instructions([PY, "-c", ORJSON_LOOP, str(path)])
        report = instructions([PY, "-m", "budgetspan.cli", "report", str(path), "--format", "json"])
        print(f"| {n:,} | {loop / 1e6:,.0f}M | {report / 1e6:,.0f}M | **{report / loop:.2f}** |", flush=True)
        if stages:
            at = [instructions([PY, "-c", STAGES, str(k), str(path)]) for k in range(4)]
            print(
                f"|  | stages: imports {at[0] / 1e6:,.0f}M, reading +{(at[1] - at[0]) / 1e6:,.0f}M, "
                f"grouping +{(at[2] - at[1]) / 1e6:,.0f}M, figures +{(at[3] - at[2]) / 1e6:,.0f}M, "
                f"output +{(report - at[3]) / 1e6:,.0f}M | | |",
                flush=True,
            )


def overlap(directory: Path, sizes: list[int]) -> None:
    print("| overlapping calls | report (in process) | ÷ previous | calls ÷ previous |")
    print("|---:|---:|---:|---:|")
    prev: tuple[int, float] | None = None
    for n in sizes:
        took = float(measure([PY, "-c", OVERLAP, str(overlapping(directory, n))])[2])
        ratio = f"{took / prev[1]:.2f}" if prev else "-"
        grown = f"{n / prev[0]:.0f}" if prev else "-"
        print(f"| {n:,} | {took:.3f} s | {ratio} | {grown} |", flush=True)
        prev = (n, took)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the generated files go (not the repo)")
    p.add_argument("--spans", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--overlap", type=int, nargs="*", default=[2_000, 8_000, 32_000])
    p.add_argument("--overlap-only", action="store_true")
    p.add_argument("--repeat", type=int, default=5, help="alternated loop/report rounds per size (medians)")
    p.add_argument(
        "--instructions", action="store_true", help="CPU instructions (callgrind) of loop and report"
    )
    p.add_argument(
        "--stages", action="store_true", help="with --instructions: where the report's go, by stage"
    )
    p.add_argument("--pure", action="store_true", help="the report's pure-Python path (not the compiled one)")
    args = p.parse_args()
    _ENV[PURE_ENV] = "1" if args.pure else "0"
    directory = Path(args.dir)
    if args.instructions:
        instruction_ratios(directory, args.spans, args.stages)
        return
    if not args.overlap_only:
        throughput(directory, args.spans, args.repeat)
        print()
    overlap(directory, args.overlap)


if __name__ == "__main__":
    main()
