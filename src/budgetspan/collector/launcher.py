"""``budgetspan collector``: rotel with budgetspan's processor, health-checked, any exit a failure.

Why a launcher rather than a documented ``rotel start`` line: rotel's embedded interpreter sees
only the system's paths (``PYTHONPATH`` must name this environment, and ``.pth`` files such as an
editable install's are not read there), and a processor that fails to import makes rotel exit
with status 0. The launcher sets the paths, waits until the processor's metrics endpoint and the
OTLP receiver answer, prints one ``READY`` line, and from then on reports any exit of rotel as a
failure (status 1), so a supervisor restarts it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path
from types import FrameType

from budgetspan import attributes as A
from budgetspan.config_numbers import amount_option, count_option

PROCESSOR = Path(__file__).with_name("rotel_processor.py")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--otlp-grpc-endpoint", default="127.0.0.1:4317", help="OTLP/gRPC receiver")
    p.add_argument("--otlp-http-endpoint", default="127.0.0.1:4318", help="OTLP/HTTP receiver")
    p.add_argument("--exporter-endpoint", help="forward spans here over OTLP (none: discard them)")
    p.add_argument("--exporter-protocol", choices=("http", "grpc"), default="http")
    p.add_argument(
        "--metrics-port", type=count_option(0, 65535), default=9464, help="Prometheus /metrics of the tier"
    )
    p.add_argument("--metrics-addr", default="127.0.0.1")
    p.add_argument("--keep-content", action="store_true", help="do not redact message content")
    p.add_argument("--window-s", type=amount_option, help="close a run idle this long (default 300)")
    p.add_argument("--max-runs", type=count_option(1), help="runs held at once (default 50000)")
    p.add_argument(
        "--plain-scope",
        action="append",
        default=[],
        metavar="NAME",
        help="an instrumentation scope free of GenAI data: its spans are not read (neither priced nor "
        "redacted), only a root ends its trace's run; repeat for several",
    )
    p.add_argument("--ready-timeout", type=amount_option, default=30.0)
    p.add_argument("--processor", default=str(PROCESSOR), help=argparse.SUPPRESS)
    p.add_argument("rotel_args", nargs="*", help="more rotel options, after --")


def rotel_binary() -> Path:
    spec = importlib.util.find_spec("rotel")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("budgetspan collector: the rotel package is not installed (pip install rotel)")
    return Path(next(iter(spec.submodule_search_locations))) / "rotel-agent"


def python_path() -> str:
    """This environment's packages, and budgetspan's own directory (editable installs)."""
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    paths.append(str(Path(__file__).resolve().parents[2]))
    return os.pathsep.join(dict.fromkeys(paths))


def command(args: argparse.Namespace, workdir: str) -> list[str]:
    cmd = [
        str(rotel_binary()),
        "start",
        "--otlp-grpc-endpoint",
        args.otlp_grpc_endpoint,
        "--otlp-http-endpoint",
        args.otlp_http_endpoint,
        "--otlp-with-trace-processor",
        args.processor,
        "--pid-file",
        os.path.join(workdir, "rotel.pid"),
        "--log-file",
        os.path.join(workdir, "rotel.log"),
    ]
    if args.exporter_endpoint:
        cmd += ["--exporter", "otlp", "--otlp-exporter-endpoint", args.exporter_endpoint]
        cmd += ["--otlp-exporter-protocol", args.exporter_protocol]
    else:
        cmd += ["--exporter", "blackhole"]
    return cmd + list(args.rotel_args)


def environment(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = python_path()
    env[A.ENV_COLLECTOR_METRICS_PORT] = str(args.metrics_port)
    env[A.ENV_COLLECTOR_METRICS_ADDR] = args.metrics_addr
    if args.keep_content:
        env[A.ENV_COLLECTOR_KEEP_CONTENT] = "true"
    if args.window_s is not None:
        env[A.ENV_COLLECTOR_WINDOW_S] = str(args.window_s)
    if args.plain_scope:
        env[A.ENV_COLLECTOR_PLAIN_SCOPES] = ",".join(args.plain_scope)
    if args.max_runs is not None:
        env[A.ENV_COLLECTOR_MAX_RUNS] = str(args.max_runs)
    return env


def _healthy(args: argparse.Namespace) -> bool:
    url = f"http://{args.metrics_addr}:{args.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status != 200:
                return False
        host, _, port = args.otlp_http_endpoint.rpartition(":")
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=2):
            return True
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    """Start rotel, wait until healthy, then supervise: any exit of rotel is a failure."""
    workdir = tempfile.mkdtemp(prefix="budgetspan-collector-")
    # rotel logs on its stdout: to our stderr, so that our stdout carries only the READY line
    proc = subprocess.Popen(command(args, workdir), env=environment(args), stdout=sys.stderr)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    deadline = time.monotonic() + args.ready_timeout
    while not _healthy(args):
        if proc.poll() is not None:
            return _failed(proc.returncode, workdir, "before it was ready")
        if time.monotonic() > deadline:
            proc.kill()
            return _failed(proc.wait(), workdir, f"not healthy after {args.ready_timeout:g} s")
        time.sleep(0.1)
    print(
        f"READY otlp-http={args.otlp_http_endpoint} otlp-grpc={args.otlp_grpc_endpoint} "
        f"metrics=http://{args.metrics_addr}:{args.metrics_port}/metrics",
        flush=True,
    )
    status = proc.wait()
    if stopping:
        return 0
    return _failed(status, workdir, "while running")


def _failed(status: int, workdir: str, when: str) -> int:
    log_tail = ""
    try:
        log_tail = Path(workdir, "rotel.log").read_text(errors="replace")[-2000:]
    except OSError:
        pass
    print(
        f"budgetspan collector: rotel exited with status {status} {when} (any exit is a failure: "
        f"a processor that fails to import makes rotel exit 0); log: {workdir}/rotel.log\n{log_tail}",
        file=sys.stderr,
        flush=True,
    )
    return 1
