"""End to end with a plain Python service that runs OpenLLMetry and no budgetspan
(``openllmetry_service.py``, in the peers' environment that ``bench/setup_peers.sh`` makes): it
calls a local OpenAI-compatible server and exports OTLP/HTTP to rotel running budgetspan's
processor (``budgetspan collector``), which forwards to a loopback OTLP receiver; a real
Prometheus scrapes the tier."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .foreign import ForeignServiceChecks, ServiceProcess, serving
from .model_server import CACHED_TOKENS
from .stack import REPO, Tier

SERVICE = "support-openllmetry"
#: Dashboard panels this service cannot feed, and why.
CANNOT = {
    "Time to first token p95 by model": "OpenLLMetry's OpenAI instrumentation records no time to first token",
}


def peers_python() -> Path:
    """The peers' environment (OpenLLMetry installed): ``BUDGETSPAN_PEERS_PYTHON``, else
    ``.venv-bench`` in the repository."""
    path = Path(os.environ.get("BUDGETSPAN_PEERS_PYTHON") or REPO / ".venv-bench" / "bin" / "python")
    if not path.exists():
        pytest.skip(f"needs OpenLLMetry in the peers' environment ({path}): run bench/setup_peers.sh")
    return path


@pytest.fixture(scope="module")
def service(tier: Tier, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    python = peers_python()
    env = {"SERVICE_NAME": SERVICE, "OTLP_ENDPOINT": tier.otlp_http, "PYTHONPATH": ""}
    cmd = [str(python), str(Path(__file__).with_name("openllmetry_service.py"))]
    with serving(cmd, env, tmp_path_factory.mktemp("openllmetry") / "service.log") as svc:
        yield svc


class TestOpenLLMetryService(ForeignServiceChecks):
    SERVICE, CANNOT, CACHE_READ = SERVICE, CANNOT, CACHED_TOKENS
