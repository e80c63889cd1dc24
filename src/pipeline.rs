//! The pipeline task: records in, in arrival order; spans and log records out, when the
//! lifecycle asks.
//!
//! The listener, the token handler and the lifecycle each hold a [`Recorder`] and push
//! [`Record`]s without waiting; one task owns the [`Deriver`] and applies them in order. The
//! lifecycle's [`Pipeline::drain`] goes through the same queue, so a drain returns exactly the
//! spans derived from everything recorded before it: the ordering is the queue's, no locks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use opentelemetry_sdk::trace::SpanData;
use tokio::sync::{mpsc, oneshot};

use crate::derive::Deriver;
use crate::events::EventKind;
use crate::items::LogEntry;
use crate::metrics::{Metrics, Signal};
use crate::records::Record;

/// Messages queued ahead of the pipeline task. A full queue means the task is far behind;
/// records are then dropped and counted rather than letting a handler wait.
const QUEUE_CAPACITY: usize = 4096;

/// Telemetry events queued ahead of the pipeline task, across batches, by weight: 1 per
/// event, plus 1 per started KiB of log text it carries. A message is one whole batch (up
/// to 10,000 events, Lambda's largest `maxItems`), so [`QUEUE_CAPACITY`] alone would let
/// thousands of batches wait; each platform event is bounded by the parser
/// (`intake::events`) to a few hundred bytes, and log lines (up to 32 KiB each) weigh their
/// size, so this bounds the queue's memory (~20 MiB of log text at most). Two full batches
/// of platform events fit; past it a batch is dropped and counted like any record.
const MAX_QUEUED_EVENTS: usize = 20_000;

/// A batch's weight in [`MAX_QUEUED_EVENTS`].
fn weight(batch: &crate::events::Batch) -> usize {
    batch
        .events
        .iter()
        .map(|event| match &event.kind {
            EventKind::Function(line) | EventKind::ExtensionLog(line) => {
                1 + line.bytes().div_ceil(1024)
            }
            _ => 1,
        })
        .sum()
}

enum Msg {
    /// A record and its weight in [`MAX_QUEUED_EVENTS`].
    Record(Record, usize),
    Drain(oneshot::Sender<Derived>),
    /// A drain answered `None` when no record came since the last one.
    DrainIfChanged(oneshot::Sender<Option<Derived>>),
    /// Answered once no invocation awaits its `platform.report`.
    AwaitReports(oneshot::Sender<()>),
    /// Answered once the request id's `platform.runtimeDone` (or its report) is ingested.
    AwaitRuntimeDone(String, oneshot::Sender<()>),
    Finish {
        now: SystemTime,
        reply: oneshot::Sender<Derived>,
    },
}

/// What a drain hands the exporter: spans and log records finished since the last one.
pub type Derived = (Vec<SpanData>, Vec<LogEntry>);

/// A cheap handle for pushing records; never blocks.
#[derive(Clone)]
pub struct Recorder {
    /// The pipeline task's queue; `None` for [`Recorder::metrics_only`].
    tx: Option<mpsc::Sender<Msg>>,
    metrics: Arc<Metrics>,
    /// Telemetry events queued, shared with the task (which subtracts what it takes).
    queued_events: Arc<AtomicUsize>,
}

impl Recorder {
    /// For `serve` mode, which has no Lambda to observe and no OTLP export, so no pipeline:
    /// token records go straight into `metrics` (what `/metrics` shows) and derive no span.
    /// Token records are the only ones that mode makes.
    pub fn metrics_only(metrics: Arc<Metrics>) -> Recorder {
        Recorder {
            tx: None,
            metrics,
            queued_events: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn record(&self, record: Record) {
        let Some(tx) = &self.tx else {
            if let Record::Token(token) = record {
                self.metrics.token(&token);
            }
            return;
        };
        let events = match &record {
            Record::Telemetry(batch) => weight(batch),
            _ => 0,
        };
        // Counted before sending, so the task never subtracts what was not added.
        let queued = self.queued_events.fetch_add(events, Ordering::Relaxed) + events;
        if queued > MAX_QUEUED_EVENTS || tx.try_send(Msg::Record(record, events)).is_err() {
            self.queued_events.fetch_sub(events, Ordering::Relaxed);
            self.metrics.dropped(Signal::Records, 1);
        }
    }

    /// The metrics the records add up to: what `/metrics` renders, and where the servers
    /// count what they refuse before it becomes a record.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }
}

/// The lifecycle's handle on the pipeline task.
pub struct Pipeline {
    tx: mpsc::Sender<Msg>,
}

impl Pipeline {
    /// Spawns the pipeline task on the current runtime.
    pub fn start(deriver: Deriver, metrics: Arc<Metrics>) -> (Pipeline, Recorder) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let queued_events = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run(deriver, rx, Arc::clone(&queued_events)));
        let recorder = Recorder {
            tx: Some(tx.clone()),
            metrics,
            queued_events,
        };
        (Pipeline { tx }, recorder)
    }

    /// The spans and log records finished since the last drain, after everything recorded
    /// before this call.
    pub async fn drain(&self) -> Derived {
        self.ask(Msg::Drain).await.unwrap_or_default()
    }

    /// Like [`Pipeline::drain`], but `None` when no record arrived since the last drain:
    /// the periodic flush of an idle environment then has nothing new to send.
    pub async fn drain_if_changed(&self) -> Option<Derived> {
        self.ask(Msg::DrainIfChanged).await.flatten()
    }

    /// Resolves once every invocation seen so far has had its `platform.report` ingested
    /// (or the task ended): on Managed Instances several are in flight at once. The caller
    /// bounds the wait.
    pub async fn await_reports(&self) {
        let _ = self.ask(Msg::AwaitReports).await;
    }

    /// Resolves once `platform.runtimeDone` of `request_id` has been ingested, and with it the
    /// invocation's span and metrics derived (or its report, if runtimeDone was lost), or
    /// the task ended: what an end flush waits for. The caller bounds the wait.
    pub async fn await_runtime_done(&self, request_id: &str) {
        let request_id = request_id.to_owned();
        let _ = self
            .ask(|reply| Msg::AwaitRuntimeDone(request_id, reply))
            .await;
    }

    /// Closes what will never complete (at SHUTDOWN) and returns every span and log record
    /// not yet drained.
    pub async fn finish(&self, now: SystemTime) -> Derived {
        self.ask(|reply| Msg::Finish { now, reply })
            .await
            .unwrap_or_default()
    }

    async fn ask<T>(&self, msg: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Option<T> {
        let (reply, wait) = oneshot::channel();
        self.tx.send(msg(reply)).await.ok()?;
        wait.await.ok()
    }
}

async fn run(mut deriver: Deriver, mut rx: mpsc::Receiver<Msg>, queued_events: Arc<AtomicUsize>) {
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    // End flushes waiting for a runtimeDone: one at a time (the lifecycle handles one INVOKE
    // at a time), and a waiter that gave up is dropped at the next record.
    let mut ends: Vec<(String, oneshot::Sender<()>)> = Vec::new();
    // A record arrived since the last drain.
    let mut changed = false;
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Record(record, events) => {
                queued_events.fetch_sub(events, Ordering::Relaxed);
                changed = true;
                deriver.ingest(record);
                if deriver.in_flight() == 0 {
                    for waiter in waiting.drain(..) {
                        let _ = waiter.send(());
                    }
                }
                ends.retain(|(_, waiter)| !waiter.is_closed());
                while let Some(i) = ends.iter().position(|(id, _)| deriver.runtime_done(id)) {
                    let _ = ends.swap_remove(i).1.send(());
                }
            }
            Msg::AwaitRuntimeDone(request_id, reply) => {
                if deriver.runtime_done(&request_id) {
                    let _ = reply.send(());
                } else {
                    ends.push((request_id, reply));
                }
            }
            Msg::Drain(reply) => {
                changed = false;
                let _ = reply.send((deriver.take_spans(), deriver.take_logs()));
            }
            Msg::DrainIfChanged(reply) => {
                let _ = reply.send(
                    std::mem::take(&mut changed)
                        .then(|| (deriver.take_spans(), deriver.take_logs())),
                );
            }
            Msg::AwaitReports(reply) => {
                if deriver.in_flight() == 0 {
                    let _ = reply.send(());
                } else {
                    waiting.push(reply);
                }
            }
            Msg::Finish { now, reply } => {
                deriver.finish_pending(now);
                let _ = reply.send((deriver.take_spans(), deriver.take_logs()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::parse_batch;
    use crate::function::FunctionInfo;
    use crate::metrics::testing;

    #[tokio::test]
    async fn a_drain_if_changed_is_none_until_a_record_arrives() {
        let (_source, metrics) = testing::source();
        let metrics = Arc::new(metrics);
        let deriver = Deriver::new(FunctionInfo::from_vars(|_| None), Arc::clone(&metrics));
        let (pipeline, recorder) = Pipeline::start(deriver, metrics);
        assert!(pipeline.drain_if_changed().await.is_none());
        let event = r#"[{"time":"2022-10-12T00:00:00.000Z","type":"platform.start","record":{"requestId":"r1"}}]"#;
        recorder.record(Record::Telemetry(parse_batch(event.as_bytes()).unwrap()));
        assert_eq!(
            pipeline
                .drain_if_changed()
                .await
                .map(|(spans, _)| spans.len()),
            Some(0)
        );
        assert!(pipeline.drain_if_changed().await.is_none());
    }

    #[tokio::test]
    async fn queued_telemetry_is_bounded_by_events() {
        let (source, metrics) = testing::source();
        let metrics = Arc::new(metrics);
        let deriver = Deriver::new(FunctionInfo::from_vars(|_| None), Arc::clone(&metrics));
        let (pipeline, recorder) = Pipeline::start(deriver, metrics);
        let event = r#"{"time":"2022-10-12T00:00:00.000Z","type":"platform.logsDropped","record":{"reason":"r","droppedRecords":1,"droppedBytes":1}}"#;
        let body = format!("[{}]", vec![event; 10_000].join(","));
        // The task does not run until this test awaits: three batches wait in the queue.
        for _ in 0..3 {
            recorder.record(Record::Telemetry(parse_batch(body.as_bytes()).unwrap()));
        }
        pipeline.drain().await;
        let rendered = testing::render(&source);
        assert!(
            rendered.contains("sidecar.export.dropped_items{signal=records} = 1"),
            "{rendered}"
        );
        assert!(
            rendered.contains("sidecar.telemetry.logs_dropped = 20000"),
            "{rendered}"
        );
        // Log lines weigh their size: of 20 batches of 64 lines of 20 KiB (1,344 each), 14 fit.
        let line = format!(
            r#"{{"time":"2022-10-12T00:00:00.000Z","type":"function","record":"{}"}}"#,
            "x".repeat(20 * 1024)
        );
        let logs = format!("[{}]", vec![line; 64].join(","));
        for _ in 0..20 {
            recorder.record(Record::Telemetry(parse_batch(logs.as_bytes()).unwrap()));
        }
        pipeline.drain().await;
        assert!(
            testing::render(&source).contains("sidecar.export.dropped_items{signal=records} = 7"),
            "{}",
            testing::render(&source)
        );
        // Once the task has taken them, there is room again.
        recorder.record(Record::Telemetry(parse_batch(body.as_bytes()).unwrap()));
        pipeline.drain().await;
        assert!(testing::render(&source).contains("sidecar.telemetry.logs_dropped = 30000"));
    }
}
