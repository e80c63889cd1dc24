//! The event loop: what the sidecar does at INVOKE, at each tick of the Managed Instances
//! timer and at SHUTDOWN, one event at a time. When to flush and for how long is asked of
//! [`flush`]; this module reads the clock and does what it is told.
//!
//! At INVOKE: record it and refresh a rotating key, and flush as [`flush::decide`] says:
//! at once, what earlier invocations left (the flush runs while the function runs, so it
//! only costs the function time when it outlasts the function); or at the invocation's end,
//! once its `platform.runtimeDone` has arrived and been derived (fresh data, for a short
//! post-runtime hold); or not at all. Then let the crate call event/next.
//! On Managed Instances (no INVOKE): a timer flushes what finished since the last tick, and
//! refreshes a rotating key beside it.
//! At SHUTDOWN: let accepted token requests finish, wait briefly for the `platform.report` of
//! every invocation still in flight, flush, write the last EMF lines, return (exit 0).

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lambda_extension::{InvokeEvent, NextEvent, ShutdownEvent};
use opentelemetry_sdk::trace::SpanData;
use tokio::sync::{mpsc, watch};
use tokio::time::{Interval, MissedTickBehavior};
use tracing::Instrument as _;

use super::LifecycleError;
use super::client::Handoff;
use super::flush::{self, Cadence, FlushDecision, FlushEvent, FlushSettings, ShutdownWait};
use super::startup::TokenServer;
use crate::export::{Exporter, FlushReport};
use crate::metrics::{KeyOperation, Signal};
use crate::pipeline::{Pipeline, Recorder};
use crate::records::{InvokeRecord, Record};
use crate::selftrace::{self, SelfTraces};
use crate::token::source::Refresher;

/// Everything running after a successful start.
pub(super) struct Sidecar {
    pub(super) pipeline: Pipeline,
    pub(super) recorder: Recorder,
    pub(super) exporter: Exporter,
    pub(super) flush: FlushSettings,
    /// The recent INVOKEs, which the `adaptive` and `periodic` rules read.
    pub(super) cadence: Cadence,
    /// The request id of the last INVOKE, whose runtimeDone the next INVOKE flush awaits
    /// briefly ([`flush::previous_end_wait`]).
    pub(super) previous: Option<String>,
    /// On Managed Instances, how long SHUTDOWN first lets buffered telemetry arrive: two
    /// Telemetry API buffering periods (`SIDECAR_TELEMETRY_BUFFER_MS`). Zero otherwise.
    pub(super) settle: Duration,
    pub(super) tokens: TokenServer,
    pub(super) telemetry_port: u16,
    pub(super) stop_intake: watch::Sender<bool>,
    /// Re-reads a Secrets Manager or SSM key at INVOKE, or at each tick on Managed Instances.
    pub(super) refresher: Option<Refresher>,
    /// The sidecar's own finished spans (`SIDECAR_SELF_TRACES=on`), sent with each flush.
    pub(super) self_traces: Option<SelfTraces>,
}

/// Handles the events `next_events` (the crate's event/next loop) hands over on `handoffs`,
/// and the timer's ticks, one at a time, until SHUTDOWN is handled or event/next fails.
pub(super) async fn run(
    mut sidecar: Sidecar,
    next_events: impl Future<Output = Result<(), lambda_extension::Error>>,
    mut handoffs: mpsc::Receiver<Handoff>,
) -> Result<(), LifecycleError> {
    let mut ticks = sidecar.flush.timer().map(timer);
    tokio::pin!(next_events);
    loop {
        tokio::select! {
            // SHUTDOWN before another tick: a tick due while a slow flush ran would
            // otherwise win half the time and run a second flush into the deadline.
            biased;
            // The crate's loop only ends on an error (event/next failed).
            result = &mut next_events => return result.map_err(LifecycleError::EventLoop),
            handoff = handoffs.recv() => {
                let Some((event, done)) = handoff else { return Ok(()) };
                match event {
                    NextEvent::Invoke(invoke) => {
                        sidecar.on_invoke(invoke).await;
                        let _ = done.send(());
                    }
                    NextEvent::Shutdown(shutdown) => {
                        sidecar.on_shutdown(shutdown).await;
                        return Ok(());
                    }
                }
            }
            () = tick(&mut ticks) => {
                sidecar.on_tick().await;
                // The next tick a full interval after this flush ended, not at once: a
                // slow collector gets a flush per interval, not back-to-back flushes.
                if let Some(ticks) = ticks.as_mut() {
                    ticks.reset();
                }
            }
        }
    }
}

/// The timer of the periodic flush, first firing one `period` from now.
fn timer(period: Duration) -> Interval {
    let first = tokio::time::Instant::now() + period;
    let mut ticks = tokio::time::interval_at(first, period);
    // A flush that outlasts the interval delays the next tick rather than queuing a burst of
    // them: one flush at a time (the loop runs one), at most one per interval.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

/// The next tick of the periodic flush; never, without one.
async fn tick(ticks: &mut Option<Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Milliseconds since the Unix epoch, the clock Lambda's deadlines are given in.
fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Sidecar {
    /// INVOKE: record it, flush as the rules say (now, at the invocation's end, or not), with
    /// the key refresh beside it under the same budget, so that the refresh never holds the
    /// function longer than the flush; then record the hand-back: from then on the sidecar
    /// no longer holds the invocation, which is how its post-runtime hold is measured.
    async fn on_invoke(&mut self, invoke: InvokeEvent) {
        let received = SystemTime::now();
        tracing::info!(request_id = %invoke.request_id, "received INVOKE");
        let xray = Some(invoke.tracing.value).filter(|v| !v.is_empty());
        self.recorder.record(Record::Invoke(InvokeRecord {
            request_id: invoke.request_id.clone(),
            deadline_ms: invoke.deadline_ms,
            invoked_arn: invoke.invoked_function_arn,
            xray,
            received,
        }));
        let now_ms = epoch_ms(received);
        let event = FlushEvent::Invoke {
            now_ms,
            deadline_ms: invoke.deadline_ms,
            recent: self.cadence.invoked(now_ms),
        };
        let decision = flush::decide(self.flush, event);
        let refresh_budget = match decision {
            FlushDecision::Flush { budget } | FlushDecision::AtEnd { budget, .. } => budget,
            FlushDecision::Skip => flush::invoke_budget(self.flush, now_ms, invoke.deadline_ms),
        };
        if !matches!(decision, FlushDecision::Skip) {
            self.cadence.flushed(now_ms);
        }
        let previous = self.previous.replace(invoke.request_id.clone());
        let Sidecar {
            pipeline,
            recorder,
            exporter,
            refresher,
            self_traces,
            ..
        } = self;
        let refresh = refresh_key(refresher.as_mut(), recorder, refresh_budget);
        let flushed = async {
            let budget = match decision {
                FlushDecision::Flush { budget } => {
                    // Within the budget: the flush gets what the wait left.
                    let started = Instant::now();
                    if let Some(previous) = &previous {
                        let done = pipeline.await_runtime_done(previous);
                        let _ = tokio::time::timeout(flush::previous_end_wait(budget), done).await;
                    }
                    budget.saturating_sub(started.elapsed())
                }
                FlushDecision::AtEnd { wait, budget } => {
                    let done = pipeline.await_runtime_done(&invoke.request_id);
                    if tokio::time::timeout(wait, done).await.is_err() {
                        tracing::warn!(
                            request_id = %invoke.request_id,
                            "platform.runtimeDone did not come in time; flushing without it"
                        );
                        recorder.metrics().end_missed();
                    }
                    budget
                }
                FlushDecision::Skip => return,
            };
            let trigger = match decision {
                FlushDecision::AtEnd { .. } => Trigger::End,
                _ => Trigger::Invoke,
            };
            let (spans, logs) = pipeline.drain().await;
            exporter.queue_logs(logs);
            let sent = Sent {
                exporter,
                recorder,
                self_traces: self_traces.as_ref(),
            };
            let report = sent.flush(spans, budget, trigger).await;
            tracing::debug!(?report, ?decision, "flushed for an INVOKE");
        };
        tokio::join!(flushed, refresh);
        self.recorder.record(Record::Resumed {
            request_id: invoke.request_id,
            at: SystemTime::now(),
        });
    }

    /// The periodic flush (Managed Instances): what finished since the last one; the span
    /// buffer's bound and its overflow count apply. Without a new record and with nothing
    /// kept from a failed flush, the rules skip it (counts made outside records, such as
    /// refused connections, go with the next flush). A rotating key is refreshed at every
    /// tick, flush or not: no INVOKE comes to do it. Both end within the tick's budget.
    async fn on_tick(&mut self) {
        let drained = self.pipeline.drain_if_changed().await;
        let pending = drained.is_some() || !self.exporter.idle();
        let refresh = refresh_key(
            self.refresher.as_mut(),
            &self.recorder,
            flush::tick_budget(self.flush),
        );
        let FlushDecision::Flush { budget } =
            flush::decide(self.flush, FlushEvent::Tick { pending })
        else {
            refresh.await;
            return;
        };
        let (spans, logs) = drained.unwrap_or_default();
        self.exporter.queue_logs(logs);
        let sent = Sent {
            exporter: &mut self.exporter,
            recorder: &self.recorder,
            self_traces: self.self_traces.as_ref(),
        };
        let (report, ()) = tokio::join!(sent.flush(spans, budget, Trigger::Tick), refresh);
        tracing::debug!(?report, "periodic flush");
    }

    /// SHUTDOWN: each step bounded by its own wait and by the deadline, less the margin
    /// exiting needs ([`flush::shutdown_window`]), so the process exits before Lambda's
    /// SIGKILL however slow the collector or the telemetry.
    async fn on_shutdown(mut self, shutdown: ShutdownEvent) {
        let now_ms = epoch_ms(SystemTime::now());
        tracing::info!(reason = %shutdown.shutdown_reason, "received SHUTDOWN");
        let deadline =
            Instant::now() + flush::shutdown_window(self.flush, now_ms, shutdown.deadline_ms);
        let left = || deadline.saturating_duration_since(Instant::now());
        let drain = flush::shutdown_wait(ShutdownWait::TokenRequests, left());
        self.tokens.finish(drain).await;
        let reports = flush::shutdown_wait(ShutdownWait::Reports, left());
        self.await_reports(reports).await;
        let (spans, logs) = self.pipeline.finish(SystemTime::now()).await;
        self.exporter.queue_logs(logs);
        let event = FlushEvent::Shutdown { left: left() };
        if let FlushDecision::Flush { budget } = flush::decide(self.flush, event) {
            let sent = Sent {
                exporter: &mut self.exporter,
                recorder: &self.recorder,
                self_traces: self.self_traces.as_ref(),
            };
            log_shutdown_flush(&sent.flush(spans, budget, Trigger::Shutdown).await);
        }
        self.exporter
            .emf_written(flush::shutdown_wait(ShutdownWait::Emf, left()))
            .await;
        let _ = self.stop_intake.send(true);
    }

    /// Waits at most `limit` for the `platform.report` of every invocation still in flight,
    /// not only the last INVOKE's: on Managed Instances several run at once. No INVOKE names
    /// them there, so one that began just before SHUTDOWN is known only from its
    /// platform.start, which Lambda may still hold for a buffering period: `settle` lets it
    /// arrive before the wait counts what is in flight.
    async fn await_reports(&mut self, limit: Duration) {
        let reports = async {
            tokio::time::sleep(self.settle).await;
            self.pipeline.await_reports().await;
        };
        if tokio::time::timeout(limit, reports).await.is_err() {
            tracing::warn!("some platform.report did not arrive before the shutdown flush");
        }
    }
}

/// Re-reads a rotating key (Secrets Manager, SSM), giving up when `budget` runs out: its
/// request is then dropped (cancelled), so nothing is in flight at the freeze. A failure
/// keeps the current key signing, and is logged and counted.
async fn refresh_key(refresher: Option<&mut Refresher>, recorder: &Recorder, budget: Duration) {
    let Some(refresher) = refresher else {
        return;
    };
    let failure = match tokio::time::timeout(budget, refresher.on_invoke(Instant::now())).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => format!("{e} ({})", e.error_type()),
        Err(_) => "cut short by the flush budget".to_string(),
    };
    tracing::warn!(error = %failure, "key refresh failed; the current key keeps signing");
    recorder.metrics().key_failure(KeyOperation::Refresh);
}

/// What caused a flush: the `trigger` of its `sidecar.flush` span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    Invoke,
    End,
    Tick,
    Shutdown,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Invoke => "invoke",
            Trigger::End => "end",
            Trigger::Tick => "tick",
            Trigger::Shutdown => "shutdown",
        }
    }
}

/// What a flush sends with and through.
struct Sent<'a> {
    exporter: &'a mut Exporter,
    recorder: &'a Recorder,
    self_traces: Option<&'a SelfTraces>,
}

impl Sent<'_> {
    /// Sends `spans` and the sidecar's own finished spans (their overflow counted) with what
    /// the exporter holds, for `budget`, inside a `sidecar.flush` self-trace span that
    /// records what it sent; SHUTDOWN's is the environment's last flush.
    async fn flush(
        self,
        mut spans: Vec<SpanData>,
        budget: Duration,
        trigger: Trigger,
    ) -> FlushReport {
        if let Some(self_traces) = self.self_traces {
            let (own, dropped) = self_traces.drain();
            spans.extend(own);
            self.recorder.metrics().dropped(Signal::Traces, dropped);
        }
        let span = tracing::info_span!(
            target: selftrace::TARGET,
            "sidecar.flush",
            trigger = trigger.as_str(),
            items = tracing::field::Empty,
            bytes = tracing::field::Empty,
            metrics_sent = tracing::field::Empty,
            outcome = tracing::field::Empty,
            duration_ms = tracing::field::Empty,
        );
        let flushed = match trigger {
            Trigger::Shutdown => {
                self.exporter
                    .flush_last(spans, budget)
                    .instrument(span.clone())
                    .await
            }
            _ => {
                self.exporter
                    .flush(spans, budget)
                    .instrument(span.clone())
                    .await
            }
        };
        if !span.is_disabled() {
            // As i64: the OTel attribute type, where a u64 would become a string.
            let items = flushed.spans_sent + flushed.logs_sent;
            span.record("items", i64::try_from(items).unwrap_or(i64::MAX));
            span.record(
                "bytes",
                i64::try_from(flushed.bytes_sent).unwrap_or(i64::MAX),
            );
            span.record("metrics_sent", flushed.metrics_sent);
            span.record("outcome", outcome(&flushed));
            span.record("duration_ms", flushed.duration.as_secs_f64() * 1e3);
        }
        flushed
    }
}

/// A flush's outcome, in a word: everything given was sent, some waits for a later flush,
/// a queue sat out backing off, or the budget ran out.
fn outcome(report: &FlushReport) -> &'static str {
    if report.timed_out {
        "timed_out"
    } else if report.backed_off {
        "backed_off"
    } else if report.spans_pending + report.logs_pending > 0 {
        "partial"
    } else {
        "sent"
    }
}

/// The last flush's outcome, at info: what the environment's end sent, and what it lost.
fn log_shutdown_flush(report: &FlushReport) {
    tracing::info!(
        spans_sent = report.spans_sent,
        spans_pending = report.spans_pending,
        logs_sent = report.logs_sent,
        logs_pending = report.logs_pending,
        metrics_sent = report.metrics_sent,
        timed_out = report.timed_out,
        "shutdown flush done"
    );
}
