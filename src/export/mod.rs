//! Export: ships spans, metrics and logs over OTLP, inside a time budget.
//!
//! Design (chosen from the measurements in lambda-facts.md): spans wait in our own bounded
//! buffer, metrics are collected on demand through a `ManualReader`, and both are sent by
//! calling opentelemetry-otlp's exporters directly (async client, retries disabled) under a
//! `tokio::time::timeout`. Dropping the timed-out future cancels the request, so nothing is in
//! flight when Lambda freezes the environment; no SDK thread runs on a timer we don't control.
//!
//! Delivery is at-least-once: a span or log batch whose export failed or timed out goes back
//! to the front of its buffer for the next flush (a timeout does not prove it was not
//! received), and the oldest items are dropped, and counted, only when the buffer is full.
//! With cumulative metrics (the default) a failed metrics export loses nothing: the next one
//! carries the totals. With delta metrics (`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`) a batch
//! holds the only copy of its counts, so an undelivered one is kept and sent again first;
//! meanwhile nothing new is collected, the SDK keeps adding up in its own bounded state. As
//! for spans, a timed-out batch is sent again, so a backend may see a delta twice.
//!
//! Never: decides *when* to flush (the lifecycle does), or blocks a thread.
//!
//! The outputs live in submodules: [`otlp`] (the OTLP clients, configuration and the
//! resource) and [`emf`] (CloudWatch Embedded Metric Format on stdout). The Prometheus page
//! is read from the instruments themselves (`signals::Metrics::prometheus_text`), not pushed
//! at a flush, so it has no module here.

pub mod emf;
pub mod otlp;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{LogExporter, MetricExporter, SpanExporter};
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, SdkLogRecord};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};

pub use otlp::{ExportClients, ExportConfig, MetricsSource, resource};

use crate::derive::LogEntry;
use crate::signals::{Metrics, Signal};

/// Most spans kept for a later flush when the collector can't take them. A busy function
/// makes a handful per invoke; this is minutes of a dead collector, a few MiB at most.
pub const SPAN_BUFFER_CAP: usize = 4096;

/// Most spans sent in one request, to keep a request well under collectors' body limits.
const MAX_BATCH: usize = 512;

/// Most log bytes kept for a later flush (line text plus a fixed per-record overhead, see
/// `derive::LogEntry`). Logs are the one signal whose size the function decides, so the
/// bound is in bytes, not records: 4 MiB is 3% of the smallest Lambda's 128 MB, and holds
/// ~10,000 typical lines (a few hundred bytes each, so minutes of a dead collector for a
/// function logging a few lines per invoke) or 128 lines at the 32 KiB line bound. The
/// deriver holds as much again until the next drain.
pub const LOG_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Most log bytes sent in one request: well under gRPC's default 4 MiB message limit and
/// collectors' HTTP body limits.
const MAX_LOG_BATCH_BYTES: usize = 1024 * 1024;

/// What one flush did, for logs and the sidecar's own metrics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FlushReport {
    pub spans_sent: usize,
    pub spans_pending: usize,
    pub spans_dropped: usize,
    pub logs_sent: usize,
    pub logs_pending: usize,
    pub metrics_sent: bool,
    pub timed_out: bool,
    pub duration: Duration,
}

/// The OTLP exporters and the span and log buffers between flushes.
pub struct Exporter {
    spans: Option<SpanExporter>,
    metrics: Option<MetricExporter>,
    logs: Option<LogExporter>,
    buffer: VecDeque<SpanData>,
    log_buffer: VecDeque<LogEntry>,
    /// The bytes of `log_buffer`, against [`LOG_BUFFER_BYTES`].
    log_bytes: usize,
    /// The instrumentation scope of the log records (OTLP groups records by scope).
    log_scope: InstrumentationScope,
    /// A delta metrics batch collected but not (known to be) delivered.
    unsent_metrics: Option<ResourceMetrics>,
    source: Arc<MetricsSource>,
    signals: Arc<Metrics>,
    /// The CloudWatch EMF output (`SIDECAR_EMF=on`), and the receipt of its last batch.
    emf: Option<crate::export::emf::Writer>,
    emf_written: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Exporter {
    pub fn new(
        clients: ExportClients,
        source: Arc<MetricsSource>,
        signals: Arc<Metrics>,
    ) -> Exporter {
        Exporter {
            spans: clients.spans,
            metrics: clients.metrics,
            logs: clients.logs,
            buffer: VecDeque::new(),
            log_buffer: VecDeque::new(),
            log_bytes: 0,
            log_scope: InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            unsent_metrics: None,
            source,
            signals,
            emf: None,
            emf_written: None,
        }
    }

    /// Also writes the metrics as CloudWatch EMF lines at each flush.
    pub fn with_emf(mut self, writer: crate::export::emf::Writer) -> Exporter {
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

    /// Queues log records for the next flush; when the buffer is over [`LOG_BUFFER_BYTES`]
    /// the oldest are dropped and counted. Nothing is kept without a logs exporter.
    pub fn queue_logs(&mut self, logs: Vec<LogEntry>) {
        if self.logs.is_none() {
            return;
        }
        for entry in logs {
            self.log_bytes += entry.bytes;
            self.log_buffer.push_back(entry);
        }
        let mut dropped = 0;
        while self.log_bytes > LOG_BUFFER_BYTES {
            let Some(oldest) = self.log_buffer.pop_front() else {
                break;
            };
            self.log_bytes -= oldest.bytes;
            dropped += 1;
        }
        if dropped > 0 {
            self.signals.dropped(Signal::Logs, dropped);
        }
    }

    /// Nothing waits to be sent again: no span or log record kept from a failed flush, no
    /// delta metrics batch undelivered.
    pub fn idle(&self) -> bool {
        self.buffer.is_empty() && self.log_buffer.is_empty() && self.unsent_metrics.is_none()
    }

    /// Queues `spans`, then sends what is queued (in batches) and the current metrics,
    /// giving up when `budget` runs out. Returns once nothing is in flight.
    pub async fn flush(&mut self, spans: Vec<SpanData>, budget: Duration) -> FlushReport {
        let started = Instant::now();
        let mut report = FlushReport::default();
        if self.spans.is_some() {
            self.buffer.extend(spans);
        }
        let overflow = self.buffer.len().saturating_sub(SPAN_BUFFER_CAP);
        if overflow > 0 {
            self.buffer.drain(..overflow);
            self.signals.dropped(Signal::Traces, overflow as u64);
            report.spans_dropped = overflow;
        }
        // Spans leave `pending` only once their batch is acknowledged: whatever a failure or
        // the timeout interrupts stays there and goes back to the buffer.
        let mut pending = std::mem::take(&mut self.buffer);
        let mut span_error = None;
        // Likewise a metrics batch leaves `metrics_batch` only once delivered. A kept (delta)
        // batch goes first, then what was recorded since it was collected.
        let mut metrics_batch = self.unsent_metrics.take();
        let mut metrics_error = None;
        let mut metrics_sent = false;
        // Like spans, log records leave `pending_logs` only once acknowledged.
        let mut pending_logs = std::mem::take(&mut self.log_buffer);
        let mut log_error = None;
        let mut logs_sent = 0;
        let send_logs = async {
            let Some(exporter) = &self.logs else { return };
            while !pending_logs.is_empty() {
                let mut bytes = 0;
                let n = pending_logs
                    .iter()
                    .take(MAX_BATCH)
                    .take_while(|entry| {
                        bytes += entry.bytes;
                        bytes <= MAX_LOG_BATCH_BYTES
                    })
                    .count()
                    .max(1);
                let batch: Vec<(&SdkLogRecord, &InstrumentationScope)> = pending_logs
                    .iter()
                    .take(n)
                    .map(|entry| (&entry.record, &self.log_scope))
                    .collect();
                let result = exporter.export(LogBatch::new(&batch)).await;
                drop(batch);
                match result {
                    Ok(()) => {
                        pending_logs.drain(..n);
                        logs_sent += n;
                    }
                    Err(e) => {
                        log_error = Some(e.to_string());
                        return;
                    }
                }
            }
        };
        let send_spans = async {
            let Some(exporter) = &self.spans else { return };
            while !pending.is_empty() {
                let n = pending.len().min(MAX_BATCH);
                let batch: Vec<SpanData> = pending.iter().take(n).cloned().collect();
                match exporter.export(batch).await {
                    Ok(()) => {
                        pending.drain(..n);
                        report.spans_sent += n;
                    }
                    Err(e) => {
                        span_error = Some(e.to_string());
                        return;
                    }
                }
            }
        };
        let send_metrics = async {
            let Some(exporter) = &self.metrics else {
                return;
            };
            loop {
                let resend = metrics_batch.is_some();
                if !resend {
                    // Collected only when they will be sent: reading every instrument costs.
                    match self.source.collect() {
                        Ok(m) => metrics_batch = Some(m),
                        Err(e) => {
                            tracing::warn!(error = %e, "metrics could not be collected");
                            return;
                        }
                    }
                }
                let Some(m) = metrics_batch.as_ref() else {
                    return;
                };
                if let Err(e) = exporter.export(m).await {
                    metrics_error = Some(e.to_string());
                    return;
                }
                metrics_batch = None;
                metrics_sent = true;
                if !resend {
                    return;
                }
            }
        };
        if tokio::time::timeout(budget, async {
            tokio::join!(send_spans, send_metrics, send_logs)
        })
        .await
        .is_err()
        {
            report.timed_out = true;
            if !pending_logs.is_empty() && log_error.is_none() {
                log_error = Some(format!("timed out after {budget:?}"));
            }
            if !pending.is_empty() && span_error.is_none() {
                span_error = Some(format!("timed out after {budget:?}"));
            }
            if metrics_batch.is_some() && metrics_error.is_none() {
                metrics_error = Some(format!("timed out after {budget:?}"));
            }
        }
        if let Some(e) = span_error {
            tracing::warn!(error = %e, spans = pending.len(), "span export failed; kept for the next flush");
            self.signals.export_failure(Signal::Traces);
        }
        if let Some(e) = log_error {
            tracing::warn!(error = %e, records = pending_logs.len(), "log export failed; kept for the next flush");
            self.signals.export_failure(Signal::Logs);
        }
        report.logs_sent = logs_sent;
        self.log_bytes = pending_logs.iter().map(|entry| entry.bytes).sum();
        self.log_buffer = pending_logs;
        report.logs_pending = self.log_buffer.len();
        report.metrics_sent = metrics_sent;
        if let Some(e) = metrics_error {
            tracing::warn!(error = %e, "metrics export failed; sent again with the next flush");
            self.signals.export_failure(Signal::Metrics);
        }
        // A cumulative batch is superseded by the next collection; a delta one is the only
        // copy of its counts. One kept batch is the whole bound: until it is delivered
        // nothing more is collected, and the SDK adds new measurements up in its own state,
        // whose size is fixed by the label sets (cardinality-capped), not by the outage.
        if self.source.temporality != Temporality::Cumulative {
            self.unsent_metrics = metrics_batch;
        }
        self.buffer = pending;
        report.spans_pending = self.buffer.len();
        // EMF last, so it carries this flush's export failures; it never waits on stdout.
        if let Some(emf) = &self.emf {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.emf_written = emf.flush(now);
        }
        report.duration = started.elapsed();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::testing;
    use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _};
    use opentelemetry_otlp::{RetryPolicy, WithExportConfig as _, WithHttpConfig as _};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::logs::SdkLoggerProvider;

    /// While the collector is down, log records wait (a failed export puts them back); past
    /// [`LOG_BUFFER_BYTES`] the oldest go, counted; once it is back, the rest arrive.
    #[tokio::test]
    async fn undelivered_logs_wait_within_the_bound_and_overflow_is_counted() {
        let mut sink = lambda_env::Sink::start().await.unwrap();
        sink.stop().await;
        let exporter = LogExporter::builder()
            .with_http()
            .with_endpoint(format!("{}/v1/logs", sink.endpoint()))
            .with_retry_policy(RetryPolicy::disabled())
            .build()
            .unwrap();
        let (source, metrics) = testing::source();
        let source = Arc::new(source);
        let clients = ExportClients {
            spans: None,
            metrics: None,
            logs: Some(exporter),
        };
        let mut exporter = Exporter::new(clients, source.clone(), Arc::new(metrics));
        let logger = SdkLoggerProvider::builder()
            .with_resource(Resource::builder_empty().build())
            .build()
            .logger("test");
        // Each weighs a tenth of the bound: 10 fit.
        let entries = |range: std::ops::Range<usize>| -> Vec<LogEntry> {
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
        };
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
