//! SigV4-signed OTLP (issue 22), end to end: the real binary in lambda-env exports every
//! signal to a receiver (tests/sigv4_receiver.py) that checks each request's signature with
//! botocore's signer, an implementation independent of the sidecar's, with the test's
//! credentials and the receiver's clock. Covered: each signal, gzip and not, with and without
//! a session token, credentials changed between invokes (the SnapStart container endpoint),
//! a wrong secret key failing the check, and exporter headers from a Secrets Manager secret
//! in moto, rotated while the sidecar runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{KillOnDrop, Moto, assert_clean_exit, stderr_of, venv_bin};
use lambda_env::{EnvConfig, Report};
use serde_json::{Value, json};

const REGION: &str = "us-east-1";

/// The receiver, on a free port, killed on drop.
struct Receiver {
    _child: KillOnDrop,
    url: String,
}

impl Receiver {
    /// `credentials`: (access key, secret, session token) the signatures are checked with.
    fn start(credentials: &[(&str, &str, Option<&str>)]) -> Receiver {
        let config = json!({
            "credentials": credentials
                .iter()
                .map(|(key, secret, token)| json!({"key": key, "secret": secret, "token": token}))
                .collect::<Vec<_>>(),
        });
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sigv4_receiver.py");
        let mut child = Command::new(venv_bin("python"))
            .arg(script)
            .arg(config.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python from .venv (scripts/install-deps.sh)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("the receiver prints its port");
        Receiver {
            _child: KillOnDrop(child),
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn requests(&self) -> Vec<Value> {
        reqwest::get(format!("{}/requests", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits until no request has arrived for `quiet`.
    async fn quiet(&self, quiet: Duration) {
        let mut seen = self.requests().await.len();
        loop {
            tokio::time::sleep(quiet).await;
            let now = self.requests().await.len();
            if now == seen {
                return;
            }
            seen = now;
        }
    }

    async fn control(&self, body: Value) {
        reqwest::Client::new()
            .post(format!("{}/control", self.url))
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }
}

/// The sidecar in lambda-env, exporting every signal to `receiver`, signed, with `extra`.
fn environment(receiver: &Receiver, invokes: usize, extra: &[(&str, String)]) -> EnvConfig {
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.clone()),
        ("SIDECAR_OTLP_SIGV4", "on".to_string()),
        ("SIDECAR_OTLP_SIGV4_REGION", REGION.to_string()),
        ("SIDECAR_FLUSH_TIMEOUT_MS", "2000".to_string()),
        ("SIDECAR_LOG", "info".to_string()),
    ];
    env.extend_from_slice(extra);
    let mut config = common::environment("sigv4-orders", invokes, 1, &env);
    config.gap_ms = 300;
    config
}

/// Every request verified; returns them.
fn all_verified(requests: &[Value], report: &Report) -> Vec<Value> {
    let log = stderr_of(report);
    assert!(!requests.is_empty(), "nothing arrived\n{log}");
    for request in requests {
        assert_eq!(request["valid"], true, "{request}\n{log}");
    }
    requests.to_vec()
}

fn of_path<'a>(requests: &'a [Value], path: &str) -> Vec<&'a Value> {
    requests.iter().filter(|r| r["path"] == path).collect()
}

/// Exactly one invocation span per invoke, none twice, and the last metrics export counts
/// every invocation: what arrived is what happened.
fn assert_exact_counts(requests: &[Value], invokes: usize, function: &str) {
    let spans: Vec<&Value> = of_path(requests, "/v1/traces")
        .into_iter()
        .flat_map(|r| r["spans"].as_array().unwrap())
        .collect();
    let mut ids: Vec<&str> = spans
        .iter()
        .map(|s| s["span_id"].as_str().unwrap())
        .collect();
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all, "a span arrived twice");
    let invocations = spans.iter().filter(|s| s["name"] == function).count();
    assert_eq!(invocations, invokes, "{spans:?}");
    let last = of_path(requests, "/v1/metrics")
        .last()
        .map(|r| r["metrics"]["faas.invocations"].as_f64().unwrap_or(0.0));
    assert_eq!(last, Some(invokes as f64));
    let logs: u64 = of_path(requests, "/v1/logs")
        .iter()
        .map(|r| r["log_records"].as_u64().unwrap())
        .sum();
    assert!(logs >= invokes as u64, "the function's lines: {logs}");
}

/// Keys with a session token, no compression: every signal signed for its CloudWatch
/// service (xray, monitoring, logs), the logs with the CloudWatch Logs headers.
#[tokio::test]
async fn every_signal_is_signed_with_a_session_token() {
    let receiver = Receiver::start(&[("ASIAEXAMPLE1", "secret-one", Some("token-one"))]);
    let invokes = 3;
    let config = environment(
        &receiver,
        invokes,
        &[
            ("AWS_ACCESS_KEY_ID", "ASIAEXAMPLE1".into()),
            ("AWS_SECRET_ACCESS_KEY", "secret-one".into()),
            ("AWS_SESSION_TOKEN", "token-one".into()),
        ],
    );
    let report = lambda_env::run(config).await.unwrap();
    assert_clean_exit(&report);
    let requests = all_verified(&receiver.requests().await, &report);
    assert!(
        requests
            .iter()
            .all(|r| r["token"] == true && r["gzip"] == false)
    );
    assert_exact_counts(&requests, invokes, "sigv4-orders");
    for request in of_path(&requests, "/v1/logs") {
        assert_eq!(
            request["headers"]["x-aws-log-group"],
            "/aws/lambda/sigv4-orders"
        );
        assert!(
            request["headers"]["x-aws-log-stream"]
                .as_str()
                .is_some_and(|s| s.contains("[$LATEST]")),
            "{request}"
        );
    }
}

/// Long-term keys (no session token), gzip, an explicit service: the signature covers the
/// compressed body as sent.
#[tokio::test]
async fn gzip_bodies_without_a_session_token_are_signed_as_sent() {
    let receiver = Receiver::start(&[("AKIAEXAMPLE2", "secret-two", None)]);
    let invokes = 3;
    let config = environment(
        &receiver,
        invokes,
        &[
            ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE2".into()),
            ("AWS_SECRET_ACCESS_KEY", "secret-two".into()),
            ("AWS_SESSION_TOKEN", String::new()),
            ("SIDECAR_TOKEN_AUTH", "off".into()),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
            ("SIDECAR_OTLP_SIGV4_SERVICE", "otlp-intake".into()),
        ],
    );
    let report = lambda_env::run(config).await.unwrap();
    assert_clean_exit(&report);
    let requests = all_verified(&receiver.requests().await, &report);
    assert!(
        requests
            .iter()
            .all(|r| r["token"] == false && r["gzip"] == true)
    );
    assert_exact_counts(&requests, invokes, "sigv4-orders");
    // Not signed for `logs`: no CloudWatch Logs headers.
    assert!(
        of_path(&requests, "/v1/logs")
            .iter()
            .all(|r| r["headers"].get("x-aws-log-group").is_none())
    );
}

/// SnapStart: credentials from the container endpoint (here the receiver's, which hands
/// them out for 4 minutes, so the sidecar asks for every request), changed between invokes:
/// the requests before are signed with the first set, those after with the second.
#[tokio::test]
async fn a_credential_change_between_invokes_is_used_from_the_next_request() {
    let receiver = Receiver::start(&[
        ("ASIAFIRST", "secret-first", Some("token-first")),
        ("ASIASECOND", "secret-second", Some("token-second")),
    ]);
    let invokes = 5;
    let mut config = environment(
        &receiver,
        invokes,
        &[
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("{}/credentials", receiver.url),
            ),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
        ],
    );
    config.snapstart = true;
    config.gap_ms = 600;
    let run = tokio::spawn(lambda_env::run(config));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !receiver
        .requests()
        .await
        .iter()
        .any(|r| r["path"] == "/v1/traces" && r["key"] == "ASIAFIRST")
    {
        assert!(
            Instant::now() < deadline,
            "no traces signed with the first set"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Between invokes: once that flush is over (nothing new for 250 ms), the sidecar waits,
    // frozen, for the next INVOKE.
    receiver.quiet(Duration::from_millis(250)).await;
    receiver.control(json!({"current": 1})).await;
    let report = run.await.unwrap().unwrap();
    assert_clean_exit(&report);
    let requests = all_verified(&receiver.requests().await, &report);
    let keys: Vec<&str> = requests
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    let first_second = keys.iter().position(|k| *k == "ASIASECOND");
    assert!(first_second.is_some(), "the change was not used: {keys:?}");
    assert!(
        keys[first_second.unwrap()..]
            .iter()
            .all(|k| *k == "ASIASECOND"),
        "the first set after the change: {keys:?}"
    );
    assert!(requests.iter().all(|r| r["token"] == true));
    assert_exact_counts(&requests, invokes, "sigv4-orders");
}

/// The check can fail: the receiver knows the access key with another secret than the one
/// the sidecar signs with, and refuses every request as botocore's signature differs.
#[tokio::test]
async fn a_wrong_secret_key_fails_the_check() {
    let receiver = Receiver::start(&[("ASIAEXAMPLE3", "the-right-secret", Some("token-three"))]);
    let config = environment(
        &receiver,
        2,
        &[
            ("AWS_ACCESS_KEY_ID", "ASIAEXAMPLE3".into()),
            ("AWS_SECRET_ACCESS_KEY", "a-wrong-secret".into()),
            ("AWS_SESSION_TOKEN", "token-three".into()),
        ],
    );
    let report = lambda_env::run(config).await.unwrap();
    assert_clean_exit(&report);
    let requests = receiver.requests().await;
    assert!(!requests.is_empty());
    for request in &requests {
        assert_eq!(request["valid"], false, "{request}");
        assert_eq!(request["why"], "signature does not match", "{request}");
    }
    // Refused with 403 by the receiver: counted as failures, never as sent.
    assert!(stderr_of(&report).contains("HTTP 403"));
}

/// Exporter headers from a Secrets Manager secret (moto): they reach the receiver, signed
/// with the rest; after a rotation the new value does and the old one stops.
#[tokio::test]
async fn headers_from_a_secret_follow_its_rotation() {
    let moto = Moto::start(&[]);
    moto.python("sm.create_secret(Name='otlp-headers', SecretString='x-api-key=first-value,x-tenant=orders')");
    let receiver = Receiver::start(&[("testing", "testing", None)]);
    let mut extra = moto.sidecar_env();
    extra.extend([
        ("AWS_SESSION_TOKEN", String::new()),
        ("SIDECAR_TOKEN_AUTH", "off".to_string()),
        (
            "SIDECAR_OTLP_HEADERS_SOURCE",
            "secretsmanager:otlp-headers".to_string(),
        ),
        ("SIDECAR_OTLP_HEADERS_REFRESH_SECONDS", "1".to_string()),
    ]);
    let mut config = environment(&receiver, 6, &extra);
    config.gap_ms = 700;
    let run = tokio::spawn(lambda_env::run(config));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !receiver
        .requests()
        .await
        .iter()
        .any(|r| r["headers"]["x-api-key"] == "first-value")
    {
        assert!(
            Instant::now() < deadline,
            "the secret's header never arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    moto.python("sm.put_secret_value(SecretId='otlp-headers', SecretString='x-api-key=second-value,x-tenant=orders')");
    let report = run.await.unwrap().unwrap();
    assert_clean_exit(&report);
    let requests = all_verified(&receiver.requests().await, &report);
    let values: Vec<&str> = requests
        .iter()
        .map(|r| r["headers"]["x-api-key"].as_str().unwrap_or("<none>"))
        .collect();
    let rotated = values.iter().position(|v| *v == "second-value");
    assert!(rotated.is_some(), "the rotation never arrived: {values:?}");
    let rotated = rotated.unwrap();
    assert!(
        values
            .iter()
            .all(|v| *v == "first-value" || *v == "second-value")
    );
    assert!(
        values[..rotated].iter().all(|v| *v == "first-value"),
        "{values:?}"
    );
    // The request that re-reads the secret waits for it while the others of its flush (one
    // per signal) go with the current headers: the old value may arrive just after the new
    // one within that flush, never later.
    let last_old = values.iter().rposition(|v| *v == "first-value").unwrap();
    assert!(last_old < rotated + 3, "the old value went on: {values:?}");
    assert!(
        values.len() > rotated + 3,
        "no flush after the rotation: {values:?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r["headers"]["x-tenant"] == "orders")
    );
    let log = stderr_of(&report);
    assert!(
        !log.contains("first-value") && !log.contains("second-value"),
        "a header value was logged\n{log}"
    );
}

/// Logs to a log group of the user's (`SIDECAR_OTLP_LOG_GROUP`, in moto): the sidecar creates
/// the environment's stream there at start (the endpoint writes to existing streams only) and
/// names both in every logs request; a group that does not exist stops init, typed.
#[tokio::test]
async fn logs_to_a_group_of_ones_own_get_their_stream_created() {
    let moto = Moto::start(&[]);
    moto.python("boto3.client('logs').create_log_group(logGroupName='/otlp/orders')");
    let receiver = Receiver::start(&[("testing", "testing", None)]);
    let mut extra = moto.sidecar_env();
    extra.extend([
        ("AWS_SESSION_TOKEN", String::new()),
        ("SIDECAR_TOKEN_AUTH", "off".to_string()),
        ("SIDECAR_OTLP_LOG_GROUP", "/otlp/orders".to_string()),
    ]);
    let report = lambda_env::run(environment(&receiver, 2, &extra))
        .await
        .unwrap();
    assert_clean_exit(&report);
    let requests = all_verified(&receiver.requests().await, &report);
    let logs = of_path(&requests, "/v1/logs");
    assert!(!logs.is_empty());
    let stream = logs[0]["headers"]["x-aws-log-stream"].as_str().unwrap();
    assert!(
        logs.iter()
            .all(|r| r["headers"]["x-aws-log-group"] == "/otlp/orders"
                && r["headers"]["x-aws-log-stream"] == stream),
        "{logs:?}"
    );
    let streams = moto.python(
        "print(json.dumps([s['logStreamName'] for s in boto3.client('logs')\
         .describe_log_streams(logGroupName='/otlp/orders')['logStreams']]))",
    );
    assert_eq!(streams, json!([stream]).to_string());

    extra.retain(|(k, _)| *k != "SIDECAR_OTLP_LOG_GROUP");
    extra.push(("SIDECAR_OTLP_LOG_GROUP", "/otlp/missing".to_string()));
    let report = lambda_env::run(environment(&receiver, 1, &extra))
        .await
        .unwrap();
    let error = report.init.error.expect("init must fail");
    assert_eq!(error.error_type, "LogStream.NotFound", "{error:?}");
}

/// EMF and OTLP metrics to CloudWatch at once would count every invocation twice: init
/// fails naming SIDECAR_EMF and the variable that allows both, which then does.
#[tokio::test]
async fn emf_and_cloudwatch_otlp_metrics_are_refused_unless_both_are_asked_for() {
    let receiver = Receiver::start(&[("ASIAEXAMPLE4", "secret-four", Some("token-four"))]);
    let mut extra = vec![
        ("AWS_ACCESS_KEY_ID", "ASIAEXAMPLE4".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "secret-four".to_string()),
        ("AWS_SESSION_TOKEN", "token-four".to_string()),
        ("SIDECAR_OTLP_SIGV4_SERVICE", "monitoring".to_string()),
        ("SIDECAR_EMF", "on".to_string()),
    ];
    let report = lambda_env::run(environment(&receiver, 1, &extra))
        .await
        .unwrap();
    let error = report.init.error.as_ref().expect("init must fail");
    assert_eq!(error.error_type, "Config.InvalidValue", "{error:?}");
    let log = stderr_of(&report);
    assert!(
        log.contains("SIDECAR_EMF") && log.contains("SIDECAR_OTLP_METRICS_WITH_EMF"),
        "{log}"
    );

    extra.push(("SIDECAR_OTLP_METRICS_WITH_EMF", "on".to_string()));
    let report = lambda_env::run(environment(&receiver, 1, &extra))
        .await
        .unwrap();
    assert_clean_exit(&report);
}
