//! `dashboards/grafana-dashboard.json` against real output: a real Prometheus server (Debian
//! package `prometheus`, started here on loopback) scrapes the sidecar's `/metrics` while it
//! runs in lambda-env, then every panel's PromQL, with the dashboard's variables substituted,
//! must return data at the end of the run, and Prometheus's count of issued tokens must equal
//! the tokens the run was given.
//!
//! The sidecar runs with `SIDECAR_TOKEN_AUTH=off`: Debian's Prometheus (2.42) cannot send a
//! custom header on a scrape (`http_headers` came in a later release; `authorization` sends
//! only `Authorization`), so it could not present `X-Sidecar-Token`. The header itself is
//! tested by `tests/prometheus.rs`; what is tested here is the names and the queries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{random_hex, sidecar_bin};
use lambda_env::{EnvConfig, InvokeStatus, free_port};
use lambda_sidecar::metrics::{METRICS, MetricKind, prometheus_name};
use serde_json::Value;

/// The scrape job's name: what Prometheus's OTLP translation makes `job` of (`service.name`,
/// which the sidecar sets to the function name), so `$job` means the same on both paths.
const FUNCTION: &str = "grafana-orders";
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/dashboards/grafana-dashboard.json"
);
/// What Grafana's `$__rate_interval` and `$__interval` become here: longer than the whole
/// run, so every rate spans all of its scrapes.
const INTERVAL: &str = "1m";
/// Child spans a `platform.runtimeDone` may carry past the parser's bound
/// (`MAX_CHILD_SPANS`, 16): each is counted in `sidecar_export_dropped_items_total`.
const EXTRA_SPANS: usize = 4;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Percent-encodes a query-string value (everything but RFC 3986's unreserved characters).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on loopback with its own config and storage, killed and its
/// directory removed when the test ends (even on failure).
struct Prometheus {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Prometheus {
    /// Starts `prometheus` scraping `target`'s `/metrics` every second as job [`FUNCTION`].
    fn start(target: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("grafana-test-{}", random_hex(8)));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: {FUNCTION}\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port().unwrap();
        let bin = std::env::var_os("PROMETHEUS_BIN").unwrap_or_else(|| "prometheus".into());
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(&bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                panic!(
                    "cannot start {bin:?} ({e}): the Prometheus server comes with the Debian \
                     package `prometheus` (`apt-get install --no-install-recommends \
                     prometheus`, which scripts/install-deps.sh does); PROMETHEUS_BIN names \
                     another binary"
                )
            });
        Prometheus {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Waits for `/-/ready`.
    async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(response) = client().get(format!("{}/-/ready", self.url)).send().await
                && response.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited: {status}\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An instant query at `time`: the `data.result` vector, or the error Prometheus gave.
    async fn query(&self, promql: &str, time: f64) -> Result<Vec<Value>, String> {
        let url = format!(
            "{}/api/v1/query?query={}&time={time:.3}",
            self.url,
            encode(promql)
        );
        let response = client().get(url).send().await.map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        match body["data"]["result"].as_array() {
            Some(result) if body["data"]["resultType"] == "vector" => Ok(result.clone()),
            _ => Err(format!("not a vector: {body}")),
        }
    }

    /// The sum of an instant query's sample values (0 when it has none).
    async fn sum(&self, promql: &str, time: f64) -> f64 {
        self.query(promql, time)
            .await
            .unwrap_or_else(|e| panic!("{promql}: {e}"))
            .iter()
            .map(sample_value)
            .sum()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A vector sample's value (`[time, "value"]`).
fn sample_value(sample: &Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

/// One query of one panel, as the dashboard holds it.
struct Target {
    panel: String,
    unit: String,
    expr: String,
}

fn targets(dashboard: &Value) -> Vec<Target> {
    let panels = dashboard["panels"].as_array().unwrap();
    let mut out = Vec::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let queries = panel["targets"].as_array().unwrap();
        assert!(!queries.is_empty(), "{} has no query", panel["title"]);
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        for query in queries {
            out.push(Target {
                panel: panel["title"].as_str().unwrap().to_string(),
                unit: panel["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                expr: query["expr"].as_str().unwrap().to_string(),
            });
        }
    }
    out
}

/// The expression with the dashboard's variables as Grafana would fill them in.
fn substitute(expr: &str) -> String {
    let expr = expr
        .replace("${job}", FUNCTION)
        .replace("$job", FUNCTION)
        .replace("$__rate_interval", INTERVAL)
        .replace("$__interval", INTERVAL);
    assert!(!expr.contains('$'), "a variable left in {expr}");
    expr
}

/// The metric names an expression selects (an identifier followed by `{`; the dashboard
/// writes every selector with its `job` matcher).
fn metric_names(expr: &str) -> Vec<&str> {
    expr.match_indices('{')
        .filter_map(|(at, _)| {
            let head = &expr[..at];
            let start = head
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(0, |i| i + 1);
            let name = &head[start..];
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// The family a selected name belongs to, if [`METRICS`] defines it (a histogram's
/// `_bucket`, `_sum` and `_count` belong to it).
fn defined_family(name: &str) -> Option<String> {
    METRICS.iter().find_map(|def| {
        let family = prometheus_name(def);
        let part = matches!(def.kind, MetricKind::Histogram { .. })
            && ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name == format!("{family}{suffix}"));
        (name == family || part).then_some(family)
    })
}

/// Sends one raw request to the token listener and returns its status code.
fn raw_status(port: u16, request: &str) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// A `platform.runtimeDone` of an invocation of its own, carrying `spans` child spans.
fn runtime_done_with_spans(spans: usize) -> Value {
    let time = "2026-01-01T00:00:00.000Z";
    let span = serde_json::json!({"name": "responseLatency", "start": time, "durationMs": 1.0});
    serde_json::json!({
        "time": time,
        "type": "platform.runtimeDone",
        "record": {
            "requestId": "grafana-many-spans",
            "status": "success",
            "metrics": {"durationMs": 5.0, "producedBytes": 0},
            "spans": vec![span; spans],
        },
    })
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(Path::new(DASHBOARD)).unwrap()).unwrap()
}

/// The dashboard's shape, without a server: its variables, every selected name defined in
/// `METRICS`, and seconds and bytes shown as such.
#[test]
fn every_panel_selects_defined_names_with_their_units() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    assert_eq!(variable("job")["datasource"]["uid"], "${datasource}");

    for target in targets(&dashboard) {
        let names = metric_names(&target.expr);
        assert!(
            !names.is_empty(),
            "{}: no metric in {}",
            target.panel,
            target.expr
        );
        assert!(
            target.expr.matches('{').count() == target.expr.matches("job=~\"$job\"").count(),
            "{}: every selector filters on $job: {}",
            target.panel,
            target.expr
        );
        for name in &names {
            assert!(
                defined_family(name).is_some(),
                "{}: {name} is not a name /metrics produces",
                target.panel
            );
        }
        // A panel of seconds (or bytes) families is in `s` (or `bytes`), unless it counts.
        let counted = target.expr.contains("count(") || target.expr.contains("_total");
        for (suffix, unit) in [("_seconds", "s"), ("_bytes", "bytes")] {
            let all = names
                .iter()
                .all(|n| defined_family(n).is_some_and(|family| family.ends_with(suffix)));
            if all && !counted {
                assert_eq!(target.unit, unit, "{}: {}", target.panel, target.expr);
            }
        }
    }
}

/// A real Prometheus scrapes a run in lambda-env (an error, a timeout, unknown telemetry,
/// logs dropped by Lambda, child spans past the parser's bound, a rejected token request, a
/// connection closed at the header timeout); at its end every panel query returns data, and
/// the issued-token count is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_returns_data_from_a_real_prometheus() {
    let started = Instant::now();
    let (invokes, tokens) = (5, 2);
    let port = free_port().unwrap();
    let mut prometheus = Prometheus::start(&format!("127.0.0.1:{port}"));
    prometheus.ready().await;

    let config = EnvConfig {
        extension: Some(sidecar_bin()),
        env: vec![
            ("JWT_SECRET".to_string(), random_hex(36)),
            ("SIDECAR_PORT".to_string(), port.to_string()),
            // Prometheus 2.42 cannot send X-Sidecar-Token (see the module's comment).
            ("SIDECAR_TOKEN_AUTH".to_string(), "off".to_string()),
        ],
        function_name: FUNCTION.to_string(),
        invokes,
        tokens_per_invoke: tokens,
        token_url: format!("http://127.0.0.1:{port}/token"),
        function_ms: 20,
        function_timeout_ms: 1_000,
        fail_invokes: vec![1],
        timeout_invokes: vec![3],
        inject_unknown: true,
        // A drop, so the drop panel's labelled series exists: one more invocation.
        inject_items: vec![runtime_done_with_spans(16 + EXTRA_SPANS)],
        inject_at: 2,
        logs_dropped: true,
        // Scraped while it runs, and after the last invoke before SHUTDOWN: not frozen.
        freeze: false,
        gap_ms: 1_500,
        ..EnvConfig::default()
    };
    let run = tokio::spawn(lambda_env::run(config));

    // Once the token listener answers: a connection that never sends a head (closed at the
    // 5 s header timeout, a refusal) and a token request with a foreign Host (400).
    let health = format!("http://127.0.0.1:{port}/health");
    let up = async {
        while client().get(&health).send().await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), up)
        .await
        .expect("the token listener answers");
    let _stalled = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let status = tokio::task::spawn_blocking(move || {
        raw_status(
            port,
            "GET /token HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 400, "a token request with a foreign Host");
    let (issued, rejected) = ((invokes * tokens) as f64, 1.0);

    // Until Prometheus has scraped the whole run (all invocations, tokens and the refusal):
    // that moment is when the panels are read. Later, the sidecar's exit marks every series
    // stale.
    let job = format!("job=\"{FUNCTION}\"");
    let issued_query = format!("sum(sidecar_token_requests_total{{{job},outcome=\"issued\"}})");
    let mut at = None;
    while !run.is_finished() {
        let t = now();
        let seen = (
            prometheus.sum(&issued_query, t).await,
            prometheus
                .sum(
                    &format!("sum(sidecar_token_requests_total{{{job},outcome=\"bad_request\"}})"),
                    t,
                )
                .await,
            prometheus
                .sum(
                    &format!(
                        "sum(faas_invocations_total{{{job}}}) + sum(faas_errors_total{{{job}}}) \
                         + sum(faas_timeouts_total{{{job}}})"
                    ),
                    t,
                )
                .await,
            prometheus
                .sum(
                    &format!("sum(sidecar_connections_refused_total{{{job}}})"),
                    t,
                )
                .await,
        );
        if seen.0 >= issued && seen.1 >= rejected && seen.2 > invokes as f64 && seen.3 >= 1.0 {
            at = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = run.await.unwrap().unwrap();
    let at = at.unwrap_or_else(|| {
        panic!(
            "Prometheus never saw the whole run before it ended: {:?}\n{}",
            report.invokes,
            prometheus.log()
        )
    });
    assert!(report.init.error.is_none(), "{:?}", report.init.error);
    let statuses: Vec<InvokeStatus> = report.invokes.iter().map(|i| i.status).collect();
    assert!(statuses.contains(&InvokeStatus::Timeout), "{statuses:?}");
    assert_eq!(report.shutdown.exit_code, Some(0));
    let run_issued = report
        .invokes
        .iter()
        .flat_map(|i| &i.tokens)
        .filter(|t| t.http_status == Some(200))
        .count() as f64;
    assert_eq!(run_issued, issued, "{:?}", report.invokes);

    // The count an SRE would query equals what the run issued, and the one refusal.
    assert_eq!(prometheus.sum(&issued_query, at).await, run_issued);
    assert_eq!(
        prometheus
            .sum(
                &format!("sum(sidecar_token_requests_total{{{job},outcome=\"bad_request\"}})"),
                at
            )
            .await,
        rejected
    );

    // What the panels rate is what the run did.
    for (family, want) in [
        // Successful ones only (the FaaS conventions): all but the error and the timeout,
        // and the injected one.
        ("faas_invocations_total", invokes as f64 - 1.0),
        ("faas_errors_total", 1.0),
        ("faas_timeouts_total", 1.0),
        ("faas_coldstarts_total", 1.0),
        ("sidecar_export_dropped_items_total", EXTRA_SPANS as f64),
    ] {
        let got = prometheus.sum(&format!("sum({family}{{{job}}})"), at).await;
        assert_eq!(got, want, "{family}");
    }

    // The `job` variable's query (`label_values(METRIC, job)`) offers the scrape job.
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let job_variable = variables.iter().find(|v| v["name"] == "job").unwrap();
    let definition = job_variable["definition"].as_str().unwrap();
    let metric = definition
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(", job)"))
        .unwrap_or_else(|| panic!("not label_values(METRIC, job): {definition}"));
    let offered = prometheus
        .query(&format!("count by (job) ({metric})"), at)
        .await
        .unwrap();
    let jobs: Vec<&str> = offered
        .iter()
        .filter_map(|s| s["metric"]["job"].as_str())
        .collect();
    assert_eq!(jobs, [FUNCTION], "$job offers {jobs:?}");

    // Every panel's every query, as Grafana sends it, returns data with a number in it.
    let mut empty = Vec::new();
    for target in targets(&dashboard) {
        let expr = substitute(&target.expr);
        let result = prometheus
            .query(&expr, at)
            .await
            .unwrap_or_else(|e| panic!("{}: {expr}: {e}", target.panel));
        let values: Vec<f64> = result.iter().map(sample_value).collect();
        eprintln!("{}: {expr} = {values:?}", target.panel);
        let finite = values.iter().any(|v| v.is_finite());
        if !finite {
            empty.push(format!("{}: {expr} -> {result:?}", target.panel));
        }
    }
    assert!(
        empty.is_empty(),
        "queries without data at the end of the run:\n{}",
        empty.join("\n")
    );

    // One environment started, and the cold-start panel counts it once.
    let targets = targets(&dashboard);
    let cold = targets.iter().find(|t| t.panel == "Cold starts").unwrap();
    assert_eq!(prometheus.sum(&substitute(&cold.expr), at).await, 1.0);
    eprintln!("wall time: {:.1} s", started.elapsed().as_secs_f64());
}

/// Issue 21: on a healthy run (no error, no drop, no refusal), every family the dashboard
/// selects is already on `/metrics`, with a sample: the labelled counters a healthy run
/// never records (dropped items, refused connections, unknown telemetry) at 0, so their
/// panels show 0 rather than "No data".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_selected_family_exists_on_a_healthy_run() {
    let port = free_port().unwrap();
    let config = EnvConfig {
        extension: Some(sidecar_bin()),
        env: vec![
            ("JWT_SECRET".to_string(), random_hex(36)),
            ("SIDECAR_PORT".to_string(), port.to_string()),
            ("SIDECAR_TOKEN_AUTH".to_string(), "off".to_string()),
        ],
        function_name: FUNCTION.to_string(),
        invokes: 2,
        tokens_per_invoke: 1,
        token_url: format!("http://127.0.0.1:{port}/token"),
        function_ms: 20,
        // Scraped while it runs, between the invokes: not frozen.
        freeze: false,
        gap_ms: 1_500,
        ..EnvConfig::default()
    };
    let run = tokio::spawn(lambda_env::run(config));
    let url = format!("http://127.0.0.1:{port}/metrics");
    // Once the first invocation is reported (its platform.report figures are there).
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !run.is_finished() {
        if let Ok(response) = client().get(&url).send().await {
            text = response.text().await.unwrap_or_default();
            if text.contains("\nfaas_invocations_total 1")
                && text.contains("faas_mem_usage_bytes_count 1")
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = run.await.unwrap().unwrap();
    assert!(report.init.error.is_none(), "{:?}", report.init.error);
    assert!(
        report
            .invokes
            .iter()
            .all(|i| matches!(i.status, InvokeStatus::Success)),
        "not a healthy run: {:?}",
        report.invokes
    );
    let mut missing = Vec::new();
    for target in targets(&dashboard()) {
        for name in metric_names(&target.expr) {
            let sampled = text.lines().any(|line| {
                line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
            });
            if !sampled {
                missing.push(format!("{}: {name}", target.panel));
            }
        }
    }
    missing.dedup();
    assert!(
        missing.is_empty(),
        "no sample on a healthy run:\n{}\n{text}",
        missing.join("\n")
    );
}
