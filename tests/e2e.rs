//! End to end: the real binary in the lambda-env Lambda environment (register, INVOKEs with
//! X-Ray values, Telemetry API batches, freezing between invokes, SHUTDOWN with a deadline),
//! exporting through a real OpenTelemetry collector (rotel) to a receiver that decodes with
//! the official OTLP protobuf schema.
//!
//! rotel-agent comes from PyPI (`make test` installs it into .venv); `ROTEL_AGENT` names the
//! binary, else it is looked up in .venv.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{counter, rotel, stderr_of};
use lambda_env::{EnvConfig, InvokeStatus, Report, Sink, SinkMode, SpanRecord, Traceparent};

const FUNCTION: &str = "e2e-orders";
/// The flush cap the tests configure (SIDECAR_FLUSH_TIMEOUT_MS).
const CAP_MS: f64 = 300.0;
/// Scheduling slack on top of the cap: the environment measures the hold from outside the
/// process, on a shared 2-core machine.
const SLACK_MS: f64 = 150.0;

/// An environment running the sidecar with `extra` variables, `invokes` invocations that
/// fetch `tokens` tokens each, flushing under the tests' cap.
fn environment(invokes: usize, tokens: usize, extra: &[(&str, String)]) -> EnvConfig {
    let mut env = vec![
        ("SIDECAR_FLUSH_TIMEOUT_MS", (CAP_MS as u64).to_string()),
        ("SIDECAR_LOG", "info".to_string()),
    ];
    env.extend_from_slice(extra);
    common::environment(FUNCTION, invokes, tokens, &env)
}

/// The run went through: every invoke succeeded, every token was issued, the sidecar exited
/// 0 on its own before the SHUTDOWN deadline, and no invoke was held past the cap.
fn assert_healthy_run(report: &Report, tokens: usize) {
    common::assert_clean_exit(report);
    let log = stderr_of(report);
    for invoke in &report.invokes {
        assert!(matches!(invoke.status, InvokeStatus::Success), "{invoke:?}");
        assert_eq!(invoke.tokens.len(), tokens);
        for call in &invoke.tokens {
            assert_eq!(call.http_status, Some(200), "{call:?}\n{log}");
        }
        assert!(
            invoke.hold_ms <= CAP_MS + SLACK_MS,
            "invoke {} held {} ms, cap {CAP_MS} ms\n{log}",
            invoke.request_id,
            invoke.hold_ms
        );
    }
    assert!(
        report
            .shutdown
            .exited_before_deadline_ms
            .is_some_and(|ms| ms > 0.0),
        "{:?}",
        report.shutdown
    );
}

fn invocation_spans(spans: &[SpanRecord]) -> Vec<&SpanRecord> {
    spans.iter().filter(|s| s.name == FUNCTION).collect()
}

fn unique_traces(spans: &[SpanRecord], name: &str) -> HashSet<String> {
    spans
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.trace_id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invocation_and_token_arrives_through_a_real_collector() {
    let sink = Sink::start().await.unwrap();
    let rotel = rotel(&sink).await;
    let (invokes, tokens) = (5, 2);
    let report = lambda_env::run(environment(
        invokes,
        tokens,
        &[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", rotel.http),
        )],
    ))
    .await
    .unwrap();
    assert_healthy_run(&report, tokens);

    // Everything, including the last invocation (flushed at SHUTDOWN), reaches the sink.
    let delivered = sink
        .wait_for(
            |v| {
                unique_traces(v.spans, FUNCTION).len() == invokes
                    && v.spans.iter().filter(|s| s.name == "sidecar.token").count()
                        >= invokes * tokens
                    && counter(v.metrics, "sidecar.token.requests") >= (invokes * tokens) as f64
                    && counter(v.metrics, "faas.invocations") >= invokes as f64
            },
            Duration::from_secs(10),
        )
        .await;
    let spans = sink.spans();
    let metrics = sink.metrics();
    assert!(
        delivered,
        "not everything arrived: {} spans\n{}",
        spans.len(),
        stderr_of(&report)
    );

    // One span per invocation, in the X-Ray trace of its INVOKE, with the FaaS attributes.
    let by_trace: HashMap<&str, &SpanRecord> = invocation_spans(&spans)
        .into_iter()
        .map(|s| (s.trace_id.as_str(), s))
        .collect();
    assert_eq!(
        invocation_spans(&spans).len(),
        invokes,
        "exactly one span per invocation"
    );
    for (i, invoke) in report.invokes.iter().enumerate() {
        let span = by_trace
            .get(invoke.trace_id.as_str())
            .unwrap_or_else(|| panic!("no span in trace {} (invoke {i})", invoke.trace_id));
        assert_eq!(span.kind, 2, "server kind");
        assert_eq!(
            span.attributes["faas.invocation_id"],
            invoke.request_id.as_str()
        );
        assert_eq!(
            span.attributes["faas.coldstart"],
            i == 0,
            "coldstart on the first invoke only"
        );
        assert_eq!(span.attributes["cloud.provider"], "aws");
        assert_eq!(span.resource["service.name"], FUNCTION);
        assert!(span.start_unix_nanos < span.end_unix_nanos);
        // The X-Ray Parent is the invocation span's (remote) parent.
        let parent = invoke
            .xray_value
            .split(';')
            .find_map(|p| p.strip_prefix("Parent="))
            .unwrap();
        assert_eq!(span.parent_span_id, parent);
    }
    // Every token span sits inside the invocation that asked for it.
    let token_spans: Vec<&SpanRecord> =
        spans.iter().filter(|s| s.name == "sidecar.token").collect();
    assert_eq!(
        token_spans
            .iter()
            .map(|s| &s.span_id)
            .collect::<HashSet<_>>()
            .len(),
        invokes * tokens
    );
    for token in &token_spans {
        let invocation = by_trace
            .get(token.trace_id.as_str())
            .unwrap_or_else(|| panic!("token span outside every invocation trace: {token:?}"));
        assert!(
            invocation.start_unix_nanos <= token.start_unix_nanos
                && token.end_unix_nanos <= invocation.end_unix_nanos,
            "token span not within its invocation"
        );
        assert_eq!(token.attributes["sidecar.token.outcome"], "issued");
        let serialized = serde_json::to_string(&token.attributes).unwrap();
        assert!(
            !serialized.contains("eyJ"),
            "a token leaked into span attributes: {serialized}"
        );
    }
    // Counters equal what was done.
    assert_eq!(
        counter(&metrics, "faas.invocations"),
        invokes as f64,
        "{}",
        stderr_of(&report)
    );
    assert_eq!(
        counter(&metrics, "sidecar.token.requests"),
        (invokes * tokens) as f64
    );
    assert_eq!(counter(&metrics, "faas.coldstarts"), 1.0);
    assert_eq!(counter(&metrics, "faas.errors"), 0.0);
    assert_eq!(counter(&metrics, "sidecar.telemetry.unknown_events"), 0.0);
    drop(rotel);
}

/// Issue 11's race, made the rule: lambda-env hands every INVOKE to the function first, and
/// to the sidecar only once the function has asked for its 2 tokens. 50 invocations through
/// rotel: every token span is a child of its own invocation's span (same trace, parent =
/// that span, starting inside it), and none is left without an invocation. The function
/// sends `traceparent`, and the request-id header with `send_request_id`.
async fn tokens_asked_before_the_sidecar_has_the_invoke(
    traceparent: Traceparent,
    send_request_id: bool,
) {
    let sink = Sink::start().await.unwrap();
    let rotel = rotel(&sink).await;
    let (invokes, tokens) = (50, 2);
    let mut config = environment(
        invokes,
        tokens,
        &[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", rotel.http),
        )],
    );
    config.invoke_runtime_first = true;
    config.traceparent = traceparent;
    config.send_request_id = send_request_id;
    config.gap_ms = 20;
    let report = lambda_env::run(config).await.unwrap();
    assert_healthy_run(&report, tokens);
    let is_token = |s: &SpanRecord| s.name.contains("token");
    let delivered = sink
        .wait_for(
            |v| {
                invocation_spans(v.spans).len() >= invokes
                    && v.spans.iter().filter(|s| is_token(s)).count() >= invokes * tokens
                    && counter(v.metrics, "sidecar.token.requests") >= (invokes * tokens) as f64
            },
            Duration::from_secs(10),
        )
        .await;
    let spans = sink.spans();
    assert!(
        delivered,
        "not everything arrived: {} spans\n{}",
        spans.len(),
        stderr_of(&report)
    );
    let token_spans: Vec<&SpanRecord> = spans.iter().filter(|s| is_token(s)).collect();
    assert_eq!(token_spans.len(), invokes * tokens, "each token span once");
    let by_request: HashMap<&str, &SpanRecord> = invocation_spans(&spans)
        .into_iter()
        .filter_map(|s| Some((s.attributes["faas.invocation_id"].as_str()?, s)))
        .collect();
    let mut misplaced = Vec::new();
    for (i, invoke) in report.invokes.iter().enumerate() {
        let invocation = by_request
            .get(invoke.request_id.as_str())
            .unwrap_or_else(|| panic!("no span for invoke {i}"));
        assert_eq!(invocation.trace_id, invoke.trace_id, "invoke {i}");
        let children: Vec<&&SpanRecord> = token_spans
            .iter()
            .filter(|t| t.parent_span_id == invocation.span_id)
            .collect();
        let inside = children.iter().all(|t| {
            t.trace_id == invocation.trace_id
                && invocation.start_unix_nanos <= t.start_unix_nanos
                && t.start_unix_nanos <= invocation.end_unix_nanos
        });
        if children.len() != tokens || !inside {
            misplaced.push((i, children.len(), inside));
        }
    }
    let unparented = token_spans
        .iter()
        .filter(|t| t.parent_span_id.is_empty())
        .count();
    assert!(
        misplaced.is_empty() && unparented == 0,
        "{traceparent:?}: (invoke, token children, all inside) off: {misplaced:?}; {unparented} \
         token spans without a parent\n{}",
        stderr_of(&report)
    );
    assert_eq!(
        counter(&sink.metrics(), "sidecar.token.unattributed"),
        0.0,
        "{traceparent:?}"
    );
    drop(rotel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_without_traceparent_before_the_invoke_join_their_own_invocation() {
    tokens_asked_before_the_sidecar_has_the_invoke(Traceparent::None, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_with_the_xray_parent_before_the_invoke_nest_under_their_invocation() {
    tokens_asked_before_the_sidecar_has_the_invoke(Traceparent::XrayParent, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_naming_their_request_id_before_the_invoke_join_their_own_invocation() {
    tokens_asked_before_the_sidecar_has_the_invoke(Traceparent::None, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_through_the_collector() {
    let sink = Sink::start().await.unwrap();
    let rotel = rotel(&sink).await;
    let report = lambda_env::run(environment(
        2,
        1,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", rotel.grpc),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ],
    ))
    .await
    .unwrap();
    assert_healthy_run(&report, 1);
    let delivered = sink
        .wait_for(
            |v| unique_traces(v.spans, FUNCTION).len() == 2,
            Duration::from_secs(10),
        )
        .await;
    assert!(
        delivered,
        "gRPC export did not arrive\n{}",
        stderr_of(&report)
    );
    let traces = unique_traces(&sink.spans(), FUNCTION);
    for invoke in &report.invokes {
        assert!(traces.contains(&invoke.trace_id));
    }
}

/// A collector that fails (503, dead, or too slow for the cap) never holds the function past
/// the cap or takes the sidecar down; what could not be sent is delivered once it recovers.
async fn recovers_after(fault: Fault) {
    let mut sink = Sink::start().await.unwrap();
    let endpoint = sink.endpoint();
    match fault {
        Fault::Unavailable => sink.set_mode(SinkMode::Fail(503)),
        Fault::Slow => sink.set_mode(SinkMode::Slow(Duration::from_secs(2))),
        Fault::Down => sink.stop().await,
    }
    let invokes = 8;
    let config = environment(invokes, 1, &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)]);
    let run = tokio::spawn(lambda_env::run(config));
    // Let a few flushes fail, then bring the collector back while invocations go on.
    tokio::time::sleep(Duration::from_millis(700)).await;
    match fault {
        Fault::Down => sink.restart().await.unwrap(),
        _ => sink.set_mode(SinkMode::Ok),
    }
    let report = run.await.unwrap().unwrap();
    assert_healthy_run(&report, 1);
    let delivered = sink
        .wait_for(
            |v| unique_traces(v.spans, FUNCTION).len() == invokes,
            Duration::from_secs(5),
        )
        .await;
    let traces = unique_traces(&sink.spans(), FUNCTION);
    assert!(
        delivered,
        "{fault:?}: {} of {invokes} invocations delivered\n{}",
        traces.len(),
        stderr_of(&report)
    );
    if !matches!(fault, Fault::Down) {
        // The failures were seen and counted by the sidecar itself.
        assert!(
            counter(&sink.metrics(), "sidecar.export.failures") >= 1.0,
            "{fault:?}: failures not counted"
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Unavailable,
    Slow,
    Down,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_answering_503() {
    recovers_after(Fault::Unavailable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_too_slow_for_the_cap() {
    recovers_after(Fault::Slow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down() {
    recovers_after(Fault::Down).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_events_and_snapstart_are_taken_without_retries() {
    let sink = Sink::start().await.unwrap();
    let mut config = environment(3, 1, &[("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint())]);
    config.inject_unknown = true;
    config.snapstart = true;
    config.logs_dropped = true;
    let report = lambda_env::run(config).await.unwrap();
    assert_healthy_run(&report, 1);
    // Every batch was answered 200 at once: Lambda never had to re-send one.
    assert_eq!(report.telemetry.retries, 0, "{:?}", report.telemetry);
    assert_eq!(report.telemetry.dropped, 0);
    let delivered = sink
        .wait_for(
            |v| {
                unique_traces(v.spans, FUNCTION).len() == 3
                    && v.spans.iter().any(|s| s.name == "restore")
            },
            Duration::from_secs(5),
        )
        .await;
    assert!(
        delivered,
        "spans missing: {:?}",
        sink.spans().iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let metrics = sink.metrics();
    assert!(counter(&metrics, "sidecar.telemetry.unknown_events") >= 1.0);
    assert!(counter(&metrics, "sidecar.telemetry.logs_dropped") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_error_reaches_init_error_and_exits_non_zero() {
    let mut config = environment(1, 0, &[]);
    config.env.retain(|(k, _)| k != "JWT_SECRET");
    config
        .env
        .push(("JWT_SECRET".to_string(), "super_secret".to_string()));
    let report = lambda_env::run(config).await.unwrap();
    let error = report.init.error.as_ref().expect("init must fail");
    assert_eq!(error.error_type, "Config.InvalidSecret");
    let message = error.body["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("JWT_SECRET"), "{message}");
    assert!(
        !message.contains("super_secret"),
        "the secret is echoed: {message}"
    );
    assert_eq!(error.exit_code, Some(1));
    assert!(report.invokes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_telemetry_subscription_fails_init() {
    let mut config = environment(1, 0, &[]);
    config.refuse_telemetry = true;
    let report = lambda_env::run(config).await.unwrap();
    let error = report.init.error.as_ref().expect("init must fail");
    assert_eq!(
        error.error_type,
        "Extension.TelemetrySubscriptionFailed",
        "{}",
        stderr_of(&report)
    );
    let message = error.body["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("500"), "{message}");
    assert_eq!(error.exit_code, Some(1));
}
