//! `SIDECAR_FLUSH_STRATEGY` end to end: the real binary in lambda-env (freezing between
//! invocations, the Telemetry API delivering with the buffering the sidecar asked for),
//! exporting through rotel to lambda-env's OTLP receiver. For each strategy, the test prints
//! when each invocation's span reached the receiver, relative to the moment its environment
//! froze, and checks where that falls: before the next invocation (flushed at its end), or
//! only once the next INVOKE (or SHUTDOWN) thawed the sidecar; and that no span, token span
//! or invocation count is lost or sent twice, at a freeze or at SHUTDOWN.
//!
//! Timing budgets (how fresh, how long a hold) live in `make bench`; these runs only check
//! on which side of a freeze each invocation's data left.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{counter, rotel, stderr_of};
use lambda_env::{InvokeReport, InvokeStatus, Report, Sink, SpanRecord};

const FUNCTION: &str = "flush-orders";
const TOKENS: usize = 1;

/// Where each invocation's span must have arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// While the environment was frozen after it, or before: sent at its end.
    AtEnd,
    /// Only once the next INVOKE (or SHUTDOWN, for the last) thawed the sidecar.
    Later,
}

/// Runs `invokes` invocations `gap_ms` apart (frozen in between) with `env`, and returns the
/// run's report and each invocation's span receipt, in ms after its freeze.
async fn run(invokes: usize, gap_ms: u64, env: &[(&str, &str)]) -> (Report, Vec<f64>) {
    let sink = Sink::start().await.unwrap();
    let rotel = rotel(&sink).await;
    let mut vars = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", rotel.http),
        ),
        ("SIDECAR_LOG", "info".to_string()),
    ];
    vars.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    let mut config = common::environment(FUNCTION, invokes, TOKENS, &vars);
    config.gap_ms = gap_ms;
    let report = lambda_env::run(config).await.unwrap();
    common::assert_clean_exit(&report);
    let log = stderr_of(&report);
    for invoke in &report.invokes {
        assert_eq!(invoke.status, InvokeStatus::Success, "{invoke:?}\n{log}");
    }
    let delivered = sink
        .wait_for(
            |v| {
                invocation_spans(v.spans).len() >= invokes
                    && v.spans.iter().filter(|s| is_token_span(s)).count() >= invokes * TOKENS
                    && counter(v.metrics, "faas.invocations") >= invokes as f64
            },
            Duration::from_secs(10),
        )
        .await;
    let spans = sink.spans();
    assert!(delivered, "not everything arrived: {spans:#?}\n{log}");
    // Nothing twice: one span per invocation and per token request, counts that add up.
    let invocations = invocation_spans(&spans);
    assert_eq!(invocations.len(), invokes, "{log}");
    let tokens = spans.iter().filter(|s| is_token_span(s)).count();
    assert_eq!(tokens, invokes * TOKENS, "{log}");
    let metrics = sink.metrics();
    assert_eq!(counter(&metrics, "faas.invocations"), invokes as f64);
    assert_eq!(
        counter(&metrics, "sidecar.token.requests"),
        (invokes * TOKENS) as f64
    );
    drop(rotel);
    let by_request: HashMap<&str, &SpanRecord> = invocations
        .iter()
        .map(|s| (s.attributes["faas.invocation_id"].as_str().unwrap(), *s))
        .collect();
    let after_freeze = report
        .invokes
        .iter()
        .map(|invoke| {
            let span = by_request[invoke.request_id.as_str()];
            span.received_unix_nanos as f64 / 1e6 - invoke.frozen_unix_ms
        })
        .collect();
    (report, after_freeze)
}

fn invocation_spans(spans: &[SpanRecord]) -> Vec<&SpanRecord> {
    spans.iter().filter(|s| s.name == FUNCTION).collect()
}

fn is_token_span(span: &SpanRecord) -> bool {
    span.name.ends_with(" /token")
}

/// When the invocation after `i` started, in ms after `i`'s freeze (the gap as it really
/// was); for the last, when SHUTDOWN came (the environment's end).
fn next_start_after_freeze(invokes: &[InvokeReport], i: usize) -> Option<f64> {
    invokes
        .get(i + 1)
        .map(|next| next.started_unix_ms - invokes[i].frozen_unix_ms)
}

/// Prints the receipts and checks each against `expect(i)`.
fn check(strategy: &str, report: &Report, after_freeze: &[f64], expect: impl Fn(usize) -> Expect) {
    let rows: Vec<String> = after_freeze
        .iter()
        .enumerate()
        .map(|(i, ms)| {
            format!(
                "  invocation {i}: hold {:.1} ms, span received {ms:+.1} ms after its freeze{}",
                report.invokes[i].hold_ms,
                next_start_after_freeze(&report.invokes, i)
                    .map(|n| format!(" (next invocation {n:+.1} ms)"))
                    .unwrap_or_else(|| " (the last: SHUTDOWN next)".to_string())
            )
        })
        .collect();
    eprintln!("{strategy}:\n{}", rows.join("\n"));
    for (i, ms) in after_freeze.iter().enumerate() {
        match (expect(i), next_start_after_freeze(&report.invokes, i)) {
            // Sent before the freeze; rotel forwards it while the sandbox is frozen.
            (Expect::AtEnd, next) => assert!(
                next.is_none_or(|next| *ms < next),
                "{strategy}: invocation {i}'s span waited for the next invocation\n{}\n{}",
                rows.join("\n"),
                stderr_of(report)
            ),
            (Expect::Later, Some(next)) => assert!(
                *ms >= next,
                "{strategy}: invocation {i}'s span left before the next INVOKE\n{}",
                rows.join("\n")
            ),
            (Expect::Later, None) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_sends_each_invocation_at_the_next_invoke() {
    let (report, after) = run(4, 400, &[("SIDECAR_FLUSH_STRATEGY", "invoke")]).await;
    check("invoke", &report, &after, |_| Expect::Later);
    // The subscription keeps the configured buffering (25 ms by default).
    assert_eq!(report.subscriptions[0]["buffering"]["timeoutMs"], 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_sends_each_invocation_before_its_freeze() {
    let (report, after) = run(
        4,
        400,
        &[
            ("SIDECAR_FLUSH_STRATEGY", "end"),
            // Whatever this says, an end flush asks for Lambda's shortest buffering.
            ("SIDECAR_TELEMETRY_BUFFER_MS", "1000"),
        ],
    )
    .await;
    check("end", &report, &after, |_| Expect::AtEnd);
    assert_eq!(report.subscriptions[0]["buffering"]["timeoutMs"], 25);
    // The hold is the wait for runtimeDone: the sidecar was back in event/next only after
    // the runtime had finished.
    for invoke in &report.invokes {
        assert!(invoke.hold_ms > 0.0, "{invoke:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_keeps_everything_until_the_interval_has_passed() {
    let (report, after) = run(
        5,
        300,
        &[
            ("SIDECAR_FLUSH_STRATEGY", "periodic"),
            ("SIDECAR_FLUSH_INTERVAL_MS", "60000"),
        ],
    )
    .await;
    // The first INVOKE flushes (nothing yet); the next are within the minute: everything
    // waits for SHUTDOWN.
    check("periodic", &report, &after, |_| Expect::Later);
    let last = report.invokes.len() - 1;
    for (i, ms) in after.iter().enumerate() {
        let shutdown = report.invokes[last].frozen_unix_ms - report.invokes[i].frozen_unix_ms;
        assert!(
            *ms >= shutdown,
            "periodic: invocation {i} left before SHUTDOWN: {after:?}"
        );
    }
}

/// Quiet (gaps longer than the max age): at the end, as `end`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_sends_rare_invocations_at_their_end() {
    let (report, after) = run(
        4,
        400,
        &[
            ("SIDECAR_FLUSH_STRATEGY", "adaptive"),
            ("SIDECAR_FLUSH_MAX_AGE_MS", "200"),
        ],
    )
    .await;
    check("adaptive, rare", &report, &after, |_| Expect::AtEnd);
    assert_eq!(report.subscriptions[0]["buffering"]["timeoutMs"], 25);
}

/// Busy (gaps shorter than the max age, the default strategy): the first invocation, with no
/// gap known yet, at its end; every later one at the next INVOKE, holding nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_sends_frequent_invocations_at_the_next_invoke() {
    let (report, after) = run(5, 300, &[("SIDECAR_FLUSH_MAX_AGE_MS", "1000")]).await;
    check("adaptive, frequent", &report, &after, |i| {
        if i == 0 { Expect::AtEnd } else { Expect::Later }
    });
}

/// An invocation that runs into its timeout sends its `runtimeDone` only at the deadline: the
/// end flush gives up waiting well before it (deadline less the margin and the flush's
/// budget), flushes what it has, counts the miss, and is back in `event/next` before the
/// deadline; that invocation's span goes with a later flush, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_gives_up_waiting_before_the_deadline_and_counts_it() {
    let sink = Sink::start().await.unwrap();
    let invokes = 3;
    let vars = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
        ("SIDECAR_FLUSH_STRATEGY", "end".to_string()),
        ("SIDECAR_FLUSH_TIMEOUT_MS", "300".to_string()),
    ];
    let mut config = common::environment(FUNCTION, invokes, 0, &vars);
    config.function_timeout_ms = 1_000;
    config.timeout_invokes = vec![1];
    let report = lambda_env::run(config).await.unwrap();
    common::assert_clean_exit(&report);
    let log = stderr_of(&report);
    let statuses: Vec<InvokeStatus> = report.invokes.iter().map(|i| i.status).collect();
    assert_eq!(
        statuses,
        [
            InvokeStatus::Success,
            InvokeStatus::Timeout,
            InvokeStatus::Success
        ],
        "{log}"
    );
    // 1,000 ms left, a margin of 200 ms and a 300 ms flush: the wait ends 500 ms in.
    let timed_out = &report.invokes[1];
    assert!(timed_out.extensions_returned, "{timed_out:?}\n{log}");
    let delivered = sink
        .wait_for(
            |v| {
                invocation_spans(v.spans).len() >= invokes
                    && counter(v.metrics, "sidecar.flush.end_missed") >= 1.0
            },
            Duration::from_secs(10),
        )
        .await;
    let spans = sink.spans();
    assert!(delivered, "{:?}\n{log}", invocation_spans(&spans));
    assert_eq!(invocation_spans(&spans).len(), invokes, "each once");
    assert_eq!(counter(&sink.metrics(), "sidecar.flush.end_missed"), 1.0);
    assert!(
        log.contains("platform.runtimeDone did not come in time"),
        "{log}"
    );
}
