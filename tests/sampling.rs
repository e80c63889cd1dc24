//! Sampling end to end: the real binary in lambda-env, exporting OTLP to a decoding sink.
//! X-Ray's `Sampled=0` and `OTEL_TRACES_SAMPLER=traceidratio` decide which invocations
//! export spans; every invocation is counted in the metrics either way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{counter, stderr_of};
use lambda_env::{EnvConfig, InvokeStatus, Report, Sink};

const FUNCTION: &str = "sampling-orders";

/// lambda-env running the sidecar exporting to `sink`, with short invocations and no
/// tokens (the invocation span and its children are what sampling decides here).
fn environment(sink: &Sink, invokes: usize, extra: &[(&str, String)]) -> EnvConfig {
    let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint())];
    env.extend_from_slice(extra);
    EnvConfig {
        function_ms: 1,
        gap_ms: 5,
        ..common::environment(FUNCTION, invokes, 0, &env)
    }
}

fn assert_all_succeeded(report: &Report) {
    common::assert_clean_exit(report);
    for invoke in &report.invokes {
        assert!(matches!(invoke.status, InvokeStatus::Success), "{invoke:?}");
    }
}

/// Waits until `faas.invocations` counts every invoke (metrics and spans go in the same
/// flush, so the spans are in by then), and returns the trace ids of the invocation spans.
async fn exported_invocation_traces(sink: &Sink, report: &Report) -> BTreeSet<String> {
    let invokes = report.invokes.len() as f64;
    let counted = sink
        .wait_for(
            |v| counter(v.metrics, "faas.invocations") >= invokes,
            Duration::from_secs(10),
        )
        .await;
    assert!(
        counted,
        "faas.invocations = {}, expected {invokes}\n{}",
        counter(&sink.metrics(), "faas.invocations"),
        stderr_of(report)
    );
    assert_eq!(counter(&sink.metrics(), "faas.invocations"), invokes);
    sink.spans()
        .iter()
        .filter(|s| s.name == FUNCTION)
        .map(|s| s.trace_id.clone())
        .collect()
}

/// With the default `parentbased_always_on`, an invocation whose X-Ray header says
/// `Sampled=0` exports no span at all (its children neither), and is still counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xray_sampled_0_invocations_export_no_span_and_are_counted() {
    let sink = Sink::start().await.unwrap();
    let unsampled = [1, 3, 4];
    let report = lambda_env::run(EnvConfig {
        unsampled_invokes: unsampled.to_vec(),
        ..environment(&sink, 6, &[])
    })
    .await
    .unwrap();
    assert_all_succeeded(&report);
    let exported = exported_invocation_traces(&sink, &report).await;
    let (dropped, kept): (Vec<_>, Vec<_>) = report
        .invokes
        .iter()
        .enumerate()
        .partition(|(i, _)| unsampled.contains(i));
    let expected: BTreeSet<String> = kept.iter().map(|(_, inv)| inv.trace_id.clone()).collect();
    assert_eq!(exported, expected, "{}", stderr_of(&report));
    let spans = sink.spans();
    for (i, invoke) in dropped {
        assert!(invoke.xray_value.ends_with(";Sampled=0"), "{invoke:?}");
        let leaked: Vec<_> = spans
            .iter()
            .filter(|s| s.trace_id == invoke.trace_id)
            .collect();
        assert!(leaked.is_empty(), "invoke {i} exported {leaked:?}");
    }
}

/// `traceidratio` 0.25 over 200 invocations with random trace ids: the spans exported are
/// exactly those whose trace id the spec's rule keeps, and about a quarter of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceidratio_exports_its_share_decided_by_the_trace_id() {
    const INVOKES: usize = 200;
    const RATIO: f64 = 0.25;
    let sink = Sink::start().await.unwrap();
    let report = lambda_env::run(environment(
        &sink,
        INVOKES,
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio".to_owned()),
            ("OTEL_TRACES_SAMPLER_ARG", RATIO.to_string()),
        ],
    ))
    .await
    .unwrap();
    assert_all_succeeded(&report);
    let exported = exported_invocation_traces(&sink, &report).await;

    // The decision is a function of the trace id alone (X-Ray's Sampled=1 is ignored by a
    // sampler that is not parent-based): kept when its low 56 bits are at least
    // (1 - ratio) * 2^56. Any other environment deciding on the same trace agrees.
    let threshold = ((1.0 - RATIO) * (1u64 << 56) as f64) as u64;
    let predicted: BTreeSet<String> = report
        .invokes
        .iter()
        .filter(|inv| {
            let low = u64::from_str_radix(&inv.trace_id[18..], 16).unwrap();
            low >= threshold
        })
        .map(|inv| inv.trace_id.clone())
        .collect();
    assert_eq!(exported, predicted);

    // The share: Binomial(200, 0.25) has mean 50 and standard deviation
    // sqrt(200 * 0.25 * 0.75) = 6.1; ±4σ (26..=74) fails a correct sampler about once in
    // 16,000 runs, while exporting everything (200) or nothing (0) is far outside.
    let sigma = (INVOKES as f64 * RATIO * (1.0 - RATIO)).sqrt();
    let mean = INVOKES as f64 * RATIO;
    let share = exported.len() as f64;
    println!(
        "traceidratio {RATIO}: {} of {INVOKES} invocations exported (mean {mean}, σ {sigma:.1})",
        exported.len()
    );
    assert!(
        (share - mean).abs() <= 4.0 * sigma,
        "{share} exported, expected {mean} ± {:.0}",
        4.0 * sigma
    );
}

/// An unknown sampler or an out-of-range ratio stops start-up through `init/error`, naming
/// the variable and what it accepts, instead of silently exporting everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_sampler_fails_init_naming_the_variable() {
    let sink = Sink::start().await.unwrap();
    for (vars, needle) in [
        (
            [
                ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
                ("OTEL_TRACES_SAMPLER_ARG", ""),
            ],
            "OTEL_TRACES_SAMPLER=\"jaeger_remote\" is not valid: expected always_on",
        ),
        (
            [
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "25%"),
            ],
            "OTEL_TRACES_SAMPLER_ARG=\"25%\" is not valid: expected a sampling probability",
        ),
    ] {
        let vars: Vec<(&str, String)> = vars.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let report = lambda_env::run(environment(&sink, 1, &vars)).await.unwrap();
        let error = report.init.error.as_ref().expect("init must fail");
        let message = error.body["errorMessage"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{message}");
        assert_eq!(error.exit_code, Some(1));
        assert!(report.invokes.is_empty());
    }
}
