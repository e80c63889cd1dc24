//! Lambda Managed Instances (`EnvConfig::managed_instances`): invocations overlap, one per
//! runtime worker, and the environment is never frozen. No extension receives INVOKE there
//! (registering for it is refused), so an invocation only shows in the telemetry stream:
//! `platform.start`, `platform.runtimeDone` and `platform.report` of concurrent invocations
//! interleave in the same batches, each naming its `requestId`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::Environment;
use super::invocation::{self, Started, report_metrics, simulate, take_outcome};
use crate::aws::function_arn;
use crate::report::{InvokeReport, RssSample, ShutdownReport};
use crate::state::Shared;

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
            self.sample_rss(index, rss_samples);
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
            self.sample_rss(self.cfg.invokes, rss_samples);
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
            simulate: simulate(&self.cfg, index),
            timeout: Duration::from_millis(self.cfg.function_timeout_ms),
            arn: function_arn(&self.cfg.function_name),
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
    let started = Started::new(spec.sampled, spec.timeout);
    let request_id = started.request_id.clone();
    // Unlike on-demand, the start names `$LATEST` whatever `EnvConfig::function_version` says.
    shared
        .hub
        .emit("platform.start", started.start_record("$LATEST"));
    shared.update(|inner| {
        inner.active_requests.insert(request_id.clone());
        inner.runtime_queue.push_back(started.for_runtime(
            spec.arn.clone(),
            spec.index,
            spec.simulate,
        ));
    });
    shared
        .wait_until(
            |inner| inner.outcomes.contains_key(&request_id),
            Some(started.deadline),
        )
        .await;
    let (outcome, tokens) = {
        let mut inner = shared.lock();
        inner.active_requests.remove(&request_id);
        let tokens = inner.token_calls.remove(&request_id).unwrap_or_default();
        (take_outcome(&mut inner, &request_id), tokens)
    };
    let function_ms = invocation::emit_runtime_done(&shared.hub, &started, &outcome);
    // No extension takes part in an invocation here: it ends with the runtime's response.
    let metrics = report_metrics(function_ms, spec.memory_mb, spec.extension_pid);
    invocation::emit_report(&shared.hub, &started, &outcome, metrics);
    started.into_report(&outcome, function_ms, tokens)
}
