"use strict";
// A Node.js service as a platform team runs it, with no budgetspan anywhere: the `openai` package,
// Traceloop's OpenAI instrumentation (OpenLLMetry-JS), the OpenTelemetry JS SDK and its OTLP/HTTP
// (protobuf) exporter. Its tools are traced by hand under the GenAI conventions.
//
// Environment: SERVICE_NAME, OTLP_ENDPOINT (http://host:port of the collector tier),
// OPENAI_BASE_URL (an OpenAI-compatible server). It sends rounds of runs (one trace each) until
// SIGTERM, printing "round N" after each, then flushes its spans and exits 0.

const api = require("@opentelemetry/api");
const { NodeTracerProvider, BatchSpanProcessor } = require("@opentelemetry/sdk-trace-node");
const { OTLPTraceExporter } = require("@opentelemetry/exporter-trace-otlp-proto");
const { resourceFromAttributes } = require("@opentelemetry/resources");
const { registerInstrumentations } = require("@opentelemetry/instrumentation");
const { OpenAIInstrumentation } = require("@traceloop/instrumentation-openai");

const provider = new NodeTracerProvider({
  resource: resourceFromAttributes({ "service.name": process.env.SERVICE_NAME }),
  spanProcessors: [
    new BatchSpanProcessor(new OTLPTraceExporter({ url: `${process.env.OTLP_ENDPOINT}/v1/traces` }), {
      scheduledDelayMillis: 100,
    }),
  ],
});
provider.register();
registerInstrumentations({ instrumentations: [new OpenAIInstrumentation()] });

// Required after the instrumentation is registered, so that it is patched.
const { OpenAI } = require("openai");

const client = new OpenAI({ baseURL: process.env.OPENAI_BASE_URL, apiKey: "test-key", maxRetries: 0 });
const tracer = api.trace.getTracer("support-service");
const CARD = "my card number is 4111 1111 1111 1111";

async function chat(model, stream = false) {
  const messages = [{ role: "user", content: CARD }];
  if (!stream) {
    return client.chat.completions.create({ model, messages });
  }
  const chunks = await client.chat.completions.create({ model, messages, stream: true });
  for await (const _ of chunks) {
    // read to the end: the instrumentation ends the span with the stream
  }
}

function tool(name, ok) {
  // A tool call traced by hand, as the GenAI conventions name it (arguments are content).
  return tracer.startActiveSpan(`execute_tool ${name}`, { kind: api.SpanKind.INTERNAL }, (span) => {
    span.setAttributes({
      "gen_ai.operation.name": "execute_tool",
      "gen_ai.tool.name": name,
      "gen_ai.tool.call.arguments": '{"order": "A-1", "email": "a@example.com"}',
    });
    if (!ok) {
      span.setStatus({ code: api.SpanStatusCode.ERROR, message: "order service unavailable" });
    }
    span.end();
  });
}

function run(body) {
  // One request of the service: one trace, the run the collector tier accounts.
  return tracer.startActiveSpan("POST /support", { kind: api.SpanKind.SERVER }, async (root) => {
    try {
      await body();
    } finally {
      root.end();
    }
  });
}

async function round() {
  await run(async () => {
    tool("lookup_order", true);
    await chat("gpt-4o-mini");
    await chat("gpt-4o-mini");
  });
  await run(async () => {
    // Over its profile (2 model calls): the third call is the one enforce mode would refuse.
    for (let i = 0; i < 3; i++) await chat("gpt-4o-mini");
  });
  await run(async () => {
    tool("lookup_order", false);
    await chat("acme-llm-1"); // no known price
  });
  await run(async () => chat("gpt-4o-mini", true)); // a stream that reports no usage
}

let stopping = false;
process.on("SIGTERM", () => {
  stopping = true;
});

async function main() {
  for (let n = 0; !stopping; n++) {
    await round();
    console.log(`round ${n}`);
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  await provider.shutdown();
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
