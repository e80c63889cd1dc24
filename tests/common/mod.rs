//! Helpers shared by the integration tests that run the real binary in lambda-env.
//!
//! Each test crate compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::path::PathBuf;

use lambda_env::{MetricPoint, Report};

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

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`) of a running process.
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status: is the process running?"))
}
