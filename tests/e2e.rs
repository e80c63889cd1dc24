//! End to end: the real binary in the lambda-env Lambda environment (register, INVOKEs with
//! X-Ray values, Telemetry API batches, freezing between invokes, SHUTDOWN with a deadline),
//! exporting through a real OpenTelemetry collector (rotel) to a receiver that decodes with
//! the official OTLP protobuf schema.
//!
//! rotel-agent comes from PyPI (`make test` installs it into .venv); `ROTEL_AGENT` names the
//! binary, else it is looked up in .venv.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{counter, rotel, rotel_at, stderr_of};
use lambda_env::{
    EnvConfig, FUNCTION_USER_AGENT, InvokeStatus, LogRecordView, MIXED_LOG_LEVELS,
    MIXED_TEXT_LINES, Report, Sink, SinkMode, SpanRecord, Traceparent,
};

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

/// Token spans are HTTP server spans named `{method} /token`.
fn is_token_span(span: &SpanRecord) -> bool {
    span.name.ends_with(" /token")
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
                    && v.spans.iter().filter(|s| is_token_span(s)).count() >= invokes * tokens
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
    let token_spans: Vec<&SpanRecord> = spans.iter().filter(|s| is_token_span(s)).collect();
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

/// The semantic-convention attributes, as a backend receives them through a collector,
/// for a function invoked through an alias (`live`) of its published version 7: the
/// resource id names the version, not the alias.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantic_conventions_reach_the_collector() {
    use lambda_env::env::{ACCOUNT_ID, REGION};
    let sink = Sink::start().await.unwrap();
    let rotel = rotel(&sink).await;
    let (invokes, tokens) = (2, 2);
    let mut config = environment(
        invokes,
        tokens,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", rotel.http),
            ),
            ("SIDECAR_FAAS_TRIGGER", "http".to_string()),
        ],
    );
    config.function_version = "7".to_string();
    config.invoked_qualifier = Some("live".to_string());
    let report = lambda_env::run(config).await.unwrap();
    assert_healthy_run(&report, tokens);
    let delivered = sink
        .wait_for(
            |v| {
                unique_traces(v.spans, FUNCTION).len() == invokes
                    && v.spans.iter().filter(|s| is_token_span(s)).count() == invokes * tokens
            },
            Duration::from_secs(10),
        )
        .await;
    let spans = sink.spans();
    assert!(delivered, "{spans:?}\n{}", stderr_of(&report));

    let function_arn = format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{FUNCTION}");
    // The account and the resource id are on the resource (issue 21), from the account id
    // register answers with: metrics (and logs) carry them, not only the invocation span.
    let resource_id = format!("{function_arn}:7");
    let metrics = sink.metrics();
    assert!(!metrics.is_empty());
    for resource in spans
        .iter()
        .map(|s| &s.resource)
        .chain(metrics.iter().map(|m| &m.resource))
    {
        assert_eq!(resource["cloud.account.id"], ACCOUNT_ID, "{resource:?}");
        assert_eq!(resource["cloud.resource_id"], resource_id.as_str());
    }
    let invocations = invocation_spans(&spans);
    assert_eq!(invocations.len(), invokes);
    for (i, span) in invocations.iter().enumerate() {
        let attributes = &span.attributes;
        assert_eq!(attributes["faas.trigger"], "http", "{attributes:?}");
        assert_eq!(attributes["cloud.account.id"], ACCOUNT_ID);
        assert_eq!(
            attributes["cloud.resource_id"],
            format!("{function_arn}:7").as_str()
        );
        assert_eq!(
            attributes["aws.lambda.invoked_arn"],
            format!("{function_arn}:live").as_str()
        );
        let log_groups = serde_json::json!([format!("/aws/lambda/{FUNCTION}")]);
        assert_eq!(attributes["aws.log.group.names"], log_groups);
        assert_eq!(span.resource["aws.log.group.names"], log_groups);
        assert_eq!(attributes["faas.version"], "7");
        assert_eq!(attributes["cloud.provider"], "aws");
        assert_eq!(attributes["cloud.platform"], "aws_lambda");
        assert_eq!(attributes["cloud.region"], REGION);
        let first = report.invokes[0].request_id.as_str();
        assert_eq!(
            attributes["faas.coldstart"],
            attributes["faas.invocation_id"] == first,
            "on-demand: only the first invocation is cold (span {i})"
        );
    }

    // lambda-env's function alternates GET and POST /token.
    let token_spans: Vec<&SpanRecord> = spans.iter().filter(|s| is_token_span(s)).collect();
    let mut names: Vec<&str> = token_spans.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["GET /token", "GET /token", "POST /token", "POST /token"]
    );
    for span in token_spans {
        let attributes = &span.attributes;
        let method = span.name.split(' ').next().unwrap();
        assert_eq!(span.kind, 2, "server kind");
        assert_eq!(attributes["http.request.method"], method, "{attributes:?}");
        assert_eq!(attributes["http.route"], "/token");
        assert_eq!(attributes["url.path"], "/token");
        assert_eq!(attributes["url.scheme"], "http");
        assert_eq!(attributes["http.response.status_code"], 200);
        // The HTTP server span's recommended attributes (issue 21): from the Host header
        // the function sent, its peer, the HTTP version and its User-Agent.
        assert_eq!(attributes["server.address"], "127.0.0.1", "{attributes:?}");
        assert!(attributes["server.port"].as_i64().is_some_and(|p| p > 0));
        assert_eq!(attributes["client.address"], "127.0.0.1");
        assert_eq!(attributes["network.protocol.version"], "1.1");
        assert_eq!(attributes["user_agent.original"], FUNCTION_USER_AGENT);
        assert_eq!(span.status_code, 0, "a 200 leaves the status unset");
        assert!(!attributes.contains_key("faas.trigger"));
    }
    drop(rotel);
}

/// gRPC export is the opt-in `grpc` build: `cargo test --features grpc`.
#[cfg(feature = "grpc")]
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

/// A collector that accepts connections and never answers, and a flush cap
/// (`SIDECAR_FLUSH_TIMEOUT_MS`, 5 s) longer than the function's timeout (1 s): every INVOKE
/// flush waits until its budget runs out, and that budget must end before the deadline, or
/// Lambda times the invocation out (the sidecar is not back in event/next). Before the clamp,
/// the flush ran to the deadline itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_cap_past_the_timeout_never_times_an_invocation_out() {
    const TIMEOUT_MS: u64 = 1_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts, keeps every connection open, reads nothing and answers nothing.
    let collector = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut config = environment(
        4,
        1,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
            ("SIDECAR_FLUSH_TIMEOUT_MS", "5000".to_string()),
        ],
    );
    config.function_timeout_ms = TIMEOUT_MS;
    let report = lambda_env::run(config).await.unwrap();
    collector.abort();
    let log = stderr_of(&report);
    common::assert_clean_exit(&report);
    assert_eq!(report.invokes.len(), 4);
    let holds: Vec<f64> = report.invokes.iter().map(|i| i.hold_ms).collect();
    eprintln!("holds with a 5 s cap under a 1 s timeout: {holds:?} ms");
    for invoke in &report.invokes {
        assert!(
            invoke.extensions_returned,
            "{} timed out: the sidecar was not back in event/next by the deadline \
             (held {} ms after a {} ms function)\n{log}",
            invoke.request_id, invoke.hold_ms, invoke.function_ms
        );
        assert_eq!(invoke.status, InvokeStatus::Success, "{invoke:?}\n{log}");
        assert!(
            invoke.function_ms + invoke.hold_ms < TIMEOUT_MS as f64,
            "{invoke:?}\n{log}"
        );
    }
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

/// Issue 21: a fresh setup with mistakes in `SIDECAR_*`, `JWT_*` and `OTEL_*` alike hears of
/// all of them in the one `init/error` (its type the first one's), each naming the variable
/// the user set: the general OTLP endpoint without a scheme, not the traces one it was
/// read for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_config_error_reaches_init_error_at_once() {
    let mut config = environment(1, 0, &[]);
    config.env.extend(
        [
            ("JWT_TTL_SECONDS", "forever"),
            ("SIDECAR_PROT", "4000"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let report = lambda_env::run(config).await.unwrap();
    let error = report.init.error.as_ref().expect("init must fail");
    let message = error.body["errorMessage"].as_str().unwrap_or_default();
    assert!(message.starts_with("4 configuration errors: "), "{message}");
    for named in [
        "SIDECAR_PROT",
        "did you mean SIDECAR_PORT?",
        "JWT_TTL_SECONDS",
        "OTEL_EXPORTER_OTLP_ENDPOINT=\"collector:4318\"",
        "OTEL_TRACES_SAMPLER",
    ] {
        assert!(message.contains(named), "{named} missing: {message}");
    }
    assert!(
        !message.contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        "{message}"
    );
    assert!(!message.contains("super_secret"), "{message}");
    assert_eq!(error.error_type, "Config.UnknownVariable");
    assert_eq!(error.exit_code, Some(1));
}

/// Issue 21: `serve` checks the `OTEL_*` variables as the extension does (an endpoint it
/// would refuse stops `serve`, exit 2, naming it), and says which valid ones it ignores; a
/// `JWT_*` near miss is a warning.
#[test]
fn serve_checks_otel_variables_and_names_those_it_ignores() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};
    let serve = |extra: &[(&str, &str)]| {
        let mut command = Command::new(common::sidecar_bin());
        command
            .arg("serve")
            .env_clear()
            .env("JWT_SECRET", common::random_hex(36))
            .env("AWS_SESSION_TOKEN", common::random_hex(16))
            .env("SIDECAR_PORT", lambda_env::free_port().unwrap().to_string())
            .env("SIDECAR_LOG_FORMAT", "text")
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };
    let refused = serve(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "htp://collector:4318")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT=\"htp://collector:4318\""),
        "{stderr}"
    );

    let mut child = serve(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_SERVICE_NAME", "orders"),
        ("JWT_AUDIENCES", "orders-api"),
    ])
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        let serving = line.contains("serving tokens");
        seen.push(line);
        if serving {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let log = seen.join("\n");
    assert!(
        log.contains("did you mean JWT_AUDIENCE?"),
        "no near-miss warning:\n{log}"
    );
    assert!(
        seen.iter().any(|l| l.contains("ignored")
            && l.contains("OTEL_EXPORTER_OTLP_ENDPOINT")
            && l.contains("OTEL_SERVICE_NAME")),
        "no warning naming the ignored OTEL_* variables:\n{log}"
    );
}

/// A malformed `OTEL_EXPORTER_OTLP_HEADERS` (the audit's `Authorization Bearer X`, a space
/// where the `=` goes) stops init with `init/error`, naming the variable and the form it
/// takes, and without its value anywhere. Before, the sidecar started and sent no header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_otlp_headers_value_reaches_init_error() {
    const TOKEN: &str = "k7Qm2vXp9LrT4sWz8YbN";
    let sink = Sink::start().await.unwrap();
    for var in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    ] {
        let config = environment(
            1,
            0,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
                (var, format!("Authorization Bearer {TOKEN}")),
            ],
        );
        let report = lambda_env::run(config).await.unwrap();
        let log = stderr_of(&report);
        let error = report
            .init
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{var}: init must fail\n{log}"));
        assert_eq!(error.error_type, "Config.InvalidValue", "{log}");
        let message = error.body["errorMessage"].as_str().unwrap_or_default();
        assert!(message.contains(var), "{message}");
        assert!(message.contains("key=value"), "{message}");
        assert_eq!(error.exit_code, Some(1));
        assert!(report.invokes.is_empty());
        let stdout = report
            .stdout_path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        for (what, text) in [
            ("init/error", error.body.to_string()),
            ("stderr", log.clone()),
            ("stdout", stdout),
        ] {
            assert!(!text.contains(TOKEN), "{var}'s value in {what}: {text}");
        }
    }
}

/// What config accepts in `OTEL_EXPORTER_OTLP_HEADERS` is what reaches the collector, as
/// opentelemetry-otlp reads it again: percent-decoded, trimmed, names lowercased, and a
/// per-signal variable replacing the general one for its signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_headers_reach_the_collector_as_config_reads_them() {
    use std::sync::{Arc, Mutex};
    type Seen = Arc<Mutex<Vec<(String, axum::http::HeaderMap)>>>;
    let seen: Seen = Arc::default();
    let record = {
        let seen = seen.clone();
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap| async move {
            seen.lock().unwrap().push((uri.path().to_string(), headers));
            (
                [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                Vec::<u8>::new(),
            )
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback(record))
            .await
            .unwrap();
    });
    let config = environment(
        2,
        1,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                " Authorization = Bearer%20tok== , X-Tenant=a%2Cb%25c,".to_string(),
            ),
            (
                "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                "x-metrics=only".to_string(),
            ),
        ],
    );
    let report = lambda_env::run(config).await.unwrap();
    assert_healthy_run(&report, 1);
    collector.abort();
    let seen = seen.lock().unwrap().clone();
    let with = |path: &str| {
        seen.iter()
            .find(|(p, _)| p == path)
            .map(|(_, h)| h.clone())
            .unwrap_or_else(|| panic!("nothing on {path}: {seen:?}"))
    };
    let value = |headers: &axum::http::HeaderMap, name: &str| {
        headers.get(name).map(|v| v.to_str().unwrap().to_string())
    };
    let traces = with("/v1/traces");
    assert_eq!(
        value(&traces, "authorization").as_deref(),
        Some("Bearer tok==")
    );
    assert_eq!(value(&traces, "x-tenant").as_deref(), Some("a,b%c"));
    let metrics = with("/v1/metrics");
    assert_eq!(value(&metrics, "x-metrics").as_deref(), Some("only"));
    assert_eq!(value(&metrics, "authorization"), None, "not merged");
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

/// Log records per invocation with `EnvConfig::mixed_logs`: one JSON line per level, and the
/// text lines.
const LINES_PER_INVOKE: usize = MIXED_LOG_LEVELS.len() + MIXED_TEXT_LINES;

/// `invokes` invocations whose function logs the mixed lines, exporting to `endpoint`.
fn logging_environment(invokes: usize, endpoint: String, extra: &[(&str, String)]) -> EnvConfig {
    let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)];
    env.extend_from_slice(extra);
    EnvConfig {
        mixed_logs: true,
        ..environment(invokes, 0, &env)
    }
}

fn invocation_id(log: &LogRecordView) -> &str {
    log.attributes["faas.invocation_id"]
        .as_str()
        .unwrap_or_default()
}

/// Each invocation's lines arrived once each, in its trace, with the invocation span as
/// their span and its sampled flag (an unsampled invocation exports no span: its lines keep
/// its X-Ray trace id with the flag off), and the severity and body the function wrote: the
/// severity text as written (`CRITICAL`, not FATAL's name), beside the number.
fn assert_lines_of_each_invocation(report: &Report, logs: &[LogRecordView], spans: &[SpanRecord]) {
    for (i, invoke) in report.invokes.iter().enumerate() {
        let mine: Vec<&LogRecordView> = logs
            .iter()
            .filter(|l| invocation_id(l) == invoke.request_id)
            .collect();
        let sampled = !invoke.xray_value.contains("Sampled=0");
        let span = invocation_spans(spans)
            .into_iter()
            .find(|s| s.trace_id == invoke.trace_id);
        assert_eq!(span.is_some(), sampled, "invoke {i}: {}", invoke.xray_value);
        for log in &mine {
            assert_eq!(log.trace_id, invoke.trace_id, "{log:?}");
            assert_eq!(log.span_id.len(), 16, "{log:?}");
            if let Some(span) = span {
                assert_eq!(log.span_id, span.span_id, "{log:?}");
                assert!(log.time_unix_nanos >= span.start_unix_nanos, "{log:?}");
            }
            assert_eq!(log.flags & 1, u32::from(sampled), "sampled flag: {log:?}");
            assert_eq!(log.attributes["sidecar.log.source"], "function");
            assert_eq!(log.resource["service.name"], FUNCTION);
            assert_eq!(
                log.resource["cloud.account.id"],
                lambda_env::env::ACCOUNT_ID,
                "{log:?}"
            );
        }
        let mut got: Vec<(i32, String, serde_json::Value)> = mine
            .iter()
            .map(|l| (l.severity_number, l.severity_text.clone(), l.body.clone()))
            .collect();
        got.sort_by_key(|(number, _, body)| (*number, body.to_string()));
        let mut want: Vec<(i32, String, serde_json::Value)> = (0..MIXED_TEXT_LINES)
            .map(|k| {
                (
                    0,
                    String::new(),
                    format!("text line {k} of invoke {i}").into(),
                )
            })
            .collect();
        for (k, (level, number)) in MIXED_LOG_LEVELS.iter().zip([9, 13, 21]).enumerate() {
            let body = mine
                .iter()
                .find(|l| l.severity_number == number)
                .map(|l| l.body.clone())
                .unwrap_or_default();
            assert_eq!(
                body["message"],
                format!("json line {k} of invoke {i}"),
                "{body}"
            );
            assert_eq!(body["requestId"], invoke.request_id.as_str());
            assert_eq!(body["level"], *level);
            want.push((number, level.to_string(), body));
        }
        want.sort_by_key(|(number, _, body)| (*number, body.to_string()));
        assert_eq!(got, want, "invoke {i}");
    }
}

/// N invocations that each log 3 JSON lines and 2 text lines arrive, through a real
/// collector, as exactly 5N log records, each joined to its invocation's trace, the
/// unsampled one's too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_logs_arrive_in_their_invocations_trace() {
    let sink = Sink::start().await.unwrap();
    let rotel = rotel(&sink).await;
    let invokes = 4;
    let mut config = logging_environment(invokes, format!("http://127.0.0.1:{}", rotel.http), &[]);
    // X-Ray did not record invoke 2: no span, but its lines still arrive.
    config.unsampled_invokes = vec![2];
    let report = lambda_env::run(config).await.unwrap();
    assert_healthy_run(&report, 0);
    let all = invokes * LINES_PER_INVOKE;
    let delivered = sink
        .wait_for(
            |v| v.logs.len() >= all && unique_traces(v.spans, FUNCTION).len() == invokes - 1,
            Duration::from_secs(10),
        )
        .await;
    let logs = sink.logs();
    assert!(
        delivered,
        "{} of {all} log records\n{}",
        logs.len(),
        stderr_of(&report)
    );
    assert_eq!(logs.len(), all, "exactly one record per line: {logs:#?}");
    assert_lines_of_each_invocation(&report, &logs, &sink.spans());
    drop(rotel);
}

/// The collector goes away while the function logs, and comes back on the same port: every
/// line arrives (the buffer's bound is far from reached, and nothing was dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_is_lost_to_a_collector_outage() {
    let sink = Sink::start().await.unwrap();
    let rotel = rotel(&sink).await;
    let (grpc, http) = (rotel.grpc, rotel.http);
    drop(rotel);
    let invokes = 8;
    let config = logging_environment(invokes, format!("http://127.0.0.1:{http}"), &[]);
    let run = tokio::spawn(lambda_env::run(config));
    // Let a few flushes fail, then bring the collector back while invocations go on.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let rotel = rotel_at(&sink, grpc, http).await;
    let report = run.await.unwrap().unwrap();
    assert_healthy_run(&report, 0);
    let all = invokes * LINES_PER_INVOKE;
    let unique = |logs: &[LogRecordView]| {
        logs.iter()
            .map(|l| (invocation_id(l).to_owned(), l.body.to_string()))
            .collect::<HashSet<_>>()
            .len()
    };
    // The failures' count may come only with the SHUTDOWN flush's metrics (the metrics queue
    // backs off after failed flushes): wait for it too.
    let delivered = sink
        .wait_for(
            |v| {
                unique(v.logs) == all
                    && unique_traces(v.spans, FUNCTION).len() == invokes
                    && counter(v.metrics, "sidecar.export.failures") >= 1.0
            },
            Duration::from_secs(10),
        )
        .await;
    let logs = sink.logs();
    assert!(
        delivered,
        "{} of {all} lines delivered\n{}",
        unique(&logs),
        stderr_of(&report)
    );
    // At-least-once: a batch cut by the cap may come twice, never less than once.
    let mut once: Vec<LogRecordView> = Vec::new();
    for log in logs {
        if !once
            .iter()
            .any(|l| invocation_id(l) == invocation_id(&log) && l.body == log.body)
        {
            once.push(log);
        }
    }
    assert_lines_of_each_invocation(&report, &once, &sink.spans());
    assert!(
        counter(&sink.metrics(), "sidecar.export.failures") >= 1.0,
        "the outage was not seen\n{}",
        stderr_of(&report)
    );
    let dropped: f64 = sink
        .metrics()
        .iter()
        .filter(|m| m.name == "sidecar.export.dropped_items" && m.attributes["signal"] == "logs")
        .filter_map(|m| m.value)
        .fold(0.0, f64::max);
    assert_eq!(dropped, 0.0, "nothing dropped within the bound");
    drop(rotel);
}

/// The sidecar's own lines come back from Lambda as `extension` records; with every stream
/// subscribed and debug logging (a line per flush and per telemetry POST), none is
/// forwarded, so a flush never makes records that make more records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecars_own_lines_are_not_fed_back() {
    let sink = Sink::start().await.unwrap();
    let invokes = 5;
    let report = lambda_env::run(logging_environment(
        invokes,
        sink.endpoint(),
        &[
            (
                "SIDECAR_TELEMETRY_TYPES",
                "platform,function,extension".to_string(),
            ),
            ("SIDECAR_LOG", "debug".to_string()),
        ],
    ))
    .await
    .unwrap();
    assert_healthy_run(&report, 0);
    let types = &report.subscriptions[0]["types"];
    assert_eq!(
        types,
        &serde_json::json!(["platform", "function", "extension"])
    );
    // It did write lines, which lambda-env delivered back as `extension` records.
    let own_lines = stderr_of(&report).lines().count();
    assert!(own_lines >= invokes, "{own_lines} lines written");
    let all = invokes * LINES_PER_INVOKE;
    let delivered = sink
        .wait_for(|v| v.logs.len() >= all, Duration::from_secs(10))
        .await;
    let logs = sink.logs();
    assert!(delivered, "{} of {all} records", logs.len());
    let fed_back: Vec<&LogRecordView> = logs
        .iter()
        .filter(|l| l.attributes["sidecar.log.source"] != "function")
        .collect();
    assert!(
        fed_back.is_empty(),
        "{} of the sidecar's {own_lines} lines came back as records: {fed_back:#?}",
        fed_back.len()
    );
    assert_eq!(logs.len(), all);
}

/// `function`/`extension` are subscribed only when logs are exported: not with
/// `OTEL_LOGS_EXPORTER=none`, nor without a collector, even when configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_streams_are_not_subscribed_when_logs_are_off() {
    let sink = Sink::start().await.unwrap();
    let every_type = (
        "SIDECAR_TELEMETRY_TYPES",
        "platform,function,extension".to_string(),
    );
    for (case, extra) in [
        (
            "OTEL_LOGS_EXPORTER=none",
            vec![
                every_type.clone(),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
                ("OTEL_LOGS_EXPORTER", "none".to_string()),
            ],
        ),
        ("no collector", vec![every_type.clone()]),
        (
            "logs on",
            vec![
                every_type.clone(),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
            ],
        ),
    ] {
        let mut config = environment(1, 0, &extra);
        config.mixed_logs = true;
        let report = lambda_env::run(config).await.unwrap();
        common::assert_clean_exit(&report);
        assert_eq!(report.subscriptions.len(), 1, "{case}");
        let want = if case == "logs on" {
            serde_json::json!(["platform", "function", "extension"])
        } else {
            serde_json::json!(["platform"])
        };
        assert_eq!(report.subscriptions[0]["types"], want, "{case}");
    }
    // Only the run with logs on exported any.
    assert!(
        sink.wait_for(|v| v.logs.len() == LINES_PER_INVOKE, Duration::from_secs(5))
            .await,
        "{:?}",
        sink.logs()
    );
}
