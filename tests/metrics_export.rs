//! Metrics as an OTLP receiver sees them: `service.instance.id` on every export, the
//! temporality `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` asks for, and delta points
//! that add up to what the run did, even across a collector outage.
//!
//! The real binary runs in lambda-env and exports straight to lambda-env's sink (no collector
//! in between, which could re-aggregate), which decodes with the official OTLP schema.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::stderr_of;
use lambda_env::{EnvConfig, InvokeStatus, MetricPoint, Report, Sink, SinkMode};

const FUNCTION: &str = "metrics-orders";

/// An environment of `FUNCTION` exporting to `sink`: `invokes` invocations that fetch `tokens`
/// tokens each.
fn environment(sink: &Sink, invokes: usize, tokens: usize, extra: &[(&str, &str)]) -> EnvConfig {
    let mut env = vec![
        ("SIDECAR_FLUSH_TIMEOUT_MS", "300".to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    common::environment(FUNCTION, invokes, tokens, &env)
}

fn assert_ran(report: &Report, tokens: usize) {
    common::assert_clean_exit(report);
    let log = stderr_of(report);
    for invoke in &report.invokes {
        assert!(matches!(invoke.status, InvokeStatus::Success), "{invoke:?}");
        assert_eq!(invoke.tokens.len(), tokens);
        for call in &invoke.tokens {
            assert_eq!(call.http_status, Some(200), "{call:?}\n{log}");
        }
    }
}

/// The points of one metric, grouped by export (an export's points share their time).
fn flushes<'a>(metrics: &'a [MetricPoint], name: &str) -> BTreeMap<u64, Vec<&'a MetricPoint>> {
    let mut out: BTreeMap<u64, Vec<&MetricPoint>> = BTreeMap::new();
    for m in metrics.iter().filter(|m| m.name == name) {
        out.entry(m.time_unix_nanos).or_default().push(m);
    }
    out
}

/// Summed over every export and label set: the total of a delta counter.
fn delta_total(metrics: &[MetricPoint], name: &str) -> f64 {
    let points: Vec<&MetricPoint> = metrics.iter().filter(|m| m.name == name).collect();
    for p in &points {
        assert_eq!(p.temporality, "delta", "{p:?}");
    }
    points.iter().filter_map(|m| m.value).sum()
}

/// Delta windows of one series never overlap: an overlap would count twice.
fn assert_windows_follow(metrics: &[MetricPoint], name: &str) {
    let mut series: BTreeMap<String, Vec<&MetricPoint>> = BTreeMap::new();
    for m in metrics.iter().filter(|m| m.name == name) {
        let key = format!("{:?}{:?}", m.resource, m.attributes);
        series.entry(key).or_default().push(m);
    }
    for points in series.values_mut() {
        points.sort_by_key(|m| m.time_unix_nanos);
        for pair in points.windows(2) {
            assert!(
                pair[1].start_unix_nanos >= pair[0].time_unix_nanos,
                "{name}: overlapping delta windows {pair:?}"
            );
        }
    }
}

/// Every point carries one `service.instance.id`, a UUID; returns the distinct values.
fn instance_ids(metrics: &[MetricPoint]) -> HashSet<String> {
    metrics
        .iter()
        .map(|m| {
            let id = m.resource.get("service.instance.id");
            let id = id.and_then(|v| v.as_str()).unwrap_or_else(|| {
                panic!("{} has no service.instance.id: {:?}", m.name, m.resource)
            });
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "not a UUID: {id}");
            id.to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cumulative_by_default() {
    let sink = Sink::start().await.unwrap();
    let (invokes, tokens) = (4, 2);
    let report = lambda_env::run(environment(&sink, invokes, tokens, &[]))
        .await
        .unwrap();
    assert_ran(&report, tokens);
    let metrics = sink.metrics();
    assert_eq!(instance_ids(&metrics).len(), 1, "one id for the whole run");

    let invocations = flushes(&metrics, "faas.invocations");
    assert!(invocations.len() >= 2, "want two flushes: {invocations:?}");
    // Every export restates the total since the same start.
    let starts: HashSet<u64> = invocations
        .values()
        .flatten()
        .map(|m| m.start_unix_nanos)
        .collect();
    assert_eq!(starts.len(), 1, "{invocations:?}");
    let totals: Vec<f64> = invocations
        .values()
        .map(|points| {
            assert!(points.iter().all(|m| m.temporality == "cumulative"));
            points.iter().filter_map(|m| m.value).sum()
        })
        .collect();
    assert!(totals.is_sorted(), "{totals:?}");
    assert_eq!(totals.last().copied(), Some(invokes as f64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_flushes_add_up_to_what_was_done() {
    let sink = Sink::start().await.unwrap();
    let (invokes, tokens) = (4, 2);
    // The spec makes the value case-insensitive.
    let delta = [("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta")];
    let report = lambda_env::run(environment(&sink, invokes, tokens, &delta))
        .await
        .unwrap();
    assert_ran(&report, tokens);
    let metrics = sink.metrics();
    assert_eq!(instance_ids(&metrics).len(), 1);

    for name in ["faas.invocations", "sidecar.token.requests"] {
        assert!(
            flushes(&metrics, name).len() >= 2,
            "{name}: want two flushes with points: {:?}",
            flushes(&metrics, name)
        );
        assert_windows_follow(&metrics, name);
    }
    assert_eq!(delta_total(&metrics, "faas.invocations"), invokes as f64);
    assert_eq!(
        delta_total(&metrics, "sidecar.token.requests"),
        (invokes * tokens) as f64
    );
    assert_eq!(delta_total(&metrics, "faas.coldstarts"), 1.0);
    // Histograms are delta too: their counts add up to one per invocation.
    let durations: Vec<&MetricPoint> = metrics
        .iter()
        .filter(|m| m.name == "faas.invoke_duration")
        .collect();
    assert!(durations.iter().all(|m| m.temporality == "delta"));
    let count: u64 = durations.iter().filter_map(|m| m.count).sum();
    assert_eq!(count, invokes as u64, "{durations:?}");
}

/// A collector that fails for a while loses no delta counts: what it did not take is sent
/// again once it recovers.
async fn delta_counts_survive(fault: SinkMode) {
    let sink = Sink::start().await.unwrap();
    sink.set_mode(fault);
    let (invokes, tokens) = (8, 1);
    // Flushed at INVOKE, the first batch the outage cuts holds only init's figures. The
    // first flush of `adaptive` (the default) is at the first invocation's end, with its
    // count; a collector that drops what it answers late (`Slow`) then loses that batch
    // once a second request goes unanswered, as the rule says (counted as `unanswered`).
    let delta = [
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta"),
        ("SIDECAR_FLUSH_STRATEGY", "invoke"),
    ];
    let run = tokio::spawn(lambda_env::run(environment(&sink, invokes, tokens, &delta)));
    // Let a few flushes fail, then bring the collector back while invocations go on.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let hit = sink.counts();
    sink.set_mode(SinkMode::Ok);
    let report = run.await.unwrap().unwrap();
    assert_ran(&report, tokens);
    assert!(hit.failed + hit.slow >= 1, "the outage hit no export");
    // A slow request cut at the cap may still land after the run: wait for the totals.
    let sum = |metrics: &[MetricPoint], name: &str| -> f64 {
        metrics
            .iter()
            .filter(|m| m.name == name)
            .filter_map(|m| m.value)
            .sum()
    };
    sink.wait_for(
        |v| {
            sum(v.metrics, "faas.invocations") >= invokes as f64
                && sum(v.metrics, "sidecar.token.requests") >= (invokes * tokens) as f64
        },
        Duration::from_secs(5),
    )
    .await;

    let metrics = sink.metrics();
    let (done, issued) = (
        delta_total(&metrics, "faas.invocations"),
        delta_total(&metrics, "sidecar.token.requests"),
    );
    if matches!(fault, SinkMode::Fail(_)) {
        assert_eq!(done, invokes as f64);
        assert_eq!(issued, (invokes * tokens) as f64);
        assert_windows_follow(&metrics, "faas.invocations");
    } else {
        // A timed-out batch may have been received: at least once, possibly twice.
        assert!(done >= invokes as f64, "{done} of {invokes} invocations");
        assert!(issued >= (invokes * tokens) as f64, "{issued} tokens");
    }
    // The outage itself was counted, and that count arrived too.
    assert!(delta_total(&metrics, "sidecar.export.failures") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_counts_survive_a_collector_answering_503() {
    delta_counts_survive(SinkMode::Fail(503)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_counts_survive_a_collector_too_slow_for_the_cap() {
    delta_counts_survive(SinkMode::Slow(Duration::from_secs(2))).await;
}

/// Two environments of one function, run one after the other: each has its own id, kept for
/// its life; an id in OTEL_RESOURCE_ATTRIBUTES (the same for every environment) does not
/// replace it, while the other user attributes stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_environment_has_its_own_instance_id() {
    let attributes = [(
        "OTEL_RESOURCE_ATTRIBUTES",
        "service.instance.id=shared,deployment.environment.name=test",
    )];
    let mut ids = Vec::new();
    for _ in 0..2 {
        let sink = Sink::start().await.unwrap();
        let report = lambda_env::run(environment(&sink, 2, 1, &attributes))
            .await
            .unwrap();
        assert_ran(&report, 1);
        let log = std::fs::read_to_string(report.stderr_path.as_ref().unwrap()).unwrap();
        assert!(
            log.contains("service.instance.id in OTEL_RESOURCE_ATTRIBUTES"),
            "the replaced id is not reported: {log}"
        );
        let metrics = sink.metrics();
        let spans = sink.spans();
        assert!(!spans.is_empty() && !metrics.is_empty());
        let id = instance_ids(&metrics);
        assert_eq!(id.len(), 1, "{id:?}");
        for span in &spans {
            assert_eq!(
                span.resource.get("service.instance.id"),
                metrics[0].resource.get("service.instance.id"),
                "spans and metrics name the same instance"
            );
        }
        assert_eq!(metrics[0].resource["deployment.environment.name"], "test");
        assert_eq!(metrics[0].resource["service.name"], FUNCTION);
        ids.extend(id);
    }
    assert!(!ids.contains(&"shared".to_string()), "{ids:?}");
    assert_ne!(ids[0], ids[1], "two environments, one id");
}
