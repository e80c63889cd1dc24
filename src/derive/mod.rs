//! Derivation: turns [`Record`]s, in arrival order, into finished spans and metric
//! values.
//!
//! State is kept per request id from the first sight of it (the lifecycle's INVOKE or a
//! `platform.start`, whichever comes first) until its `platform.report`. The invocation
//! span's id is chosen at that first sight, so a token span can name it as its parent
//! long before `platform.runtimeDone` (which ends the span) arrives: telemetry for an
//! invocation is usually delivered during a later one, because Lambda freezes the
//! sidecar in between.
//!
//! Which invocation a token span belongs to is decided by the caller's request id
//! ([`crate::records::REQUEST_ID_HEADER`]), else by its `traceparent` (nested under the
//! invocation span when its parent is the invocation's X-Ray parent), else by time: the
//! invocation whose `platform.start` … `platform.runtimeDone` window holds the request.
//! Lambda hands the INVOKE to the runtime and to the extensions in no guaranteed order, and
//! telemetry comes later still, so a token span waits in a bounded hold ([`MAX_HELD`])
//! until the events that decide have arrived: it is exported at the next flush anyway. On
//! Managed Instances invocations overlap and time cannot decide.
//!
//! Architecture invariants: no I/O and no clock reads (every time comes from a record,
//! or from the caller of [`Deriver::finish_pending`]), so derivation is a pure function
//! of its input and tests drive it directly; state is bounded ([`MAX_PENDING`]
//! invocations, [`RECENT`] finished ids, [`MAX_FINISHED`] spans awaiting a drain); no
//! token, secret or claim value reaches a span.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status as SpanStatus, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData, SpanEvents, SpanLinks};

use crate::intake::events::{
    Batch, EventKind, InitReport, PlatformSpan, Report, RestoreReport, RuntimeDone, Status,
    TelemetryEvent,
};
use crate::records::{
    HttpMethod, InvokeRecord, Record, RemoteParent, TOKEN_ROUTE, TokenRecord, parse_xray,
};
use crate::sampling::Sampler;
use crate::signals::{Metrics, Signal, SkipReason, Unattributed};

mod function;
mod logs;

pub use function::FunctionInfo;
pub use logs::LogEntry;

/// Invocations tracked at once. Lambda runs one invocation at a time per environment
/// (a few dozen on Managed Instances), so reaching this means reports are being lost;
/// the oldest entry is then evicted and counted (`sidecar.telemetry.evicted`).
pub const MAX_PENDING: usize = 1_000;

/// Finished request ids remembered to ignore events Lambda re-delivers (it resends a
/// batch whose POST it considers failed).
pub const RECENT: usize = 256;

/// Finished spans held until the next drain (the lifecycle drains at every INVOKE). The
/// exporter's buffer holds as many ([`crate::export::SPAN_BUFFER_CAP`]) and drops the
/// oldest beyond it, so holding more here would only cost memory: 30,000 token spans in
/// one invocation once took 16 MB. Past the bound new spans are dropped and counted
/// (`sidecar.export.dropped_items{signal="traces"}`).
pub const MAX_FINISHED: usize = crate::export::SPAN_BUFFER_CAP;

/// Room in [`MAX_FINISHED`] kept for invocation, init and restore spans, which say what
/// happened; token and Lambda child spans (the ones that can come by the thousand) stop
/// being kept before it. Between two drains there is normally one invocation span; at
/// SHUTDOWN, every unfinished one.
const RESERVED_FOR_INVOCATIONS: usize = 256;

/// Token requests held until the telemetry that decides their invocation has arrived. A
/// held span is on its way to the spans awaiting a drain, where at most this many token and
/// child spans fit ([`MAX_FINISHED`] less [`RESERVED_FOR_INVOCATIONS`]): holding more could
/// only move the drop later. One invocation's tokens are normally held until its
/// `platform.runtimeDone` arrives, so this is also the most tokens per invocation whose spans
/// can all be placed. Past it the oldest is let go without an invocation and counted
/// (`sidecar.token.unattributed{reason="overflow"}`). About 150 bytes each: under 1 MB.
pub const MAX_HELD: usize = MAX_FINISHED - RESERVED_FOR_INVOCATIONS;

/// Lambda's event times have millisecond precision (truncated), and a token request can
/// start within the millisecond `platform.runtimeDone` is stamped with: a window's end is
/// widened by this much.
const WINDOW_SLACK: Duration = Duration::from_millis(1);

const MIB: u64 = 1024 * 1024;

/// What is known about one request id until its `platform.report`.
#[derive(Debug)]
struct Invocation {
    /// Arrival order, to evict the oldest.
    seq: u64,
    /// Chosen at first sight so children can point at it before the span ends.
    span_id: SpanId,
    trace_id: TraceId,
    /// The caller's X-Ray segment, the span's remote parent.
    parent: Option<SpanId>,
    /// The trace id came from X-Ray (otherwise it is random and may still be replaced).
    traced: bool,
    /// A token span already uses `trace_id`: it must no longer change.
    has_children: bool,
    /// The sampling decision, made with the trace id (at first sight, or when X-Ray's
    /// context is adopted, which only happens before anything used the trace id). An
    /// unsampled invocation exports no span, its children and token spans included;
    /// its metrics are counted all the same.
    sampled: bool,
    coldstart: bool,
    invoked_arn: Option<String>,
    received: Option<SystemTime>,
    started: Option<SystemTime>,
    /// `platform.runtimeDone` time, once the span has been emitted.
    runtime_done: Option<SystemTime>,
    /// Where its window ends: `platform.runtimeDone`'s time, else (lost) the end the
    /// report gives. Token spans are placed against it.
    ended: Option<SystemTime>,
    /// When the sidecar handed control back (the `Resumed` record).
    resumed: Option<SystemTime>,
}

impl Invocation {
    /// Adopts an X-Ray context learnt after first sight, unless children already use
    /// the random trace id; its `Sampled` flag is the parent decision.
    fn learn_xray(&mut self, header: Option<&str>, sampler: Sampler) {
        if self.traced || self.has_children {
            return;
        }
        if let Some(xray) = header.and_then(parse_xray) {
            self.trace_id = xray.trace_id;
            self.parent = xray.span_id;
            self.traced = true;
            self.sampled = sampler.decide(xray.sampled, xray.trace_id);
        }
    }

    /// Where the span starts: `platform.start`, else when the INVOKE arrived.
    fn start(&self) -> Option<SystemTime> {
        self.started.or(self.received)
    }

    /// The invocation surely started by `at`: `platform.start` says so, or the INVOKE had
    /// already arrived (Lambda sends it once the invocation has started).
    fn started_by(&self, at: SystemTime) -> bool {
        self.start().is_some_and(|start| start <= at)
    }

    /// Its window ended before `at`, as far as is known.
    fn ended_before(&self, at: SystemTime) -> bool {
        self.ended
            .and_then(|end| end.checked_add(WINDOW_SLACK))
            .is_some_and(|end| end < at)
    }

    /// A caller's trace context whose parent is this invocation's X-Ray parent: what a
    /// function sends when it turns `_X_AMZN_TRACE_ID` into a `traceparent`.
    fn is_xray_parent(&self, caller: RemoteParent) -> bool {
        self.traced && caller.trace_id == self.trace_id && caller.span_id == self.parent
    }
}

/// Where a token span goes.
enum Placement {
    /// Not yet known: held until more telemetry arrives.
    Wait,
    /// In this invocation (by request id).
    Invocation(String),
    /// In the caller's trace, under the caller's span.
    Caller(RemoteParent),
    /// A root span in a trace of its own, counted.
    Alone(Unattributed),
}

/// The init or restore phase, from its start event to its report.
#[derive(Debug, Default)]
struct Phase {
    start: Option<SystemTime>,
    initialization_type: Option<String>,
    /// `*RuntimeDone`: when, and how it ended.
    runtime_done: Option<(SystemTime, Status, Option<String>)>,
}

/// Where a phase is. Each happens at most once per process (a failed init resets the
/// whole environment, extensions included; a SnapStart restore resumes a snapshot taken
/// before any restore), so events re-delivered after `Done` are ignored.
#[derive(Debug, Default)]
enum PhaseState {
    #[default]
    NotSeen,
    Open(Phase),
    Done,
}

/// Which phase a span covers.
#[derive(Debug, Clone, Copy)]
enum PhaseKind {
    Init,
    Restore,
}

impl PhaseKind {
    fn span_name(self) -> &'static str {
        match self {
            PhaseKind::Init => "init",
            PhaseKind::Restore => "restore",
        }
    }
}

/// How a span ended, for its status and `error.type`.
struct Outcome<'a> {
    status: Status,
    error_type: Option<&'a str>,
    /// Closed at SHUTDOWN or eviction without its end event.
    incomplete: bool,
    /// An error status says why in its description; off where an attribute already says
    /// it (HTTP spans: "don't set the description if the reason can be inferred from
    /// `http.response.status_code`").
    described: bool,
}

/// A finished span before it becomes [`SpanData`].
struct NewSpan<'a> {
    context: SpanContext,
    /// The parent's span id, and whether it lives in another process.
    parent: Option<(SpanId, bool)>,
    kind: SpanKind,
    name: Cow<'static, str>,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    outcome: &'a Outcome<'a>,
    /// An invocation, init or restore span: may use [`RESERVED_FOR_INVOCATIONS`].
    essential: bool,
}

/// Turns records into spans and metrics. One per process; not shared across threads
/// (the pipeline owns it and feeds it from a channel).
pub struct Deriver {
    metrics: Arc<Metrics>,
    function: FunctionInfo,
    /// [`FunctionInfo::attributes`], computed once.
    common: Vec<KeyValue>,
    /// `faas.trigger` of the invocation spans: one of `config::FAAS_TRIGGERS`.
    trigger: &'static str,
    scope: InstrumentationScope,
    ids: RandomIdGenerator,
    sampler: Sampler,
    invocations: HashMap<String, Invocation>,
    next_seq: u64,
    /// Finished request ids, oldest first.
    recent: VecDeque<String>,
    /// Token requests whose invocation is not known yet, oldest first (at most [`MAX_HELD`]).
    held: VecDeque<TokenRecord>,
    /// The latest `platform.start`/`runtimeDone`/`report` time seen. A subscriber's
    /// telemetry comes from one buffer, batch after batch, in the order it happened (an
    /// assumption: a batch Lambda gives up on breaks it, and the spans it would have placed
    /// are then placed with what is known): every `platform.start` up to it has arrived, so
    /// an invocation that a token request before it could name or nest under is known.
    watermark: Option<SystemTime>,
    /// Lambda Managed Instances: invocations overlap, so time does not tell which one a
    /// token request came from.
    overlapping: bool,
    /// The next new request id is this environment's first invocation, and it waited for
    /// a cold start ([`FunctionInfo::first_invocation_is_cold`]).
    cold_pending: bool,
    init: PhaseState,
    restore: PhaseState,
    /// The init/restore duration has been recorded (from its phase report or from the
    /// first `platform.report`), so the other source does not count it again.
    init_recorded: bool,
    restore_recorded: bool,
    finished: Vec<SpanData>,
    /// `function`/`extension` lines become log records only when logs are exported.
    logs: Option<logs::Logs>,
}

impl Deriver {
    pub fn new(function: FunctionInfo, metrics: Arc<Metrics>) -> Self {
        Deriver {
            metrics,
            common: function.attributes(),
            trigger: "other",
            scope: InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            ids: RandomIdGenerator::default(),
            sampler: Sampler::default(),
            invocations: HashMap::new(),
            next_seq: 0,
            recent: VecDeque::with_capacity(RECENT),
            held: VecDeque::new(),
            watermark: None,
            overlapping: false,
            cold_pending: function.first_invocation_is_cold(),
            init: PhaseState::NotSeen,
            restore: PhaseState::NotSeen,
            init_recorded: false,
            restore_recorded: false,
            finished: Vec::new(),
            function,
            logs: None,
        }
    }

    /// Also turns `function` and `extension` log lines into log records ([`Self::take_logs`]).
    pub fn with_logs(mut self) -> Self {
        self.logs = Some(logs::Logs::new());
        self
    }

    /// Samples with `sampler` instead of the default `parentbased_always_on`.
    pub fn with_sampler(mut self, sampler: Sampler) -> Self {
        self.sampler = sampler;
        self
    }

    /// Sets `faas.trigger` (`SIDECAR_FAAS_TRIGGER`) instead of the default `other`.
    pub fn with_trigger(mut self, trigger: &'static str) -> Self {
        self.trigger = trigger;
        self
    }

    /// For Lambda Managed Instances (`AWS_LAMBDA_INITIALIZATION_TYPE=lambda-managed-instances`),
    /// where invocations overlap: a token span is placed by its request id or traceparent
    /// only; one with neither is left alone and counted (`reason="concurrent"`).
    pub fn with_overlapping_invocations(mut self, overlapping: bool) -> Self {
        self.overlapping = overlapping;
        self
    }

    /// Applies one record. Never fails: what cannot be used is skipped (and counted
    /// where a metric exists for it).
    pub fn ingest(&mut self, record: Record) {
        match record {
            Record::Invoke(invoke) => {
                self.invoke(invoke);
                self.settle(false);
            }
            Record::Telemetry(batch) => {
                self.batch(batch);
                self.settle(false);
            }
            Record::Token(token) => self.token(token),
            Record::Resumed { request_id, at } => {
                if let Some(invocation) = self.invocations.get_mut(&request_id) {
                    invocation.resumed = Some(at);
                    if let Some(done) = invocation.runtime_done {
                        self.metrics.hold(hold_seconds(done, at));
                    }
                }
            }
        }
    }

    /// Invocations seen and not yet reported (`platform.report`): what SHUTDOWN waits for.
    pub fn in_flight(&self) -> usize {
        self.invocations.len()
    }

    /// The spans finished since the last call, oldest first.
    pub fn take_spans(&mut self) -> Vec<SpanData> {
        std::mem::take(&mut self.finished)
    }

    /// At SHUTDOWN: ends every span that will never get its end event at `now`, with
    /// `sidecar.incomplete=true`, and forgets all state (events for those request ids
    /// arriving later are ignored).
    pub fn finish_pending(&mut self, now: SystemTime) {
        // Held token spans first, while every invocation they could belong to is known.
        self.settle(true);
        let mut open: Vec<(String, Invocation)> = self.invocations.drain().collect();
        open.sort_by_key(|(_, invocation)| invocation.seq);
        for (request_id, invocation) in open {
            if invocation.runtime_done.is_some() {
                self.remember(request_id);
                continue;
            }
            let outcome = Outcome {
                status: Status::Success,
                error_type: None,
                incomplete: true,
                described: true,
            };
            self.invocation_span(&request_id, &invocation, now, &outcome, &[]);
            self.remember(request_id);
        }
        for kind in [PhaseKind::Init, PhaseKind::Restore] {
            if let PhaseState::Open(mut phase) =
                std::mem::replace(self.phase(kind), PhaseState::Done)
            {
                let (end, status, error_type) =
                    phase
                        .runtime_done
                        .take()
                        .unwrap_or((now, Status::Success, None));
                let outcome = Outcome {
                    status,
                    error_type: error_type.as_deref(),
                    incomplete: true,
                    described: true,
                };
                self.phase_span(kind, phase, end, &outcome);
            }
        }
    }

    fn invoke(&mut self, invoke: InvokeRecord) {
        let sampler = self.sampler;
        let Some(invocation) = self.invocation(&invoke.request_id) else {
            return;
        };
        invocation.received = Some(invoke.received);
        invocation.invoked_arn = Some(invoke.invoked_arn);
        invocation.learn_xray(invoke.xray.as_deref(), sampler);
    }

    fn batch(&mut self, batch: Batch) {
        self.metrics
            .skipped_events(SkipReason::UnknownType, count(batch.unknown));
        self.metrics
            .skipped_events(SkipReason::Malformed, count(batch.malformed));
        for event in batch.events {
            self.metrics.telemetry_event(event.kind.type_name());
            self.event(event);
        }
    }

    fn event(&mut self, TelemetryEvent { time, kind }: TelemetryEvent) {
        if matches!(
            kind,
            EventKind::Start(_) | EventKind::RuntimeDone(_) | EventKind::Report(_)
        ) {
            self.watermark = self.watermark.max(Some(time));
        }
        match kind {
            EventKind::InitStart(start) => {
                if let Some(phase) = self.open_phase(PhaseKind::Init) {
                    phase.start = Some(time);
                    phase.initialization_type = Some(start.initialization_type);
                }
            }
            EventKind::InitRuntimeDone(done) => {
                if let Some(phase) = self.open_phase(PhaseKind::Init) {
                    phase
                        .initialization_type
                        .get_or_insert(done.initialization_type);
                    phase.runtime_done = Some((time, done.status, done.error_type));
                }
            }
            EventKind::InitReport(report) => self.init_report(time, report),
            EventKind::RestoreStart(_) => {
                if let Some(phase) = self.open_phase(PhaseKind::Restore) {
                    phase.start = Some(time);
                }
            }
            EventKind::RestoreRuntimeDone(done) => {
                if let Some(phase) = self.open_phase(PhaseKind::Restore) {
                    phase.runtime_done = Some((time, done.status, done.error_type));
                }
            }
            EventKind::RestoreReport(report) => self.restore_report(time, report),
            EventKind::Start(start) => {
                let sampler = self.sampler;
                if let Some(invocation) = self.invocation(&start.request_id) {
                    if invocation.started.is_none() {
                        invocation.started = Some(time);
                    }
                    invocation
                        .learn_xray(start.tracing.as_ref().map(|t| t.value.as_str()), sampler);
                }
            }
            EventKind::RuntimeDone(done) => self.runtime_done(time, done),
            EventKind::Report(report) => self.report(time, report),
            EventKind::LogsDropped(dropped) => self.metrics.logs_dropped(dropped.dropped_records),
            EventKind::Function(line) => self.log(time, logs::Source::Function, line),
            EventKind::ExtensionLog(line) => self.log(time, logs::Source::Extension, line),
            EventKind::Extension(_) | EventKind::TelemetrySubscription(_) => {}
        }
    }

    fn runtime_done(&mut self, time: SystemTime, done: RuntimeDone) {
        let sampler = self.sampler;
        let Some(invocation) = self.invocation(&done.request_id) else {
            return;
        };
        if invocation.runtime_done.is_some() {
            return; // re-delivered
        }
        invocation.learn_xray(done.tracing.as_ref().map(|t| t.value.as_str()), sampler);
        invocation.runtime_done = Some(time);
        invocation.ended = Some(time);
        let resumed = invocation.resumed;
        let seconds = done
            .metrics
            .as_ref()
            .and_then(|m| millis(m.duration_ms))
            .map(|d| d.as_secs_f64());
        self.metrics.invocation(done.status, seconds);
        if let Some(bytes) = done.metrics.as_ref().and_then(|m| m.produced_bytes) {
            self.metrics.produced_bytes(bytes);
        }
        if let Some(at) = resumed {
            self.metrics.hold(hold_seconds(time, at));
        }
        let outcome = Outcome {
            status: done.status,
            error_type: done.error_type.as_deref(),
            incomplete: false,
            described: true,
        };
        // Out of the map while the span is built (it needs `&mut self` for ids), then back:
        // the report still has to find it.
        if let Some(invocation) = self.invocations.remove(&done.request_id) {
            self.invocation_span(
                &done.request_id,
                &invocation,
                time,
                &outcome,
                &done.spans.kept,
            );
            self.invocations.insert(done.request_id, invocation);
        }
        // Child spans past the parser's bound were never built: they count as dropped.
        self.metrics
            .dropped(Signal::Traces, count(done.spans.skipped));
    }

    /// The last event of an invocation: its billing figures, then its state is dropped.
    fn report(&mut self, time: SystemTime, report: Report) {
        if self.recent.contains(&report.request_id) {
            return;
        }
        let metrics = &report.metrics;
        let seconds = |ms: f64| millis(ms).map_or(0.0, |d| d.as_secs_f64());
        let bytes = |mb: u64| mb.saturating_mul(MIB) as f64;
        self.metrics.report(
            metrics.billed_duration_ms.map(seconds),
            metrics.max_memory_used_mb.map(bytes),
            metrics.memory_size_mb.map(bytes),
        );
        if let Some(ms) = metrics.init_duration_ms.filter(|_| !self.init_recorded) {
            self.init_recorded = true;
            self.metrics
                .init(seconds(ms), self.function.init_is_cold_start());
        }
        if let Some(ms) = metrics
            .restore_duration_ms
            .filter(|_| !self.restore_recorded)
        {
            self.restore_recorded = true;
            self.metrics.restore(Some(seconds(ms)));
        }
        if let Some(invocation) = self.invocations.get_mut(&report.request_id)
            && invocation.ended.is_none()
        {
            // No runtimeDone (lost): the report's own duration ends the window.
            let end = invocation
                .start()
                .and_then(|start| start.checked_add(millis(metrics.duration_ms)?))
                .unwrap_or(time);
            invocation.ended = Some(end);
        }
        // Held token spans are placed before the invocation is forgotten.
        self.settle(false);
        if let Some(invocation) = self.invocations.remove(&report.request_id)
            && invocation.runtime_done.is_none()
        {
            let end = invocation.ended.unwrap_or(time);
            let outcome = Outcome {
                status: report.status,
                error_type: report.error_type.as_deref(),
                incomplete: false,
                described: true,
            };
            self.invocation_span(&report.request_id, &invocation, end, &outcome, &[]);
        }
        self.remember(report.request_id);
    }

    fn init_report(&mut self, time: SystemTime, report: InitReport) {
        let duration = millis(report.metrics.duration_ms);
        if !self.init_recorded {
            self.init_recorded = true;
            self.metrics.init(
                duration.map_or(0.0, |d| d.as_secs_f64()),
                self.function.init_is_cold_start(),
            );
        }
        let Some(mut phase) = self.close_phase(PhaseKind::Init) else {
            return;
        };
        phase
            .initialization_type
            .get_or_insert(report.initialization_type);
        self.end_phase(
            PhaseKind::Init,
            phase,
            time,
            duration,
            report.status,
            report.error_type,
        );
    }

    fn restore_report(&mut self, time: SystemTime, report: RestoreReport) {
        let duration = report.metrics.as_ref().and_then(|m| millis(m.duration_ms));
        if !self.restore_recorded {
            self.restore_recorded = true;
            self.metrics.restore(duration.map(|d| d.as_secs_f64()));
        }
        let Some(phase) = self.close_phase(PhaseKind::Restore) else {
            return;
        };
        self.end_phase(
            PhaseKind::Restore,
            phase,
            time,
            duration,
            Some(report.status),
            report.error_type,
        );
    }

    /// Ends a phase at its report: it lasted the reported duration from its start event
    /// (or, without one, up to the report); the report's status wins over runtimeDone's.
    fn end_phase(
        &mut self,
        kind: PhaseKind,
        mut phase: Phase,
        reported_at: SystemTime,
        duration: Option<Duration>,
        status: Option<Status>,
        error_type: Option<String>,
    ) {
        let end = match (phase.start, duration) {
            (Some(start), Some(duration)) => start.checked_add(duration).unwrap_or(reported_at),
            (Some(_), None) => phase
                .runtime_done
                .as_ref()
                .map_or(reported_at, |(at, ..)| *at),
            (None, duration) => {
                phase.start = duration.and_then(|d| reported_at.checked_sub(d));
                reported_at
            }
        };
        let done = phase.runtime_done.take();
        let status = status
            .or(done.as_ref().map(|(_, status, _)| *status))
            .unwrap_or(Status::Success);
        let error_type = error_type.or_else(|| done.and_then(|(.., error_type)| error_type));
        let outcome = Outcome {
            status,
            error_type: error_type.as_deref(),
            incomplete: false,
            described: true,
        };
        self.phase_span(kind, phase, end, &outcome);
    }

    fn phase_span(
        &mut self,
        kind: PhaseKind,
        phase: Phase,
        end: SystemTime,
        outcome: &Outcome<'_>,
    ) {
        let mut attributes = self.common.clone();
        if let Some(initialization_type) = phase.initialization_type {
            attributes.push(KeyValue::new(
                "aws.lambda.initialization_type",
                initialization_type,
            ));
        }
        let trace_id = self.ids.new_trace_id();
        let context = self.context(trace_id, self.sampler.decide(None, trace_id));
        let start = phase.start.unwrap_or(end);
        self.push_span(NewSpan {
            context,
            parent: None,
            kind: SpanKind::Internal,
            name: kind.span_name().into(),
            start,
            end,
            attributes,
            outcome,
            essential: true,
        });
    }

    fn invocation_span(
        &mut self,
        request_id: &str,
        invocation: &Invocation,
        end: SystemTime,
        outcome: &Outcome<'_>,
        children: &[PlatformSpan],
    ) {
        let mut attributes = vec![
            KeyValue::new("faas.invocation_id", request_id.to_owned()),
            KeyValue::new("faas.coldstart", invocation.coldstart),
        ];
        attributes.extend(self.common.iter().cloned());
        attributes.push(KeyValue::new("faas.trigger", self.trigger));
        // Known only from an INVOKE, so span attributes rather than resource ones (the
        // FaaS span conventions allow this for cloud.account.id and cloud.resource_id).
        if let Some(arn) = &invocation.invoked_arn {
            attributes.push(KeyValue::new("aws.lambda.invoked_arn", arn.clone()));
            attributes.extend(self.function.arn_attributes(arn));
        }
        let context = SpanContext::new(
            invocation.trace_id,
            invocation.span_id,
            flags(invocation.sampled),
            false,
            TraceState::default(),
        );
        let parent = invocation.parent.map(|span_id| (span_id, true));
        let start = invocation.start().unwrap_or(end);
        let name = Cow::Owned(self.function.name.clone());
        self.push_span(NewSpan {
            context,
            parent,
            kind: SpanKind::Server,
            name,
            start,
            end,
            attributes,
            outcome,
            essential: true,
        });
        for child in children {
            let context = self.context(invocation.trace_id, invocation.sampled);
            let end = millis(child.duration_ms)
                .and_then(|d| child.start.checked_add(d))
                .unwrap_or(child.start);
            let ok = Outcome {
                status: Status::Success,
                error_type: None,
                incomplete: false,
                described: true,
            };
            let name = Cow::Owned(child.name.clone());
            self.push_span(NewSpan {
                context,
                parent: Some((invocation.span_id, false)),
                kind: SpanKind::Internal,
                name,
                start: child.start,
                end,
                attributes: Vec::new(),
                outcome: &ok,
                essential: false,
            });
        }
    }

    /// A span per /token request. It is placed at once when it can be, else held until
    /// the telemetry that decides arrives ([`Deriver::settle`]).
    fn token(&mut self, token: TokenRecord) {
        self.metrics.token(&token);
        match self.place(&token, false) {
            Placement::Wait => {
                if self.held.len() >= MAX_HELD
                    && let Some(oldest) = self.held.pop_front()
                {
                    self.token_span(oldest, Placement::Alone(Unattributed::Overflow));
                }
                self.held.push_back(token);
            }
            placement => self.token_span(token, placement),
        }
    }

    /// Places the held token spans that can now be placed; with `last_word` (SHUTDOWN),
    /// every one, with what is known.
    fn settle(&mut self, last_word: bool) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        for token in held {
            match self.place(&token, last_word) {
                Placement::Wait => self.held.push_back(token),
                placement => self.token_span(token, placement),
            }
        }
    }

    /// Where `token`'s span goes: the invocation its request id names, else the invocation
    /// whose X-Ray parent its traceparent names, else its caller's trace, else (without a
    /// traceparent, and not on Managed Instances) the invocation whose window holds it.
    /// `Wait` while the events that decide may still come; never with `last_word`.
    fn place(&self, token: &TokenRecord, last_word: bool) -> Placement {
        // Every invocation that started by the end of the request is known.
        let passed = last_word
            || self.watermark.is_some_and(|mark| {
                mark >= token
                    .start
                    .checked_add(token.duration)
                    .unwrap_or(token.start)
            });
        if let Some(request_id) = &token.request_id {
            if self.invocations.contains_key(request_id) {
                return Placement::Invocation(request_id.clone());
            }
            let gone = self.recent.contains(request_id);
            if !(gone || passed) {
                return Placement::Wait;
            }
        }
        if let Some(caller) = token.traceparent {
            let nested = self
                .invocations
                .iter()
                .find(|(_, invocation)| invocation.is_xray_parent(caller.0));
            return match nested {
                Some((request_id, _)) => Placement::Invocation(request_id.clone()),
                None if passed => Placement::Caller(caller.0),
                None => Placement::Wait,
            };
        }
        if token.request_id.is_some() {
            return Placement::Alone(Unattributed::NoInvocation);
        }
        if self.overlapping {
            return Placement::Alone(Unattributed::Concurrent);
        }
        self.place_by_time(token.start, last_word || passed)
    }

    /// The invocation whose window holds `at`, when the events that decide have arrived.
    /// Invocations take turns here (not on Managed Instances): the candidate is the one
    /// that started last by `at`; it holds `at` unless it ended before. With `known_up_to`
    /// (every `platform.start` up to `at` has arrived, or SHUTDOWN), decides with what is
    /// known.
    fn place_by_time(&self, at: SystemTime, known_up_to: bool) -> Placement {
        let candidate = started_last_by(&self.invocations, at);
        // Seen only by its INVOKE, after `at`: it may have started before.
        let unsure = self
            .invocations
            .values()
            .any(|invocation| invocation.started.is_none() && !invocation.started_by(at));
        // No invocation started between the candidate's end (or the beginning) and `at`:
        // every start up to `at` has arrived, or one after it has and no other is in doubt.
        let gap = || {
            known_up_to
                || (!unsure
                    && self
                        .invocations
                        .values()
                        .any(|invocation| invocation.started.is_some_and(|start| start > at)))
        };
        match candidate {
            Some((request_id, invocation)) if !invocation.ended_before(at) => {
                if invocation.ended.is_some() || known_up_to {
                    Placement::Invocation(request_id.clone())
                } else {
                    // Still running, or ended unseen: its runtimeDone (or report) will tell.
                    Placement::Wait
                }
            }
            // Ended before `at`, or nothing started by `at` (a gap, e.g. init).
            _ if gap() => Placement::Alone(Unattributed::NoInvocation),
            _ => Placement::Wait,
        }
    }

    /// Derives the token span where `placement` says, in that trace and under its sampling
    /// decision: the invocation's (a caller's traceparent inside the invocation's trace stays
    /// the parent, unless it is the X-Ray parent), the caller's flags, or a new root.
    fn token_span(&mut self, token: TokenRecord, placement: Placement) {
        let sampler = self.sampler;
        let invocation = match &placement {
            Placement::Invocation(request_id) => self.invocations.get_mut(request_id),
            _ => None,
        };
        let (trace_id, parent, sampled) = match (invocation, placement) {
            (Some(invocation), _) => {
                invocation.has_children = true;
                let parent = match token.traceparent {
                    Some(caller)
                        if caller.0.trace_id == invocation.trace_id
                            && !invocation.is_xray_parent(caller.0) =>
                    {
                        caller_context(caller.0).1
                    }
                    _ => Some((invocation.span_id, false)),
                };
                (invocation.trace_id, parent, invocation.sampled)
            }
            (None, Placement::Caller(caller)) => {
                let (trace_id, parent) = caller_context(caller);
                (trace_id, parent, sampler.decide(caller.sampled, trace_id))
            }
            (None, placement) => {
                if let Placement::Alone(reason) = placement {
                    self.metrics.token_unattributed(reason);
                }
                let trace_id = self.ids.new_trace_id();
                (trace_id, None, sampler.decide(None, trace_id))
            }
        };
        // An HTTP server span (HTTP semantic conventions): named `{method} {http.route}`,
        // `HTTP {http.route}` for a method they do not know; only 5xx is an error on a
        // server, with the status code as error.type and no description.
        let status = token.outcome.http_status();
        let (method, name) = match &token.method {
            HttpMethod::Known(method) => (*method, format!("{method} {TOKEN_ROUTE}")),
            HttpMethod::Other(_) => ("_OTHER", format!("HTTP {TOKEN_ROUTE}")),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("http.route", TOKEN_ROUTE),
            KeyValue::new("url.path", TOKEN_ROUTE),
            KeyValue::new("url.scheme", "http"),
            KeyValue::new("http.response.status_code", i64::from(status)),
            KeyValue::new("sidecar.token.algorithm", token.algorithm),
            KeyValue::new("sidecar.token.outcome", token.outcome.as_str()),
        ];
        if let HttpMethod::Other(original) = token.method {
            attributes.push(KeyValue::new("http.request.method_original", original));
        }
        let status_code = status.to_string();
        let outcome = Outcome {
            status: if status >= 500 {
                Status::Error
            } else {
                Status::Success
            },
            error_type: Some(&status_code),
            incomplete: false,
            described: false,
        };
        let context = self.context(trace_id, sampled);
        let end = token
            .start
            .checked_add(token.duration)
            .unwrap_or(token.start);
        self.push_span(NewSpan {
            context,
            parent,
            kind: SpanKind::Server,
            name: name.into(),
            start: token.start,
            end,
            attributes,
            outcome: &outcome,
            essential: false,
        });
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

    /// The request id of the invocation that holds time `at`, as far as is known now: the
    /// one that started last by `at`, unless it ended before. `None` on Managed Instances,
    /// where invocations overlap and only a request id tells (`invocations[request_id]`).
    pub fn invocation_at(&self, at: SystemTime) -> Option<&str> {
        if self.overlapping {
            return None;
        }
        match self.place_by_time(at, true) {
            Placement::Invocation(request_id) => self
                .invocations
                .get_key_value(&request_id)
                .map(|(id, _)| id.as_str()),
            _ => None,
        }
    }

    fn push_span(&mut self, span: NewSpan<'_>) {
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
        if self.finished.len() >= room {
            self.metrics.dropped(Signal::Traces, 1);
            return;
        }
        let status = match outcome.status {
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
        };
        if outcome.incomplete {
            attributes.push(KeyValue::new("sidecar.incomplete", true));
        }
        let (parent_span_id, parent_span_is_remote) = parent.unwrap_or((SpanId::INVALID, false));
        self.finished.push(SpanData {
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

    /// The state of `request_id`, created at first sight; `None` for a request id that
    /// already finished (a re-delivered event).
    fn invocation(&mut self, request_id: &str) -> Option<&mut Invocation> {
        if !self.invocations.contains_key(request_id) {
            if self.recent.iter().any(|id| id == request_id) {
                return None;
            }
            if self.invocations.len() >= MAX_PENDING {
                self.evict_oldest();
            }
            let trace_id = self.ids.new_trace_id();
            let invocation = Invocation {
                seq: self.next_seq,
                span_id: self.ids.new_span_id(),
                trace_id,
                parent: None,
                traced: false,
                has_children: false,
                sampled: self.sampler.decide(None, trace_id),
                coldstart: std::mem::take(&mut self.cold_pending),
                invoked_arn: None,
                received: None,
                started: None,
                runtime_done: None,
                ended: None,
                resumed: None,
            };
            self.next_seq += 1;
            self.invocations.insert(request_id.to_owned(), invocation);
        }
        self.invocations.get_mut(request_id)
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .invocations
            .iter()
            .min_by_key(|(_, invocation)| invocation.seq)
            .map(|(id, _)| id.clone());
        if let Some(invocation) = oldest.and_then(|id| self.invocations.remove(&id))
            && invocation.runtime_done.is_none()
        {
            self.metrics.evicted();
        }
    }

    fn remember(&mut self, request_id: String) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(request_id);
    }

    fn phase(&mut self, kind: PhaseKind) -> &mut PhaseState {
        match kind {
            PhaseKind::Init => &mut self.init,
            PhaseKind::Restore => &mut self.restore,
        }
    }

    /// The phase to update with a start or runtimeDone event; `None` once it has ended.
    fn open_phase(&mut self, kind: PhaseKind) -> Option<&mut Phase> {
        let state = self.phase(kind);
        if let PhaseState::NotSeen = state {
            *state = PhaseState::Open(Phase::default());
        }
        match state {
            PhaseState::Open(phase) => Some(phase),
            PhaseState::NotSeen | PhaseState::Done => None,
        }
    }

    /// Ends a phase at its report; `None` when it had already ended (a re-delivery).
    fn close_phase(&mut self, kind: PhaseKind) -> Option<Phase> {
        match std::mem::replace(self.phase(kind), PhaseState::Done) {
            PhaseState::NotSeen => Some(Phase::default()),
            PhaseState::Open(phase) => Some(phase),
            PhaseState::Done => None,
        }
    }
}

/// A span context's flags: only the sampled flag is ever set, and an exported span has it.
/// Of the tracked invocations, the one that started last at or before `at`. Outside Managed
/// Instances invocations take turns, so no other can hold `at`.
fn started_last_by(
    invocations: &HashMap<String, Invocation>,
    at: SystemTime,
) -> Option<(&String, &Invocation)> {
    invocations
        .iter()
        .filter(|(_, invocation)| invocation.started_by(at))
        .max_by_key(|(_, invocation)| (invocation.start(), invocation.seq))
}

fn flags(sampled: bool) -> TraceFlags {
    TraceFlags::default().with_sampled(sampled)
}

/// Trace id and remote parent of a span whose caller sent trace context.
fn caller_context(caller: RemoteParent) -> (TraceId, Option<(SpanId, bool)>) {
    (
        caller.trace_id,
        caller.span_id.map(|span_id| (span_id, true)),
    )
}

/// The post-runtime hold: how long after the runtime finished the sidecar handed control
/// back, zero when it did so before the runtime finished.
fn hold_seconds(runtime_done: SystemTime, resumed: SystemTime) -> f64 {
    resumed
        .duration_since(runtime_done)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A duration in milliseconds from Lambda; `None` for negative or absurd values.
fn millis(ms: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(ms / 1000.0).ok()
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
