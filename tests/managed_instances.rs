//! Lambda Managed Instances, end to end: the real binary in lambda-env's Managed Instances
//! mode (SHUTDOWN-only registration, 4 runtime workers running invocations at once, no
//! freeze, schema 2025-01-29), exporting through a real collector (rotel) where the tests
//! look for it. With no INVOKE to flush at, everything rides on the periodic flush
//! (`SIDECAR_FLUSH_INTERVAL_MS`) and on SHUTDOWN.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    Moto, assert_clean_exit, assert_rss_growth, count_until, counter, random_hex, rotel, stderr_of,
};
use lambda_env::{EnvConfig, InvokeStatus, Sink, SpanRecord, Traceparent};

const FUNCTION: &str = "mi-orders";
const WORKERS: usize = 4;
/// The flush interval the tests configure: the default.
const INTERVAL: Duration = Duration::from_secs(1);

/// The sidecar on Managed Instances with [`WORKERS`] workers and `extra` variables on top:
/// `invokes` invocations that fetch `tokens` tokens each, dispatched as workers free up.
fn managed(invokes: usize, tokens: usize, extra: &[(&str, String)]) -> EnvConfig {
    let mut env = vec![
        (
            "SIDECAR_FLUSH_INTERVAL_MS",
            INTERVAL.as_millis().to_string(),
        ),
        ("SIDECAR_LOG", "info".to_string()),
    ];
    env.extend_from_slice(extra);
    EnvConfig {
        managed_instances: true,
        workers: WORKERS,
        gap_ms: 0,
        ..common::environment(FUNCTION, invokes, tokens, &env)
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Token spans are the sidecar's server spans other than the invocation's.
fn is_token(span: &SpanRecord) -> bool {
    span.kind == 2 && span.name != FUNCTION
}

/// 200 overlapping invocations on 4 workers, 2 token calls each, through rotel: every
/// invocation span arrives exactly once and within two flush intervals of its end (the
/// periodic flush, not SHUTDOWN, carries them), every token span exactly once and under the
/// invocation that asked for it, and the invocation counter keeps up within two intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_invocations_arrive_once_within_two_flush_intervals() {
    const INVOKES: usize = 200;
    const TOKENS: usize = 2;
    let sink = Sink::start().await.unwrap();
    let rotel = rotel(&sink).await;
    let mut cfg = managed(
        INVOKES,
        TOKENS,
        &[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", rotel.http),
        )],
    );
    // Long enough that the run spans several flush intervals.
    cfg.function_ms = 40;
    // No traceparent: the request id alone names the invocation (with one in the
    // invocation's trace, the caller's own span would be the parent).
    cfg.traceparent = Traceparent::None;
    let first_seen = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<String, u64>::new()));
    let counts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, f64)>::new()));
    let poller = {
        let (store, first_seen, counts) =
            (sink.store().clone(), first_seen.clone(), counts.clone());
        tokio::spawn(async move {
            loop {
                let now = unix_nanos(SystemTime::now());
                for span in store.spans().iter().filter(|s| s.name == FUNCTION) {
                    if let Some(id) = span.attributes["faas.invocation_id"].as_str() {
                        first_seen
                            .lock()
                            .unwrap()
                            .entry(id.to_string())
                            .or_insert(now);
                    }
                }
                let count = counter(&store.metrics(), "faas.invocations");
                counts.lock().unwrap().push((now, count));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let report = lambda_env::run(cfg).await.unwrap();
    assert_clean_exit(&report);
    let log = stderr_of(&report);
    assert_eq!(report.registrations[0].events, ["SHUTDOWN"], "{log}");
    assert_eq!(report.subscriptions[0]["schemaVersion"], "2025-01-29");
    assert_eq!(report.invokes.len(), INVOKES);
    for invoke in &report.invokes {
        assert_eq!(invoke.status, InvokeStatus::Success, "{invoke:?}\n{log}");
        assert_eq!(invoke.tokens.len(), TOKENS);
        for call in &invoke.tokens {
            assert_eq!(call.http_status, Some(200), "{call:?}\n{log}");
        }
    }
    let delivered = sink
        .wait_for(
            |v| {
                v.spans.iter().filter(|s| s.name == FUNCTION).count() >= INVOKES
                    && v.spans.iter().filter(|s| is_token(s)).count() >= INVOKES * TOKENS
                    && counter(v.metrics, "faas.invocations") >= INVOKES as f64
            },
            Duration::from_secs(10),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    poller.abort();
    let spans = sink.spans();
    assert!(
        delivered,
        "not everything arrived: {} spans\n{log}",
        spans.len()
    );

    // Exactly once: one invocation span per request id, INVOKES * TOKENS distinct token
    // spans.
    let invocation_spans: Vec<&SpanRecord> = spans.iter().filter(|s| s.name == FUNCTION).collect();
    assert_eq!(invocation_spans.len(), INVOKES, "duplicates or strays");
    let by_id: HashMap<&str, &SpanRecord> = invocation_spans
        .iter()
        .map(|s| (s.attributes["faas.invocation_id"].as_str().unwrap(), *s))
        .collect();
    assert_eq!(by_id.len(), INVOKES);
    let tokens: Vec<&SpanRecord> = spans.iter().filter(|s| is_token(s)).collect();
    let token_ids: HashSet<&str> = tokens.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(tokens.len(), INVOKES * TOKENS, "token spans");
    assert_eq!(token_ids.len(), tokens.len(), "a token span arrived twice");
    // Each token span hangs from the invocation that asked for it: the function names it in
    // Lambda-Runtime-Aws-Request-Id, which decides on Managed Instances.
    let mut per_parent: HashMap<&str, usize> = HashMap::new();
    for token in &tokens {
        *per_parent.entry(token.parent_span_id.as_str()).or_default() += 1;
    }
    for token in &tokens {
        let parent = invocation_spans
            .iter()
            .find(|s| s.span_id == token.parent_span_id)
            .unwrap_or_else(|| panic!("token span outside any invocation: {token:?}"));
        assert_eq!(token.trace_id, parent.trace_id);
    }
    for invoke in &report.invokes {
        let span = by_id[invoke.request_id.as_str()];
        assert_eq!(
            span.trace_id, invoke.trace_id,
            "invocation in its X-Ray trace"
        );
        assert_eq!(
            per_parent.get(span.span_id.as_str()),
            Some(&TOKENS),
            "token spans under {}\n{log}",
            invoke.request_id
        );
    }
    // Within two flush intervals of its end (its platform.runtimeDone), from the sidecar
    // through rotel to the receiver, as seen by a 20 ms poll.
    let first_seen = first_seen.lock().unwrap().clone();
    let bound = 2 * INTERVAL.as_nanos() as u64;
    let mut delays: Vec<u64> = by_id
        .iter()
        .map(|(id, span)| {
            let seen = first_seen.get(*id).copied().unwrap_or(u64::MAX);
            seen.saturating_sub(span.end_unix_nanos)
        })
        .collect();
    delays.sort_unstable();
    let ms = |n: u64| n as f64 / 1e6;
    eprintln!(
        "end of invocation -> collector: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} invocations (interval {} ms)",
        ms(delays[delays.len() / 2]),
        ms(delays[delays.len() * 9 / 10]),
        ms(delays[delays.len() * 99 / 100]),
        ms(delays[delays.len() - 1]),
        delays.len(),
        INTERVAL.as_millis()
    );
    assert!(
        delays[delays.len() - 1] <= bound,
        "an invocation span took {:.0} ms to arrive, more than two intervals\n{log}",
        ms(delays[delays.len() - 1])
    );
    // The counter: at every reading, every invocation that ended two intervals earlier is
    // counted.
    let mut ends: Vec<u64> = by_id.values().map(|s| s.end_unix_nanos).collect();
    ends.sort_unstable();
    for (at, count) in counts.lock().unwrap().iter() {
        let due = ends.partition_point(|end| end + bound < *at);
        assert!(
            *count >= due as f64,
            "at {at}: faas.invocations = {count}, {due} invocations ended two intervals before"
        );
    }
}

/// 5,000 overlapping invocations: the sidecar's resident memory is flat (as the default
/// model's soak in tests/memory.rs measures it), and every invocation is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_over_five_thousand_overlapping_invocations() {
    const INVOKES: usize = 5_000;
    const EVERY: usize = 250;
    const WARM: usize = 1_000;
    let (traces, metrics) = (Sink::start().await.unwrap(), Sink::start().await.unwrap());
    let invocations = count_until(&metrics, "faas.invocations", INVOKES as f64);
    let mut cfg = managed(
        INVOKES,
        1,
        &[
            ("SIDECAR_LOG", "warn".to_string()),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                format!("{}/v1/traces", traces.endpoint()),
            ),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                format!("{}/v1/metrics", metrics.endpoint()),
            ),
        ],
    );
    cfg.function_ms = 1;
    cfg.rss_every = EVERY;
    let report = lambda_env::run(cfg).await.unwrap();
    let log = stderr_of(&report);
    assert_clean_exit(&report);
    assert_eq!(report.invokes.len(), INVOKES);
    for invoke in &report.invokes {
        assert_eq!(invoke.status, InvokeStatus::Success, "{invoke:?}\n{log}");
    }
    // Warm after 1,000: four workers' worth of concurrent state, the allocator's arenas and
    // the bounded maps (finished request ids, held token requests) fill up by then.
    assert_rss_growth(&report, WARM, 2, "managed instances soak");
    let counted = tokio::time::timeout(Duration::from_secs(20), invocations)
        .await
        .expect("faas.invocations reaches 5,000")
        .unwrap();
    assert_eq!(counted, INVOKES as f64);
}

/// SHUTDOWN while 4 invocations still run: the sidecar waits for their reports (bounded by
/// the deadline), exports them complete rather than cut off, and exits 0 before the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_invocations_in_flight_waits_for_them_and_exits_zero() {
    let sink = Sink::start().await.unwrap();
    let mut cfg = managed(
        WORKERS,
        0,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint())],
    );
    // Still running when SHUTDOWN comes; done well inside the sidecar's report wait.
    cfg.function_ms = 100;
    cfg.shutdown_in_flight = true;
    let report = lambda_env::run(cfg).await.unwrap();
    let log = stderr_of(&report);
    assert_clean_exit(&report);
    assert!(
        report
            .shutdown
            .exited_before_deadline_ms
            .is_some_and(|ms| ms > 0.0),
        "{:?}\n{log}",
        report.shutdown
    );
    assert_eq!(report.invokes.len(), WORKERS);
    let arrived = sink
        .wait_for(
            |v| v.spans.iter().filter(|s| s.name == FUNCTION).count() >= WORKERS,
            Duration::from_secs(5),
        )
        .await;
    let spans = sink.spans();
    assert!(arrived, "{} spans\n{log}", spans.len());
    for invoke in &report.invokes {
        let span = spans
            .iter()
            .find(|s| {
                s.name == FUNCTION
                    && s.attributes.get("faas.invocation_id")
                        == Some(&invoke.request_id.as_str().into())
            })
            .unwrap_or_else(|| panic!("no span for {}\n{log}", invoke.request_id));
        assert!(
            span.attributes.get("sidecar.incomplete").is_none(),
            "{} was cut off at SHUTDOWN instead of awaited: {span:?}\n{log}",
            invoke.request_id
        );
    }
}

/// SHUTDOWN arriving while a periodic flush waits on a collector that never answers in
/// time: even with the largest flush cap allowed, the sidecar exits 0 before the deadline.
/// (On Managed Instances SHUTDOWN can come in the middle of a flush; at an INVOKE it cannot.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_slow_periodic_flush_exits_zero_before_the_deadline() {
    let sink = Sink::start().await.unwrap();
    sink.set_mode(lambda_env::SinkMode::Slow(Duration::from_secs(10)));
    let mut cfg = managed(
        WORKERS,
        0,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
            ("SIDECAR_FLUSH_TIMEOUT_MS", "60000".to_string()),
            ("SIDECAR_FLUSH_INTERVAL_MS", "100".to_string()),
        ],
    );
    // SHUTDOWN comes while the first flushes wait on the collector.
    cfg.gap_ms = 150;
    let report = lambda_env::run(cfg).await.unwrap();
    assert_clean_exit(&report);
    assert!(
        report
            .shutdown
            .exited_before_deadline_ms
            .is_some_and(|ms| ms > 0.0),
        "{:?}\n{}",
        report.shutdown,
        stderr_of(&report)
    );
}

/// The `kid` in a token's JOSE header.
fn kid(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_string()
}

/// A token from the sidecar's `/token`, or `None` when it does not answer 200.
async fn token(client: &reqwest::Client, url: &str, session: &str) -> Option<String> {
    let response = client
        .get(url)
        .header("X-Sidecar-Token", session)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: serde_json::Value = response.json().await.ok()?;
    body["token"].as_str().map(str::to_string)
}

/// A secret rotated in Secrets Manager during a Managed Instances run (2 workers, refresh
/// every 1 s): no INVOKE comes there, so the periodic flush's tick re-reads the key, and
/// tokens carry the new kid within the refresh interval plus a flush interval (with slack
/// for a loaded machine). Before, the key was re-read only at INVOKE: the kid never changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_changes_the_kid_within_a_bounded_time() {
    const REFRESH: Duration = Duration::from_secs(1);
    let moto = Moto::start(&[]);
    moto.python("sm.create_secret(Name='jwt-mi', SecretString=pem(ec.SECP256R1()))");
    let session = random_hex(16);
    let mut vars = moto.sidecar_env();
    vars.extend([
        ("AWS_SESSION_TOKEN", session.clone()),
        ("JWT_KEY_SOURCE", "secretsmanager:jwt-mi".to_string()),
        ("JWT_ALGORITHM", "ES256".to_string()),
        ("JWT_KEY_REFRESH_SECONDS", REFRESH.as_secs().to_string()),
    ]);
    // 150 invocations 100 ms apart: the run lasts about 15 s, longer than the test needs.
    let mut cfg = managed(150, 1, &vars);
    cfg.env.retain(|(k, _)| k != "JWT_SECRET");
    cfg.workers = 2;
    cfg.gap_ms = 100;
    let url = cfg.token_url.clone();
    let run = tokio::spawn(lambda_env::run(cfg));
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let before = loop {
        if let Some(t) = token(&client, &url, &session).await {
            break t;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20) && !run.is_finished(),
            "the sidecar never issued a token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let old_kid = kid(&before);

    moto.python("sm.put_secret_value(SecretId='jwt-mi', SecretString=pem(ec.SECP256R1()))");
    let rotated_at = std::time::Instant::now();
    let bound = REFRESH + INTERVAL + Duration::from_secs(3);
    let mut seen = 0;
    let new_kid = loop {
        if let Some(t) = token(&client, &url, &session).await {
            seen += 1;
            if kid(&t) != old_kid {
                break kid(&t);
            }
        }
        assert!(
            rotated_at.elapsed() < bound && !run.is_finished(),
            "the kid did not change within {bound:?} of the rotation ({seen} tokens, all {old_kid})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = rotated_at.elapsed();
    eprintln!("kid changed {took:?} after the rotation: {old_kid} -> {new_kid}");
    let report = run.await.unwrap().unwrap();
    let log = stderr_of(&report);
    assert_clean_exit(&report);
    assert_eq!(report.registrations[0].events, ["SHUTDOWN"], "{log}");
    for invoke in &report.invokes {
        assert_eq!(invoke.status, InvokeStatus::Success, "{invoke:?}\n{log}");
        for call in &invoke.tokens {
            assert_eq!(call.http_status, Some(200), "{call:?}\n{log}");
        }
    }
    assert!(log.contains("signing key rotated"), "{log}");
}
