//! Export: ships spans, metrics and logs over OTLP, inside a time budget.
//!
//! Design (chosen from the measurements in lambda-facts.md): spans and log records wait in
//! our own bounded queues, metrics are collected on demand through a `ManualReader`, and all
//! are sent by calling opentelemetry-otlp's exporters directly (async client, retries
//! disabled) under one time budget. Dropping a timed-out future cancels its request, so
//! nothing is in flight when Lambda freezes the environment; no SDK thread runs on a timer
//! we don't control.
//!
//! Each signal has its queue, which owns its exporter, its bound and what it keeps for the
//! next flush: `spans.rs` (a bounded buffer, sent in batches), `logs.rs` (a buffer bounded in
//! bytes, sent in batches by bytes) and `metrics.rs` (a delta batch kept until delivered).
//! `queue.rs` holds what they share: the budget, the in-order batch loop, the per-queue
//! report, and the rule for a batch whose request failed. Delivery is at-least-once within
//! bounds: what a failure or the timeout interrupts stays at the front of its queue for a
//! later flush, and the queue backs off; a batch is given up, and counted, after 8 attempts,
//! or after 2 unanswered ones (a request cut at the deadline may have been received, so it
//! is sent again only once); the oldest items are dropped, and counted, when a queue is
//! full.
//!
//! Never: decides *when* to flush (the lifecycle does), or blocks a thread.
//!
//! The outputs live in submodules: [`otlp`] (the OTLP clients, configuration and the
//! resource; `sigv4.rs` signs their requests for AWS, `headers.rs` adds the headers of a
//! secret) and [`emf`] (CloudWatch Embedded Metric Format on stdout). The Prometheus page
//! is read from the instruments themselves (`metrics::Metrics::prometheus_text`), not pushed
//! at a flush, so it has no module here.

mod answers;
pub mod emf;
mod headers;
mod log_stream;
mod logs;
mod metrics;
pub mod otlp;
mod queue;
mod sigv4;
mod spans;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry_sdk::trace::SpanData;

pub use headers::{HeadersSourceError, SecretHeaders};
pub use log_stream::{LogStreamError, create_log_stream};
pub use otlp::{ExportClients, MetricsSource, resource};

use crate::items::LogEntry;
use crate::metrics::Metrics;
use logs::LogQueue;
use metrics::MetricQueue;
use queue::Budget;
use spans::SpanQueue;

/// What one flush did, for logs and the sidecar's own metrics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FlushReport {
    pub spans_sent: usize,
    pub spans_pending: usize,
    pub spans_dropped: usize,
    pub logs_sent: usize,
    pub logs_pending: usize,
    pub metrics_sent: bool,
    /// The bytes of the OTLP/HTTP request bodies this flush sent, as sent (compressed when
    /// asked); 0 over gRPC, whose client does not show them.
    pub bytes_sent: u64,
    pub timed_out: bool,
    /// A queue with something to send sat this flush out, backing off after failed ones.
    pub backed_off: bool,
    pub duration: Duration,
}

/// The signal queues, flushed together, and the EMF output written after them.
pub struct Exporter {
    spans: SpanQueue,
    metrics: MetricQueue,
    logs: LogQueue,
    /// The CloudWatch EMF output (`SIDECAR_EMF=on`), and the receipt of its last batch.
    emf: Option<emf::Writer>,
    emf_written: Option<tokio::sync::oneshot::Receiver<()>>,
    /// The exporters' clients' notes, read for the bytes each flush sent.
    answers: otlp::SignalAnswers,
}

impl Exporter {
    pub fn new(
        clients: ExportClients,
        source: Arc<MetricsSource>,
        metrics: Arc<Metrics>,
    ) -> Exporter {
        let answers = clients.answers.clone();
        Exporter {
            answers,
            spans: SpanQueue::new(clients.spans, clients.answers.spans, metrics.clone()),
            metrics: MetricQueue::new(
                clients.metrics,
                clients.answers.metrics,
                source,
                metrics.clone(),
            ),
            logs: LogQueue::new(clients.logs, clients.answers.logs, metrics),
            emf: None,
            emf_written: None,
        }
    }

    /// Also writes the metrics as CloudWatch EMF lines at each flush.
    pub fn with_emf(mut self, writer: emf::Writer) -> Exporter {
        self.emf = Some(writer);
        self
    }

    /// Waits, at most `limit`, until the last flush's EMF lines are on stdout: before the
    /// process exits, so the shutdown flush's lines are not lost in the writer's queue.
    pub async fn emf_written(&mut self, limit: Duration) {
        if let Some(written) = self.emf_written.take() {
            let _ = tokio::time::timeout(limit, written).await;
        }
    }

    /// Queues log records for the next flush; when the buffer is over
    /// [`crate::items::LOG_BUFFER_BYTES`] the oldest are dropped and counted. Nothing is
    /// kept without a logs exporter.
    pub fn queue_logs(&mut self, logs: Vec<LogEntry>) {
        self.logs.queue(logs);
    }

    /// Nothing waits to be sent again: no span or log record kept from a failed flush, no
    /// delta metrics batch undelivered.
    pub fn idle(&self) -> bool {
        self.spans.is_empty() && self.logs.is_empty() && self.metrics.is_empty()
    }

    /// Queues `spans`, then sends what is queued (in batches) and the current metrics,
    /// giving up when `budget` runs out. The three signals go side by side, under the same
    /// budget; a queue backing off after failed flushes sits this one out. Returns once
    /// nothing is in flight.
    pub async fn flush(&mut self, spans: Vec<SpanData>, budget: Duration) -> FlushReport {
        self.flush_under(spans, Budget::starting_now(budget, false))
            .await
    }

    /// The environment's last flush (SHUTDOWN): as [`Exporter::flush`], and no queue sits it
    /// out.
    pub async fn flush_last(&mut self, spans: Vec<SpanData>, budget: Duration) -> FlushReport {
        self.flush_under(spans, Budget::starting_now(budget, true))
            .await
    }

    async fn flush_under(&mut self, spans: Vec<SpanData>, budget: Budget) -> FlushReport {
        let started = Instant::now();
        let bytes_before = self.sent_bytes();
        let spans_dropped = self.spans.queue(spans);
        let (spans, metrics, logs) = tokio::join!(
            self.spans.flush(budget),
            self.metrics.flush(budget),
            self.logs.flush(budget)
        );
        // EMF last, so it carries this flush's export failures.
        self.write_emf();
        FlushReport {
            spans_sent: spans.sent,
            spans_pending: spans.pending,
            spans_dropped,
            logs_sent: logs.sent,
            logs_pending: logs.pending,
            metrics_sent: metrics.sent > 0,
            bytes_sent: self.sent_bytes().saturating_sub(bytes_before),
            timed_out: spans.timed_out || metrics.timed_out || logs.timed_out,
            backed_off: spans.sat_out || metrics.sat_out || logs.sat_out,
            duration: started.elapsed(),
        }
    }

    /// The bytes every exporter has sent so far.
    fn sent_bytes(&self) -> u64 {
        let answers = &self.answers;
        answers.spans.sent_bytes() + answers.metrics.sent_bytes() + answers.logs.sent_bytes()
    }

    /// Hands the metrics recorded since the last flush to the EMF writer; it never waits on
    /// stdout.
    fn write_emf(&mut self) {
        if let Some(emf) = &self.emf {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.emf_written = emf.flush(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::testing;
    use lambda_env::{Sink, SinkMode};
    use opentelemetry_otlp::{
        MetricExporter, RetryPolicy, WithExportConfig as _, WithHttpConfig as _,
    };

    /// The queues go side by side under one budget: against a collector that answers too
    /// late, logs and metrics both stop at the same deadline, keep what they had and count
    /// a failure, and the flush takes one budget, not one per signal.
    #[tokio::test]
    async fn every_queue_stops_at_the_one_deadline() {
        let sink = Sink::start().await.unwrap();
        sink.set_mode(SinkMode::Slow(Duration::from_secs(5)));
        let metric_exporter = MetricExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/metrics", sink.endpoint()))
            .with_retry_policy(RetryPolicy::disabled())
            .build()
            .unwrap();
        let (source, metrics) = testing::source();
        let source = Arc::new(source);
        let clients = ExportClients {
            spans: None,
            metrics: Some(metric_exporter),
            logs: Some(logs::tests::log_exporter(&sink)),
            answers: Default::default(),
        };
        let mut exporter = Exporter::new(clients, source.clone(), Arc::new(metrics));
        exporter.queue_logs(logs::tests::entries(0..2));
        let budget = Duration::from_millis(300);
        let report = exporter.flush(Vec::new(), budget).await;
        assert!(report.timed_out && !report.metrics_sent, "{report:?}");
        assert_eq!(
            (report.logs_sent, report.logs_pending),
            (0, 2),
            "{report:?}"
        );
        assert!(report.duration < budget * 2, "{report:?}");
        assert!(!exporter.idle(), "the log records wait for the next flush");
        let rendered = testing::render(&source);
        assert!(
            rendered.contains("sidecar.export.failures{signal=logs} = 1")
                && rendered.contains("sidecar.export.failures{signal=metrics} = 1"),
            "{rendered}"
        );
    }
}
