"""The ``budgetspan`` command: ``demo``, ``report``, ``collector``, ``collector-config``, ``jobs``
and ``assets``."""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from budgetspan import attributes as A
from budgetspan.attributes import VERSION as __version__
from budgetspan.config_numbers import amount_option

if TYPE_CHECKING:
    from pathlib import Path

COMMANDS = ("demo", "report", "collector", "collector-config", "jobs", "assets")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command`` (one of ``COMMANDS``), only that subcommand, so
    ``budgetspan report`` does not import the demo's and the collector's modules (start-up time)."""
    parser = argparse.ArgumentParser(
        prog="budgetspan",
        description="Cost and latency of LLM agents, visible and bounded.",
    )
    parser.add_argument("--version", action="version", version=f"budgetspan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if command is None or command == name:
            if name in _MODULE_COMMANDS:
                _add_module_command(sub, name)
            else:
                _OTHER_COMMANDS[name](sub)
    return parser


# Subcommands whose options a module's ``add_arguments`` adds: name -> (module, help, description).
# The module is imported only when its subcommand is built (``budgetspan report`` stays quick).
_MODULE_COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "budgetspan.demo.runner",
        "run a support-ticket agent through the instrumented OpenAI SDK and show where time and money go",
        "Runs a bundled support-ticket agent against an embedded OpenAI-compatible model "
        "server (or a real provider when OPENAI_API_KEY is set), with budgets, progress and a "
        "table per run and per phase at the end.",
    ),
    "report": (
        "budgetspan.report.render",
        "time and cost by phase, largest contributors, sequential reads, plan versus actual",
        "Reads OTLP JSON lines (BUDGETSPAN_TRACES_FILE output, or the OpenTelemetry "
        "Collector's file exporter) and reports, per workflow, where time and money went. "
        "Exit status: 0, 1 if some lines could not be read (the rest is reported), 2 on a usage error.",
    ),
    "collector": (
        "budgetspan.collector.launcher",
        "run the collector tier: rotel with budgetspan's processor (pricing, redaction, metrics)",
        "Starts rotel (pip install rotel) with budgetspan's span processor, waits until it "
        "is healthy, prints READY, and exits 1 on any exit of rotel. Budgets: BUDGETSPAN_CONFIG, "
        "BUDGETSPAN_BUDGET; prices: BUDGETSPAN_PRICES. Extra rotel options after --.",
    ),
    "collector-config": (
        "budgetspan.collector.otelcol",
        "print an OpenTelemetry Collector (contrib) configuration equivalent to the tier",
        "Generates otelcol-contrib YAML from budgetspan's price table: transform statements "
        "that normalise, price and phase-tag GenAI spans and redact content, a sum connector for "
        "token and cost metrics, and tail sampling that keeps refusal and exhaustion traces.",
    ),
}


def _add_module_command(sub: Any, name: str) -> None:
    module, help_text, description = _MODULE_COMMANDS[name]
    parser = sub.add_parser(name, help=help_text, description=description)
    importlib.import_module(module).add_arguments(parser)


def _add_jobs(sub: Any) -> None:
    jobs = sub.add_parser("jobs", help="background jobs: follow a job's milestones until its end")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION")
    watch = jobs_sub.add_parser(
        "watch",
        help="print a job's milestones as they come, then its outcome and explanation",
        description="Reads the job's progress stream from Redis (any process can) and exits at its end: "
        "0 on success, 1 on any other outcome, 2 if it did not end within --timeout.",
    )
    watch.add_argument("job", help="the job id (= run id) returned by submit")
    watch.add_argument(
        "--redis",
        default=os.environ.get("BUDGETSPAN_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="the Redis of the jobs (default: $BUDGETSPAN_REDIS_URL or redis://127.0.0.1:6379/0)",
    )
    watch.add_argument("--timeout", type=amount_option, default=None, help="give up after this many seconds")


def _add_assets(sub: Any) -> None:
    assets = sub.add_parser(
        "assets",
        help="write the bundled Grafana dashboards, alert rules and collector configuration to DIR",
        description="Writes DIR/dashboards/*.json and DIR/collector-config/ (Prometheus, alert rules "
        "and their promtool tests, runbooks, Alertmanager, OpenTelemetry Collector, Grafana "
        "provisioning, compose.yaml): the files of the repository, shipped in the package. "
        "Exit status 1 if a file to write exists with other content and --force is not given.",
    )
    from pathlib import Path  # here, not at the top: `budgetspan report` starts without it

    assets.add_argument("dir", type=Path, help="where to write (created if missing)")
    assets.add_argument("--force", action="store_true", help="overwrite files that differ")
    assets.add_argument(
        "--runbook-base",
        default=os.environ.get(A.ENV_RUNBOOK_BASE_URL) or None,
        metavar="URL",
        help="where runbooks.md is published: the alert rules' runbook_url become URL#<alert> "
        f"(default: ${A.ENV_RUNBOOK_BASE_URL}, else relative: {RUNBOOK_REF}#<alert>)",
    )


# The one place the alert rules' runbook_url prefix is named: runbooks.md next to alerts.yml.
RUNBOOK_REF = "runbooks.md"
RUNBOOK_FILES = ("collector-config/alerts.yml", "collector-config/alerts_test.yml")


def with_runbook_base(text: bytes, base: str) -> bytes:
    """The rules (or their tests) with every ``runbook_url: "runbooks.md#x"`` as ``base#x``."""
    base = base.rstrip("/#")
    return text.replace(f'runbook_url: "{RUNBOOK_REF}#'.encode(), f'runbook_url: "{base}#'.encode())


def write_assets(dest: Path, force: bool, runbook_base: str | None = None) -> int:
    """Copy the packaged assets (``budgetspan/assets``) under ``dest``, keeping their layout."""
    from importlib import resources  # here: it imports tempfile, shutil, zipfile... (start-up)

    root = resources.files("budgetspan") / "assets"
    files: list[tuple[str, bytes]] = []

    def walk(node: Any, rel: str) -> None:
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            path = f"{rel}/{child.name}" if rel else child.name
            if child.is_dir():
                walk(child, path)
            else:
                data = child.read_bytes()
                if runbook_base and path in RUNBOOK_FILES:
                    data = with_runbook_base(data, runbook_base)
                files.append((path, data))

    walk(root, "")
    clash = [rel for rel, data in files if (dest / rel).exists() and (dest / rel).read_bytes() != data]
    if clash and not force:
        print(
            f"budgetspan assets: {len(clash)} file(s) differ, not overwritten (use --force):", file=sys.stderr
        )
        for rel in clash:
            print(f"  {dest / rel}", file=sys.stderr)
        return 1
    for rel, data in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    print(f"wrote {len(files)} files under {dest}: dashboards/ (import into Grafana) and collector-config/")
    print(f"  local stack: docker compose -f {dest / 'collector-config' / 'compose.yaml'} up -d")
    return 0


_OTHER_COMMANDS: dict[str, Callable[[Any], None]] = {"jobs": _add_jobs, "assets": _add_assets}


def watch_job(args: argparse.Namespace) -> int:
    import redis

    from budgetspan.jobs.store import JobStore
    from budgetspan.report.text import safe  # a label or an error's text may hold escape sequences

    store = JobStore(redis.Redis.from_url(args.redis))
    for entry in store.watch(args.job, timeout_s=args.timeout):
        if entry.get("kind") == "end":
            print(safe(f"{entry.get('outcome')}: {entry.get('label')}"), flush=True)
            return 0 if entry.get("outcome") == "success" else 1
        print(f"{float(entry.get('elapsed_s') or 0):6.1f}s  {safe(str(entry.get('label')))}", flush=True)
    print(f"job {args.job}: no end within {args.timeout} s", file=sys.stderr)
    return 2


def end_process(status: int) -> None:
    """End the process now with ``status``, without freeing what it holds (``os._exit``, as mypy
    does at its end): no freeing of the report's analysis (68,697 runs at 1M spans, their dicts
    and lists), no finalization of the interpreter. What a normal exit would still
    do that matters here is done first: the handlers registered with ``atexit`` (the report
    registers none; any a library added run all the same) and the flush of stdout and stderr.
    Returns instead, and the usual exit follows, when another Python thread runs (the usual exit
    waits for it) or a flush fails (a closed pipe: the usual exit reports it, as before).

    Measured gain: freeing the 1M-span analysis took 0.26-0.39 s CPU (``del`` in process, four
    runs); with ``jsondoc.write_json``, ``bench/bench_report.py --spans
    1000000 --repeat 1`` alternated with main 5 times: report CPU median 9.41 -> 8.98 s (see
    bench/README.md, tenth stop)."""
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return
    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return
    os._exit(status)


def main(argv: Sequence[str] | None = None, *, own_process: bool = False) -> int:
    """The command (``argv``, by default the process's command line); its exit status.
    ``own_process`` (``console``): ``report`` ends the process itself once its output is written
    (``end_process``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] != ["report"]:  # the report prints its own messages (~20M instructions less)
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from budgetspan.demo import runner

        return runner.run_demo(runner.options_from(args))
    if args.command == "report":
        from budgetspan.report import render as report

        try:
            return report.run_report(args, finish=end_process if own_process else None)
        except BrokenPipeError:  # `budgetspan report ... | head`
            return 0
    if args.command == "collector":
        from budgetspan.collector import launcher

        return launcher.run(args)
    if args.command == "collector-config":
        from budgetspan.collector import otelcol

        return otelcol.main(args)
    if args.command == "jobs" and args.jobs_command == "watch":
        return watch_job(args)
    if args.command == "assets":
        return write_assets(args.dir, args.force, args.runbook_base)
    parser.print_help(sys.stderr)
    return 2


def console() -> None:
    """The ``budgetspan`` script and ``python -m budgetspan.cli``: the only callers whose process
    is the command's own, so the only ones where ``report`` may end it (``end_process``)."""
    sys.exit(main(own_process=True))


if __name__ == "__main__":  # pragma: no cover
    console()
