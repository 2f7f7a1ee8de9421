#!/usr/bin/env bash
# A separate venv for peer benchmarks: the peers register the same `openai` entry point and must
# never share a venv with the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
.venv-bench/bin/python -m pip install -q --upgrade pip
.venv-bench/bin/python -m pip install -q -e . openai httpx pyyaml \
  opentelemetry-instrumentation-openai opentelemetry-instrumentation-openai-v2 \
  "opentelemetry-util-genai==0.4b0"  # openai-v2 2.4b0 imports a module later util-genai releases dropped
