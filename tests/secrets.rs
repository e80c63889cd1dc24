//! Secrets in the configuration, through the real binary: a key pasted into the wrong
//! variable is never echoed (init/error body, stderr), and a value that is not UTF-8 is a
//! config error rather than "unset".

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::ffi::OsStrExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::sidecar_bin;
use lambda_env::{EnvConfig, free_port};

/// The base64 body of a PKCS#8 Ed25519 key (not a real one: it only has to look like one).
const PEM_BODY: &str = "MC4CAQAwBQYDK2VwBCIEIC3mdZlB9Ep7yJSXrk0tyTYJr2nqXUmvbcvZw8hFyuXY";

/// A PEM put in JWT_PRIVATE_KEY_FILE instead of JWT_PRIVATE_KEY: start-up fails, and neither
/// the init/error body nor the log quotes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pem_in_the_key_file_variable_is_not_echoed() {
    let port = free_port().unwrap();
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----\n");
    let config = EnvConfig {
        extension: Some(sidecar_bin()),
        env: vec![
            ("JWT_ALGORITHM".to_string(), "EdDSA".to_string()),
            ("JWT_PRIVATE_KEY_FILE".to_string(), pem),
            ("SIDECAR_PORT".to_string(), port.to_string()),
        ],
        invokes: 1,
        token_url: format!("http://127.0.0.1:{port}/token"),
        ..EnvConfig::default()
    };
    let report = lambda_env::run(config).await.unwrap();
    let stderr = report
        .stderr_path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let error = report.init.error.as_ref().expect("init must fail");
    let message = error.body["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("JWT_PRIVATE_KEY_FILE"), "{message}");
    for (what, text) in [("init/error", message), ("stderr", stderr.as_str())] {
        assert!(
            !text.contains(PEM_BODY) && !text.contains("BEGIN PRIVATE KEY"),
            "the key is echoed in {what}: {text}"
        );
    }
    assert_eq!(error.exit_code, Some(1));
}

/// Kills the process if the test ends before it exits.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `SIDECAR_LOG_FORMAT` that is not UTF-8 stops `serve` with a config error naming it;
/// it was taken as unset, and the server started with the default.
#[test]
fn a_value_that_is_not_utf8_stops_start_up() {
    let mut secret = [0u8; 36];
    getrandom::fill(&mut secret).unwrap();
    let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let child = Command::new(sidecar_bin())
        .arg("serve")
        .env_clear()
        .env("JWT_SECRET", secret)
        .env("SIDECAR_PORT", free_port().unwrap().to_string())
        .env(
            "SIDECAR_LOG_FORMAT",
            std::ffi::OsStr::from_bytes(b"te\xffxt"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = status.expect("serve started instead of refusing the configuration");
    let mut stderr = String::new();
    std::io::Read::read_to_string(guard.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("SIDECAR_LOG_FORMAT") && stderr.contains("UTF-8"),
        "{stderr}"
    );
}
