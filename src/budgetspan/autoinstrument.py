"""The ``opentelemetry_post_instrument`` hook: zero-code set-up under ``opentelemetry-instrument``.

It runs after the configurator and all instrumentors (ours are loaded by their own entry
points), so here we only read the configuration and add our processors to the SDK provider.
A bad BUDGETSPAN_* value stops the program at start-up with a message naming the variable.
"""

from __future__ import annotations

import sys

from opentelemetry import trace

from budgetspan.config import ConfigError, load_config, set_config
from budgetspan.setup import install_processors


def post_instrument(**_: object) -> None:
    try:
        set_config(load_config())
    except ConfigError as e:
        print(f"budgetspan: configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    install_processors(trace.get_tracer_provider())
