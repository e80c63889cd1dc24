//! Lambda Managed Instances (`EnvConfig::managed_instances`): invocations overlap, one per
//! runtime worker, and the environment is never frozen. No extension receives INVOKE there
//! (registering for it is refused), so an invocation only shows in the telemetry stream:
//! `platform.start`, `platform.runtimeDone` and `platform.report` of concurrent invocations
//! interleave in the same batches, each naming its `requestId`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use tokio::sync::Semaphore;

use super::{
    ACCOUNT_ID, Environment, REGION, SIMULATE_ERROR, SIMULATE_TIMEOUT, proc_status_kb,
    report_record, round3, runtime_done_record,
};
use crate::api::{self, Shared};
use crate::clock::{epoch_ms, ms};
use crate::ids::{XrayTrace, random_hex, uuid_v4};
use crate::report::{InvokeReport, InvokeStatus, RssSample, ShutdownReport};

/// The longest the orchestrator waits for the workers to take every queued invocation
/// before it sends SHUTDOWN anyway (`EnvConfig::shutdown_in_flight`).
const DISPATCH_WAIT: Duration = Duration::from_secs(30);

/// What one invocation needs once it runs on its own task.
struct Spec {
    index: usize,
    sampled: bool,
    simulate: &'static str,
    timeout: Duration,
    arn: String,
    memory_mb: u32,
    extension_pid: Option<u32>,
}

impl Environment {
    /// Runs the invocations concurrently on `workers` workers, `gap_ms` apart, then the
    /// shutdown phase (at once after the last dispatch with `shutdown_in_flight`).
    pub(super) async fn run_concurrently(
        &mut self,
        rss_samples: &mut Vec<RssSample>,
    ) -> (Vec<InvokeReport>, ShutdownReport) {
        let workers = Arc::new(Semaphore::new(self.cfg.workers.max(1)));
        let mut running = Vec::with_capacity(self.cfg.invokes);
        for index in 0..self.cfg.invokes {
            if self.cfg.rss_every > 0 && index % self.cfg.rss_every == 0 {
                rss_samples.extend(self.rss_sample(index));
            }
            // The semaphore is never closed: an error cannot happen, and would only mean
            // the invocation runs without waiting for a free worker.
            let permit = Arc::clone(&workers).acquire_owned().await.ok();
            let spec = self.spec(index);
            let shared = Arc::clone(&self.shared);
            running.push(tokio::spawn(async move {
                let report = invoke(&shared, spec).await;
                drop(permit);
                report
            }));
            if self.cfg.gap_ms > 0 {
                tokio::time::sleep(Duration::from_millis(self.cfg.gap_ms)).await;
            }
        }
        if self.cfg.shutdown_in_flight {
            let taken = tokio::time::Instant::now() + DISPATCH_WAIT;
            self.shared
                .wait_until(|inner| inner.runtime_queue.is_empty(), Some(taken))
                .await;
            // The workers go on through SHUTDOWN: out of reach of `shutdown_phase`, which
            // stops the function.
            let workers: Vec<_> = self
                .function
                .take()
                .into_iter()
                .chain(self.workers.drain(..))
                .collect();
            let shutdown = self.shutdown_phase().await;
            let invokes = join(running).await;
            for worker in workers {
                worker.abort();
            }
            (invokes, shutdown)
        } else {
            let invokes = join(running).await;
            if self.cfg.rss_every > 0 {
                rss_samples.extend(self.rss_sample(self.cfg.invokes));
            }
            let shutdown = self.shutdown_phase().await;
            for worker in self.workers.drain(..) {
                worker.abort();
            }
            (invokes, shutdown)
        }
    }

    fn spec(&self, index: usize) -> Spec {
        Spec {
            index,
            sampled: !self.cfg.unsampled_invokes.contains(&index),
            simulate: if self.cfg.fail_invokes.contains(&index) {
                SIMULATE_ERROR
            } else if self.cfg.timeout_invokes.contains(&index) {
                SIMULATE_TIMEOUT
            } else {
                "none"
            },
            timeout: Duration::from_millis(self.cfg.function_timeout_ms),
            arn: format!(
                "arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{}",
                self.cfg.function_name
            ),
            memory_mb: self.cfg.memory_mb,
            extension_pid: self.extension_pid(),
        }
    }
}

/// The reports of `tasks`, in dispatch order.
async fn join(tasks: Vec<tokio::task::JoinHandle<InvokeReport>>) -> Vec<InvokeReport> {
    let mut reports = Vec::with_capacity(tasks.len());
    for task in tasks {
        reports.extend(task.await.ok());
    }
    reports
}

/// One invocation: `platform.start`, handed to the next free worker, then its
/// `platform.runtimeDone` and `platform.report` once the worker answers (or at the
/// deadline; a worker that overran it is not replaced).
async fn invoke(shared: &Shared, spec: Spec) -> InvokeReport {
    let request_id = uuid_v4();
    let xray = XrayTrace::new(spec.sampled);
    let deadline_ms = epoch_ms() + spec.timeout.as_millis() as u64;
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let tracing = json!({"spanId": random_hex(8), "type": "X-Amzn-Trace-Id", "value": xray.value});
    let start_wall = SystemTime::now();
    let t_start = Instant::now();
    shared.hub.emit(
        "platform.start",
        json!({"requestId": request_id, "version": "$LATEST", "tracing": tracing}),
    );
    shared.update(|inner| {
        inner.active_requests.insert(request_id.clone());
        inner.runtime_queue.push_back(api::Invocation {
            request_id: request_id.clone(),
            deadline_ms,
            arn: spec.arn.clone(),
            xray_value: xray.value.clone(),
            payload: json!({"invoke": spec.index, "simulate": spec.simulate}),
        });
    });
    shared
        .wait_until(
            |inner| inner.outcomes.contains_key(&request_id),
            Some(deadline),
        )
        .await;
    let (t_resp, status, produced_bytes, error_type, tokens) = {
        let mut inner = shared.lock();
        inner.active_requests.remove(&request_id);
        let tokens = inner.token_calls.remove(&request_id).unwrap_or_default();
        match inner.outcomes.remove(&request_id) {
            Some(o) => (o.at, o.status, o.produced_bytes, o.error_type, tokens),
            None => (
                Instant::now(),
                InvokeStatus::Timeout,
                0,
                Some("Sandbox.Timedout".to_string()),
                tokens,
            ),
        }
    };
    let function_ms = ms(t_resp.saturating_duration_since(t_start));
    let response_wall = start_wall + t_resp.saturating_duration_since(t_start);
    shared.hub.emit(
        "platform.runtimeDone",
        runtime_done_record(
            &request_id,
            status,
            error_type.as_deref(),
            (start_wall, response_wall, function_ms),
            produced_bytes,
            &tracing,
        ),
    );
    // No extension takes part in an invocation here: it ends with the runtime's response.
    let max_memory_mb = spec
        .extension_pid
        .and_then(|pid| proc_status_kb(pid, "VmHWM:"))
        .unwrap_or(0)
        .div_ceil(1024)
        .max(1);
    let metrics = json!({
        "durationMs": round3(function_ms),
        "billedDurationMs": function_ms.ceil().max(1.0) as u64,
        "memorySizeMB": spec.memory_mb,
        "maxMemoryUsedMB": max_memory_mb,
    });
    shared.hub.emit(
        "platform.report",
        report_record(
            &request_id,
            status,
            error_type.as_deref(),
            metrics,
            &tracing,
        ),
    );
    InvokeReport {
        request_id,
        trace_id: xray.trace_id,
        xray_value: xray.value,
        deadline_ms,
        function_ms,
        hold_ms: 0.0,
        extensions_returned: true,
        status,
        tokens,
    }
}
