//! What one invocation's platform events say, for both modes: on-demand (`env.rs`), where
//! the INVOKE extensions take part, and Managed Instances (`managed.rs`), where none does.
//! Each mode decides when an invocation starts and ends; its ids, deadline, the
//! `platform.runtimeDone` and the `platform.report` records are made here once, so that
//! the two modes cannot drift apart in what an extension reads from the Telemetry API.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::{EnvConfig, proc_status_kb, round3};
use crate::clock::{epoch_ms, ms, rfc3339_ms};
use crate::function::{SIMULATE_ERROR, SIMULATE_TIMEOUT};
use crate::ids::{XrayTrace, random_hex, uuid_v4};
use crate::report::{InvokeReport, InvokeStatus, TokenCall};
use crate::state::{Inner, Invocation, Outcome};
use crate::telemetry::Hub;

/// One invocation as the platform starts it.
pub(super) struct Started {
    pub request_id: String,
    pub xray: XrayTrace,
    /// The deadline the runtime and the extensions are told (epoch ms)...
    pub deadline_ms: u64,
    /// ...and the same instant for the orchestrator's waits.
    pub deadline: tokio::time::Instant,
    /// The `tracing` object of the invocation's `platform.*` records.
    pub tracing: Value,
    /// When the invocation started: wall-clock (the spans' `start`) and monotonic (its
    /// durations).
    pub wall: SystemTime,
    pub at: Instant,
}

impl Started {
    /// A new invocation, starting now, whose function times out `timeout` from now.
    pub fn new(sampled: bool, timeout: Duration) -> Started {
        let request_id = uuid_v4();
        let xray = XrayTrace::new(sampled);
        let tracing =
            json!({"spanId": random_hex(8), "type": "X-Amzn-Trace-Id", "value": xray.value});
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        Started {
            request_id,
            tracing,
            deadline_ms: epoch_ms().saturating_add(timeout_ms),
            deadline: tokio::time::Instant::now() + timeout,
            wall: SystemTime::now(),
            at: Instant::now(),
            xray,
        }
    }

    /// The `platform.start` record of a function running `version`.
    pub fn start_record(&self, version: &str) -> Value {
        json!({"requestId": self.request_id, "version": version, "tracing": self.tracing})
    }

    /// The invocation's entry in [`Report::invokes`](crate::report::Report::invokes), for
    /// one no extension held open after the runtime's `outcome` (the function ran
    /// `function_ms`); on-demand fills in the extensions' part.
    pub fn into_report(
        self,
        outcome: &Outcome,
        function_ms: f64,
        tokens: Vec<TokenCall>,
    ) -> InvokeReport {
        let started_unix_ms = unix_ms(self.wall);
        let responded_unix_ms = started_unix_ms + ms(outcome.at.saturating_duration_since(self.at));
        InvokeReport {
            started_unix_ms,
            responded_unix_ms,
            frozen_unix_ms: responded_unix_ms,
            request_id: self.request_id,
            trace_id: self.xray.trace_id,
            xray_value: self.xray.value,
            deadline_ms: self.deadline_ms,
            function_ms,
            hold_ms: 0.0,
            extensions_returned: true,
            status: outcome.status,
            tokens,
        }
    }

    /// What the runtime's `invocation/next` returns for it: invoke `index` of the run,
    /// invoked as `arn`, the function asked to `simulate` a failure or not ("none").
    pub fn for_runtime(&self, arn: String, index: usize, simulate: &str) -> Invocation {
        Invocation {
            request_id: self.request_id.clone(),
            deadline_ms: self.deadline_ms,
            arn,
            xray_value: self.xray.value.clone(),
            payload: json!({"invoke": index, "simulate": simulate}),
        }
    }
}

/// `t` in milliseconds since the Unix epoch.
fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// What invoke `index` asks the function to simulate: [`SIMULATE_ERROR`] on the
/// `fail_invokes`, [`SIMULATE_TIMEOUT`] on the `timeout_invokes`, otherwise "none".
pub(super) fn simulate(cfg: &EnvConfig, index: usize) -> &'static str {
    if cfg.fail_invokes.contains(&index) {
        SIMULATE_ERROR
    } else if cfg.timeout_invokes.contains(&index) {
        SIMULATE_TIMEOUT
    } else {
        "none"
    }
}

/// Takes the runtime's answer to `request_id` out of the state. Called once the runtime
/// answered or the deadline passed: no answer by then is a timeout, `Sandbox.Timedout`.
pub(super) fn take_outcome(inner: &mut Inner, request_id: &str) -> Outcome {
    inner
        .outcomes
        .remove(request_id)
        .unwrap_or_else(|| Outcome {
            at: Instant::now(),
            status: InvokeStatus::Timeout,
            produced_bytes: 0,
            error_type: Some("Sandbox.Timedout".to_string()),
        })
}

/// Emits the `platform.runtimeDone` of `started`, which the runtime answered with
/// `outcome`, and returns the function's duration in ms: from the start to the response
/// (or the deadline), the figure `platform.report` builds on.
pub(super) fn emit_runtime_done(hub: &Hub, started: &Started, outcome: &Outcome) -> f64 {
    let function = outcome.at.saturating_duration_since(started.at);
    let function_ms = ms(function);
    let mut record = json!({
        "requestId": started.request_id,
        "status": outcome.status.as_str(),
        "metrics": {"durationMs": round3(function_ms), "producedBytes": outcome.produced_bytes},
        "spans": [
            {"name": "responseLatency", "start": rfc3339_ms(started.wall), "durationMs": round3(function_ms)},
            {"name": "responseDuration", "start": rfc3339_ms(started.wall + function), "durationMs": 0.0},
        ],
        "tracing": started.tracing,
    });
    if let Some(t) = &outcome.error_type {
        record["errorType"] = json!(t);
    }
    hub.emit("platform.runtimeDone", record);
    function_ms
}

/// The `metrics` of a `platform.report`: Lambda bills `duration_ms` (the function's time,
/// and on-demand the extensions' post-invoke work too), rounded up to 1 ms at least. The
/// extension process's peak RSS (VmHWM) stands in for the sandbox's memory used.
pub(super) fn report_metrics(
    duration_ms: f64,
    memory_mb: u32,
    extension_pid: Option<u32>,
) -> Value {
    let max_memory_mb = extension_pid
        .and_then(|pid| proc_status_kb(pid, "VmHWM:"))
        .unwrap_or(0)
        .div_ceil(1024)
        .max(1);
    json!({
        "durationMs": round3(duration_ms),
        "billedDurationMs": duration_ms.ceil().max(1.0) as u64,
        "memorySizeMB": memory_mb,
        "maxMemoryUsedMB": max_memory_mb,
    })
}

/// Emits the `platform.report` of `started`, which the runtime answered with `outcome`.
pub(super) fn emit_report(hub: &Hub, started: &Started, outcome: &Outcome, metrics: Value) {
    let mut record = json!({
        "requestId": started.request_id,
        "status": outcome.status.as_str(),
        "metrics": metrics,
        "tracing": started.tracing,
    });
    if let Some(t) = &outcome.error_type {
        record["errorType"] = json!(t);
    }
    hub.emit("platform.report", record);
}
