"""Review 14: zero-code (``opentelemetry-instrument``, only ``BUDGETSPAN_*``/``OTEL_*`` set) in a
pre-forking web server: budgetspan is configured in the parent at start, then the parent forks
three workers that share one listening socket (gunicorn's model, with ``http.server``). Each
request is a server span, so an implicit run of its own; the real ``openai`` SDK calls a loopback
model server that counts what reaches it; the parent serves every worker's metrics
(``PROMETHEUS_MULTIPROC_DIR``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.instrumentation import zero_code
from tests.jobs.conftest import ROOT, scrape
from tests.jobs.model_server import ModelServer
from tests.processes import free_port

APP = """
import http.server, json, os, signal, socket, sys, urllib.parse
import openai
from opentelemetry import trace
from opentelemetry.trace import SpanKind
import budgetspan

tracer = trace.get_tracer("prefork-app")

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
        client = openai.OpenAI(api_key="t", base_url=os.environ["MODEL_URL"], max_retries=0)
        sent, refused = 0, None
        with tracer.start_as_current_span("GET /ask", kind=SpanKind.SERVER):
            try:
                for i in range(int(q["n"])):
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": f"{q['key']} {i}"}],
                        max_tokens=5)
                    sent += 1
            except budgetspan.BudgetExhausted as e:
                refused = e.reason
        body = json.dumps({"sent": sent, "refused": refused, "pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(64)
children = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        server = http.server.HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        server.socket = sock
        server.serve_forever()
        os._exit(0)
    children.append(pid)

def stop(*_):
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    for pid in children:
        os.waitpid(pid, 0)
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
print("READY", sock.getsockname()[1], flush=True)
while True:
    signal.pause()
"""


def _count(path: Path, needle: str) -> int:
    return path.read_text().count(needle) if path.exists() else 0


@pytest.mark.skipif(not zero_code.INSTRUMENT.exists(), reason="opentelemetry-instrument not installed")
@pytest.mark.parametrize("multiproc", [True, False], ids=["multiproc", "no-multiproc-dir"])
def test_each_request_of_each_forked_worker_holds_its_budget_and_metrics_sum(
    tmp_path: Path, multiproc: bool
) -> None:
    model = ModelServer()
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    metrics_port = free_port()
    traces = tmp_path / "traces.jsonl"
    (tmp_path / "app.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUDGETSPAN_", "OTEL_", "PROMETHEUS_"))}
    env.update(
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=zero_code.disabled_except(),
        PYTHONPATH=os.pathsep.join([str(zero_code.sdk_site(tmp_path)), str(ROOT / "src")]),
        BUDGETSPAN_TRACES_FILE=str(traces),
        BUDGETSPAN_BUDGET="max_model_calls=2",
        BUDGETSPAN_WORKFLOW="web",
        BUDGETSPAN_METRICS_PORT=str(metrics_port),
        **({"PROMETHEUS_MULTIPROC_DIR": str(prom_dir)} if multiproc else {}),
        MODEL_URL=model.url,
    )
    proc = subprocess.Popen(
        [str(zero_code.INSTRUMENT), os.sys.executable, "app.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY"), proc.stderr.read() if proc.stderr else line
        port = int(line.split()[1])

        def ask(i: int) -> dict[str, object]:
            url = f"http://127.0.0.1:{port}/ask?key=r{i}&n=4"
            return dict(json.loads(urllib.request.urlopen(url, timeout=30).read()))

        with ThreadPoolExecutor(9) as pool:
            answers = list(pool.map(ask, range(9)))
        for i, answer in enumerate(answers):
            assert (answer["sent"], answer["refused"]) == (2, "max_model_calls"), answer
            assert model.steps(f"r{i}") == [0, 1]  # the 3rd call of each request never left
        assert proc.pid not in {a["pid"] for a in answers}  # the forked workers served them
        samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        calls = sum(v for (name, _), v in samples.items() if name == "budgetspan_model_calls_total")
        exhausted = sum(
            v
            for (name, labels), v in samples.items()
            if name == "budgetspan_budget_exhaustions_total" and ("reason", "max_model_calls") in labels
        )
        if not multiproc:  # the workers' figures are not on the parent's endpoint: each worker says so
            assert (calls, exhausted) == (0, 0)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
            assert err.count("forked from one serving Prometheus metrics") == 3, err[-3000:]
            return
        assert (calls, exhausted) == (18, 9)
        # Each worker's batch span processor works after the fork: its spans reach the file.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _count(traces, '"name":"chat gpt-4o-mini"') < 18:
            time.sleep(0.2)
        assert _count(traces, '"name":"chat gpt-4o-mini"') == 18
        assert _count(traces, '"name":"GET /ask"') == 9
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        model.stop()
