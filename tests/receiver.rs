//! The function's own telemetry, end to end, with a real OpenTelemetry SDK: a Python
//! function (`tests/functions/otel_python.py`, opentelemetry-sdk with the OTLP/HTTP
//! exporter) runs as lambda-env's runtime process, frozen between invocations with the
//! sidecar, and exports to the sidecar's OTLP receiver; the sidecar forwards through a real
//! collector (rotel) to lambda-env's sink. Every span, metric point and log record the
//! function produced arrives exactly once, the last invocation's too (sent by the SHUTDOWN
//! flush), its spans in one tree with the sidecar's invocation span, its resource completed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{rotel, stderr_of, venv_bin};
use lambda_env::{InvokeStatus, Sink, SpanRecord, free_port};

const FUNCTION: &str = "orders-fn";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_sdks_telemetry_arrives_once_in_the_invocations_trace() {
    let sink = Sink::start().await.unwrap();
    let rotel = rotel(&sink).await;
    let receiver = format!("127.0.0.1:{}", free_port().unwrap());
    let invokes = 3;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/functions/otel_python.py"
    );
    let mut config = common::environment(
        FUNCTION,
        invokes,
        0,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", rotel.http),
            ),
            ("SIDECAR_OTLP_RECEIVER_ADDR", receiver.clone()),
        ],
    );
    config.runtime = Some(vec![
        venv_bin("python").to_string_lossy().into_owned(),
        script.to_string(),
    ]);
    config.freeze = true;
    let report = lambda_env::run(config).await.unwrap();
    common::assert_clean_exit(&report);
    for invoke in &report.invokes {
        assert!(
            matches!(invoke.status, InvokeStatus::Success),
            "{invoke:?}\n{}",
            stderr_of(&report)
        );
    }

    let function_spans = |spans: &[SpanRecord]| {
        spans
            .iter()
            .filter(|s| {
                s.resource.get("service.name").and_then(|v| v.as_str()) == Some("orders-python")
            })
            .count()
    };
    let arrived = sink
        .wait_for(
            |v| {
                function_spans(v.spans) >= 3 * invokes
                    && v.logs.iter().filter(|l| l.scope == "orders").count() >= invokes
                    && v.metrics
                        .iter()
                        .filter(|m| m.name == "orders.processed")
                        .count()
                        >= invokes
                    && v.spans.iter().filter(|s| s.name == FUNCTION).count() >= invokes
            },
            Duration::from_secs(10),
        )
        .await;
    let (spans, metrics, logs) = (sink.spans(), sink.metrics(), sink.logs());
    assert!(
        arrived,
        "not everything arrived: {} spans, {} points, {} logs\n{}",
        spans.len(),
        metrics.len(),
        logs.len(),
        stderr_of(&report)
    );

    // Exactly once: 3 spans per invocation, no span id twice.
    let ours: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.resource["service.name"] == "orders-python")
        .collect();
    assert_eq!(ours.len(), 3 * invokes, "{ours:#?}");
    let ids: HashSet<&str> = ours.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), ours.len(), "a span arrived twice");

    for invoke in &report.invokes {
        let invocation = spans
            .iter()
            .find(|s| s.name == FUNCTION && s.trace_id == invoke.trace_id)
            .unwrap_or_else(|| panic!("no invocation span for {}", invoke.request_id));
        let in_trace: Vec<&&SpanRecord> = ours
            .iter()
            .filter(|s| s.trace_id == invoke.trace_id)
            .collect();
        assert_eq!(
            in_trace.len(),
            3,
            "the function's spans share X-Ray's trace id"
        );
        let handler = in_trace.iter().find(|s| s.name == "handler").unwrap();
        assert_eq!(
            handler.parent_span_id, invocation.span_id,
            "the handler span sits under the sidecar's invocation span"
        );
        assert_eq!(
            handler.attributes["faas.invocation_id"],
            invoke.request_id.as_str()
        );
        for child in in_trace.iter().filter(|s| s.name != "handler") {
            assert_eq!(child.parent_span_id, handler.span_id, "{child:?}");
        }
        // Its log record keeps its trace correlation.
        let record: Vec<_> = logs
            .iter()
            .filter(|l| l.scope == "orders" && l.trace_id == invoke.trace_id)
            .collect();
        assert_eq!(record.len(), 1, "one log record per invocation, once");
        assert_eq!(record[0].span_id, handler.span_id);
    }
    assert_eq!(logs.iter().filter(|l| l.scope == "orders").count(), invokes);

    // The SDK's resource is kept, the sidecar's attributes added where missing.
    for span in &ours {
        assert_eq!(span.resource["deployment.environment"], "test");
        assert_eq!(span.resource["telemetry.sdk.language"], "python");
        assert_eq!(span.resource["faas.name"], FUNCTION);
        assert_eq!(span.resource["cloud.provider"], "aws");
        assert!(
            span.resource.contains_key("service.instance.id"),
            "{:?}",
            span.resource
        );
    }

    // Every metric export arrives once, with the SDK's temporality: the counter's
    // cumulative totals 1, 2, 3, and one histogram point per export.
    let mut totals: Vec<f64> = metrics
        .iter()
        .filter(|m| m.name == "orders.processed")
        .map(|m| m.value.unwrap())
        .collect();
    totals.sort_by(f64::total_cmp);
    assert_eq!(totals, [1.0, 2.0, 3.0], "{metrics:#?}");
    assert!(
        metrics
            .iter()
            .filter(|m| m.name == "orders.processed")
            .all(|m| m.temporality == "cumulative" && m.resource["faas.name"] == FUNCTION)
    );
    let sizes: Vec<u64> = metrics
        .iter()
        .filter(|m| m.name == "orders.size")
        .map(|m| m.count.unwrap())
        .collect();
    assert_eq!(sizes.len(), invokes, "{sizes:?}");
}
