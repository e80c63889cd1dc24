//! The span queue: finished spans wait here, bounded, until a collector acknowledges them.

use std::sync::Arc;

use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};

use super::answers::Answers;
use super::queue::{Batches, Budget, Failure, Flushed, MAX_BATCH, Queue, flush_in_order};
use crate::items::SPAN_BUFFER_CAP;
use crate::metrics::{Metrics, Signal};

/// The spans awaiting export, oldest first, and the exporter that sends them.
pub(super) struct SpanQueue {
    sender: Option<SpanSender>,
    /// At most [`SPAN_BUFFER_CAP`] once [`SpanQueue::queue`] returns.
    queued: Queue<SpanData>,
    metrics: Arc<Metrics>,
}

impl SpanQueue {
    pub(super) fn new(
        exporter: Option<SpanExporter>,
        answers: Answers,
        metrics: Arc<Metrics>,
    ) -> SpanQueue {
        SpanQueue {
            sender: exporter.map(|exporter| SpanSender { exporter, answers }),
            queued: Queue::default(),
            metrics,
        }
    }

    /// Queues `spans` behind those kept from failed flushes; past [`SPAN_BUFFER_CAP`] the
    /// oldest are dropped and counted, and how many is returned. Nothing is kept without an
    /// exporter.
    pub(super) fn queue(&mut self, spans: Vec<SpanData>) -> usize {
        if self.sender.is_some() {
            self.queued.push(spans);
        }
        let overflow = self.queued.len().saturating_sub(SPAN_BUFFER_CAP);
        if overflow > 0 {
            self.queued.drop_oldest(overflow);
            self.metrics.dropped(Signal::Traces, overflow as u64);
        }
        overflow
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sends what is queued, in batches, within `budget`; what is not acknowledged stays
    /// queued unless the rule gives it up (`queue.rs`), and a failure is logged and counted.
    pub(super) async fn flush(&mut self, budget: Budget) -> Flushed {
        let sender = self.sender.as_ref();
        flush_in_order(sender, &mut self.queued, budget, &self.metrics).await
    }
}

/// A span exporter, and what the collector answered its failed requests.
struct SpanSender {
    exporter: SpanExporter,
    answers: Answers,
}

impl Batches for SpanSender {
    type Item = SpanData;
    const SIGNAL: Signal = Signal::Traces;

    fn batch_len(&self, queued: &[SpanData]) -> usize {
        queued.len().min(MAX_BATCH)
    }

    async fn send(&self, batch: &[SpanData]) -> Result<(), Failure> {
        let sent = self.exporter.export(batch.to_vec()).await;
        sent.map_err(|e| self.answers.failure(e))
    }
}
