//! The sidecar's own work as spans (`SIDECAR_SELF_TRACES=on`): register, the Telemetry API
//! subscription, the key load (each AWS call a child), each flush and each KMS signature, so
//! that an SRE sees what the extension itself costs beside the function's spans.
//!
//! The code marks that work with ordinary `tracing` spans under [`TARGET`]. When self-traces
//! are on, `logging` adds a `tracing-opentelemetry` layer that turns exactly those spans into
//! OpenTelemetry spans (ids, parents, timing, attributes from the span's fields), and the
//! SDK hands each finished one to [`SelfTraces`]' bounded buffer; every flush drains it into
//! the exporter's span queue with the function's spans, under the same bounds and budget.
//! When off, no layer takes the target and the log filter refuses it, so each of these
//! `tracing` call sites is disabled once for all: a span costs a relaxed atomic load.
//!
//! A span ends when its work does, so a flush's own span goes with the next flush; the last
//! flush's (SHUTDOWN's) is not sent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanProcessor};
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

/// The `tracing` target of every self-trace span: the one the layer takes, and the one the
/// log filter turns off.
pub const TARGET: &str = "lambda_sidecar::self_trace";

/// Finished self-trace spans held until the next flush. A flush happens at least at every
/// INVOKE or tick; in between, one flush span, a key refresh's calls and the KMS signatures
/// of that invocation's tokens end, so more means a token burst under a KMS key: the oldest
/// are dropped and counted (`sidecar.export.dropped_items{signal="traces"}`).
pub const MAX_HELD: usize = 512;

/// The buffer every finished self-trace span goes to, shared by the SDK's span processor and
/// the flushes that drain it.
#[derive(Debug, Default)]
struct Held {
    spans: Mutex<VecDeque<SpanData>>,
    dropped: AtomicU64,
}

/// Self-tracing, on: the tracer provider whose spans the layer builds, and their buffer.
#[derive(Debug, Clone)]
pub struct SelfTraces {
    provider: SdkTracerProvider,
    held: Arc<Held>,
}

impl Default for SelfTraces {
    fn default() -> Self {
        SelfTraces::new()
    }
}

impl SelfTraces {
    pub fn new() -> SelfTraces {
        let held = Arc::new(Held::default());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Collect(Arc::clone(&held)))
            .build();
        SelfTraces { provider, held }
    }

    /// The `tracing` layer that makes OpenTelemetry spans of the [`TARGET`] spans, and of
    /// nothing else.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        let tracer = self.provider.tracer("lambda-sidecar");
        // Where in the code (`code.*`) helps; the thread (always the runtime's one), the
        // target (always [`TARGET`]) and tracing's busy/idle split do not.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target(TARGET, tracing::Level::TRACE))
    }

    /// The spans finished since the last call, oldest first, and how many the bound dropped
    /// meanwhile.
    pub fn drain(&self) -> (Vec<SpanData>, u64) {
        let spans = std::mem::take(&mut *self.held.lock());
        (spans.into(), self.held.dropped.swap(0, Ordering::Relaxed))
    }
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<SpanData>> {
        // A panic while holding the lock leaves a valid queue.
        self.spans.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The SDK's span processor: keeps each finished span, within [`MAX_HELD`].
#[derive(Debug)]
struct Collect(Arc<Held>);

impl SpanProcessor for Collect {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let mut spans = self.0.lock();
        if spans.len() >= MAX_HELD {
            spans.pop_front();
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        }
        spans.push_back(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::SpanId;
    use tracing::Instrument as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[tokio::test]
    async fn only_self_trace_spans_are_kept_with_their_parents() {
        let traces = SelfTraces::new();
        let subscriber = tracing_subscriber::registry().with(traces.layer());
        let _guard = tracing::subscriber::set_default(subscriber);
        async {
            tracing::info_span!(target: TARGET, "sidecar.aws_call", aws.operation = "GetSecretValue")
                .in_scope(|| {});
            tracing::info_span!("not.ours").in_scope(|| {});
        }
        .instrument(tracing::info_span!(target: TARGET, "sidecar.key_load"))
        .await;
        let (spans, dropped) = traces.drain();
        assert_eq!(dropped, 0);
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["sidecar.aws_call", "sidecar.key_load"]);
        let (child, parent) = (&spans[0], &spans[1]);
        assert_eq!(child.parent_span_id, parent.span_context.span_id());
        assert_eq!(
            child.span_context.trace_id(),
            parent.span_context.trace_id()
        );
        assert_eq!(parent.parent_span_id, SpanId::INVALID);
        assert!(
            child
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == "aws.operation"
                    && kv.value.as_str() == "GetSecretValue")
        );
        assert!(traces.drain().0.is_empty(), "drained once");
    }

    #[test]
    fn the_buffer_is_bounded_and_counts_what_it_drops() {
        let traces = SelfTraces::new();
        let subscriber = tracing_subscriber::registry().with(traces.layer());
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..MAX_HELD + 3 {
                tracing::info_span!(target: TARGET, "sidecar.kms_sign").in_scope(|| {});
            }
        });
        let (spans, dropped) = traces.drain();
        assert_eq!((spans.len(), dropped), (MAX_HELD, 3));
    }
}
