//! Export: ships spans and metrics over OTLP, inside a time budget.
//!
//! Design (chosen from the measurements in lambda-facts.md): spans wait in our own bounded
//! buffer, metrics are collected on demand through a `ManualReader`, and both are sent by
//! calling opentelemetry-otlp's exporters directly (async client, retries disabled) under a
//! `tokio::time::timeout`. Dropping the timed-out future cancels the request, so nothing is in
//! flight when Lambda freezes the environment; no SDK thread runs on a timer we don't control.
//!
//! Delivery is at-least-once: a span batch whose export failed or timed out goes back to the
//! front of the buffer for the next flush (a timeout does not prove it was not received), and
//! the oldest spans are dropped, and counted, only when the buffer is full. With cumulative
//! metrics (the default) a failed metrics export loses nothing: the next one carries the
//! totals. With delta metrics (`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`) a batch
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

use opentelemetry_otlp::{MetricExporter, SpanExporter};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};

pub use otlp::{ExportClients, ExportConfig, MetricsSource, resource};

use crate::signals::{Metrics, Signal};

/// Most spans kept for a later flush when the collector can't take them. A busy function
/// makes a handful per invoke; this is minutes of a dead collector, a few MiB at most.
pub const SPAN_BUFFER_CAP: usize = 4096;

/// Most spans sent in one request, to keep a request well under collectors' body limits.
const MAX_BATCH: usize = 512;

/// What one flush did, for logs and the sidecar's own metrics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FlushReport {
    pub spans_sent: usize,
    pub spans_pending: usize,
    pub spans_dropped: usize,
    pub metrics_sent: bool,
    pub timed_out: bool,
    pub duration: Duration,
}

/// The OTLP exporters, with their HTTP/gRPC clients: built once per process. Building them
/// The OTLP exporters and the span buffer between flushes.
pub struct Exporter {
    spans: Option<SpanExporter>,
    metrics: Option<MetricExporter>,
    buffer: VecDeque<SpanData>,
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
            buffer: VecDeque::new(),
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

    /// Nothing waits to be sent again: no span kept from a failed flush, no delta metrics
    /// batch undelivered.
    pub fn idle(&self) -> bool {
        self.buffer.is_empty() && self.unsent_metrics.is_none()
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
        if tokio::time::timeout(budget, async { tokio::join!(send_spans, send_metrics) })
            .await
            .is_err()
        {
            report.timed_out = true;
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
