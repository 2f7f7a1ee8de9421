"""Every span attribute, event and metric name budgetspan uses, in one place.

The OpenTelemetry GenAI conventions are still in Development and names move; keeping them
here makes a rename a one-file change.
"""

from __future__ import annotations

from typing import Final

# --- GenAI semantic conventions (gen_ai.*) --------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_SYSTEM_DEPRECATED: Final = "gen_ai.system"  # read from foreign spans only
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
# Older names other instrumentations still emit; read-only fallbacks.
GEN_AI_USAGE_PROMPT_TOKENS_LEGACY: Final = "gen_ai.usage.prompt_tokens"
GEN_AI_USAGE_COMPLETION_TOKENS_LEGACY: Final = "gen_ai.usage.completion_tokens"
# Cost in USD: the name OpenLIT emits and Langfuse ingests as the call's cost.
GEN_AI_USAGE_COST: Final = "gen_ai.usage.cost"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
GEN_AI_TOOL_TYPE: Final = "gen_ai.tool.type"
GEN_AI_DATA_SOURCE_ID: Final = "gen_ai.data_source.id"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
AGENT_FRAMEWORK: Final = "budgetspan.agent.framework"  # openai_agents, pydantic_ai, langgraph...
EVENT_HANDOFF: Final = "budgetspan.handoff"  # on an agent span: control passed to another agent
HANDOFF_FROM: Final = "budgetspan.handoff.from"
HANDOFF_TO: Final = "budgetspan.handoff.to"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
# The OpenTelemetry "exception" span event, written by budgetspan itself when content capture is
# off (the SDK's record_exception reads the exception's text).
EVENT_EXCEPTION: Final = "exception"
EXCEPTION_TYPE: Final = "exception.type"
EXCEPTION_MESSAGE: Final = "exception.message"
EXCEPTION_STACKTRACE: Final = "exception.stacktrace"
EXCEPTION_ESCAPED: Final = "exception.escaped"

# gen_ai.operation.name values
OP_CHAT: Final = "chat"
OP_TEXT_COMPLETION: Final = "text_completion"
OP_GENERATE_CONTENT: Final = "generate_content"
OP_EMBEDDINGS: Final = "embeddings"
OP_EXECUTE_TOOL: Final = "execute_tool"
OP_INVOKE_AGENT: Final = "invoke_agent"
OP_RETRIEVAL: Final = "retrieval"
MODEL_OPERATIONS: Final = frozenset({OP_CHAT, OP_TEXT_COMPLETION, OP_GENERATE_CONTENT, OP_EMBEDDINGS})

# --- budgetspan.* ---------------------------------------------------------------------------
RUN_ID: Final = "budgetspan.run.id"
# On another instrumentation's span of a call budgetspan's own span also describes (a peer's
# chat span around or inside ours): counted once, by budgetspan's span, in metrics and reports.
DUPLICATE_CALL: Final = "budgetspan.call.duplicate"
RUN_PARENT_ID: Final = "budgetspan.run.parent_id"  # the enclosing run a nested run also spends from
#: Who a run serves: the customer (tenant) and the principal. On spans only, never metric labels
#: by default (unbounded cardinality); permissions are not exported (they go into cache keys).
TENANT_ID: Final = "budgetspan.tenant.id"
USER_ID: Final = "user.id"
WORKFLOW: Final = "budgetspan.workflow"
BUDGET_PROFILE: Final = "budgetspan.budget.profile"
BUDGET_MODE: Final = "budgetspan.budget.mode"
LIMIT_PREFIX: Final = "budgetspan.limit."  # + limit name, e.g. budgetspan.limit.max_cost_usd
USAGE_PREFIX: Final = "budgetspan.usage."  # + usage field, e.g. budgetspan.usage.model_calls
RUN_OUTCOME: Final = "budgetspan.run.outcome"
EXHAUSTED_REASON: Final = "budgetspan.exhausted.reason"
EXHAUSTED_EXPLANATION: Final = "budgetspan.exhausted.explanation"
RUN_BUSY_S: Final = "budgetspan.run.busy_s"  # summed duration of the run's direct work
RUN_WALL_S: Final = "budgetspan.run.wall_s"
RUN_PARALLELISM: Final = "budgetspan.run.parallelism"  # busy / wall
PHASE: Final = "budgetspan.phase"
PHASE_LABEL: Final = "budgetspan.phase.label"
RETRIES: Final = "budgetspan.retries"
ATTEMPTS: Final = "budgetspan.attempts"
# Time to the first chunk of a stream, in seconds (the GenAI conventions' name; was
# budgetspan.time_to_first_token_s, still read from older spans by the collector tier).
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
TIME_TO_FIRST_TOKEN_S: Final = GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK
TIME_TO_FIRST_TOKEN_S_LEGACY: Final = "budgetspan.time_to_first_token_s"
USAGE_UNREPORTED: Final = "budgetspan.usage.unreported"  # the provider never said the tokens
# Unreported usage, estimated by budgetspan and charged to the budget (never gen_ai.usage.*):
USAGE_ESTIMATED_INPUT: Final = "budgetspan.usage.estimated.input_tokens"
USAGE_ESTIMATED_OUTPUT: Final = "budgetspan.usage.estimated.output_tokens"
COST_ESTIMATED: Final = "budgetspan.cost.estimated_usd"
COST_UNPRICED_POLICY: Final = (
    "budgetspan.cost.unpriced_policy"  # warn | refuse, on an unpriced call under a dollar limit
)
COST_UNPRICED: Final = "budgetspan.cost.unpriced"
WORST_CASE_COST: Final = "budgetspan.cost.worst_case_usd"
COST_SOURCE: Final = "budgetspan.cost.source"  # litellm: the cost is LiteLLM's figure, not budgetspan's
TOOL_TIMEOUT_S: Final = "budgetspan.tool.timeout_s"
TOOL_TIMED_OUT: Final = "budgetspan.tool.timed_out"
TOOL_SERVER: Final = "budgetspan.tool.server"
RETRIEVAL_DOCUMENTS: Final = "budgetspan.retrieval.documents"
RETRIEVAL_QUERY_S: Final = "budgetspan.retrieval.query_s"
READ_ONLY: Final = "budgetspan.read_only"
WOULD_REFUSE: Final = "budgetspan.observe.would_refuse"  # observe mode: the limit that would have refused
# A streamed request (the GenAI conventions' name; was budgetspan.stream).
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
STREAM: Final = GEN_AI_REQUEST_STREAM
STREAM_END: Final = "budgetspan.stream.end"  # consumed | closed | abandoned | error | cancelled | reconnected

# span events
EVENT_BUDGET_EXHAUSTED: Final = "budgetspan.budget_exhausted"
EVENT_WOULD_EXHAUST: Final = "budgetspan.budget_would_exhaust"
EVENT_CANCELLED: Final = "budgetspan.cancelled"

# At a limit and in a loop (issue 18): extensions, tool refusals, loops.
BUDGET_EXTENSIONS: Final = "budgetspan.budget.extensions"  # run span: how many times it was extended
#: Run span: the limits extended, one name per limit per extension, comma-separated (for the tier).
BUDGET_EXTENDED_LIMITS: Final = "budgetspan.budget.extended_limits"
LOOP_STOPPED: Final = "budgetspan.loop.stopped"  # run span: the loop type that stopped the run
EXTENSION_REASON: Final = "budgetspan.extension.reason"
LOOP_TYPE: Final = "budgetspan.loop.type"  # repeated_call | ping_pong | steps_without_progress
LOOP_ACTION: Final = "budgetspan.loop.action"  # warn | stop
LOOP_EXPLANATION: Final = "budgetspan.loop.explanation"
EVENT_BUDGET_EXTENDED: Final = "budgetspan.budget_extended"
EVENT_TOOL_REFUSED: Final = "budgetspan.tool_refused"
EVENT_LOOP_DETECTED: Final = "budgetspan.loop_detected"
M_BUDGET_EXTENSIONS: Final = "budgetspan_budget_extensions"  # counter: workflow, limit
M_LOOPS: Final = "budgetspan_loops"  # counter: workflow, type, status (warned | stopped)
M_TOOL_REFUSALS: Final = "budgetspan_tool_refusals"  # counter: workflow, tool, reason
OTEL_M_BUDGET_EXTENSIONS: Final = ("budgetspan.budget.extensions", "{extension}")
OTEL_M_LOOPS: Final = ("budgetspan.loops", "{loop}")
OTEL_M_TOOL_REFUSALS: Final = ("budgetspan.tool.refusals", "{call}")

# span names (format strings)
SPAN_RUN: Final = "invoke_agent {workflow}"
SPAN_AGENT: Final = "invoke_agent {agent}"  # one agent of a framework, inside the run
SPAN_PHASE: Final = "phase {phase}"
SPAN_TOOL: Final = "execute_tool {tool}"
SPAN_RETRIEVAL: Final = "retrieval {source}"

INSTRUMENTATION_SCOPE: Final = "budgetspan"
VERSION: Final = "0.1.0"  # the package version, also the instrumentation scope's

# --- Prometheus metric names (exposition names; counters get _total from the client) -------
METRIC_PREFIX: Final = "budgetspan_"
M_RUNS: Final = "budgetspan_runs"  # counter: workflow, outcome
M_RUN_COST: Final = "budgetspan_run_cost_usd"  # histogram: workflow, outcome
M_RUN_DURATION: Final = "budgetspan_run_duration_seconds"  # histogram: workflow, outcome
M_BUDGET_EXHAUSTIONS: Final = "budgetspan_budget_exhaustions"  # counter: workflow, reason
M_BUDGET_WOULD_EXHAUST: Final = "budgetspan_budget_would_exhaust"  # counter (observe): workflow, reason
M_BUDGET_UTILISATION: Final = "budgetspan_budget_utilisation_ratio"  # histogram: workflow, limit
M_MODEL_CALLS: Final = "budgetspan_model_calls"  # counter: workflow, provider, model, status
M_TOKENS: Final = "budgetspan_tokens"  # counter: workflow, provider, model, type (input | output: they sum)
M_COST: Final = "budgetspan_cost_usd"  # counter: workflow, phase, provider, model
M_UNPRICED_CALLS: Final = "budgetspan_unpriced_calls"  # counter: provider, model
M_UNREPORTED_USAGE_CALLS: Final = "budgetspan_unreported_usage_calls"  # counter: provider, model
M_PHASE_DURATION: Final = "budgetspan_phase_duration_seconds"  # histogram: workflow, phase
M_TOOL_CALLS: Final = "budgetspan_tool_calls"  # counter: workflow, tool, status
M_TOOL_DURATION: Final = "budgetspan_tool_duration_seconds"  # histogram: workflow, tool
M_RETRIES: Final = "budgetspan_retries"  # counter: workflow, type (model | tool)
M_TIME_TO_FIRST_TOKEN: Final = "budgetspan_time_to_first_token_seconds"  # histogram: provider, model
M_MODEL_CALL_DURATION: Final = "budgetspan_model_call_duration_seconds"  # histogram: provider, model
M_RETRIEVALS: Final = "budgetspan_retrievals"  # counter: workflow, status
M_LIVE_RUNS: Final = "budgetspan_live_runs"  # gauge: workflow
M_SPANS_DROPPED: Final = "budgetspan_spans_dropped"  # counter: reason
M_INTERNAL_ERRORS: Final = "budgetspan_internal_errors"  # counter: type

# Budgets above the run (issue 22). Tenant ids are a label only for the tenants that
# BUDGETSPAN_METRICS_TENANTS names ("acme,globex") or the top N by spend ("top:20"); the rest "other".
M_SCOPE_WARNINGS: Final = (
    "budgetspan_scope_warnings"  # counter: scope (conversation | user | tenant | workflow)
)
M_SCOPE_EXHAUSTIONS: Final = "budgetspan_scope_exhaustions"  # counter: scope, tenant
M_TENANT_COST: Final = "budgetspan_tenant_cost_usd"  # counter: tenant
L_SCOPE: Final = "scope"
L_TENANT: Final = "tenant"
ENV_METRICS_TENANTS: Final = "BUDGETSPAN_METRICS_TENANTS"

# Metric label names (bounded values only: never run ids, user ids or text).
L_WORKFLOW: Final = "workflow"
L_OUTCOME: Final = "outcome"
L_REASON: Final = "reason"
L_PHASE: Final = "phase"
L_PROVIDER: Final = "provider"
L_MODEL: Final = "model"
L_TOOL: Final = "tool"
L_TYPE: Final = "type"
L_STATUS: Final = "status"
L_LIMIT: Final = "limit"
LABEL_OVERFLOW_VALUE: Final = "other"

# --- Environment variables -----------------------------------------------------------------
ENV_BUDGET: Final = "BUDGETSPAN_BUDGET"
ENV_WORKFLOW: Final = "BUDGETSPAN_WORKFLOW"  # the workflow name of implicit runs
ENV_PROPAGATE_THREADS: Final = "BUDGETSPAN_THREADS"  # "false": do not carry runs into threads
ENV_UNPRICED: Final = "BUDGETSPAN_UNPRICED"  # warn | refuse: an unpriced call under a dollar limit
ENV_CONFIG: Final = "BUDGETSPAN_CONFIG"
ENV_MODE: Final = "BUDGETSPAN_MODE"
ENV_METRICS_PORT: Final = "BUDGETSPAN_METRICS_PORT"
ENV_METRICS_ADDR: Final = "BUDGETSPAN_METRICS_ADDR"
ENV_PRICES: Final = "BUDGETSPAN_PRICES"
ENV_TRACES_FILE: Final = "BUDGETSPAN_TRACES_FILE"
ENV_ENFORCE_FOREIGN: Final = "BUDGETSPAN_ENFORCE_FOREIGN_SPANS"
ENV_CAPTURE_CONTENT: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
# OpenAI chat streams: ask for the usage chunk (auto: api.openai.com only | always | never)
ENV_OPENAI_STREAM_USAGE: Final = "BUDGETSPAN_OPENAI_STREAM_USAGE"
# LiteLLM calls: whose price they are charged at (budgetspan | litellm)
ENV_LITELLM_COST: Final = "BUDGETSPAN_LITELLM_COST"

# --- Metrics exposition (processors/metrics.py) --------------------------------------------
M_RUN_TOKENS: Final = "budgetspan_run_tokens"  # histogram: workflow, outcome (input + output)
ENV_METRICS_MAX_LABEL_VALUES: Final = "BUDGETSPAN_METRICS_MAX_LABEL_VALUES"  # per label, then "other"
ENV_METRICS_MAX_SERIES: Final = "BUDGETSPAN_METRICS_MAX_SERIES"  # per metric family, then open labels "other"
ENV_PROMETHEUS_MULTIPROC_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own variable

# --- retrievers and tool clients (instrumentation: langchain, llamaindex, mcp, chroma, qdrant) ---
RETRIEVAL_SYSTEM: Final = "budgetspan.retrieval.system"  # langchain | llamaindex | chroma | qdrant
RETRIEVAL_NESTED_SYSTEMS: Final = "budgetspan.retrieval.nested_systems"  # folded inner retrievals
TOOL_SYSTEM: Final = "budgetspan.tool.system"  # langchain | mcp
TOOL_TYPE_FUNCTION: Final = "function"  # gen_ai.tool.type values
TOOL_TYPE_EXTENSION: Final = "extension"

# --- The collector tier (budgetspan.collector) ----------------------------------------------
L_SERVICE: Final = "service"  # metric label added at the collector tier: the resource's service.name
SERVICE_NAME: Final = "service.name"  # resource attribute
COST_SOURCE_COLLECTOR: Final = "collector"  # budgetspan.cost.source on a span the collector priced
CONTENT_REDACTED: Final = "budgetspan.content.redacted"  # how many content attributes the tier removed
COLLECTOR_RUN_KEY: Final = "budgetspan.collector.run"  # "run_id" | "trace": how the tier found the run
# Other instrumentations' token and model names the tier reads (normalised to the gen_ai names).
OPENINFERENCE_PROMPT_TOKENS: Final = "llm.token_count.prompt"
OPENINFERENCE_COMPLETION_TOKENS: Final = "llm.token_count.completion"
OPENINFERENCE_TOTAL_TOKENS: Final = "llm.token_count.total"
OPENINFERENCE_CACHE_READ_TOKENS: Final = "llm.token_count.prompt_details.cache_read"
OPENINFERENCE_CACHE_WRITE_TOKENS: Final = "llm.token_count.prompt_details.cache_write"
OPENINFERENCE_REASONING_TOKENS: Final = "llm.token_count.completion_details.reasoning"
OPENINFERENCE_MODEL_NAME: Final = "llm.model_name"
OPENINFERENCE_PROVIDER: Final = "llm.provider"
OPENINFERENCE_SYSTEM: Final = "llm.system"
OPENINFERENCE_SPAN_KIND: Final = "openinference.span.kind"
OPENINFERENCE_TOOL_NAME: Final = "tool.name"
OPENLLMETRY_REQUEST_TYPE: Final = "llm.request.type"  # chat | completion | embedding | rerank
OPENLLMETRY_CACHE_READ_TOKENS: Final = "gen_ai.usage.cache_read_input_tokens"
OPENLLMETRY_CACHE_CREATION_TOKENS: Final = "gen_ai.usage.cache_creation_input_tokens"
OPENLLMETRY_WORKFLOW: Final = "traceloop.workflow.name"
OPENLLMETRY_SPAN_KIND: Final = "traceloop.span.kind"  # workflow | task | agent | tool
OPENLLMETRY_ENTITY_NAME: Final = "traceloop.entity.name"
OPENLIT_REASONING_TOKENS: Final = "gen_ai.usage.reasoning_tokens"
# Collector configuration (environment of the rotel process; `budgetspan collector` sets them)
ENV_COLLECTOR_METRICS_PORT: Final = "BUDGETSPAN_COLLECTOR_METRICS_PORT"
ENV_COLLECTOR_METRICS_ADDR: Final = "BUDGETSPAN_COLLECTOR_METRICS_ADDR"
ENV_COLLECTOR_KEEP_CONTENT: Final = "BUDGETSPAN_COLLECTOR_KEEP_CONTENT"
ENV_COLLECTOR_WINDOW_S: Final = "BUDGETSPAN_COLLECTOR_WINDOW_S"  # a run idle this long is closed
ENV_COLLECTOR_MAX_RUNS: Final = "BUDGETSPAN_COLLECTOR_MAX_RUNS"  # runs held at once, then the oldest closes
#: Instrumentation scopes the operator declares free of GenAI data (comma-separated names): their
#: spans are not read, so neither priced nor redacted; off by default.
ENV_COLLECTOR_PLAIN_SCOPES: Final = "BUDGETSPAN_COLLECTOR_PLAIN_SCOPES"

# --- OpenTelemetry Metrics API (processors/otel_metrics.py) ----------------------------------
# GenAI semantic-convention metrics (Development status; names as of semconv 1.41 / genai 0.x).
OTEL_GEN_AI_TOKEN_USAGE: Final = "gen_ai.client.token.usage"  # histogram {token}
OTEL_GEN_AI_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"  # histogram s
OTEL_GEN_AI_TIME_TO_FIRST_CHUNK: Final = "gen_ai.client.operation.time_to_first_chunk"  # histogram s
OTEL_GEN_AI_EXECUTE_TOOL_DURATION: Final = "gen_ai.execute_tool.duration"  # histogram s
OTEL_GEN_AI_INVOKE_AGENT_DURATION: Final = "gen_ai.invoke_agent.duration"  # histogram s
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"  # input | output (input includes cached tokens)
TOKEN_TYPE_INPUT: Final = "input"
TOKEN_TYPE_OUTPUT: Final = "output"
# budgetspan's own series on the Metrics API: (name, unit). The standard OTLP-to-Prometheus
# translation (dots to underscores, unit suffix unless the name has it, ``{...}`` units dropped,
# ``_total`` on monotonic sums) turns each into the M_* name above; attributes are the L_* labels.
OTEL_M_RUNS: Final = ("budgetspan.runs", "{run}")  # -> budgetspan_runs_total
OTEL_M_RUN_COST: Final = ("budgetspan.run.cost_usd", "{USD}")  # -> budgetspan_run_cost_usd
OTEL_M_RUN_DURATION: Final = ("budgetspan.run.duration", "s")  # -> budgetspan_run_duration_seconds
OTEL_M_RUN_TOKENS: Final = ("budgetspan.run.tokens", "{token}")  # -> budgetspan_run_tokens
OTEL_M_BUDGET_EXHAUSTIONS: Final = ("budgetspan.budget.exhaustions", "{run}")
OTEL_M_BUDGET_WOULD_EXHAUST: Final = ("budgetspan.budget.would_exhaust", "{run}")
OTEL_M_BUDGET_UTILISATION: Final = ("budgetspan.budget.utilisation_ratio", "1")
OTEL_M_MODEL_CALLS: Final = ("budgetspan.model.calls", "{call}")
OTEL_M_TOKENS: Final = ("budgetspan.tokens", "{token}")
OTEL_M_COST: Final = ("budgetspan.cost_usd", "{USD}")
OTEL_M_UNPRICED_CALLS: Final = ("budgetspan.unpriced.calls", "{call}")
OTEL_M_UNREPORTED_USAGE_CALLS: Final = ("budgetspan.unreported_usage.calls", "{call}")
OTEL_M_MODEL_CALL_DURATION: Final = ("budgetspan.model_call.duration", "s")
OTEL_M_TIME_TO_FIRST_TOKEN: Final = ("budgetspan.time_to_first_token", "s")
OTEL_M_PHASE_DURATION: Final = ("budgetspan.phase.duration", "s")
OTEL_M_TOOL_CALLS: Final = ("budgetspan.tool.calls", "{call}")
OTEL_M_TOOL_DURATION: Final = ("budgetspan.tool.duration", "s")
OTEL_M_RETRIES: Final = ("budgetspan.retries", "{retry}")
OTEL_M_RETRIEVALS: Final = ("budgetspan.retrievals", "{call}")
OTEL_M_LIVE_RUNS: Final = ("budgetspan.live_runs", "{run}")  # up-down counter -> gauge
OTEL_M_SPANS_DROPPED: Final = ("budgetspan.spans.dropped", "{span}")
OTEL_M_INTERNAL_ERRORS: Final = ("budgetspan.internal_errors", "{error}")
# Standard OpenTelemetry variables budgetspan.configure() reads when it creates the provider.
ENV_OTEL_TRACES_EXPORTER: Final = "OTEL_TRACES_EXPORTER"
ENV_OTEL_OTLP_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_OTEL_OTLP_TRACES_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
ENV_OTEL_OTLP_PROTOCOL: Final = "OTEL_EXPORTER_OTLP_PROTOCOL"
ENV_OTEL_OTLP_TRACES_PROTOCOL: Final = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"

# --- Background jobs (budgetspan.jobs) ------------------------------------------------------
JOB_ATTEMPT: Final = "budgetspan.job.attempt"  # on the run span of a job: which delivery runs it
JOB_QUEUE_WAIT_S: Final = "budgetspan.job.queue_wait_s"  # on the queue_delay span
PHASE_QUEUE_DELAY: Final = "queue_delay"  # a job's time from submission to its first start (its own span)
L_STATE: Final = "state"  # queued | running | retried | the job's outcome (success, cancelled, ...)
M_JOBS: Final = "budgetspan_jobs"  # counter: workflow, state (jobs entering each state)
M_JOB_QUEUE_WAIT: Final = "budgetspan_job_queue_wait_seconds"  # histogram: workflow
OTEL_M_JOBS: Final = ("budgetspan.jobs", "{job}")  # -> budgetspan_jobs_total
OTEL_M_JOB_QUEUE_WAIT: Final = ("budgetspan.job.queue_wait", "s")  # -> budgetspan_job_queue_wait_seconds
# --- The cache (budgetspan.cache) ------------------------------------------------------------
# On the tool span (or the ``cached {name}`` span of budgetspan.cached): what the cache answered.
CACHE_RESULT: Final = "budgetspan.cache.result"  # hit | miss | skipped | unavailable
CACHE_SCOPE: Final = "budgetspan.cache.scope"  # global | tenant | user
CACHE_REASON: Final = (
    "budgetspan.cache.reason"  # skipped/unavailable: no_tenant, no_user, arguments, value, backend
)
CACHE_NAME: Final = "budgetspan.cache.name"  # the cached tool or function
CACHE_SAVED_USD: Final = "budgetspan.cache.saved_usd"  # a hit: the original computation's recorded cost
CACHE_SAVED_S: Final = "budgetspan.cache.saved_s"  # a hit: the original duration less the lookup's
CACHE_COST_USD: Final = "budgetspan.cache.cost_usd"  # a miss: what the computation cost (model calls inside)
SPAN_CACHED: Final = "cached {name}"  # budgetspan.cached(...): one span per call, hit or miss
M_CACHE_REQUESTS: Final = "budgetspan_cache_requests"  # counter: tool, result
M_CACHE_SAVED_USD: Final = "budgetspan_cache_saved_usd"  # counter: tool
M_CACHE_SAVED_SECONDS: Final = "budgetspan_cache_saved_seconds"  # counter: tool
# Provider prompt caching (accounting/prompt_cache.py): what cache-read tokens saved against the
# full input price, and what cache-write tokens cost above it; net saving = saved - premium.
M_PROMPT_CACHE_SAVED_USD: Final = "budgetspan_prompt_cache_saved_usd"  # counter: workflow, provider, model
M_PROMPT_CACHE_WRITE_PREMIUM_USD: Final = "budgetspan_prompt_cache_write_premium_usd"  # counter: same
L_RESULT: Final = "result"
CACHE_RESULT_HIT: Final = "hit"
CACHE_RESULT_MISS: Final = "miss"
CACHE_RESULT_SKIPPED: Final = "skipped"
CACHE_RESULT_UNAVAILABLE: Final = "unavailable"
# The cache's series on the OpenTelemetry Metrics API (translated to the M_CACHE_* names above).
OTEL_M_CACHE_REQUESTS: Final = ("budgetspan.cache.requests", "{request}")
OTEL_M_CACHE_SAVED_USD: Final = ("budgetspan.cache.saved_usd", "{USD}")
OTEL_M_CACHE_SAVED_SECONDS: Final = ("budgetspan.cache.saved", "s")
OTEL_M_PROMPT_CACHE_SAVED_USD: Final = ("budgetspan.prompt_cache.saved_usd", "{USD}")
OTEL_M_PROMPT_CACHE_WRITE_PREMIUM_USD: Final = ("budgetspan.prompt_cache.write_premium_usd", "{USD}")
# --- Steps, fallbacks and outcome quality (issue 19: cost per success by step and model) ------
#: The step a call serves (``budgetspan.step("classify")``); default: the call's phase.
STEP: Final = "budgetspan.step"
#: On a call that replaced another model's answer (``budgetspan.fallback(...)``): the model it
#: replaced and why (a short bounded word: error | rejected | timeout ...).
FALLBACK_FROM: Final = "budgetspan.fallback.from"
FALLBACK_REASON: Final = "budgetspan.fallback.reason"
#: Outcome quality on the run span (``run.succeed(score=...)``, ``run.record_rework(...)``).
RUN_SCORE: Final = "budgetspan.run.score"  # a verifier's score, 0..1 by convention
RUN_REWORK: Final = "budgetspan.run.rework"  # human edits, reviewer corrections: how many in all
RUN_REWORK_KINDS: Final = "budgetspan.run.rework.kinds"  # ["human_edit=2", "reviewer_correction=1"]
#: ``budgetspan.record_outcome(run_id, ...)``: a span after the run ended (an approval, a review)
#: that names the run it is about; the report joins it to that run. No ``budgetspan.run.id`` on
#: it (the run is over: it must not look like one of the run's late spans).
OUTCOME_RUN_ID: Final = "budgetspan.outcome.run_id"
SPAN_OUTCOME: Final = "record_outcome {workflow}"
# Cost per successful run by step and model: at run end, per step and model the run used, its
# cost in that step and one run, by the run's outcome. Cost per success =
# sum(step_cost_usd) / sum(step_runs{outcome="success"}) (failed runs' cost stays in).
M_STEP_COST: Final = "budgetspan_step_cost_usd"  # counter: workflow, step, model, outcome
M_STEP_RUNS: Final = "budgetspan_step_runs"  # counter: workflow, step, model, outcome
L_STEP: Final = "step"
OTEL_M_STEP_COST: Final = ("budgetspan.step.cost_usd", "{USD}")  # -> budgetspan_step_cost_usd_total
OTEL_M_STEP_RUNS: Final = ("budgetspan.step.runs", "{run}")  # -> budgetspan_step_runs_total
# --- Exemplars (processors/metric_cells.py): the trace behind a histogram bucket -------------
# The exemplar label OpenMetrics carries and Grafana's trace links read by default.
EXEMPLAR_TRACE_LABEL: Final = "trace_id"
# `budgetspan assets`: the address of the published runbooks.md, put into the alert rules' runbook_url
ENV_RUNBOOK_BASE_URL: Final = "BUDGETSPAN_RUNBOOK_BASE_URL"

# --- Token series that sum without double counting -------------------------------------------
# budgetspan_tokens_total{type} holds input (cached tokens included) and output only, so a plain
# sum is the total; the subsets (cache_read and cache_write of input, reasoning of output) are a
# family of their own. TOKEN_SUBSETS: the ``type`` values that go there.
M_TOKEN_DETAILS: Final = "budgetspan_token_details"  # counter: workflow, provider, model, type
OTEL_M_TOKEN_DETAILS: Final = ("budgetspan.token_details", "{token}")  # -> budgetspan_token_details_total
TOKEN_SUBSETS: Final = frozenset({"cache_read", "cache_write", "reasoning"})

# --- Built-in tool fees (instrumentation/tool_fees.py, accounting/tool_fees.py) ------------------
# Per-use fees of providers' server-side tools (web search, file search, code containers, images),
# included in gen_ai.usage.cost and said apart here; the worst case is held before the call.
TOOL_FEES_USD: Final = "budgetspan.cost.tool_fees_usd"  # what of gen_ai.usage.cost is tool fees
TOOL_FEES_USES: Final = "budgetspan.tool_fees.uses"  # ["web_search=2", "file_search=1"]
TOOL_FEES_ESTIMATED: Final = "budgetspan.cost.tool_fees_estimated"  # a fee billed by time, or unsaid size
TOOL_FEES_UNPRICED: Final = "budgetspan.cost.tool_fees_unpriced"  # tool types with no known fee
TOOL_FEES_WORST_CASE: Final = "budgetspan.cost.tool_fees_worst_case_usd"  # held before the call
