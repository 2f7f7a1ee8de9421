"""RedisLedger reserve + commit, next to a floor of two trivial scripts on the same server.

    PYTHONPATH=src .venv/bin/python bench/bench_redis_ledger.py [--procs 1 2 4 8 --seconds 1 --rounds 5]
    PYTHONPATH=src .venv/bin/python bench/bench_redis_ledger.py --instructions   # valgrind

Starts its own redis-server on loopback (no persistence). Kinds of cycle:

- ``ledger``: ``RedisLedger.reserve`` (a model call with a worst case) + ``commit`` (its tokens
  and cost), on one run shared by every worker, with a limit of every kind, none reachable (on
  Redis 7 one FCALL of the ledger's function library per cycle: the settlement rides ahead);
- ``floor``: two EVALSHA calls of trivial scripts (``return 1``, ``return 2``) through the same
  bounded transport the ledger uses (``_Server.run``): two round trips and nothing else;
- ``ledger-4-scopes``: the same, in a run of a conversation, a user, a tenant and a workflow that
  each have a budget over a window (a day, a month, a day, an hour): the run's key and the four
  windows' keys in the same two scripts (budgets above the run, issue 22);
- ``floor-5-keys``: a fairer floor for ``ledger-4-scopes``: two trivial scripts that each read 5
  string keys (80 bytes, a window's size) with one MGET and write them back with one MSET, what
  any atomic reservation in a run and 4 windows must do at least;
- ``one-script-1-key``, ``one-script-5-keys``: one script per cycle (as the ledger sends) that reads
  its keys with one MGET and writes each back with a SET that keeps its expiry, and does nothing
  else: the least any atomic reservation in a run (and 4 windows, each with its own expiry) must do;
- ``redis-py``: the same two trivial scripts through ``redis.Redis.evalsha``, for reference.

Wall clock: for each process count P, P worker processes run one kind side by side for
``--seconds`` after a common start signal; kinds alternate within each round, and the table shows
each kind's best round in cycles per second (other work on a shared machine only ever slows a
round down). The redis-server shares the machine's cores with the workers.

``--memory``: a ``BUDGETSPAN_CONFIG`` with 100,000 ``[tenants.NAME]`` tables (and ``[users.default]``),
the Python heap (tracemalloc) after reading it and after runs of 20,000 distinct tenants and users
on the Redis ledger, each with a call: memory must not grow with the tenants configured or used.

``--instructions``: CPU instructions per cycle, which the load of a shared machine does not move:
the client's, from one process under callgrind ((I(large) - I(small)) / (large - small)), and the
server's, from a redis-server under callgrind (its counts dumped around ``large`` cycles). Kernel
work (the sockets) is not counted on either side.
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

RUN_ID = "bench-shared-run"
KINDS = (
    "ledger",
    "ledger-4-scopes",
    "floor",
    "floor-5-keys",
    "one-script-1-key",
    "one-script-5-keys",
    "redis-py",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(directory: str, under: list[str] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server on a free loopback port (``under``: a command to run it under, e.g. valgrind)."""
    import redis

    port = _free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [*(under or []), *args, "--dir", directory], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = redis.Redis(port=port, socket_timeout=2)
    for _ in range(600):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def _every_limit() -> Any:
    from every_limit import EVERY_LIMIT  # imported in the worker process, as budgetspan is

    return EVERY_LIMIT


def _ledger_cycle(port: int) -> Callable[[], None]:
    import redis

    from budgetspan.accounting.ledger import CallKind, Mode, Spend
    from budgetspan.accounting.redis_ledger import RedisLedger

    ledger = RedisLedger(redis.Redis(port=port), timeout_s=60)  # (60 s: a server under valgrind)
    ledger.open(RUN_ID, _every_limit(), Mode.ENFORCE)
    spend = Spend(input_tokens=120, output_tokens=40, cost_usd=0.0003)

    def cycle() -> None:
        res = ledger.reserve(
            RUN_ID, CallKind.MODEL, worst_case_cost=0.001, worst_case_tokens=256, worst_case_input_tokens=150
        )
        ledger.commit(res, spend)

    return cycle


def _scoped_cycle(port: int) -> Callable[[], None]:
    import redis

    from budgetspan.accounting.budget import Budget
    from budgetspan.accounting.ledger import CallKind, Mode, Spend
    from budgetspan.accounting.redis_ledger import RedisLedger
    from budgetspan.accounting.scopes import Scope, ScopeBudget
    from budgetspan.accounting.windows import parse_window

    ledger = RedisLedger(redis.Redis(port=port), timeout_s=60)
    ledger.open(RUN_ID, _every_limit(), Mode.ENFORCE)
    wide = Budget(max_model_calls=10**12, max_cost_usd=1e11, max_total_tokens=10**14)
    scopes = [
        Scope(kind, name, ScopeBudget(wide, parse_window(window), warn_at=0.8))
        for kind, name, window in (
            ("conversation", "c-1", None),
            ("user", "u-1", "month"),
            ("tenant", "acme", "day"),
            ("workflow", "triage", "hour"),
        )
    ]
    spend = Spend(input_tokens=120, output_tokens=40, cost_usd=0.0003)

    def cycle() -> None:
        refs = tuple(s.ref() for s in scopes)  # as Run.scope_refs makes them, per call
        res = ledger.reserve(
            RUN_ID,
            CallKind.MODEL,
            worst_case_cost=0.001,
            worst_case_tokens=256,
            worst_case_input_tokens=150,
            scopes=refs,
        )
        ledger.commit(res, spend)

    return cycle


def _floor_cycle(port: int) -> Callable[[], None]:
    import redis

    from budgetspan.accounting.redis_wire import Script as _Script
    from budgetspan.accounting.redis_wire import Server as _Server

    server = _Server(redis.Redis(port=port), 60)
    one, two = _Script.of("return 1"), _Script.of("return 2")
    key = "bench-floor"

    def cycle() -> None:
        server.run(one, key, (), 60)
        server.run(two, key, (), 60)

    return cycle


#: The 5-key floor's scripts: what any atomic reservation in a run and 4 scope windows, each a
#: string, must do at least (read all 5 with one MGET, write them back with one MSET).
_FIVE_KEYS = """
local v = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('MSET', KEYS[1], v[1], KEYS[2], v[2], KEYS[3], v[3], KEYS[4], v[4], KEYS[5], v[5])
return %d
"""


def _five_keys_cycle(port: int) -> Callable[[], None]:
    import redis

    from budgetspan.accounting.redis_wire import Script as _Script
    from budgetspan.accounting.redis_wire import Server as _Server

    client = redis.Redis(port=port)
    keys = tuple(f"bench-floor-5:{i}" for i in range(5))
    for key in keys:
        client.set(key, b"\x00" * 80)  # (a window's string is 80 bytes)
    server = _Server(client, 60)
    one, two = _Script.of(_FIVE_KEYS % 1), _Script.of(_FIVE_KEYS % 2)

    def cycle() -> None:
        server.run(one, keys, (), 60)
        server.run(two, keys, (), 60)

    return cycle


#: The least any design that reserves in a run and N-1 windows with one script per cycle (as the
#: ledger does: the settlement rides on the next reservation) must do: read the N keys and write
#: each back keeping its expiry. No accounting at all.
_ONE_SCRIPT_N_KEYS = """
local v = redis.call('MGET', unpack(KEYS))
for i = 1, #KEYS do redis.call('SET', KEYS[i], v[i], 'KEEPTTL') end
return 1
"""


def _one_script_cycle(n: int) -> Callable[[int], Callable[[], None]]:
    def make(port: int) -> Callable[[], None]:
        import redis

        from budgetspan.accounting.redis_wire import Script as _Script
        from budgetspan.accounting.redis_wire import Server as _Server

        client = redis.Redis(port=port)
        keys = tuple(f"bench-one-{n}:{i}" for i in range(n))
        for key in keys:
            client.set(key, b"\x00" * 88, ex=3600)  # (a window's packed string is 88 bytes)
        server = _Server(client, 60)
        script = _Script.of(_ONE_SCRIPT_N_KEYS)

        def cycle() -> None:
            server.run(script, keys, (), 60)

        return cycle

    return make


def _redis_py_cycle(port: int) -> Callable[[], None]:
    import redis

    client = redis.Redis(port=port, socket_timeout=60)
    one, two = client.script_load("return 1"), client.script_load("return 2")

    def cycle() -> None:
        client.evalsha(one, 1, "bench-floor")
        client.evalsha(two, 1, "bench-floor")

    return cycle


CYCLES = {
    "ledger": _ledger_cycle,
    "ledger-4-scopes": _scoped_cycle,
    "floor": _floor_cycle,
    "floor-5-keys": _five_keys_cycle,
    "one-script-1-key": _one_script_cycle(1),
    "one-script-5-keys": _one_script_cycle(5),
    "redis-py": _redis_py_cycle,
}


# --- wall clock ------------------------------------------------------------------------------------


def _worker(kind: str, port: int, seconds: float, ready: Any, go: Any, out: Any) -> None:
    cycle = CYCLES[kind](port)
    for _ in range(200):  # warm: connections made, scripts loaded
        cycle()
    ready.wait()
    go.wait()
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        cycle()
        cycle()
        cycle()
        cycle()
        count += 4
    out.put(count)


def _measure(kind: str, procs: int, port: int, seconds: float) -> float:
    """Cycles per second of ``procs`` processes running ``kind`` at once."""
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Barrier(procs + 1), ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(kind, port, seconds, ready, go, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    ready.wait()
    go.set()
    total: int = sum(out.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(30)
    return total / seconds


def wall_clock(procs: list[int], seconds: float, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        server, port = _start_redis(directory)
        try:
            rows = []
            for p in procs:
                seen: dict[str, list[float]] = {kind: [] for kind in KINDS}
                for _ in range(rounds):
                    for kind in KINDS:
                        seen[kind].append(_measure(kind, p, port, seconds))
                rows.append((p, seen))
                rounds_seen = ", ".join(f"{k} {[round(v) for v in vs]}" for k, vs in seen.items())
                print(f"  {p} processes: {rounds_seen}", file=sys.stderr)
        finally:
            server.terminate()
            server.wait(5)
    print(
        "| processes | ledger reserve+commit /s | with 4 scopes /s | floor: 2 trivial EVALSHA /s "
        "| ledger ÷ floor | 4 scopes ÷ floor | 5-key floor /s | 4 scopes ÷ 5-key floor "
        "| redis-py `evalsha` ×2 /s | ledger ÷ redis-py |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p, seen in rows:
        m = {kind: max(values) for kind, values in seen.items()}
        scoped, five = m["ledger-4-scopes"], m["floor-5-keys"]
        print(
            f"| {p} | {m['ledger']:,.0f} | {scoped:,.0f} | {m['floor']:,.0f} | **{m['ledger'] / m['floor']:.2f}** "
            f"| **{scoped / m['floor']:.2f}** | {five:,.0f} | **{scoped / five:.2f}** "
            f"| {m['redis-py']:,.0f} | {m['ledger'] / m['redis-py']:.2f} |"
        )


# --- instructions ----------------------------------------------------------------------------------


def _client_loop(kind: str, port: int, n: int) -> None:
    """Run ``n`` cycles (after a warm-up): the client process valgrind counts."""
    cycle = CYCLES[kind](port)
    for _ in range(50):
        cycle()
    for _ in range(n):
        cycle()


def _callgrind_total(path: str) -> int:
    with open(path) as f:
        found = re.search(r"^summary: (\d+)", f.read(), re.M)
    assert found is not None, path
    return int(found.group(1))


def _client_instructions(kind: str, port: int, small: int, large: int, directory: str) -> float:
    totals = []
    for n in (small, large):
        out = os.path.join(directory, f"client.{kind}.{n}.out")
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--client-loop",
                kind,
                str(port),
                str(n),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        totals.append(_callgrind_total(out))
    return (totals[1] - totals[0]) / (large - small)


def _server_instructions(kind: str, port: int, server_pid: int, n: int, directory: str) -> float:
    """The server's instructions per cycle: its callgrind counts dumped before and after ``n``."""

    def dump() -> int:
        subprocess.run(["callgrind_control", "-d", str(server_pid)], check=True, capture_output=True)
        time.sleep(0.5)
        files = glob.glob(os.path.join(directory, f"server.{server_pid}.out.*"))
        return _callgrind_total(max(files, key=lambda f: int(f.rsplit(".", 1)[1])))

    cycle = CYCLES[kind](port)
    for _ in range(50):
        cycle()
    dump()
    for _ in range(n):
        cycle()
    return dump() / n


def instructions(kinds: list[str], small: int = 100, large: int = 600) -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--instructions needs valgrind (Debian package valgrind)")
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "server.%p.out")
        server, port = _start_redis(
            directory, ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        )
        try:
            rows = {
                kind: (
                    _client_instructions(kind, port, small, large, directory),
                    _server_instructions(kind, port, server.pid, large, directory),
                )
                for kind in kinds
            }
        finally:
            server.terminate()
            server.wait(30)
    floor = sum(rows["floor"])
    five = sum(rows["floor-5-keys"]) if "floor-5-keys" in rows else None
    print(
        "| cycle | client instructions | server instructions | both | floor's ÷ this (as a rate) "
        "| 5-key floor's ÷ this |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for kind, (client, server_side) in rows.items():
        both = client + server_side
        by_five = "" if five is None else f"**{five / both:.2f}**"
        print(
            f"| {kind} | {client:,.0f} | {server_side:,.0f} | {both:,.0f} | **{floor / both:.2f}** | {by_five} |"
        )


# --- memory with 100,000 tenants ------------------------------------------------------------------


def memory(tenants: int = 100_000, used: int = 20_000) -> None:
    import tracemalloc

    import redis

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "budgets.toml")
        with open(path, "w") as f:
            f.write('[users.default]\nmax_total_tokens = 2000000\nwindow = "month"\n')
            for i in range(tenants):
                f.write(f'[tenants.t{i}]\nmax_cost_usd = {50 + i % 200}\nwindow = "day"\nwarn_at = 0.8\n')
        server, port = _start_redis(directory)
        try:
            os.environ["BUDGETSPAN_CONFIG"] = path
            import budgetspan
            from budgetspan import config
            from budgetspan.accounting.ledger import CallKind, Spend

            t = time.perf_counter()
            config.load_config()
            load_s = time.perf_counter() - t  # (without tracemalloc, which slows it several times)
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            config.set_config(config.load_config())
            loaded = tracemalloc.get_traced_memory()[0]
            budgetspan.set_ledger(budgetspan.RedisLedger(redis.Redis(port=port)))
            marks = []
            for i in range(used):
                with budgetspan.run("chat", tenant=f"t{i * 7 % tenants}", user=f"u{i}") as run:
                    run.commit(
                        run.reserve(CallKind.MODEL, worst_case_cost=0.001), Spend(10, 5, cost_usd=0.0001)
                    )
                if i + 1 in (used // 4, used):
                    marks.append(tracemalloc.get_traced_memory()[0])
            keys = redis.Redis(port=port).dbsize()
        finally:
            server.terminate()
            server.wait(5)
    mb = 1 / 2**20
    print(
        f"| tenants configured | config read in | heap after reading | after {used // 4:,} runs | after {used:,} runs | Redis keys |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {tenants:,} | {load_s:.1f} s | {(loaded - base) * mb:.1f} MiB | {(marks[0] - base) * mb:.1f} MiB "
        f"| {(marks[1] - base) * mb:.1f} MiB | {keys:,} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instructions", action="store_true", help="count CPU instructions with valgrind")
    parser.add_argument("--memory", action="store_true", help="heap with 100,000 tenants configured")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="(--instructions)")
    parser.add_argument("--client-loop", nargs=3, metavar=("KIND", "PORT", "N"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.client_loop:
        kind, port, n = a.client_loop
        _client_loop(kind, int(port), int(n))
        return
    if shutil.which("redis-server") is None:
        raise SystemExit("needs redis-server (Debian package redis-server)")
    if a.memory:
        memory()
    elif a.instructions:
        instructions(a.kinds if "floor" in a.kinds else [*a.kinds, "floor"])
    else:
        wall_clock(a.procs, a.seconds, a.rounds)


if __name__ == "__main__":
    main()
