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
TIME_TO_FIRST_TOKEN_S: Final = "budgetspan.time_to_first_token_s"
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
STREAM: Final = "budgetspan.stream"
STREAM_END: Final = "budgetspan.stream.end"  # consumed | closed | abandoned | error | cancelled

# span events
EVENT_BUDGET_EXHAUSTED: Final = "budgetspan.budget_exhausted"
EVENT_WOULD_EXHAUST: Final = "budgetspan.budget_would_exhaust"
EVENT_CANCELLED: Final = "budgetspan.cancelled"

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
M_TOKENS: Final = "budgetspan_tokens"  # counter: workflow, provider, model, type
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
