//! Helpers shared by the integration tests that run the real binary in lambda-env.
//!
//! Each test crate compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature as sig;
use base64::Engine as _;

use lambda_env::{EnvConfig, MetricPoint, Report, Sink, free_port};

/// The binary under test: `LAMBDA_SIDECAR_BIN` (the Makefile's one release build), else the
/// debug build cargo made for this test.
pub fn sidecar_bin() -> PathBuf {
    std::env::var_os("LAMBDA_SIDECAR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lambda-sidecar")))
}

/// `bytes` random bytes as lowercase hex: secrets, session tokens.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A JWT_SECRET that passes the sidecar's strength check.
pub fn random_secret() -> String {
    random_hex(36)
}

/// lambda-env running the sidecar for `function` on a free token port, with a random
/// `JWT_SECRET` and `env` on top (a later entry for the same variable wins): `invokes`
/// invocations of 20 ms, each fetching `tokens` tokens.
pub fn environment(
    function: &str,
    invokes: usize,
    tokens: usize,
    env: &[(&str, String)],
) -> EnvConfig {
    let port = free_port().unwrap();
    let mut vars = vec![
        ("JWT_SECRET".to_string(), random_secret()),
        ("SIDECAR_PORT".to_string(), port.to_string()),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    EnvConfig {
        extension: Some(sidecar_bin()),
        env: vars,
        function_name: function.to_string(),
        invokes,
        tokens_per_invoke: tokens,
        token_url: format!("http://127.0.0.1:{port}/token"),
        function_ms: 20,
        ..EnvConfig::default()
    }
}

/// Init went through and the sidecar exited 0 on its own, before the SHUTDOWN deadline.
pub fn assert_clean_exit(report: &Report) {
    let log = stderr_of(report);
    assert!(
        report.init.error.is_none(),
        "init failed: {:?}\n{log}",
        report.init.error
    );
    assert_eq!(
        report.shutdown.exit_code,
        Some(0),
        "{:?}\n{log}",
        report.shutdown
    );
    assert!(!report.shutdown.killed, "SIGKILLed at the deadline\n{log}");
}

/// What the extension wrote to stderr during a run.
pub fn stderr_of(report: &Report) -> String {
    report
        .stderr_path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

/// The latest cumulative value of a counter, summed over its label sets.
pub fn counter(metrics: &[MetricPoint], name: &str) -> f64 {
    let latest = metrics
        .iter()
        .filter(|m| m.name == name)
        .map(|m| m.time_unix_nanos)
        .max();
    metrics
        .iter()
        .filter(|m| m.name == name && Some(m.time_unix_nanos) == latest)
        .filter_map(|m| m.value)
        .sum()
}

/// Follows the cumulative counter `name` in what `metrics` receives, keeping only its latest
/// value (a soak's thousands of flushes would otherwise keep every point), until it reaches
/// `target`; the task returns that value.
pub fn count_until(
    metrics: &Sink,
    name: &'static str,
    target: f64,
) -> tokio::task::JoinHandle<f64> {
    let metrics = metrics.store().clone();
    tokio::spawn(async move {
        let mut latest = 0.0_f64;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let points = metrics.metrics();
            metrics.clear();
            latest = latest.max(counter(&points, name));
            if latest >= target {
                return latest;
            }
        }
    })
}

/// The sidecar's resident memory, sampled by lambda-env (`EnvConfig::rss_every`), grows by
/// less than `limit_mib` after `warm` invocations: the highest sample of the last quarter of
/// the run against the highest of the first quarter after `warm`. Highest, not one sample
/// each: the allocator's resident size saws up and down by a megabyte or more as arenas fill
/// and are trimmed, so two single samples compare phases of that saw, not a leak; a quarter
/// spans several of its periods, and a leak still shows as the whole distance between the
/// quarters. Prints the samples.
pub fn assert_rss_growth(report: &Report, warm: usize, limit_mib: u64, what: &str) {
    let samples = &report.rss_samples;
    let end = samples.iter().map(|s| s.invokes).max().unwrap_or(0);
    let quarter = (end.saturating_sub(warm) / 4).max(1);
    let highest = |from: usize, to: usize| {
        samples
            .iter()
            .filter(|s| (from..=to).contains(&s.invokes))
            .map(|s| s.rss_kb)
            .max()
            .unwrap_or_else(|| panic!("no sample from {from} to {to}: {samples:?}"))
    };
    let (first, last) = (highest(warm, warm + quarter), highest(end - quarter, end));
    let after_init = samples
        .iter()
        .find(|s| s.invokes == 0)
        .map_or(0, |s| s.rss_kb);
    let peak = samples.iter().map(|s| s.peak_kb).max().unwrap_or(0);
    eprintln!(
        "{what}: RSS after init {after_init} KiB, highest from {warm} to {} invocations {first} KiB, from {} to {end} {last} KiB, peak {peak} KiB; samples (invocations, KiB): {:?}",
        warm + quarter,
        end - quarter,
        samples
            .iter()
            .map(|s| (s.invokes, s.rss_kb))
            .collect::<Vec<_>>()
    );
    assert!(
        last < first + limit_mib * 1024,
        "{what}: RSS grew from {first} KiB (highest, {warm} to {} invocations) to {last} KiB (highest, {} to {end})",
        warm + quarter,
        end - quarter
    );
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`) of a running process.
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status: is the process running?"))
}

/// `der` as a PEM block labelled `label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A fresh PKCS#8 PEM private key for `alg`.
pub fn private_key(alg: &str) -> String {
    let rng = SystemRandom::new();
    let der: Vec<u8> = match alg {
        "ES256" => sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap()
            .as_ref()
            .to_vec(),
        "ES384" => sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .unwrap()
            .as_ref()
            .to_vec(),
        "EdDSA" => sig::Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref()
            .to_vec(),
        _ => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
            der.as_ref().to_vec()
        }
    };
    pem("PRIVATE KEY", &der)
}

/// A process the test started, killed and reaped when the test ends, even on failure.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A rotel collector receiving OTLP on gRPC and HTTP and forwarding over HTTP to `sink`.
pub struct Rotel {
    _child: KillOnDrop,
    pub grpc: u16,
    pub http: u16,
}

/// The project's Python venv (`.venv`, made by scripts/install-deps.sh).
pub fn venv_bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/bin")
        .join(name)
}

/// The credentials and region the tests give boto3 and the sidecar when moto does not
/// enforce IAM (any key is accepted then).
pub const MOTO_REGION: &str = "us-east-1";

/// moto in server mode on a free loopback port (`.venv/bin/moto_server`), killed on drop.
/// `env` goes to the server (e.g. `INITIAL_NO_AUTH_ACTION_COUNT` to enforce IAM).
pub struct Moto {
    _child: KillOnDrop,
    pub endpoint: String,
}

impl Moto {
    pub fn start(env: &[(&str, &str)]) -> Moto {
        let port = free_port().unwrap();
        let child = std::process::Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server from .venv (scripts/install-deps.sh)");
        let moto = Moto {
            _child: KillOnDrop(child),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not listen within 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        moto
    }

    /// Runs `code` with boto3 against this server (clients `sm`, `ssm`, `kms`, `iam` ready,
    /// and `pem(curve_or_rsa)` making a PKCS#8 PEM) and returns its stdout, trimmed.
    /// `credentials` overrides the default test credentials.
    pub fn python(&self, code: &str) -> String {
        self.python_as(("testing", "testing"), code)
    }

    pub fn python_as(&self, credentials: (&str, &str), code: &str) -> String {
        const PRELUDE: &str = "\
import boto3, json, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
sm = boto3.client('secretsmanager')
ssm = boto3.client('ssm')
kms = boto3.client('kms')
iam = boto3.client('iam')
def pem(kind):
    key = rsa.generate_private_key(65537, 2048) if kind == 'rsa' else ec.generate_private_key(kind)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()
";
        let output = std::process::Command::new(venv_bin("python"))
            .arg("-c")
            .arg(format!("{PRELUDE}{code}"))
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_DEFAULT_REGION", MOTO_REGION)
            .env("AWS_ACCESS_KEY_ID", credentials.0)
            .env("AWS_SECRET_ACCESS_KEY", credentials.1)
            .env_remove("AWS_SESSION_TOKEN")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "boto3 setup failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// The variables that point the sidecar at this server, as Lambda would give them.
    pub fn sidecar_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", MOTO_REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ]
    }
}

pub fn rotel_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ROTEL_AGENT") {
        return PathBuf::from(path);
    }
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    std::fs::read_dir(&lib)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| python.path().join("site-packages/rotel/rotel-agent"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("rotel-agent not found: run `make deps` or set ROTEL_AGENT"))
}

pub async fn rotel(sink: &Sink) -> Rotel {
    rotel_at(sink, free_port().unwrap(), free_port().unwrap()).await
}

/// A rotel collector on these ports (to start one again where a stopped one listened).
pub async fn rotel_at(sink: &Sink, grpc: u16, http: u16) -> Rotel {
    let child = Command::new(rotel_binary())
        .args([
            "start",
            "--exporter",
            "otlp",
            "--otlp-exporter-protocol",
            "http",
        ])
        .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
        .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
        .args(["--otlp-exporter-endpoint", &sink.endpoint()])
        .args(["--batch-timeout", "50ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rotel-agent starts");
    let rotel = Rotel {
        _child: KillOnDrop(child),
        grpc,
        http,
    };
    for port in [grpc, http] {
        let ready = async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("rotel listens");
    }
    rotel
}

/// Verifies `tokens` with PyJWT and with jose (tests/verifiers/verify_jwks.*), each picking
/// the key by kid from `jwks`, or with `secret` for HS*; `Err` names the verifier and why.
pub fn verify_tokens(
    alg: &str,
    tokens: &[String],
    jwks: Option<&serde_json::Value>,
    secret: Option<&str>,
) -> Result<(), String> {
    use std::io::Write as _;
    let mut job = serde_json::json!({"alg": alg, "tokens": tokens});
    if let Some(jwks) = jwks {
        job["jwks"] = jwks.clone();
    }
    if let Some(secret) = secret {
        job["secret"] = secret.into();
    }
    let verifiers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/verifiers");
    for (program, script) in [
        (venv_bin("python"), "verify_jwks.py"),
        (PathBuf::from("node"), "verify_jwks.mjs"),
    ] {
        let mut child = std::process::Command::new(program)
            .arg(verifiers.join(script))
            .current_dir(&verifiers)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(job.to_string().as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        if !output.status.success() {
            return Err(format!(
                "{script}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    Ok(())
}
