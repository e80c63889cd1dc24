//! Load: 256 concurrent keep-alive connections on `/token` for 20 s, against the real binary
//! running as an extension in lambda-env, inside one long invocation, with telemetry recording
//! on and exporting to an OTLP receiver. Every request must be answered 200; the figures
//! (requests, rate, p50/p99/max latency) are printed for SECURITY.md.
//!
//! The duration and connection count come from the hardening issue; `LOAD_SECONDS` and
//! `LOAD_CONNECTIONS` override them for a quick local run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{random_hex, sidecar_bin};
use lambda_env::{EnvConfig, Environment, Sink, free_port};

fn setting(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one connection's loop saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    failures: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_under_256_concurrent_connections_answers_every_request() {
    let seconds = setting("LOAD_SECONDS", 20);
    let connections = setting("LOAD_CONNECTIONS", 256) as usize;
    let sink = Sink::start().await.unwrap();
    let port = free_port().unwrap();
    let session_token = random_hex(32);
    let env = vec![
        ("JWT_SECRET".to_string(), random_hex(36)),
        ("SIDECAR_PORT".to_string(), port.to_string()),
        ("AWS_SESSION_TOKEN".to_string(), session_token.clone()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), sink.endpoint()),
        (
            "SIDECAR_LOG".to_string(),
            std::env::var("LOAD_LOG").unwrap_or("warn".into()),
        ),
    ];
    // One invocation that outlasts the load by far, so the sidecar is never frozen while it
    // runs; the environment is dropped (the extension killed) once the load is measured.
    let function_ms = (seconds + 120) * 1000;
    let cfg = EnvConfig {
        extension: Some(sidecar_bin()),
        env,
        invokes: 1,
        tokens_per_invoke: 0,
        token_url: format!("http://127.0.0.1:{port}/token"),
        function_ms,
        function_timeout_ms: function_ms + 10_000,
        work_dir: std::env::var_os("LOAD_WORK_DIR").map(PathBuf::from),
        ..EnvConfig::default()
    };
    let environment = Environment::start(cfg).await.unwrap();
    let run = tokio::spawn(environment.run());

    let base = format!("http://127.0.0.1:{port}");
    let probe = reqwest::Client::new();
    let ready = async {
        while probe.get(format!("{base}/health")).send().await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .expect("the token server answers /health");
    // The probe's keep-alive connection would be a 257th against the 256 cap, and which
    // connection that evicts is not what this test is about (the cap's order is tested in
    // src/server.rs and tests/hostile.rs): closed, and given time to be seen closed by the
    // sidecar, before the load starts.
    drop(probe);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            // A client per worker: one keep-alive connection each, as a busy function's
            // HTTP pool would hold.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let url = format!("{base}/token");
            let header = session_token.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < end {
                    let sent = Instant::now();
                    let result = client
                        .get(&url)
                        .header("X-Sidecar-Token", &header)
                        .send()
                        .await;
                    match result {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(_) => tally.latencies_us.push(sent.elapsed().as_micros() as u64),
                            Err(e) => tally.failures.push(format!("body: {e}")),
                        },
                        Ok(r) => tally.failures.push(format!("HTTP {}", r.status())),
                        Err(e) => tally.failures.push(format!("{e:?}")),
                    }
                }
                tally
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for worker in workers {
        let tally = worker.await.unwrap();
        latencies.extend(tally.latencies_us);
        failures.extend(tally.failures);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    println!(
        "load: {connections} connections, {elapsed:.1} s: {} requests ({:.0}/s), {} failures; \
         latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        failures.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );
    run.abort();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failures.len(),
        failures.len() + latencies.len(),
        &failures[..failures.len().min(5)],
    );
    assert!(!latencies.is_empty(), "no request completed");
}
