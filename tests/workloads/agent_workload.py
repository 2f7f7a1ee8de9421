"""A small agent process for the Prometheus end-to-end test: real runs, tools, phases, model calls.

It serves budgetspan's metrics, prints ``METRICS_PORT <port>`` on stdout, then keeps running
rounds of agent runs until its stdin closes (so Prometheus sees rates, not a constant).

Every round makes runs that succeed, fail, escalate and exhaust budgets (model calls, tool
calls, cost, a loop stopped as no_progress), one extended at its limit by an on_limit policy, one in observe mode that goes over its limit, with ``@budgetspan.tool`` tools
(one flaky, retried; one failing), phases, an approval, and model calls of two kinds:

- ``--models openai``: the real ``openai`` SDK, instrumented by budgetspan, answered by a local
  ``httpx.MockTransport`` from the recorded API exchanges (non-streamed chat with cached
  tokens; a streamed Responses call for time to first token; a streamed chat with no usage
  chunk; embeddings);
- ``--models spans``: hand-made spans carrying ``gen_ai.*`` attributes, as any other
  instrumentation would make them (the BudgetSpanProcessor accounts them), plus budgetspan's
  own ``Call`` wrapper for a streamed call (time to first token).

``--models auto`` (the default) uses openai when budgetspan's OpenAI instrumentation imports.
One run stays open the whole time (``long_research``), so the live-runs gauge is above zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.trace import SpanKind

import budgetspan
from budgetspan import attributes as A
from budgetspan.accounting.ledger import Spend
from budgetspan.calls.call import Call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from job_rounds import JobRounds

RECORDED = Path(
    os.environ.get("BUDGETSPAN_FIXTURES")
    or Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "recorded"
)
rng = random.Random(7)


def pause(lo: float = 0.001, hi: float = 0.02) -> None:
    time.sleep(rng.uniform(lo, hi))


class Models(Protocol):
    def chat(self, big: bool = False) -> None: ...
    def chat_unpriced(self) -> None: ...
    def stream(self) -> None: ...
    def stream_without_usage(self) -> None: ...
    def embed(self) -> None: ...


class SpanModels:
    """Model calls as foreign spans with gen_ai.* attributes, on the global SDK provider."""

    def __init__(self) -> None:
        self.tracer = trace.get_tracer("workload.genai-spans")

    def _span(self, op: str, provider: str, model: str, usage: dict[str, int]) -> None:
        attrs: dict[str, Any] = {
            A.GEN_AI_OPERATION_NAME: op,
            A.GEN_AI_PROVIDER_NAME: provider,
            A.GEN_AI_REQUEST_MODEL: model,
        }
        with self.tracer.start_as_current_span(
            f"{op} {model}", kind=SpanKind.CLIENT, attributes=attrs
        ) as span:
            pause(0.005, 0.03)
            span.set_attribute(A.GEN_AI_RESPONSE_MODEL, model)
            span.set_attributes(usage)  # type: ignore[arg-type]

    def chat(self, big: bool = False) -> None:
        # The recorded OpenAI prompt-caching exchange: 1149 input (1024 cached), 353 output.
        n = 20 if big else 1
        self._span(
            A.OP_CHAT,
            "openai",
            "gpt-4o-mini",
            {
                A.GEN_AI_USAGE_INPUT_TOKENS: 1149 * n,
                A.GEN_AI_USAGE_OUTPUT_TOKENS: 353 * n,
                A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 1024 * n,
            },
        )

    def chat_unpriced(self) -> None:
        self._span(
            A.OP_CHAT,
            "acme",
            "acme-local-7b",
            {
                A.GEN_AI_USAGE_INPUT_TOKENS: 80,
                A.GEN_AI_USAGE_OUTPUT_TOKENS: 20,
            },
        )

    def embed(self) -> None:
        self._span(
            A.OP_EMBEDDINGS,
            "openai",
            "text-embedding-ada-002",
            {
                A.GEN_AI_USAGE_INPUT_TOKENS: 8,
            },
        )

    def stream_without_usage(self) -> None:
        # A streamed call whose provider never said how many tokens it used.
        self._span(A.OP_CHAT, "openai", "gpt-3.5-turbo-0125", {})

    def stream(self) -> None:
        # A streamed answer through budgetspan's own wrapper (what the SDK instrumentations use).
        call = Call(
            A.OP_CHAT,
            "chat claude-3-5-haiku-latest",
            {A.GEN_AI_PROVIDER_NAME: "anthropic", A.GEN_AI_REQUEST_MODEL: "claude-3-5-haiku-latest"},
            provider="anthropic",
            model="claude-3-5-haiku-latest",
        ).start()
        try:
            with call.activate():
                pause(0.005, 0.02)
                call.first_token()
                pause(0.005, 0.02)
                call.set_usage(Spend(input_tokens=17, output_tokens=171))
        finally:
            call.end()


class OpenAIModels:
    """The real openai SDK, instrumented by budgetspan, over a local mock transport."""

    def __init__(self) -> None:
        import httpx
        import openai

        from budgetspan.instrumentation.openai import OpenAIInstrumentor

        OpenAIInstrumentor().instrument()
        self.bodies = {
            "chat": _recorded_body(
                "openai/test_prompt_caching__test_openai_prompt_caching.yaml", 1
            ),  # the exchange where 1024 of 1149 input tokens were cached
            "embeddings": _recorded_body("openai/test_embeddings__test_embeddings.yaml"),
            "responses": _recorded_body("openai/test_responses__test_responses_streaming.yaml"),
            # A streamed chat without a usage chunk: tokens never reported.
            "chat_stream": _recorded_body("openai/test_chat__test_chat_tools_streaming.yaml"),
        }

        def handler(request: httpx.Request) -> httpx.Response:
            pause(0.005, 0.03)
            path = request.url.path
            if path.endswith("/chat/completions"):
                body = json.loads(request.content)
                if body.get("stream"):
                    return httpx.Response(
                        200,
                        content=self.bodies["chat_stream"],
                        headers={"content-type": "text/event-stream"},
                    )
                if body.get("model") == "acme-local-7b":
                    reply = json.loads(self.bodies["chat"])
                    reply["model"] = "acme-local-7b"
                    return httpx.Response(200, json=reply)
                return httpx.Response(
                    200, content=self.bodies["chat"], headers={"content-type": "application/json"}
                )
            if path.endswith("/embeddings"):
                return httpx.Response(
                    200, content=self.bodies["embeddings"], headers={"content-type": "application/json"}
                )
            if path.endswith("/responses"):
                return httpx.Response(
                    200, content=self.bodies["responses"], headers={"content-type": "text/event-stream"}
                )
            return httpx.Response(404, json={"error": {"message": "not recorded"}})

        http = httpx.Client(transport=httpx.MockTransport(handler))
        self.client = openai.OpenAI(api_key="sk-test", http_client=http, max_retries=0)

    def chat(self, big: bool = False) -> None:
        for _ in range(20 if big else 1):
            self.client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "summarise"}], max_tokens=400
            )

    def chat_unpriced(self) -> None:
        self.client.chat.completions.create(
            model="acme-local-7b", messages=[{"role": "user", "content": "triage"}]
        )

    def embed(self) -> None:
        self.client.embeddings.create(model="text-embedding-ada-002", input="refund policy")

    def stream_without_usage(self) -> None:
        stream = self.client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": "weather?"}],
            stream=True,
            max_tokens=400,
        )
        for _chunk in stream:
            pass

    def stream(self) -> None:
        answer = self.client.responses.create(
            model="gpt-4o", input="write the answer", stream=True, max_output_tokens=400
        )
        for _event in answer:
            pass


def _recorded_body(name: str, index: int = 0) -> bytes:
    import yaml

    cassette = yaml.safe_load((RECORDED / name).read_text())
    body = cassette["interactions"][index]["response"]["body"]["string"]
    return body.encode() if isinstance(body, str) else bytes(body)


# --- the agent ------------------------------------------------------------------------------

state = {"round": 0}
current_models: dict[str, Models] = {}


@budgetspan.tool(read_only=True)
def search_kb(query: str) -> list[str]:
    pause()
    return [f"doc about {query}"]


@budgetspan.tool(max_retries=2)
def lookup_order(order_id: str) -> dict[str, str]:
    pause()
    if state["round"] % 2 == 0 and not state.get("retried"):
        state["retried"] = True
        raise ConnectionError("order service flapped")
    return {"order": order_id, "status": "shipped"}


@budgetspan.tool
def check_policy(answer: str) -> bool:
    pause()
    return True


# Cached per tenant: the first call of the process computes (an embedding, priced), the rest are hits.
@budgetspan.tool(read_only=True, cache=budgetspan.Cache("tenant", ttl_s=3600))
def policy_lookup(topic: str) -> str:
    current_models["models"].embed()
    return f"policy on {topic}"


@budgetspan.tool
def fetch_ticket(ticket_id: str) -> str:
    pause()
    raise KeyError(ticket_id)


def resolve_ticket_ok(models: Models) -> None:
    with budgetspan.run(
        "resolve_ticket", max_model_calls=6, max_tool_calls=6, max_cost_usd=0.05, tenant="acme"
    ) as run:
        state.pop("retried", None)
        current_models["models"] = models
        with budgetspan.phase("context_assembly"):
            models.embed()
            search_kb("refunds")
            policy_lookup("refunds")
            policy_lookup("refunds")
        with budgetspan.phase("model_decision"):
            models.chat()
        with budgetspan.phase("tool_execution"):
            lookup_order("A-17")
        with budgetspan.phase("verification"):
            check_policy("refund approved")
        with budgetspan.approval():
            pause(0.01, 0.03)
        with budgetspan.phase("final_response"):
            models.stream()
        models.chat()  # outside any phase block: counted under model_decision
        run.succeed()


def resolve_ticket_exhausted(models: Models) -> None:
    with budgetspan.run("resolve_ticket", max_model_calls=2, suppress_exhausted=True):
        for _ in range(3):
            models.chat()
            search_kb("more context")


def triage_tools_exhausted() -> None:
    with budgetspan.run("triage", max_tool_calls=2, suppress_exhausted=True):
        for q in ("a", "b", "c"):
            search_kb(q)


def triage_cost_exhausted(models: Models) -> None:
    with budgetspan.run("triage", max_cost_usd=0.001, suppress_exhausted=True):
        models.chat(big=True)
        search_kb("after the money ran out")


def triage_ok(models: Models) -> None:
    with budgetspan.run("triage", max_model_calls=3) as run:
        models.chat_unpriced()
        search_kb("labels")
        run.succeed()


def resolve_ticket_observed(models: Models) -> None:
    # Observe mode: the second call is over the limit but allowed; it counts as "would exhaust".
    with budgetspan.run("resolve_ticket", mode="observe", max_model_calls=1) as run:
        models.chat()
        models.stream_without_usage()
        run.succeed()


def triage_failed() -> None:
    try:
        with budgetspan.run("triage"):
            fetch_ticket("T-404")
    except KeyError:
        pass


def resolve_ticket_escalated(models: Models) -> None:
    with budgetspan.run("resolve_ticket") as run:
        models.chat()
        run.escalate("customer asked for a human")


def resolve_ticket_looped() -> None:
    # The same lookup with the same result, a third time: stopped as a loop (reason no_progress).
    with budgetspan.run("resolve_ticket", max_repeated_calls=3, suppress_exhausted=True):
        for _ in range(4):
            search_kb("where is my parcel")


def resolve_ticket_extended(models: Models) -> None:
    # At its tool limit the supervisor policy extends the run once; it then succeeds.
    def supervisor(reached: budgetspan.LimitReached) -> budgetspan.Decision:
        return budgetspan.Extend(max_tool_calls=1, reason="approval")

    with budgetspan.run("resolve_ticket", max_tool_calls=1, on_limit=supervisor) as run:
        search_kb("refunds")
        search_kb("exchanges")
        models.chat()
        run.succeed()


def one_round(models: Models) -> None:
    state["round"] += 1
    resolve_ticket_ok(models)
    resolve_ticket_exhausted(models)
    triage_tools_exhausted()
    triage_cost_exhausted(models)
    triage_ok(models)
    resolve_ticket_observed(models)
    triage_failed()
    resolve_ticket_looped()
    resolve_ticket_extended(models)
    if state["round"] % 3 == 0:
        resolve_ticket_escalated(models)


def pick_models(kind: str) -> Models:
    if kind in ("openai", "auto"):
        try:
            return OpenAIModels()
        except Exception:
            if kind == "openai":
                raise
            logging.getLogger(__name__).warning("openai path unavailable", exc_info=True)
    return SpanModels()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between rounds")
    ap.add_argument("--rounds", type=int, default=0, help="stop after N rounds (0: until stdin closes)")
    ap.add_argument("--models", choices=("auto", "openai", "spans"), default="auto")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from budgetspan.processors import metrics_endpoint as endpoint

    budgetspan.configure(metrics_port=args.port, instrument=False)
    models = pick_models(args.models)
    address = endpoint.server_address()
    if address is None:
        sys.exit("workload: no metrics endpoint")
    print(f"METRICS_PORT {address[1]} MODELS {type(models).__name__}", flush=True)

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

    def long_run() -> None:
        with budgetspan.run("long_research"):
            stop.wait()

    threading.Thread(target=long_run, daemon=True).start()
    jobs = JobRounds().start()  # background jobs on a real redis-server, when installed
    n = 0
    try:
        while not stop.is_set():
            one_round(models)
            jobs.round(models.chat)
            n += 1
            if args.rounds and n >= args.rounds:
                break
            stop.wait(args.interval)
    finally:
        jobs.stop()


if __name__ == "__main__":
    main()
