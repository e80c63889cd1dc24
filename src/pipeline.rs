//! The pipeline task: records in, in arrival order; spans out, when the lifecycle asks.
//!
//! The listener, the token handler and the lifecycle each hold a [`Recorder`] and push
//! [`Record`]s without waiting; one task owns the [`Deriver`] and applies them in order. The
//! lifecycle's [`Pipeline::drain`] goes through the same queue, so a drain returns exactly the
//! spans derived from everything recorded before it: the ordering is the queue's, no locks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry_sdk::trace::SpanData;
use tokio::sync::{mpsc, oneshot};

use crate::derive::Deriver;
use crate::intake::events::EventKind;
use crate::records::Record;
use crate::signals::{Metrics, Signal};

/// Messages queued ahead of the pipeline task. A full queue means the task is far behind;
/// records are then dropped and counted rather than letting a handler wait.
const QUEUE_CAPACITY: usize = 4096;

/// How many recent `platform.report` request ids are remembered for [`Pipeline::await_report`].
const RECENT_REPORTS: usize = 16;

enum Msg {
    Record(Record),
    Drain(oneshot::Sender<Vec<SpanData>>),
    AwaitReport {
        request_id: String,
        reply: oneshot::Sender<()>,
    },
    Finish {
        now: SystemTime,
        reply: oneshot::Sender<Vec<SpanData>>,
    },
}

/// A cheap handle for pushing records; never blocks.
#[derive(Clone)]
pub struct Recorder {
    /// The pipeline task's queue; `None` for [`Recorder::metrics_only`].
    tx: Option<mpsc::Sender<Msg>>,
    signals: Arc<Metrics>,
}

impl Recorder {
    /// For `serve` mode, which has no Lambda to observe and no OTLP export, so no pipeline:
    /// token records go straight into `signals` (what `/metrics` shows) and derive no span.
    /// Token records are the only ones that mode makes.
    pub fn metrics_only(signals: Arc<Metrics>) -> Recorder {
        Recorder { tx: None, signals }
    }

    pub fn record(&self, record: Record) {
        match &self.tx {
            Some(tx) => {
                if tx.try_send(Msg::Record(record)).is_err() {
                    self.signals.dropped(Signal::Records, 1);
                }
            }
            None => {
                if let Record::Token(token) = record {
                    self.signals.token(&token);
                }
            }
        }
    }

    /// The metrics the records add up to, for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.signals
    }
}

/// The lifecycle's handle on the pipeline task.
pub struct Pipeline {
    tx: mpsc::Sender<Msg>,
}

impl Pipeline {
    /// Spawns the pipeline task on the current runtime.
    pub fn start(deriver: Deriver, signals: Arc<Metrics>) -> (Pipeline, Recorder) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(deriver, rx));
        (
            Pipeline { tx: tx.clone() },
            Recorder {
                tx: Some(tx),
                signals,
            },
        )
    }

    /// The spans finished since the last drain, after everything recorded before this call.
    pub async fn drain(&self) -> Vec<SpanData> {
        self.ask(Msg::Drain).await.unwrap_or_default()
    }

    /// Resolves once `platform.report` for `request_id` has been ingested (or the task ended).
    /// The caller bounds the wait.
    pub async fn await_report(&self, request_id: String) {
        let (reply, wait) = oneshot::channel();
        if self
            .tx
            .send(Msg::AwaitReport { request_id, reply })
            .await
            .is_ok()
        {
            let _ = wait.await;
        }
    }

    /// Closes what will never complete (at SHUTDOWN) and returns every span not yet drained.
    pub async fn finish(&self, now: SystemTime) -> Vec<SpanData> {
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

async fn run(mut deriver: Deriver, mut rx: mpsc::Receiver<Msg>) {
    let mut recent_reports: VecDeque<String> = VecDeque::with_capacity(RECENT_REPORTS);
    let mut waiting: Vec<(String, oneshot::Sender<()>)> = Vec::new();
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Record(record) => {
                if let Record::Telemetry(batch) = &record {
                    for event in &batch.events {
                        if let EventKind::Report(report) = &event.kind {
                            if recent_reports.len() == RECENT_REPORTS {
                                recent_reports.pop_front();
                            }
                            recent_reports.push_back(report.request_id.clone());
                        }
                    }
                }
                deriver.ingest(record);
                waiting.retain(|(id, _)| !recent_reports.contains(id));
                // Dropping a satisfied waiter's sender wakes it.
            }
            Msg::Drain(reply) => {
                let _ = reply.send(deriver.take_spans());
            }
            Msg::AwaitReport { request_id, reply } => {
                if !recent_reports.contains(&request_id) {
                    waiting.push((request_id, reply));
                }
            }
            Msg::Finish { now, reply } => {
                deriver.finish_pending(now);
                let _ = reply.send(deriver.take_spans());
            }
        }
    }
}
