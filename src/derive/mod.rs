//! Derivation: turns [`Record`]s, in arrival order, into finished spans and metric
//! values.
//!
//! [`Deriver`] dispatches each record to the concern it is about, and each concern owns
//! its own state: `invocations.rs` (INVOKE and `platform.start`/`runtimeDone`/`report`: the
//! invocation spans and metrics), `phases.rs` (init and restore), `tokens.rs` (which
//! invocation a `/token` request's span belongs to, and the bounded hold of those not yet
//! placed) and `logs.rs` (`function`/`extension` lines as log records). What they share —
//! what Lambda says about the function, the metrics, the sampler and the finished spans
//! (`spans.rs`) — the `Deriver` owns and lends them.
//!
//! Every metric value recorded while applying a record is stamped, for EMF, with the time
//! of what it describes: an invocation's figures with the invocation's start, a token
//! request's with the request's, any other event's with the event's
//! (`metrics::pending::stamped`).
//!
//! Architecture invariants: no I/O and no clock reads (every time comes from a record,
//! or from the caller of [`Deriver::finish_pending`]), so derivation is a pure function
//! of its input and tests drive it directly; state is bounded ([`MAX_PENDING`]
//! invocations, [`RECENT`] finished ids, [`MAX_FINISHED`] spans awaiting a drain,
//! [`MAX_HELD`] token requests awaiting placement); no token, secret or claim value
//! reaches a span.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData};

use crate::events::{Batch, EventKind, LogLine, Report, TelemetryEvent};
use crate::function::FunctionInfo;
use crate::items::{InvocationTraces, LogEntry};
use crate::metrics::pending::stamped;
use crate::metrics::{Metrics, SkipReason};
use crate::records::Record;
use crate::sampling::{Propagators, Sampler};

mod invocations;
mod logs;
mod phases;
mod spans;
mod tokens;

pub use invocations::{MAX_PENDING, RECENT};
pub use spans::MAX_FINISHED;
pub use tokens::MAX_HELD;

use invocations::Invocations;
use phases::Phases;
use spans::{Finished, NewSpan, flags};
use tokens::Tokens;

/// What every concern uses: the function's description, the metrics they record, the
/// sampler that decides a new trace, the ids, and the spans they finish.
struct Shared {
    metrics: Arc<Metrics>,
    function: FunctionInfo,
    /// [`FunctionInfo::attributes`], computed once.
    common: Vec<KeyValue>,
    sampler: Sampler,
    /// Which incoming trace contexts are believed (`OTEL_PROPAGATORS`).
    propagators: Propagators,
    ids: RandomIdGenerator,
    finished: Finished,
    /// Where the invocations' trace contexts are published for the OTLP receiver's spans to
    /// join, when it is on.
    traces: Option<InvocationTraces>,
}

impl Shared {
    /// Keeps a finished span for the next drain, within the bound.
    fn push_span(&mut self, span: NewSpan<'_>) {
        self.finished.push(span, &self.metrics);
    }

    /// A new span's context in `trace_id`, with the sampling decision made for it.
    fn context(&self, trace_id: TraceId, sampled: bool) -> SpanContext {
        SpanContext::new(
            trace_id,
            self.ids.new_span_id(),
            flags(sampled),
            false,
            TraceState::default(),
        )
    }

    /// A new trace id, and the sampler's decision for a root span in it.
    fn new_trace(&self) -> (TraceId, bool) {
        let trace_id = self.ids.new_trace_id();
        (trace_id, self.sampler.decide(None, trace_id))
    }

    /// The context of a new root span, in a trace of its own.
    fn root_context(&self) -> SpanContext {
        let (trace_id, sampled) = self.new_trace();
        self.context(trace_id, sampled)
    }
}

/// Turns records into spans and metrics. One per process; not shared across threads
/// (the pipeline owns it and feeds it from a channel).
pub struct Deriver {
    shared: Shared,
    invocations: Invocations,
    phases: Phases,
    tokens: Tokens,
    /// `function`/`extension` lines become log records only when logs are exported.
    logs: Option<logs::Logs>,
}

impl Deriver {
    pub fn new(function: FunctionInfo, metrics: Arc<Metrics>) -> Self {
        Deriver {
            invocations: Invocations::new(function.first_invocation_is_cold()),
            phases: Phases::default(),
            tokens: Tokens::default(),
            logs: None,
            shared: Shared {
                metrics,
                common: function.attributes(),
                function,
                sampler: Sampler::default(),
                propagators: Propagators::default(),
                ids: RandomIdGenerator::default(),
                finished: Finished::new(),
                traces: None,
            },
        }
    }

    /// Publishes each X-Ray traced invocation's trace context in `traces`, for the function's
    /// own spans (the OTLP receiver's) to join its tree.
    pub fn with_invocation_traces(mut self, traces: InvocationTraces) -> Self {
        self.shared.traces = Some(traces);
        self
    }

    /// Also turns `function` and `extension` log lines into log records ([`Self::take_logs`]).
    pub fn with_logs(mut self) -> Self {
        self.logs = Some(logs::Logs::new());
        self
    }

    /// Samples with `sampler` instead of the default `parentbased_always_on`.
    pub fn with_sampler(mut self, sampler: Sampler) -> Self {
        self.shared.sampler = sampler;
        self
    }

    /// Reads only the trace contexts `propagators` lists (`OTEL_PROPAGATORS`): without
    /// `tracecontext` a `/token` caller's `traceparent` is ignored, without `xray` the X-Ray
    /// context of the invocation (each invocation then starts a trace of its own).
    pub fn with_propagators(mut self, propagators: Propagators) -> Self {
        self.shared.propagators = propagators;
        self
    }

    /// Sets `faas.trigger` (`SIDECAR_FAAS_TRIGGER`) instead of the default `other`.
    pub fn with_trigger(mut self, trigger: &'static str) -> Self {
        self.invocations.trigger = trigger;
        self
    }

    /// For Lambda Managed Instances (`AWS_LAMBDA_INITIALIZATION_TYPE=lambda-managed-instances`),
    /// where invocations overlap: a token span is placed by its request id or traceparent
    /// only; one with neither is left alone and counted (`reason="concurrent"`).
    pub fn with_overlapping_invocations(mut self, overlapping: bool) -> Self {
        self.invocations.overlapping = overlapping;
        self
    }

    /// Applies one record. Never fails: what cannot be used is skipped (and counted
    /// where a metric exists for it).
    pub fn ingest(&mut self, record: Record) {
        match record {
            Record::Invoke(invoke) => {
                self.invocations.invoke(invoke, &self.shared);
                self.settle(false);
            }
            Record::Telemetry(batch) => {
                self.batch(batch);
                self.settle(false);
            }
            Record::Token(mut token) => {
                if !self.shared.propagators.tracecontext {
                    token.traceparent = None;
                }
                stamped(token.start, || {
                    self.tokens
                        .token(token, &mut self.invocations, &mut self.shared);
                });
            }
            Record::Resumed { request_id, at } => {
                self.invocations
                    .resumed(&request_id, at, &self.shared.metrics);
            }
        }
    }

    /// Invocations seen and not yet reported (`platform.report`): what SHUTDOWN waits for.
    pub fn in_flight(&self) -> usize {
        self.invocations.len()
    }

    /// `platform.runtimeDone` of `request_id` has been ingested (its span and invocation
    /// metrics derived), or its report (runtimeDone lost), or SHUTDOWN closed it.
    pub fn runtime_done(&self, request_id: &str) -> bool {
        self.invocations.has_ended(request_id)
    }

    /// The spans finished since the last call, oldest first.
    pub fn take_spans(&mut self) -> Vec<SpanData> {
        self.shared.finished.take()
    }

    /// The log records derived since the last call, oldest first.
    pub fn take_logs(&mut self) -> Vec<LogEntry> {
        self.logs.as_mut().map(logs::Logs::take).unwrap_or_default()
    }

    /// At SHUTDOWN: ends every span that will never get its end event at `now`, with
    /// `sidecar.incomplete=true`, and forgets all state (events for those request ids
    /// arriving later are ignored).
    pub fn finish_pending(&mut self, now: SystemTime) {
        // Held token spans first, while every invocation they could belong to is known.
        self.settle(true);
        self.invocations.finish_pending(now, &mut self.shared);
        self.phases.finish_pending(now, &mut self.shared);
    }

    /// The request id of the invocation that holds time `at`, as far as is known now: the
    /// one that started last by `at`, unless it ended before. `None` on Managed Instances,
    /// where invocations overlap and only a request id tells.
    pub fn invocation_at(&self, at: SystemTime) -> Option<&str> {
        tokens::invocation_at(&self.invocations, at)
    }

    /// A telemetry batch: what the parser skipped is counted, the rest applied in order.
    fn batch(&mut self, batch: Batch) {
        let metrics = &self.shared.metrics;
        metrics.skipped_events(SkipReason::UnknownType, count(batch.unknown));
        metrics.skipped_events(SkipReason::Malformed, count(batch.malformed));
        for event in batch.events {
            self.shared.metrics.telemetry_event(event.kind.type_name());
            // The event's figures carry its time in EMF (an invocation's, its start's).
            stamped(event.time, || self.event(event));
        }
    }

    /// Hands one event to the concern it is about. Every `platform.start`, `runtimeDone`
    /// and `report` also tells token placement how far telemetry has come.
    fn event(&mut self, TelemetryEvent { time, kind }: TelemetryEvent) {
        let shared = &mut self.shared;
        if matches!(
            kind,
            EventKind::Start(_) | EventKind::RuntimeDone(_) | EventKind::Report(_)
        ) {
            self.tokens.saw(time);
        }
        match kind {
            EventKind::InitStart(start) => self.phases.init_start(time, start),
            EventKind::InitRuntimeDone(done) => self.phases.init_runtime_done(time, done),
            EventKind::InitReport(report) => self.phases.init_report(time, report, shared),
            EventKind::RestoreStart(_) => self.phases.restore_start(time),
            EventKind::RestoreRuntimeDone(done) => self.phases.restore_runtime_done(time, done),
            EventKind::RestoreReport(report) => self.phases.restore_report(time, report, shared),
            EventKind::Start(start) => self.invocations.start(time, start, shared),
            EventKind::RuntimeDone(done) => self.invocations.runtime_done(time, done, shared),
            EventKind::Report(report) => self.report(time, report),
            EventKind::LogsDropped(dropped) => shared.metrics.logs_dropped(dropped.dropped_records),
            EventKind::Function(line) => self.log(time, logs::Source::Function, line),
            EventKind::ExtensionLog(line) => self.log(time, logs::Source::Extension, line),
            EventKind::Extension(_) | EventKind::TelemetrySubscription(_) => {}
        }
    }

    /// The last event of an invocation. Its durations go to the concerns that record them,
    /// and held token spans are placed before the invocation is forgotten.
    fn report(&mut self, time: SystemTime, report: Report) {
        if self.invocations.finished(&report.request_id) {
            return; // re-delivered
        }
        self.invocations.report(time, &report, &self.shared.metrics);
        self.phases.reported(&report.metrics, &self.shared);
        self.settle(false);
        self.invocations.forget(time, report, &mut self.shared);
    }

    /// A log line becomes a record only when logs are exported.
    fn log(&mut self, time: SystemTime, source: logs::Source, line: LogLine) {
        if let Some(logs) = &mut self.logs {
            logs.log(time, source, line, &self.invocations, &self.shared.metrics);
        }
    }

    /// Places the held token spans that can now be placed; with `last_word` (SHUTDOWN),
    /// every one, with what is known.
    fn settle(&mut self, last_word: bool) {
        self.tokens
            .settle(last_word, &mut self.invocations, &mut self.shared);
    }
}

/// A duration in milliseconds from Lambda; `None` for negative or absurd values.
fn millis(ms: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(ms / 1000.0).ok()
}

/// A duration in milliseconds from Lambda, in seconds; zero for negative or absurd values.
fn seconds(ms: f64) -> f64 {
    millis(ms).map_or(0.0, |d| d.as_secs_f64())
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
