//! The log queue: log records wait here, bounded in bytes, until a collector acknowledges
//! them. Logs are the one signal whose size the function decides, so both the bound and
//! the batches are measured in bytes.

use std::sync::Arc;

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::LogExporter;
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, SdkLogRecord};

use super::answers::Answers;
use super::queue::{Batches, Budget, Failure, Flushed, MAX_BATCH, Queue, flush_in_order};
use crate::items::{LOG_BUFFER_BYTES, LogEntry};
use crate::metrics::{Metrics, Signal};

/// Most log bytes sent in one request: well under gRPC's default 4 MiB message limit and
/// collectors' HTTP body limits.
const MAX_LOG_BATCH_BYTES: usize = 1024 * 1024;

/// The log records awaiting export, oldest first, and the exporter that sends them.
pub(super) struct LogQueue {
    sender: Option<LogSender>,
    queued: Queue<LogEntry>,
    /// The bytes of `queued`, against [`LOG_BUFFER_BYTES`].
    bytes: usize,
    metrics: Arc<Metrics>,
}

impl LogQueue {
    pub(super) fn new(
        exporter: Option<LogExporter>,
        answers: Answers,
        metrics: Arc<Metrics>,
    ) -> LogQueue {
        LogQueue {
            sender: exporter.map(|exporter| LogSender {
                exporter,
                answers,
                scope: InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
            }),
            queued: Queue::default(),
            bytes: 0,
            metrics,
        }
    }

    /// Queues log records for the next flush; when the queue is over [`LOG_BUFFER_BYTES`]
    /// the oldest are dropped and counted. Nothing is kept without a logs exporter.
    pub(super) fn queue(&mut self, logs: Vec<LogEntry>) {
        if self.sender.is_none() {
            return;
        }
        self.bytes += logs.iter().map(|entry| entry.bytes).sum::<usize>();
        self.queued.push(logs);
        let mut dropped = 0;
        while self.bytes > LOG_BUFFER_BYTES {
            let Some(oldest) = self.queued.pop_oldest() else {
                break;
            };
            self.bytes -= oldest.bytes;
            dropped += 1;
        }
        if dropped > 0 {
            self.metrics.dropped(Signal::Logs, dropped);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sends what is queued, in batches, within `budget`; what is not acknowledged stays
    /// queued unless the rule gives it up (`queue.rs`), and a failure is logged and counted.
    pub(super) async fn flush(&mut self, budget: Budget) -> Flushed {
        let sender = self.sender.as_ref();
        let flushed = flush_in_order(sender, &mut self.queued, budget, &self.metrics).await;
        self.bytes = self.queued.iter().map(|entry| entry.bytes).sum();
        flushed
    }
}

/// A logs exporter, the instrumentation scope its records are sent under (OTLP groups
/// records by scope), and what the collector answered its failed requests.
struct LogSender {
    exporter: LogExporter,
    answers: Answers,
    scope: InstrumentationScope,
}

impl Batches for LogSender {
    type Item = LogEntry;
    const SIGNAL: Signal = Signal::Logs;

    /// Up to [`MAX_BATCH`] records and [`MAX_LOG_BATCH_BYTES`]; a record larger than that
    /// goes alone.
    fn batch_len(&self, queued: &[LogEntry]) -> usize {
        let mut bytes = 0;
        queued
            .iter()
            .take(MAX_BATCH)
            .take_while(|entry| {
                bytes += entry.bytes;
                bytes <= MAX_LOG_BATCH_BYTES
            })
            .count()
            .max(1)
    }

    async fn send(&self, batch: &[LogEntry]) -> Result<(), Failure> {
        let records: Vec<(&SdkLogRecord, &InstrumentationScope)> = batch
            .iter()
            .map(|entry| (&entry.record, &self.scope))
            .collect();
        let sent = self.exporter.export(LogBatch::new(&records)).await;
        sent.map_err(|e| self.answers.failure(e))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::export::{ExportClients, Exporter};
    use crate::metrics::testing;
    use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _};
    use opentelemetry_otlp::{RetryPolicy, WithExportConfig as _, WithHttpConfig as _};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::logs::SdkLoggerProvider;

    /// A logs exporter to `sink`, without retries.
    pub(in crate::export) fn log_exporter(sink: &lambda_env::Sink) -> LogExporter {
        LogExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/logs", sink.endpoint()))
            .with_retry_policy(RetryPolicy::disabled())
            .build()
            .unwrap()
    }

    /// Records with bodies `line {i}` for each `i` of `range`, each weighing a tenth of
    /// [`LOG_BUFFER_BYTES`]: 10 fit.
    pub(in crate::export) fn entries(range: std::ops::Range<usize>) -> Vec<LogEntry> {
        let logger = SdkLoggerProvider::builder()
            .with_resource(Resource::builder_empty().build())
            .build()
            .logger("test");
        range
            .map(|i| {
                let mut record = logger.create_log_record();
                record.set_body(format!("line {i}").into());
                // The OTLP encoder requires it (the SDK's `emit` would set it).
                record.set_observed_timestamp(SystemTime::now());
                LogEntry {
                    record,
                    bytes: LOG_BUFFER_BYTES / 10,
                }
            })
            .collect()
    }

    /// While the collector is down, log records wait (a failed export puts them back); past
    /// [`LOG_BUFFER_BYTES`] the oldest go, counted; once it is back, and the queue's backoff
    /// over, the rest arrive.
    #[tokio::test]
    async fn undelivered_logs_wait_within_the_bound_and_overflow_is_counted() {
        let mut sink = lambda_env::Sink::start().await.unwrap();
        sink.stop().await;
        let exporter = log_exporter(&sink);
        let (source, metrics) = testing::source();
        let source = Arc::new(source);
        let clients = ExportClients {
            spans: None,
            metrics: None,
            logs: Some(exporter),
            ..Default::default()
        };
        let mut exporter = Exporter::new(clients, source.clone(), Arc::new(metrics));
        exporter.queue_logs(entries(0..6));
        let down = exporter.flush(Vec::new(), Duration::from_secs(2)).await;
        assert_eq!((down.logs_sent, down.logs_pending), (0, 6), "{down:?}");
        exporter.queue_logs(entries(6..15));
        let rendered = testing::render(&source);
        assert!(
            rendered.contains("sidecar.export.dropped_items{signal=logs} = 5")
                && rendered.contains("sidecar.export.failures{signal=logs} = 1"),
            "{rendered}"
        );

        sink.restart().await.unwrap();
        let backing_off = exporter.flush(Vec::new(), Duration::from_secs(2)).await;
        assert!(backing_off.backed_off, "{backing_off:?}");
        assert_eq!(backing_off.logs_pending, 10, "{backing_off:?}");
        let up = exporter.flush(Vec::new(), Duration::from_secs(2)).await;
        assert_eq!((up.logs_sent, up.logs_pending), (10, 0), "{up:?}");
        let bodies: Vec<String> = sink
            .logs()
            .iter()
            .map(|l| l.body.as_str().unwrap_or_default().to_owned())
            .collect();
        let newest: Vec<String> = (5..15).map(|i| format!("line {i}")).collect();
        assert_eq!(
            bodies, newest,
            "the oldest were dropped, the rest arrived in order"
        );
    }
}
