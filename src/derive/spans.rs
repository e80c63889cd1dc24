//! The finished spans awaiting a drain: how a derived span becomes [`SpanData`], and the
//! bound on how many wait, with room kept for the spans that say what happened.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status as SpanStatus, TraceFlags};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::events::Status;
use crate::metrics::{Metrics, Signal};

/// Finished spans held until the next drain (the lifecycle drains at every INVOKE). The
/// exporter's buffer holds as many ([`crate::items::SPAN_BUFFER_CAP`]) and drops the
/// oldest beyond it, so holding more here would only cost memory: 30,000 token spans in
/// one invocation once took 16 MB. Past the bound new spans are dropped and counted
/// (`sidecar.export.dropped_items{signal="traces"}`).
pub const MAX_FINISHED: usize = crate::items::SPAN_BUFFER_CAP;

/// Room in [`MAX_FINISHED`] kept for invocation, init and restore spans, which say what
/// happened; token and Lambda child spans (the ones that can come by the thousand) stop
/// being kept before it. Between two drains there is normally one invocation span; at
/// SHUTDOWN, every unfinished one.
pub(super) const RESERVED_FOR_INVOCATIONS: usize = 256;

/// How a span ended, for its status and `error.type`.
pub(super) struct Outcome<'a> {
    pub(super) status: Status,
    pub(super) error_type: Option<&'a str>,
    /// Closed at SHUTDOWN or eviction without its end event.
    pub(super) incomplete: bool,
    /// An error status says why in its description; off where an attribute already says
    /// it (HTTP spans: "don't set the description if the reason can be inferred from
    /// `http.response.status_code`").
    pub(super) described: bool,
}

impl<'a> Outcome<'a> {
    /// Ended by its end event with `status`: what Lambda reported.
    pub(super) fn reported(status: Status, error_type: Option<&'a str>) -> Self {
        Outcome {
            status,
            error_type,
            incomplete: false,
            described: true,
        }
    }

    /// Closed at SHUTDOWN without its end event, as far as it got.
    pub(super) fn cut_short(status: Status, error_type: Option<&'a str>) -> Self {
        Outcome {
            incomplete: true,
            ..Outcome::reported(status, error_type)
        }
    }
}

/// A finished span before it becomes [`SpanData`].
pub(super) struct NewSpan<'a> {
    pub(super) context: SpanContext,
    /// The parent's span id, and whether it lives in another process.
    pub(super) parent: Option<(SpanId, bool)>,
    pub(super) kind: SpanKind,
    pub(super) name: Cow<'static, str>,
    pub(super) start: SystemTime,
    pub(super) end: SystemTime,
    pub(super) attributes: Vec<KeyValue>,
    pub(super) outcome: &'a Outcome<'a>,
    /// An invocation, init or restore span: may use [`RESERVED_FOR_INVOCATIONS`].
    pub(super) essential: bool,
}

/// The spans finished since the last drain, at most [`MAX_FINISHED`].
pub(super) struct Finished {
    spans: Vec<SpanData>,
    scope: InstrumentationScope,
}

impl Finished {
    pub(super) fn new() -> Self {
        Finished {
            spans: Vec::new(),
            scope: InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }

    /// Keeps `span` if it is sampled and there is room for it; a span past the bound is
    /// counted in `metrics` as dropped.
    pub(super) fn push(&mut self, span: NewSpan<'_>, metrics: &Metrics) {
        let NewSpan {
            context,
            parent,
            kind,
            name,
            start,
            end,
            mut attributes,
            outcome,
            essential,
        } = span;
        // Not sampled: never exported, so not kept (and not a drop to count).
        if !context.is_sampled() {
            return;
        }
        let room = if essential {
            MAX_FINISHED
        } else {
            MAX_FINISHED - RESERVED_FOR_INVOCATIONS
        };
        if self.spans.len() >= room {
            metrics.dropped(Signal::Traces, 1);
            return;
        }
        let status = status(outcome, &mut attributes);
        if outcome.incomplete {
            attributes.push(KeyValue::new("sidecar.incomplete", true));
        }
        let (parent_span_id, parent_span_is_remote) = parent.unwrap_or((SpanId::INVALID, false));
        self.spans.push(SpanData {
            span_context: context,
            parent_span_id,
            parent_span_is_remote,
            span_kind: kind,
            name,
            start_time: start,
            end_time: end.max(start),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        });
    }

    /// The spans finished since the last call, oldest first.
    pub(super) fn take(&mut self) -> Vec<SpanData> {
        std::mem::take(&mut self.spans)
    }
}

/// The span status `outcome` calls for; an error also gets its `error.type` attribute.
fn status(outcome: &Outcome<'_>, attributes: &mut Vec<KeyValue>) -> SpanStatus {
    match outcome.status {
        Status::Success => SpanStatus::Unset,
        other => {
            let error_type = outcome.error_type.unwrap_or(other.as_str()).to_owned();
            attributes.push(KeyValue::new("error.type", error_type.clone()));
            SpanStatus::error(match outcome.error_type {
                _ if !outcome.described => String::new(),
                Some(_) => format!("{}: {error_type}", other.as_str()),
                None => error_type,
            })
        }
    }
}

/// A span context's flags: only the sampled flag is ever set, and an exported span has it.
pub(super) fn flags(sampled: bool) -> TraceFlags {
    TraceFlags::default().with_sampled(sampled)
}
