"""``budgetspan demo``: run the tickets, show progress, then a table per run and per phase.

Everything goes through the public API: ``budgetspan.configure()`` sets budgetspan up on the
demo's tracer provider and the ``openai`` SDK is instrumented, the spans go to an OTLP JSON lines
file that ``budgetspan report`` reads, and the tables at the end are computed by the report's
own analysis from the same spans.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import IO, Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

import budgetspan
from budgetspan import attributes as A
from budgetspan.config import Config, ConfigError, get_config, parse_config_file, set_config
from budgetspan.config_numbers import amount_option, count_at_most, count_option
from budgetspan.demo import jobs as demo_jobs
from budgetspan.demo.agent import SupportAgent, TicketResult
from budgetspan.demo.data import TICKETS, Ticket
from budgetspan.demo.server import Latency, ModelServer
from budgetspan.processors.file_export import encode_request, file_span_processor
from budgetspan.report.analysis import Analysis, analyze
from budgetspan.report.load import load_files, parse_request
from budgetspan.report.render import Table, money, pct, runs_table, secs
from budgetspan.runs.context import set_tracer_provider
from budgetspan.runs.progress import Milestone, subscribe_progress

DEFAULT_TRACES = "budgetspan-demo.jsonl"
DEMO_INSTALL = "pip install 'budgetspan[demo]'"  # the exact command printed when openai is missing
DEFAULT_METRICS_PORT = 9464


class _Collect(SpanProcessor):
    """Keeps the finished spans in memory for the tables at the end."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self._lock = threading.Lock()

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            self.spans.append(span)


@dataclass
class DemoOptions:
    traces: str | None = None
    serve: bool = False
    metrics_port: int | None = None
    latency_scale: float = 1.0
    offline: bool = False
    tickets: Sequence[str] = ()
    every_s: float | None = None
    jobs: bool = False
    routes: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--traces",
        metavar="FILE",
        help=f"write spans (OTLP JSON lines) here; default: $BUDGETSPAN_TRACES_FILE, else ./{DEFAULT_TRACES}",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="keep the Prometheus metrics endpoint up after the demo (Ctrl-C to stop)",
    )
    p.add_argument(
        "--metrics-port",
        type=count_option(0, 65535),
        metavar="PORT",
        help=f"metrics port (default with --serve: $BUDGETSPAN_METRICS_PORT, else {DEFAULT_METRICS_PORT}; 0: any free port)",
    )
    p.add_argument(
        "--every",
        type=amount_option,
        metavar="SECONDS",
        help="with --serve: run the tickets again every SECONDS, so dashboards see live rates",
    )
    p.add_argument(
        "--offline", action="store_true", help="use the embedded model server even when OPENAI_API_KEY is set"
    )
    p.add_argument(
        "--ticket", action="append", default=[], metavar="ID", help="run only this ticket (repeatable)"
    )
    p.add_argument(
        "--jobs",
        action="store_true",
        help="run the background tickets as jobs on a Celery worker process ($BUDGETSPAN_REDIS_URL, "
        "else a local redis-server), followed with `budgetspan jobs watch`",
    )
    p.add_argument(
        "--routes",
        action="store_true",
        help="then draft 16 more tickets on two routes (a cheap model, a strong one) and show which "
        "is cheaper per resolved ticket (the report's routing evaluation)",
    )
    p.add_argument("--latency-scale", type=amount_option, default=1.0, help=argparse.SUPPRESS)


def options_from(args: argparse.Namespace) -> DemoOptions:
    return DemoOptions(
        traces=args.traces,
        serve=args.serve,
        metrics_port=args.metrics_port,
        latency_scale=args.latency_scale,
        offline=args.offline,
        tickets=tuple(args.ticket),
        every_s=args.every,
        jobs=args.jobs,
        routes=args.routes,
    )


def _demo_config() -> tuple[Config, str]:
    """The demo's budgets, unless the user points BUDGETSPAN_CONFIG at their own."""
    current = get_config()
    if os.environ.get(A.ENV_CONFIG, "").strip():
        return current, os.environ[A.ENV_CONFIG]
    ref = resources.files("budgetspan.demo") / "budgets.toml"
    with resources.as_file(ref) as path:
        profiles, workflows, tools = parse_config_file(str(path), source="budgetspan demo budgets")
    return Config(current.default_budget, current.mode, profiles, workflows, tools), "bundled demo budgets"


def _budget_line(cfg: Config, profile: str) -> str:
    b = cfg.profiles[profile]
    parts = []
    if b.max_model_calls is not None:
        parts.append(f"{b.max_model_calls} model calls")
    if b.max_tool_calls is not None:
        parts.append(f"{b.max_tool_calls} tool calls")
    if b.max_cost_usd is not None:
        parts.append(f"${b.max_cost_usd:.2f}")
    if b.max_wall_clock_s is not None:
        parts.append(f"{b.max_wall_clock_s:g} s")
    return f"{profile}: " + ", ".join(parts)


class _Printer:
    """Prints milestones under the ticket being worked on."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self._lock = threading.Lock()

    def __call__(self, m: Milestone) -> None:
        if m.kind == "end":
            return  # the outcome line says it better
        with self._lock:
            self.out.write(f"    {m.elapsed_s:5.2f} s  {m.label}\n")
            self.out.flush()


def _outcome_line(r: TicketResult) -> list[str]:
    head = f"  -> {r.outcome} in {secs(r.duration_s)}, {money(r.cost_usd)}"
    if r.exhausted is not None:
        e = r.exhausted
        lines = [f"{head}: budget {e.reason} reached", f"     {e.explanation}"]
        answered = e.partial.get("answered_orders") or []
        if answered:
            done = ", ".join(a["order"] for a in answered)
            lines.append(
                f"     Partial result kept: answers for {len(answered)} of {len(r.ticket.orders)} orders "
                f"({done}), ready for a person to finish."
            )
        elif e.partial.get("last_model_answer"):
            lines.append("     Partial result kept: the last draft, ready for a person to finish.")
        if r.reply:
            lines.append("     Final answer written from the budget kept for it, and sent.")
        return lines
    if r.error is not None:
        return [f"{head}: {type(r.error).__name__}: {r.error}"]
    if r.escalation:
        return [f"{head}: {r.escalation}"]
    notes = [f"     note: {n}" for n in r.notes]
    return [f"{head}: reply sent", *notes]


async def _run_tickets(agent: SupportAgent, tickets: Sequence[Ticket], out: IO[str]) -> list[TicketResult]:
    results = []
    for t in tickets:
        out.write(f'\n{t.id}  {t.profile:<11}  "{t.subject}"  ({t.story})\n')
        out.flush()
        r = await agent.resolve(t)
        out.write("\n".join(_outcome_line(r)) + "\n")
        out.flush()
        results.append(r)
    return results


def _tables(analysis: Analysis, results: list[TicketResult], out: IO[str]) -> None:
    labels = {r.run_id: r.ticket.id for r in results}
    runs = [r for r in analysis.runs if r.run_id in labels]
    out.write("\nPer run\n\n")
    out.write(runs_table(runs, label=labels).render() + "\n")
    for wf in analysis.workflows:
        out.write(f"\nPer phase ({wf.workflow}, {wf.runs} runs)\n\n")
        t = Table(["phase", "time", "share", "p50", "p95", "cost", "share of cost", "calls"])
        for p in wf.phases:
            time = (secs(p.time_s), pct(p.time_share), secs(p.p50_s), secs(p.p95_s))
            t.add(p.phase, *time, money(p.cost_usd), pct(p.cost_share), p.calls)
        t.add("total", secs(wf.total_time_s), "100%", "", "", money(wf.total_cost_usd), "", "")
        out.write(t.render() + "\n")
    total = sum(r.cost_usd for r in runs)
    ok = sum(1 for r in runs if r.outcome == "success")
    per = money(total / ok) if ok else "n/a"
    out.write(
        f"\nCost per successful ticket: {per}  ({money(total)} over {len(runs)} tickets, {ok} succeeded; "
        "the cost of failed, escalated and stopped tickets stays in)\n"
    )
    _cache_line(analysis, out)


def _cache_line(analysis: Analysis, out: IO[str]) -> None:
    """What the policy-search cache (per tenant) answered and saved, from the same spans."""
    lines = analysis.savings.cache if analysis.savings is not None else []
    for c in lines:
        asked = c.hits + c.misses + c.skipped + c.unavailable
        out.write(
            f"Cache ({c.name}, per tenant): {c.hits} of {asked} answered from the cache, "
            f"{secs(c.saved_s)} and {money(c.saved_usd)} saved\n"
        )


# long: the demo's script, read top to bottom: set up, run the tickets, print the report
def run_demo(opts: DemoOptions, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    if importlib.util.find_spec("openai") is None:  # a plain install: stop before any file is made
        print(f"budgetspan demo needs the openai package: {DEMO_INSTALL}", file=sys.stderr)
        return 2
    tickets = [t for t in TICKETS if not opts.tickets or t.id in opts.tickets]
    if not tickets:
        print(f"budgetspan demo: no such ticket; known: {', '.join(t.id for t in TICKETS)}", file=sys.stderr)
        return 2
    if opts.every_s is not None and (not opts.serve or opts.every_s <= 0):
        print("budgetspan demo: --every needs --serve and a number of seconds > 0", file=sys.stderr)
        return 2
    real = bool(os.environ.get("OPENAI_API_KEY")) and not opts.offline
    env_traces = os.environ.get(A.ENV_TRACES_FILE, "").strip()
    traces = opts.traces or env_traces or DEFAULT_TRACES
    metrics_port = opts.metrics_port
    if opts.serve and metrics_port is None:
        from_env = os.environ.get(A.ENV_METRICS_PORT, "").strip()
        port = count_at_most(from_env, 65535)  # (str.isdigit took "²", which int() refuses)
        metrics_port = port if port >= 0 else DEFAULT_METRICS_PORT

    server: ModelServer | None = None
    host: demo_jobs.JobsHost | None = None

    provider = TracerProvider(resource=Resource.create({"service.name": "budgetspan-demo"}))
    collector = _Collect()
    try:
        # Only the openai instrumentation: configure() would also import every other instrumented
        # library that happens to be installed, which costs seconds and is not needed here.
        budgetspan.configure(tracer_provider=provider, metrics_port=metrics_port, instrument=False)
        _instrument_openai(provider)
        cfg, budgets_source = _demo_config()
        set_config(cfg)
        if traces != env_traces:  # our own file: start it afresh (the user's env file is appended to)
            open(traces, "w").close()
            provider.add_span_processor(file_span_processor(traces))
        provider.add_span_processor(collector)

        from openai import AsyncOpenAI

        if not real:
            server = ModelServer(Latency(scale=opts.latency_scale)).start()
        base_url = server.base_url if server is not None else None

        def new_client() -> Any:
            # One client per event loop: an async client's connections belong to the loop it ran in.
            if base_url is None:
                return AsyncOpenAI()
            return AsyncOpenAI(base_url=base_url, api_key="demo-key-not-used", max_retries=0)

        client = new_client()
        if real:
            where = f"a real provider at {client.base_url} (OPENAI_API_KEY is set; --offline to avoid it)"
        else:
            where = f"the embedded OpenAI-compatible server at {base_url} (deterministic answers)"
        agent = SupportAgent(client, scale=opts.latency_scale)
        out.write(f"budgetspan demo: {len(tickets)} support tickets through the instrumented OpenAI SDK\n")
        out.write(f"Model: {where}\n")
        out.write(
            f"Budgets ({budgets_source}): {_budget_line(cfg, 'interactive')}; {_budget_line(cfg, 'background')}\n"
        )
        out.write(f"Spans: {traces}\n")
        t0 = time.monotonic()
        if opts.jobs:
            host = demo_jobs.start(out, base_url, opts.latency_scale, _jobs_traces(traces))
        queued = _submit_jobs(host, tickets, out) if host is not None else []
        here = [t for t in tickets if t not in {q for q, _ in queued}]
        with subscribe_progress(_Printer(out), workflow="resolve_ticket"):
            results = asyncio.run(_run_tickets(agent, here, out))
        files = [traces]
        if host is not None:
            results += [_follow_job(host, t, job_id, out) for t, job_id in queued]
            host.stop()  # the worker writes its last spans on the way out
            files.append(host.worker_traces)
        provider.force_flush()
        records = parse_request(encode_request(collector.spans)) if collector.spans else []
        if host is not None:
            records += load_files([host.worker_traces])[0]
        _tables(analyze(records), results, out)
        if opts.routes:  # the routing trial: the drafting step on two routes
            _trial(out, base_url, opts.latency_scale, provider, collector)
        out.write(
            f"\nAll {len(tickets)} tickets in {time.monotonic() - t0:.1f} s. "
            f"Next: budgetspan report {' '.join(files)}\n"
        )
        out.flush()
        if opts.serve:

            def again() -> None:
                collector.spans.clear()
                agent.reset()
                agent.client = new_client()
                quiet = _Summary()
                asyncio.run(_run_tickets(agent, tickets, quiet))
                out.write(f"{time.strftime('%H:%M:%S')}  {quiet.line()}\n")
                out.flush()

            _serve(out, again if opts.every_s else None, opts.every_s or 0.0)
    except ConfigError as e:
        print(f"budgetspan demo: configuration error: {e}", file=sys.stderr)
        return 2
    finally:
        provider.shutdown()
        set_tracer_provider(None)
        set_config(None)
        if server is not None:
            server.stop()
        if host is not None:
            host.stop()
    return 0


def _jobs_traces(traces: str) -> str:
    """The worker's spans file, beside the demo's, started afresh."""
    path = (traces[: -len(".jsonl")] if traces.endswith(".jsonl") else traces) + "-jobs.jsonl"
    open(path, "w").close()
    return path


def _submit_jobs(
    host: demo_jobs.JobsHost, tickets: Sequence[Ticket], out: IO[str]
) -> list[tuple[Ticket, str]]:
    """Send the background tickets to the worker; they run while the chat tickets run here."""
    queued = [(t, host.submit(t)) for t in tickets if t.profile == "background"]
    if queued:
        out.write("Background tickets sent as jobs (job id = run id), followed below:\n")
        for t, job_id in queued:
            out.write(f"  {t.id}  job {job_id}\n")
        out.write(
            f"Follow one from another terminal: budgetspan jobs watch {queued[0][1]} --redis {host.url}\n"
        )
    return queued


def _follow_job(host: demo_jobs.JobsHost, t: Ticket, job_id: str, out: IO[str]) -> TicketResult:
    out.write(f'\n{t.id}  {t.profile:<11}  "{t.subject}"  ({t.story})\n')
    out.write(f"    job {job_id}, read from its Redis stream\n")
    return host.follow(t, job_id, out)


def _trial(
    out: IO[str], base_url: str | None, scale: float, provider: TracerProvider, collector: _Collect
) -> None:
    """Draft the same tickets on a cheap and a strong route; print the routing evaluation."""
    from openai import AsyncOpenAI

    from budgetspan.demo import routes
    from budgetspan.demo.server import TRIAL_HEADER
    from budgetspan.report.routing_cli import evaluate_spans, render_routing

    def make_agent(model: str) -> SupportAgent:
        if base_url is None:
            client = AsyncOpenAI(max_retries=2)
        else:  # the cheap model is busy now and then: the SDK retries
            client = AsyncOpenAI(
                base_url=base_url,
                api_key="demo-key-not-used",
                max_retries=2,
                default_headers={TRIAL_HEADER: routes.CHEAP},
            )
        return SupportAgent(client, draft_model=model, scale=scale)

    out.write(
        f"\nRouting trial ({routes.TRIAL_WORKFLOW}): {routes.TRIAL_TICKETS} tickets drafted by {routes.CHEAP} "
        f"and by {routes.STRONG}; a later quality check records human edits and reopened tickets.\n"
    )
    out.flush()
    first = len(collector.spans)
    asyncio.run(routes.run_trial(make_agent))
    provider.force_flush()
    routing = evaluate_spans(parse_request(encode_request(collector.spans[first:])))
    out.write(render_routing(routing) + "\n")


def _instrument_openai(provider: TracerProvider) -> None:
    from budgetspan.instrumentation.openai import OpenAIInstrumentor

    inst = OpenAIInstrumentor()
    if not inst.is_instrumented_by_opentelemetry:
        inst.instrument(tracer_provider=provider)


class _Summary(io.StringIO):
    """Swallows a pass's ticket lines and sums its outcomes into one line."""

    def line(self) -> str:
        outcomes: dict[str, int] = {}
        for ln in self.getvalue().splitlines():
            if ln.startswith("  -> "):
                word = ln.split()[1]
                outcomes[word] = outcomes.get(word, 0) + 1
        return "another pass: " + ", ".join(f"{n} {o}" for o, n in outcomes.items())


def _serve(out: IO[str], again: Callable[[], None] | None, every_s: float) -> None:
    address: Any = None
    try:
        from budgetspan.processors import metrics_endpoint as endpoint

        address = endpoint.server_address()
    except ImportError:
        pass
    if address is None:
        out.write("The metrics endpoint is not running (see the log above).\n")
        return
    out.write(f"Prometheus metrics on http://{address[0]}:{address[1]}/metrics  (Ctrl-C to stop)\n")
    if again is not None:
        out.write(f"Running the tickets again every {every_s:g} s.\n")
    out.flush()
    try:
        while True:
            time.sleep(every_s if again is not None else 3600)
            if again is not None:
                again()
    except KeyboardInterrupt:
        out.write("\nStopped.\n")
