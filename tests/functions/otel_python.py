"""A Python Lambda function instrumented with the OpenTelemetry SDK, exporting to the
sidecar's OTLP receiver with the OTLP/HTTP exporter; run by lambda-env as a runtime
process (`EnvConfig::runtime`): this file is both the runtime (the Runtime API loop that
Lambda's Python runtime runs) and the handler.

Per invocation the handler makes a `handler` span (a child of X-Ray's segment: the
`_X_AMZN_TRACE_ID` of the invocation turned into a W3C traceparent, as an X-Ray propagator
does) with two children, adds 1 to the counter `orders.processed`, records the order's size
in the histogram `orders.size`, and logs one record inside the span; then it flushes the
three providers before it returns, as a function must: Lambda freezes the environment once
the response is sent, and a batch processor's timer does not run while frozen.

The endpoint is given in code, from `SIDECAR_OTLP_RECEIVER_ADDR`: in Lambda the function and
its extensions share one environment, so `OTEL_EXPORTER_OTLP_ENDPOINT` names the sidecar's
collector, not the sidecar.
"""

import json
import logging
import os
import urllib.request

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

RECEIVER = "http://" + os.environ.get("SIDECAR_OTLP_RECEIVER_ADDR", "127.0.0.1:4318")
RUNTIME = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"

resource = Resource.create({"service.name": "orders-python", "deployment.environment": "test"})
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(
    BatchSpanProcessor(OTLPSpanExporter(endpoint=RECEIVER + "/v1/traces"))
)
# No periodic export between invocations: the handler flushes (a day's interval).
meter_provider = MeterProvider(
    resource=resource,
    metric_readers=[
        PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=RECEIVER + "/v1/metrics"),
            export_interval_millis=86_400_000,
        )
    ],
)
logger_provider = LoggerProvider(resource=resource)
logger_provider.add_log_record_processor(
    BatchLogRecordProcessor(OTLPLogExporter(endpoint=RECEIVER + "/v1/logs"))
)
tracer = tracer_provider.get_tracer("orders")
meter = meter_provider.get_meter("orders")
processed = meter.create_counter("orders.processed", unit="{order}")
size = meter.create_histogram("orders.size", unit="By")
log = logging.getLogger("orders")
log.setLevel(logging.INFO)
log.addHandler(LoggingHandler(logger_provider=logger_provider))


def xray_context(header):
    """The W3C context of an X-Ray trace header (`Root=1-…;Parent=…;Sampled=1`)."""
    fields = dict(p.split("=", 1) for p in header.split(";") if "=" in p)
    root = fields.get("Root", "").split("-")
    if len(root) != 3 or "Parent" not in fields:
        return None
    flags = "01" if fields.get("Sampled") == "1" else "00"
    traceparent = f"00-{root[1]}{root[2]}-{fields['Parent']}-{flags}"
    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def handler(event, request_id):
    parent = xray_context(os.environ.get("_X_AMZN_TRACE_ID", ""))
    with tracer.start_as_current_span(
        "handler", context=parent, kind=trace.SpanKind.SERVER,
        attributes={"faas.invocation_id": request_id},
    ):
        with tracer.start_as_current_span("db.query", kind=trace.SpanKind.CLIENT):
            pass
        with tracer.start_as_current_span("render"):
            pass
        processed.add(1, {"shop": "main"})
        size.record(100 + int(event.get("invoke", 0)), {"shop": "main"})
        log.info("processing order %s", request_id)
    for provider in (tracer_provider, meter_provider, logger_provider):
        provider.force_flush()
    return {"ok": True}


def main():
    while True:
        with urllib.request.urlopen(RUNTIME + "/invocation/next") as next_:
            request_id = next_.headers["Lambda-Runtime-Aws-Request-Id"]
            os.environ["_X_AMZN_TRACE_ID"] = next_.headers.get("Lambda-Runtime-Trace-Id", "")
            event = json.loads(next_.read() or b"{}")
        body = json.dumps(handler(event, request_id)).encode()
        request = urllib.request.Request(
            f"{RUNTIME}/invocation/{request_id}/response", data=body, method="POST"
        )
        urllib.request.urlopen(request).close()


if __name__ == "__main__":
    main()
