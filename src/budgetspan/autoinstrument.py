"""The ``opentelemetry_post_instrument`` hook: zero-code set-up under ``opentelemetry-instrument``.

It runs after the configurator and all instrumentors (ours are loaded by their own entry
points), so here we only read the configuration and add our processors to the SDK provider.
A bad BUDGETSPAN_* value stops the program at start-up with a message naming the variable.
"""

from __future__ import annotations

import os
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from budgetspan.attributes import ENV_TRACES_FILE
from budgetspan.config import ConfigError, load_config, set_config
from budgetspan.setup import install_processors


def post_instrument(**_: object) -> None:
    try:
        set_config(load_config())
    except ConfigError as e:
        # This runs inside ``sitecustomize``: an exception (SystemExit included) there is a fatal
        # "init_import_site" error with a traceback. Stop before the program runs, with one line.
        print(f"budgetspan: configuration error: {e}", file=sys.stderr, flush=True)
        os._exit(2)
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider) and os.environ.get(ENV_TRACES_FILE, "").strip():
        # No configurator set up the SDK (no distro), yet spans were asked for in a file:
        # an SDK provider of our own is the only way to write them.
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    install_processors(provider)
