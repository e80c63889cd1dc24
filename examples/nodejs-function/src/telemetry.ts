/**
 * The function's own telemetry, with the OpenTelemetry JS SDK, exported over OTLP/HTTP
 * (protobuf) to the lambda-sidecar's receiver on loopback, which forwards it with its own at
 * its flushes: no collector layer, and nothing lost when Lambda freezes the environment.
 *
 * The endpoint is set here, not through OTEL_EXPORTER_OTLP_ENDPOINT: the function and its
 * extensions share one environment, where that variable names the sidecar's collector.
 *
 * Each invocation runs in a `handler` span, a child of Lambda's X-Ray segment (the
 * invocation's `_X_AMZN_TRACE_ID`, as a traceparent): the sidecar puts it under its own
 * invocation span, so the invocation is one tree. The providers are flushed before the
 * response goes back: a batch processor's timer does not run while Lambda has the
 * environment frozen.
 */
import { context, metrics, propagation, SpanKind, trace, type Context } from "@opentelemetry/api";
import { logs, SeverityNumber } from "@opentelemetry/api-logs";
import { OTLPLogExporter } from "@opentelemetry/exporter-logs-otlp-proto";
import { OTLPMetricExporter } from "@opentelemetry/exporter-metrics-otlp-proto";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { defaultResource, resourceFromAttributes } from "@opentelemetry/resources";
import { BatchLogRecordProcessor, LoggerProvider } from "@opentelemetry/sdk-logs";
import { MeterProvider, PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics";
import { BatchSpanProcessor, NodeTracerProvider } from "@opentelemetry/sdk-trace-node";
import { currentTraceparent } from "./traceparent.js";

/** The sidecar's OTLP receiver: SIDECAR_OTLP_RECEIVER_ADDR when set, else its default. */
const receiver = `http://${process.env.SIDECAR_OTLP_RECEIVER_ADDR || "127.0.0.1:4318"}`;
/**
 * Exporting only inside a Lambda execution environment, where the sidecar runs beside the
 * function: elsewhere (the app's unit tests) the spans, points and records are made but
 * sent nowhere, rather than retried for seconds against a port nothing listens on.
 */
const inLambda = Boolean(process.env.AWS_LAMBDA_RUNTIME_API);
const resource = defaultResource().merge(resourceFromAttributes({ "service.name": "lambda-sidecar-example" }));

const tracerProvider = new NodeTracerProvider({
  resource,
  spanProcessors: inLambda ? [new BatchSpanProcessor(new OTLPTraceExporter({ url: `${receiver}/v1/traces` }))] : [],
});
// Also the global provider, with the W3C propagator and an async context manager.
tracerProvider.register();

// No periodic export between invocations (a day): each invocation flushes.
const meterProvider = new MeterProvider({
  resource,
  readers: inLambda
    ? [
        new PeriodicExportingMetricReader({
          exporter: new OTLPMetricExporter({ url: `${receiver}/v1/metrics` }),
          exportIntervalMillis: 86_400_000,
        }),
      ]
    : [],
});
metrics.setGlobalMeterProvider(meterProvider);

const loggerProvider = new LoggerProvider({
  resource,
  processors: inLambda ? [new BatchLogRecordProcessor({ exporter: new OTLPLogExporter({ url: `${receiver}/v1/logs` }) })] : [],
});
logs.setGlobalLoggerProvider(loggerProvider);

const tracer = trace.getTracer("example");
const requests = metrics.getMeter("example").createCounter("example.requests", { unit: "{request}" });
const logger = logs.getLogger("example");

/** The invocation's parent context: Lambda's X-Ray segment, when it traces the invocation. */
function invocationContext(): Context {
  const traceparent = currentTraceparent();
  return traceparent ? propagation.extract(context.active(), { traceparent }) : context.active();
}

/**
 * Runs `work` (one invocation, `requestId`) in a `handler` span, counts it, logs one record in
 * the span, and flushes every provider before returning its result.
 */
export async function traced<T>(requestId: string, work: () => Promise<T>): Promise<T> {
  try {
    return await tracer.startActiveSpan(
      "handler",
      { kind: SpanKind.SERVER, attributes: { "faas.invocation_id": requestId } },
      invocationContext(),
      async (span) => {
        try {
          requests.add(1, { route: "lambda" });
          logger.emit({ severityNumber: SeverityNumber.INFO, severityText: "INFO", body: `handling ${requestId}` });
          return await work();
        } finally {
          span.end();
        }
      },
    );
  } finally {
    await flush();
  }
}

/**
 * The most an invocation waits on its flush: the sidecar answers in about a millisecond; with
 * its receiver off, the exporters' retries would otherwise hold every invocation for seconds.
 */
const FLUSH_LIMIT_MS = 300;

/**
 * Flushes the three providers, within FLUSH_LIMIT_MS: the function's answer never waits
 * long on, or fails with, its telemetry (with no receiver listening, the SDK's exporters
 * retry for seconds, and reject).
 */
async function flush(): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<void>((ok) => {
    timer = setTimeout(ok, FLUSH_LIMIT_MS);
  });
  const flushed = Promise.allSettled([tracerProvider.forceFlush(), meterProvider.forceFlush(), loggerProvider.forceFlush()]);
  await Promise.race([flushed, limit]);
  clearTimeout(timer);
}

/** A child span of the current one, around `work`. */
export function inSpan<T>(name: string, work: () => Promise<T>): Promise<T> {
  return tracer.startActiveSpan(name, { kind: SpanKind.CLIENT }, async (span) => {
    try {
      return await work();
    } finally {
      span.end();
    }
  });
}
