"""End to end with a service in another language: a Node.js program (``node/service.js``: the
``openai`` package, Traceloop's ``@traceloop/instrumentation-openai``, the OpenTelemetry JS SDK's
OTLP/HTTP exporter, no budgetspan) calls a local OpenAI-compatible server and exports to rotel
running budgetspan's processor (``budgetspan collector``), which forwards to a loopback OTLP
receiver; a real Prometheus scrapes the tier.

The Node packages are installed with ``npm ci`` from ``node/package-lock.json`` (once per lock
file; npm's cache under the repository's ignored ``tmp/``)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from .foreign import ForeignServiceChecks, ServiceProcess, serving
from .stack import REPO, Tier

NODE_DIR = REPO / "tests" / "collector" / "node"
SERVICE = "support-node"
#: Dashboard panels this service cannot feed, and why.
CANNOT = {
    "Time to first token p95 by model": "Traceloop's JS instrumentation records no time to first token",
    "Cache-read share of input tokens": "Traceloop's JS instrumentation records no cached input tokens",
    "Tokens by type": "no cached or reasoning tokens (the token-details series) from Traceloop's JS instrumentation",
    "Prompt caching net saved by workflow ($/h)": "Traceloop's JS instrumentation records no cached input tokens",
    "Tokens by type and model": "the token-details series: see Tokens by type",
}


def npm_ci() -> None:
    """``npm ci`` when ``node_modules`` was not installed from this very lock file."""
    lock = hashlib.sha256((NODE_DIR / "package-lock.json").read_bytes()).hexdigest()
    stamp = NODE_DIR / "node_modules" / ".installed-from-lock"
    if stamp.exists() and stamp.read_text() == lock:
        return
    cache = REPO / "tmp" / "npm-cache"
    result = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--cache", str(cache)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    stamp.write_text(lock)


@pytest.fixture(scope="module")
def service(tier: Tier, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("needs Node.js (20) and npm on the PATH")
    npm_ci()
    env = {"SERVICE_NAME": SERVICE, "OTLP_ENDPOINT": tier.otlp_http}
    with serving(
        ["node", str(NODE_DIR / "service.js")], env, tmp_path_factory.mktemp("node") / "node.log"
    ) as svc:
        yield svc


class TestNodeService(ForeignServiceChecks):
    SERVICE, CANNOT, CACHE_READ = SERVICE, CANNOT, None
