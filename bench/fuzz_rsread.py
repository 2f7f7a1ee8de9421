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
from pathlib import Path
from typing import Any

from budgetspan.report import fastread, native, rsnative
from budgetspan.report.otlp import BadLine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_rsread_cases import KEEPS, byte_mutation, case

sys.path.pop(0)

DEMO = Path("/work/main/budgetspan-demo.jsonl")


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
    print(
        f"{total} lines compared in {seed} batches ({read} read by Rust with the report's keep), {only} more"
    )
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
    states = [module._rs_state(k) for _, module, keeps, _ in readers() for k in keeps]  # pure, then compiled
    good = [s.encode() for s in seeds[:40]]
    with_event = good[0].replace(b'"attributes"', b'"events":[{"name":"ev","attributes":[]}],"attributes"', 1)
    good.append(with_event)
    lines = (
        good + [b + b" x" for b in good] + [b.replace(b'"spanId"', b'"spanId":"a","spanId"', 1) for b in good]
    )
    first = rs.read_line(with_event, states[2])
    assert first and first[0].events == [("ev", {})], "the odd keep reads the event"
    watched = {
        "None": None,
        "True": True,
        "False": False,
        "a name": first[0].name,
        "a trace id": first[0].trace_id,
    }
    watched.update({f"key {k}": k for k in list(states[0][0])[:3]})
    watched.update({"events fn": states[2][6], "state": states[0]})
    read = sum(rs.read_line(b, states[0]) is not None for b in lines)
    del first

    def counts() -> dict[str, int]:
        return {k: sys.getrefcount(v) for k, v in watched.items()}

    def churn(n: int, template: bytes) -> None:
        for i in range(n):
            rs.read_line(template.replace(b"@", str(i).encode()), states[i % len(states)])

    template = (
        good[0].replace(b'"stringValue": "r"', b'"stringValue": "r@"').replace(b'"name": "', b'"name": "@')
    )
    for i in range(30000):
        rs.read_line(lines[i % len(lines)], states[i % len(states)])
    churn(30000, template)
    before, rss0, t0 = counts(), rss_kb(), time.time()
    for i in range(reads):
        rs.read_line(lines[i % len(lines)], states[i % len(states)])
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
