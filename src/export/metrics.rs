//! The metrics queue: at most one collected batch waiting to be delivered (and one set
//! aside).
//!
//! Metrics are collected at a flush, not queued between flushes. With cumulative metrics
//! (the default) a failed export loses nothing: the next collection carries the totals.
//! With delta metrics (`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`) a batch holds
//! the only copy of its counts, so an undelivered one is kept and sent again first;
//! meanwhile nothing new is collected, and the SDK keeps adding up in its own state, whose
//! size is fixed by the label sets (cardinality-capped), not by the outage. The rule in
//! `queue.rs` applies as to spans: a batch whose request went unanswered is set aside and
//! sent again once, only after the collector has answered in time again, so a backend may
//! see a delta twice, never more; one given up is counted
//! (`sidecar.export.abandoned_items{signal="metrics"}`). The queue backs off like the others,
//! cumulative or not: against a slow collector, the metrics request would hold every
//! invocation for the whole cap.

use std::sync::Arc;

use opentelemetry_otlp::MetricExporter;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use tokio::time::Instant;

use super::MetricsSource;
use super::answers::Answers;
use super::queue::{Budget, Failure, Flushed, Outcome, Retry, Verdict};
use crate::metrics::{Abandoned, Metrics, Signal};

/// The metrics exporter, where it collects from, and the delta batches it still owes.
pub(super) struct MetricQueue {
    exporter: Option<MetricExporter>,
    /// What the collector answered the exporter's failed requests.
    answers: Answers,
    source: Arc<MetricsSource>,
    /// The batches not (known to be) delivered: delta only, cumulative ones are superseded.
    held: Held,
    /// The rule's state (`queue.rs`): the batches' tries and the backoff.
    retry: Retry,
    metrics: Arc<Metrics>,
}

/// The delta batches a metrics queue holds.
#[derive(Default)]
struct Held {
    /// Collected and not taken: sent again before anything new is collected.
    kept: Option<ResourceMetrics>,
    /// Its request went unanswered: sent again once the collector answers in time.
    aside: Option<ResourceMetrics>,
}

/// Which batch a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Kept,
    Aside,
}

impl MetricQueue {
    pub(super) fn new(
        exporter: Option<MetricExporter>,
        answers: Answers,
        source: Arc<MetricsSource>,
        metrics: Arc<Metrics>,
    ) -> MetricQueue {
        MetricQueue {
            exporter,
            answers,
            source,
            held: Held::default(),
            retry: Retry::default(),
            metrics,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.held.kept.is_none() && self.held.aside.is_none()
    }

    fn pending(&self) -> usize {
        usize::from(self.held.kept.is_some()) + usize::from(self.held.aside.is_some())
    }

    fn delta(&self) -> bool {
        self.source.temporality != Temporality::Cumulative
    }

    /// Sends the kept batch, if any, then what was recorded since, within `budget`, unless
    /// the queue backs off; a failure is logged and counted, and a delta batch that was not
    /// delivered is kept or set aside, as the rule says (`queue.rs`).
    pub(super) async fn flush(&mut self, budget: Budget) -> Flushed {
        let Some(exporter) = self.exporter.as_ref() else {
            return Flushed::default();
        };
        let mut flushed = Flushed::default();
        if self.retry.sits_out(budget) {
            // Nothing is collected: the next collection carries what is recorded meanwhile.
            flushed.sat_out = true;
        } else if !budget.spent() {
            let mut in_flight = None;
            let send = send(
                (exporter, &self.answers),
                &self.source,
                &mut self.held,
                &mut self.retry,
                (&mut flushed.sent, &mut in_flight),
            );
            let failure = match budget.run(send).await {
                Some(failure) => failure.map(|(failure, which)| (failure, Some(which))),
                None => {
                    flushed.timed_out = true;
                    Some((Failure::timed_out(budget), in_flight))
                }
            };
            self.retry
                .flushed(failure.as_ref().is_some_and(|(failure, _)| failure.stops()));
            if let Some((failure, which)) = failure {
                self.metrics.export_failure(Signal::Metrics);
                if let Some(which) = which {
                    self.settle(which, &failure, budget);
                }
            }
        }
        // A cumulative batch is superseded by the next collection; a delta one is the only
        // copy of its counts. One kept batch is the whole bound: until it is delivered
        // nothing more is collected (and one more may be aside).
        if !self.delta() {
            self.held = Held::default();
            self.retry.settle(Outcome::Delivered, 0);
            self.retry.aside_gone();
        } else if budget.is_last() && self.held.aside.take().is_some() {
            self.abandoned(
                Abandoned::Unanswered,
                "a delta batch set aside not sent again",
            );
        }
        Flushed {
            pending: self.pending(),
            ..flushed
        }
    }

    /// The batch `which`, whose request ended in `failure` under `budget`: kept, set aside,
    /// or given up (a delta batch counted).
    fn settle(&mut self, which: Which, failure: &Failure, budget: Budget) {
        let verdict = match which {
            Which::Kept => self.retry.settle(failure.outcome, 1),
            Which::Aside => self.retry.settle_aside(failure.outcome),
        };
        match verdict {
            Verdict::Delivered => {}
            Verdict::Keep => {
                tracing::warn!(error = %failure, "metrics export failed; sent again later");
            }
            Verdict::SetAside => {
                tracing::warn!(error = %failure, "metrics export unanswered; set aside");
                let unanswered = self.held.kept.take();
                if std::mem::replace(&mut self.held.aside, unanswered).is_some() {
                    self.abandoned(Abandoned::Unanswered, "an older batch set aside dropped");
                }
                self.retry.set_aside(budget.total());
            }
            Verdict::Abandon(reason) => {
                let gone = match which {
                    Which::Kept => self.held.kept.take(),
                    Which::Aside => self.held.aside.take(),
                };
                if gone.is_some() && self.delta() {
                    self.abandoned(reason, &failure.to_string());
                } else {
                    // Cumulative: the next collection states the same totals.
                    tracing::warn!(error = %failure, "metrics export failed");
                }
            }
        }
        if self.held.aside.is_none() {
            self.retry.aside_gone();
        }
    }

    /// A delta batch was given up, for `reason`: counted and logged.
    fn abandoned(&self, reason: Abandoned, error: &str) {
        self.metrics.abandoned(Signal::Metrics, reason, 1);
        tracing::warn!(
            error,
            reason = reason.as_str(),
            "metrics export given up: a delta batch dropped"
        );
    }
}

/// Sends the kept batch, if any, and then a new collection (once), counting the batches
/// delivered in `sent`, and the one aside once a request was delivered faster than the
/// budget that cut it; `None` once done, else the failure and its batch, still held. A batch
/// leaves `held` only once delivered; `in_flight` names the one whose request is out.
async fn send(
    (exporter, answers): (&MetricExporter, &Answers),
    source: &MetricsSource,
    held: &mut Held,
    retry: &mut Retry,
    (sent, in_flight): (&mut usize, &mut Option<Which>),
) -> Option<(Failure, Which)> {
    let mut collected = false;
    let mut in_time = false;
    loop {
        let which = if in_time && held.aside.is_some() {
            Which::Aside
        } else if held.kept.is_some() {
            Which::Kept
        } else if !collected {
            collected = true;
            // Collected only when they will be sent: reading every instrument costs.
            match source.collect() {
                Ok(metrics) => held.kept = Some(metrics),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics could not be collected");
                    return None;
                }
            }
            Which::Kept
        } else {
            return None;
        };
        let batch = match which {
            Which::Kept => held.kept.as_ref(),
            Which::Aside => held.aside.as_ref(),
        }?;
        *in_flight = Some(which);
        let started = Instant::now();
        let result = exporter.export(batch).await;
        *in_flight = None;
        if let Err(e) = result {
            return Some((answers.failure(e), which));
        }
        *sent += 1;
        match which {
            Which::Kept => {
                in_time |= retry.answers_in_time(started.elapsed());
                retry.settle(Outcome::Delivered, 1);
                held.kept = None;
            }
            Which::Aside => {
                held.aside = None;
                retry.aside_gone();
            }
        }
    }
}
