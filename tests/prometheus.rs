//! `GET /metrics` scraped over HTTP from the real binary: inside lambda-env (on the token
//! listener, behind `X-Sidecar-Token`) and in `serve` mode with `SIDECAR_METRICS_ADDR`. The
//! counters must equal what the run did, every family must carry HELP and TYPE, and
//! `promtool check metrics` (Debian package `prometheus`) must find nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{random_hex, sidecar_bin};
use lambda_env::{EnvConfig, InvokeStatus, free_port};

const FUNCTION: &str = "prom-orders";

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// GET `url`, with `X-Sidecar-Token` when `secret` is given: the status and the body.
async fn get(url: &str, secret: Option<&str>) -> reqwest::Result<(u16, String)> {
    let mut request = client().get(url);
    if let Some(secret) = secret {
        request = request.header("X-Sidecar-Token", secret);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// The sum of every sample of `name` whose labels include all of `labels` (`k="v"`).
fn value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name && labels.iter().all(|l| series_labels.contains(l))
        })
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

/// Every sample belongs to a family declared with a non-empty `# HELP` and a `# TYPE`
/// (a histogram's samples are its `_bucket`, `_sum` and `_count`), and no family is
/// declared without samples.
fn assert_every_family_has_help_and_type(text: &str) {
    let mut help = Vec::new();
    let mut types = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, description) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(!description.trim().is_empty(), "empty HELP: {line}");
            help.push(name);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            types.push(rest.split_once(' ').unwrap());
        } else if !line.is_empty() {
            let series = line.rsplit_once(' ').unwrap().0;
            samples.push(series.split_once('{').map_or(series, |(name, _)| name));
        }
    }
    assert!(!types.is_empty(), "no family in:\n{text}");
    for (family, kind) in &types {
        assert!(help.contains(family), "{family} has TYPE but no HELP");
        assert!(
            ["counter", "gauge", "histogram"].contains(kind),
            "{family}: TYPE {kind}"
        );
        assert!(
            samples.iter().any(|s| s.starts_with(family)),
            "{family} declared without samples"
        );
    }
    assert_eq!(help.len(), types.len(), "one HELP per TYPE:\n{text}");
    for sample in samples {
        let declared = types.iter().any(|(family, kind)| match *kind {
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| sample == format!("{family}{suffix}")),
            _ => sample == *family,
        });
        assert!(declared, "{sample} belongs to no declared family");
    }
}

/// `promtool check metrics` on `text` reports nothing.
fn assert_promtool_finds_nothing(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is not on PATH ({e}): it comes with the Debian package `prometheus` \
                 (`apt-get install --no-install-recommends prometheus`, which \
                 scripts/install-deps.sh does)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics: {}\n{findings}\non:\n{text}",
        out.status
    );
}

/// A run in lambda-env, scraped over HTTP before SHUTDOWN: the counters equal the invokes
/// whose telemetry arrived and the token requests made, issued and refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_in_lambda_counts_what_the_run_did() {
    let (invokes, tokens) = (3, 2);
    let port = free_port().unwrap();
    let secret = random_hex(32);
    let config = EnvConfig {
        extension: Some(sidecar_bin()),
        env: vec![
            ("JWT_SECRET".to_string(), random_hex(36)),
            ("SIDECAR_PORT".to_string(), port.to_string()),
            ("AWS_SESSION_TOKEN".to_string(), secret.clone()),
        ],
        function_name: FUNCTION.to_string(),
        invokes,
        tokens_per_invoke: tokens,
        token_url: format!("http://127.0.0.1:{port}/token"),
        function_ms: 20,
        // Scraped between invokes, and after the last one before SHUTDOWN: not frozen.
        freeze: false,
        gap_ms: 1_500,
        ..EnvConfig::default()
    };
    let run = tokio::spawn(lambda_env::run(config));
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");

    // As soon as the token listener answers: one refused token request (no header), and
    // a scrape without the header, which is refused too and counts as no token request.
    let ready = async {
        loop {
            if let Ok((status, _)) = get(&metrics_url, None).await {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let unauthenticated = tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .expect("the token listener answers");
    assert_eq!(unauthenticated, 401, "/metrics without X-Sidecar-Token");
    let (status, _) = get(&format!("http://127.0.0.1:{port}/token"), None)
        .await
        .unwrap();
    assert_eq!(status, 401);

    // Scrape until every invocation and token shows, or the run ends.
    let (issued, refused) = ((invokes * tokens) as f64, 1.0);
    let mut text = String::new();
    while !run.is_finished() {
        if let Ok((200, body)) = get(&metrics_url, Some(&secret)).await {
            text = body;
            if value(&text, "faas_invocations_total", &[]) >= invokes as f64
                && value(&text, "sidecar_token_requests_total", &[]) >= issued + refused
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = run.await.unwrap().unwrap();
    assert!(report.init.error.is_none(), "{:?}", report.init.error);
    for invoke in &report.invokes {
        assert!(matches!(invoke.status, InvokeStatus::Success), "{invoke:?}");
        assert!(invoke.tokens.iter().all(|t| t.http_status == Some(200)));
    }
    assert_eq!(report.shutdown.exit_code, Some(0));

    let labels = |outcome| format!("outcome=\"{outcome}\"");
    // Successful invocations, unlabelled (the FaaS conventions); errors and timeouts at 0.
    assert_eq!(
        value(&text, "faas_invocations_total", &[]),
        invokes as f64,
        "{text}"
    );
    assert!(text.contains("\nfaas_errors_total 0\n") && text.contains("\nfaas_timeouts_total 0\n"));
    assert_eq!(
        value(&text, "faas_invoke_duration_seconds_count", &[]),
        invokes as f64
    );
    assert_eq!(value(&text, "faas_coldstarts_total", &[]), 1.0);
    assert_eq!(value(&text, "faas_errors_total", &[]), 0.0);
    assert_eq!(
        value(
            &text,
            "sidecar_token_requests_total",
            &["algorithm=\"HS256\"", &labels("issued")]
        ),
        issued,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "sidecar_token_requests_total",
            &[&labels("unauthorized")]
        ),
        refused
    );
    assert_eq!(
        value(&text, "sidecar_token_duration_seconds_count", &[]),
        issued + refused
    );
    assert_eq!(
        value(&text, "aws_lambda_memory_size_bytes", &[]),
        128.0 * 1024.0 * 1024.0
    );
    assert_every_family_has_help_and_type(&text);
    assert_promtool_finds_nothing(&text);
}

/// Inside Lambda nothing can reach an extra listener: `SIDECAR_METRICS_ADDR` fails init
/// with a configuration error naming it, rather than being ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_address_is_refused_inside_lambda() {
    let port = free_port().unwrap();
    let config = EnvConfig {
        extension: Some(sidecar_bin()),
        env: vec![
            ("JWT_SECRET".to_string(), random_hex(36)),
            ("SIDECAR_PORT".to_string(), port.to_string()),
            (
                "SIDECAR_METRICS_ADDR".to_string(),
                format!("127.0.0.1:{}", free_port().unwrap()),
            ),
        ],
        invokes: 1,
        ..EnvConfig::default()
    };
    let report = lambda_env::run(config).await.unwrap();
    let error = report.init.error.as_ref().expect("init must fail");
    assert_eq!(error.error_type, "Config.InvalidValue");
    let message = error.body["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("SIDECAR_METRICS_ADDR"), "{message}");
    assert_eq!(error.exit_code, Some(1));
}

/// `lambda-sidecar serve`, killed when the test ends (even on failure).
struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `serve` with `SIDECAR_METRICS_ADDR`: that address serves `/metrics` alone, without the
/// header, counting the token requests made on loopback; the token endpoints are not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_mode_serves_metrics_alone_on_the_metrics_address() {
    let (token_port, metrics_port) = (free_port().unwrap(), free_port().unwrap());
    let secret = random_hex(32);
    let _serve = Serve(
        Command::new(sidecar_bin())
            .arg("serve")
            .env_clear()
            .env("JWT_SECRET", random_hex(36))
            .env("AWS_SESSION_TOKEN", &secret)
            .env("SIDECAR_PORT", token_port.to_string())
            .env("SIDECAR_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let token_url = format!("http://127.0.0.1:{token_port}/token");
    let outside = format!("http://127.0.0.1:{metrics_port}");
    let ready = async {
        while get(&format!("{outside}/metrics"), None).await.is_err()
            || get(&format!("http://127.0.0.1:{token_port}/health"), None)
                .await
                .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .expect("serve listens on both addresses");

    for _ in 0..3 {
        assert_eq!(get(&token_url, Some(&secret)).await.unwrap().0, 200);
    }
    assert_eq!(get(&token_url, None).await.unwrap().0, 401);

    let (status, text) = get(&format!("{outside}/metrics"), None).await.unwrap();
    assert_eq!(status, 200, "{text}");
    let issued = ["algorithm=\"HS256\"", "outcome=\"issued\""];
    assert_eq!(
        value(&text, "sidecar_token_requests_total", &issued),
        3.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "sidecar_token_requests_total",
            &["outcome=\"unauthorized\""]
        ),
        1.0
    );
    assert_every_family_has_help_and_type(&text);
    assert_promtool_finds_nothing(&text);

    // The token endpoints never leave loopback's token port.
    for path in ["/token", "/.well-known/jwks.json", "/health"] {
        let (status, _) = get(&format!("{outside}{path}"), Some(&secret))
            .await
            .unwrap();
        assert_eq!(status, 404, "{path} on the metrics address");
    }
    // On the token port, /metrics is there too, behind the header.
    let metrics_url = format!("http://127.0.0.1:{token_port}/metrics");
    assert_eq!(get(&metrics_url, None).await.unwrap().0, 401);
    let (status, text) = get(&metrics_url, Some(&secret)).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(value(&text, "sidecar_token_requests_total", &issued), 3.0);
}
