//! Invocations: INVOKE, `platform.start`, `platform.runtimeDone` and `platform.report`
//! become the invocation span, its Lambda child spans and the invocation metrics.
//!
//! State is kept per request id from the first sight of it (the lifecycle's INVOKE or a
//! `platform.start`, whichever comes first) until its `platform.report`. The invocation
//! span's id is chosen at that first sight, so a token span can name it as its parent
//! long before `platform.runtimeDone` (which ends the span) arrives: telemetry for an
//! invocation is usually delivered during a later one, because Lambda freezes the
//! sidecar in between.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceId, TraceState};
use opentelemetry_sdk::trace::IdGenerator;

use super::spans::{NewSpan, Outcome, flags};
use super::{Shared, count, millis, seconds};
use crate::events::{PlatformSpan, Report, RuntimeDone, Start, Status};
use crate::items::InvocationTrace;
use crate::metrics::pending::stamped;
use crate::metrics::{Metrics, Signal};
use crate::records::{InvokeRecord, RemoteParent, parse_xray};

/// Invocations tracked at once. Lambda runs one invocation at a time per environment
/// (a few dozen on Managed Instances), so reaching this means reports are being lost;
/// the oldest entry is then evicted and counted (`sidecar.telemetry.evicted`).
pub const MAX_PENDING: usize = 1_000;

/// Finished request ids remembered to ignore events Lambda re-delivers (it resends a
/// batch whose POST it considers failed).
pub const RECENT: usize = 256;

/// Lambda's event times have millisecond precision (truncated), and a token request can
/// start within the millisecond `platform.runtimeDone` is stamped with: a window's end is
/// widened by this much.
const WINDOW_SLACK: Duration = Duration::from_millis(1);

const MIB: u64 = 1024 * 1024;

/// What is known about one request id until its `platform.report`.
#[derive(Debug)]
pub(super) struct Invocation {
    /// Arrival order, to evict the oldest.
    seq: u64,
    /// Chosen at first sight so children can point at it before the span ends.
    pub(super) span_id: SpanId,
    pub(super) trace_id: TraceId,
    /// The caller's X-Ray segment, the span's remote parent.
    parent: Option<SpanId>,
    /// The trace id came from X-Ray (otherwise it is random and may still be replaced).
    traced: bool,
    /// A token span already uses `trace_id`: it must no longer change.
    pub(super) has_children: bool,
    /// The sampling decision, made with the trace id (at first sight, or when X-Ray's
    /// context is adopted, which only happens before anything used the trace id). An
    /// unsampled invocation exports no span, its children and token spans included;
    /// its metrics are counted all the same.
    pub(super) sampled: bool,
    coldstart: bool,
    invoked_arn: Option<String>,
    received: Option<SystemTime>,
    pub(super) started: Option<SystemTime>,
    /// `platform.runtimeDone` time, once the span has been emitted.
    runtime_done: Option<SystemTime>,
    /// Where its window ends: `platform.runtimeDone`'s time, else (lost) the end the
    /// report gives. Token spans are placed against it.
    pub(super) ended: Option<SystemTime>,
    /// When the sidecar handed control back (the `Resumed` record).
    resumed: Option<SystemTime>,
}

impl Invocation {
    /// Adopts an X-Ray context learnt after first sight, unless children already use
    /// the random trace id or `OTEL_PROPAGATORS` leaves `xray` out; its `Sampled` flag is
    /// the parent decision.
    fn learn_xray(&mut self, header: Option<&str>, shared: &Shared) {
        if self.traced || self.has_children || !shared.propagators.xray {
            return;
        }
        let sampler = shared.sampler;
        if let Some(xray) = header.and_then(parse_xray) {
            self.trace_id = xray.trace_id;
            self.parent = xray.span_id;
            self.traced = true;
            self.sampled = sampler.decide(xray.sampled, xray.trace_id);
        }
    }

    /// Publishes the trace context, once X-Ray's is known, for the function's own spans to
    /// join (`items::InvocationTraces`).
    fn publish(&self, shared: &Shared) {
        if let (true, Some(traces)) = (self.traced, &shared.traces) {
            traces.note(InvocationTrace {
                trace_id: self.trace_id.to_bytes(),
                span_id: self.span_id.to_bytes(),
                parent: self.parent.map(SpanId::to_bytes),
                sampled: self.sampled,
            });
        }
    }

    /// Where the span starts: `platform.start`, else when the INVOKE arrived.
    fn start(&self) -> Option<SystemTime> {
        self.started.or(self.received)
    }

    /// The invocation surely started by `at`: `platform.start` says so, or the INVOKE had
    /// already arrived (Lambda sends it once the invocation has started).
    pub(super) fn started_by(&self, at: SystemTime) -> bool {
        self.start().is_some_and(|start| start <= at)
    }

    /// Its window ended before `at`, as far as is known.
    pub(super) fn ended_before(&self, at: SystemTime) -> bool {
        self.ended
            .and_then(|end| end.checked_add(WINDOW_SLACK))
            .is_some_and(|end| end < at)
    }

    /// A caller's trace context whose parent is this invocation's X-Ray parent: what a
    /// function sends when it turns `_X_AMZN_TRACE_ID` into a `traceparent`.
    pub(super) fn is_xray_parent(&self, caller: RemoteParent) -> bool {
        self.traced && caller.trace_id == self.trace_id && caller.span_id == self.parent
    }

    /// The invocation span, ended at `end`, and its Lambda child spans.
    fn span(
        &self,
        request_id: &str,
        trigger: &'static str,
        end: SystemTime,
        outcome: &Outcome<'_>,
        children: &[PlatformSpan],
        shared: &mut Shared,
    ) {
        let mut attributes = vec![
            KeyValue::new("faas.invocation_id", request_id.to_owned()),
            KeyValue::new("faas.coldstart", self.coldstart),
        ];
        attributes.extend(shared.common.iter().cloned());
        attributes.push(KeyValue::new("faas.trigger", trigger));
        // Known only from an INVOKE, so span attributes rather than resource ones (the
        // FaaS span conventions allow this for cloud.account.id and cloud.resource_id).
        if let Some(arn) = &self.invoked_arn {
            attributes.push(KeyValue::new("aws.lambda.invoked_arn", arn.clone()));
            attributes.extend(shared.function.arn_attributes(arn));
        }
        let context = SpanContext::new(
            self.trace_id,
            self.span_id,
            flags(self.sampled),
            false,
            TraceState::default(),
        );
        let name = Cow::Owned(shared.function.name.clone());
        shared.push_span(NewSpan {
            context,
            parent: self.parent.map(|span_id| (span_id, true)),
            kind: SpanKind::Server,
            name,
            start: self.start().unwrap_or(end),
            end,
            attributes,
            outcome,
            essential: true,
        });
        for child in children {
            self.child_span(child, shared);
        }
    }

    /// One of the spans Lambda reports inside the invocation (`responseLatency`, …).
    fn child_span(&self, child: &PlatformSpan, shared: &mut Shared) {
        let context = shared.context(self.trace_id, self.sampled);
        let end = millis(child.duration_ms)
            .and_then(|d| child.start.checked_add(d))
            .unwrap_or(child.start);
        shared.push_span(NewSpan {
            context,
            parent: Some((self.span_id, false)),
            kind: SpanKind::Internal,
            name: Cow::Owned(child.name.clone()),
            start: child.start,
            end,
            attributes: Vec::new(),
            outcome: &Outcome::reported(Status::Success, None),
            essential: false,
        });
    }
}

/// The invocations seen and not yet reported, and the request ids recently finished.
pub(super) struct Invocations {
    by_id: HashMap<String, Invocation>,
    next_seq: u64,
    /// Finished request ids, oldest first.
    recent: VecDeque<String>,
    /// The next new request id is this environment's first invocation, and it waited for
    /// a cold start ([`crate::function::FunctionInfo::first_invocation_is_cold`]).
    cold_pending: bool,
    /// `faas.trigger` of the invocation spans: one of `config::FAAS_TRIGGERS`.
    pub(super) trigger: &'static str,
    /// Lambda Managed Instances: invocations overlap, so time does not tell which one a
    /// token request or a log line came from.
    pub(super) overlapping: bool,
}

impl Invocations {
    pub(super) fn new(cold_pending: bool) -> Self {
        Invocations {
            by_id: HashMap::new(),
            next_seq: 0,
            recent: VecDeque::with_capacity(RECENT),
            cold_pending,
            trigger: "other",
            overlapping: false,
        }
    }

    /// Invocations seen and not yet reported.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The invocation `request_id` names, with its stored id (which outlives the caller's).
    pub(super) fn get(&self, request_id: &str) -> Option<(&String, &Invocation)> {
        self.by_id.get_key_value(request_id)
    }

    /// The invocation `request_id` names, to mark that a token span uses its trace.
    pub(super) fn get_mut(&mut self, request_id: &str) -> Option<&mut Invocation> {
        self.by_id.get_mut(request_id)
    }

    /// Every invocation in flight, in no order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&String, &Invocation)> {
        self.by_id.iter()
    }

    /// `request_id`'s runtimeDone has been ingested, or it was reported or closed.
    pub(super) fn has_ended(&self, request_id: &str) -> bool {
        self.by_id
            .get(request_id)
            .map_or_else(|| self.finished(request_id), |i| i.runtime_done.is_some())
    }

    /// `request_id` was reported (or closed at SHUTDOWN) lately: its events are stale.
    pub(super) fn finished(&self, request_id: &str) -> bool {
        self.recent.iter().any(|id| id == request_id)
    }

    /// The invocation running at `at`: the one that started last at or before it. Outside
    /// Managed Instances invocations take turns, so no other can hold `at`; on Managed
    /// Instances, where they overlap, `None`: only a request id tells.
    pub(super) fn running_at(&self, at: SystemTime) -> Option<(&String, &Invocation)> {
        if self.overlapping {
            return None;
        }
        self.by_id
            .iter()
            .filter(|(_, invocation)| invocation.started_by(at))
            .max_by_key(|(_, invocation)| (invocation.start(), invocation.seq))
    }

    /// The lifecycle's INVOKE: the invoked ARN, and X-Ray's context if it brings one.
    pub(super) fn invoke(&mut self, invoke: InvokeRecord, shared: &Shared) {
        let Some(invocation) = self.first_sight(&invoke.request_id, shared) else {
            return;
        };
        invocation.received = Some(invoke.received);
        invocation.invoked_arn = Some(invoke.invoked_arn);
        invocation.learn_xray(invoke.xray.as_deref(), shared);
        invocation.publish(shared);
    }

    /// `platform.start`: where the span and the invocation's window start.
    pub(super) fn start(&mut self, time: SystemTime, start: Start, shared: &Shared) {
        if let Some(invocation) = self.first_sight(&start.request_id, shared) {
            if invocation.started.is_none() {
                invocation.started = Some(time);
            }
            invocation.learn_xray(start.tracing.as_ref().map(|t| t.value.as_str()), shared);
            invocation.publish(shared);
        }
    }

    /// The sidecar handed control back at `at`: the post-runtime hold, once the runtime
    /// is known to have finished.
    pub(super) fn resumed(&mut self, request_id: &str, at: SystemTime, metrics: &Metrics) {
        if let Some(invocation) = self.by_id.get_mut(request_id) {
            invocation.resumed = Some(at);
            if let Some(done) = invocation.runtime_done {
                stamped(invocation.start().unwrap_or(done), || {
                    metrics.hold(hold_seconds(done, at));
                });
            }
        }
    }

    /// `platform.runtimeDone`: ends the invocation span (its window too) and records the
    /// invocation's metrics. The state stays until the report.
    pub(super) fn runtime_done(
        &mut self,
        time: SystemTime,
        done: RuntimeDone,
        shared: &mut Shared,
    ) {
        let trigger = self.trigger;
        let Some(invocation) = self.first_sight(&done.request_id, shared) else {
            return;
        };
        if invocation.runtime_done.is_some() {
            return; // re-delivered
        }
        invocation.learn_xray(done.tracing.as_ref().map(|t| t.value.as_str()), shared);
        invocation.publish(shared);
        invocation.runtime_done = Some(time);
        invocation.ended = Some(time);
        stamped(invocation.start().unwrap_or(time), || {
            record_runtime_done(&shared.metrics, time, &done, invocation.resumed);
        });
        let outcome = Outcome::reported(done.status, done.error_type.as_deref());
        invocation.span(
            &done.request_id,
            trigger,
            time,
            &outcome,
            &done.spans.kept,
            shared,
        );
        // Child spans past the parser's bound were never built: they count as dropped.
        shared
            .metrics
            .dropped(Signal::Traces, count(done.spans.skipped));
    }

    /// `platform.report`, not re-delivered: its billing figures; without a runtimeDone
    /// (lost), the report's own duration ends the window. The state stays until
    /// [`Invocations::forget`], so held token spans can still be placed in it.
    pub(super) fn report(&mut self, time: SystemTime, report: &Report, metrics: &Metrics) {
        let figures = &report.metrics;
        let bytes = |mb: u64| mb.saturating_mul(MIB) as f64;
        let started = self
            .by_id
            .get(&report.request_id)
            .and_then(Invocation::start);
        stamped(started.unwrap_or(time), || {
            metrics.report(
                figures.billed_duration_ms.map(seconds),
                figures.max_memory_used_mb.map(bytes),
                figures.memory_size_mb.map(bytes),
            );
        });
        if let Some(invocation) = self.by_id.get_mut(&report.request_id)
            && invocation.ended.is_none()
        {
            let end = invocation
                .start()
                .and_then(|start| start.checked_add(millis(figures.duration_ms)?))
                .unwrap_or(time);
            invocation.ended = Some(end);
        }
    }

    /// The last event of an invocation: its span, if runtimeDone never came, then its state
    /// is dropped and its request id remembered.
    pub(super) fn forget(&mut self, time: SystemTime, report: Report, shared: &mut Shared) {
        if let Some(invocation) = self.by_id.remove(&report.request_id)
            && invocation.runtime_done.is_none()
        {
            let end = invocation.ended.unwrap_or(time);
            let outcome = Outcome::reported(report.status, report.error_type.as_deref());
            invocation.span(&report.request_id, self.trigger, end, &outcome, &[], shared);
        }
        self.remember(report.request_id);
    }

    /// At SHUTDOWN: ends every invocation span that never got its runtimeDone at `now`,
    /// marked incomplete, and forgets every invocation.
    pub(super) fn finish_pending(&mut self, now: SystemTime, shared: &mut Shared) {
        let mut open: Vec<(String, Invocation)> = self.by_id.drain().collect();
        open.sort_by_key(|(_, invocation)| invocation.seq);
        for (request_id, invocation) in open {
            if invocation.runtime_done.is_none() {
                let outcome = Outcome::cut_short(Status::Success, None);
                invocation.span(&request_id, self.trigger, now, &outcome, &[], shared);
            }
            self.remember(request_id);
        }
    }

    /// The state of `request_id`, created at first sight; `None` for a request id that
    /// already finished (a re-delivered event).
    fn first_sight(&mut self, request_id: &str, shared: &Shared) -> Option<&mut Invocation> {
        if !self.by_id.contains_key(request_id) {
            if self.finished(request_id) {
                return None;
            }
            if self.by_id.len() >= MAX_PENDING {
                self.evict_oldest(&shared.metrics);
            }
            let (trace_id, sampled) = shared.new_trace();
            let invocation = Invocation {
                seq: self.next_seq,
                span_id: shared.ids.new_span_id(),
                trace_id,
                parent: None,
                traced: false,
                has_children: false,
                sampled,
                coldstart: std::mem::take(&mut self.cold_pending),
                invoked_arn: None,
                received: None,
                started: None,
                runtime_done: None,
                ended: None,
                resumed: None,
            };
            self.next_seq += 1;
            self.by_id.insert(request_id.to_owned(), invocation);
        }
        self.by_id.get_mut(request_id)
    }

    /// Makes room at [`MAX_PENDING`]: the oldest goes without a span, counted unless its
    /// span was already made.
    fn evict_oldest(&mut self, metrics: &Metrics) {
        let oldest = self
            .by_id
            .iter()
            .min_by_key(|(_, invocation)| invocation.seq)
            .map(|(id, _)| id.clone());
        if let Some(invocation) = oldest.and_then(|id| self.by_id.remove(&id))
            && invocation.runtime_done.is_none()
        {
            metrics.evicted();
        }
    }

    fn remember(&mut self, request_id: String) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(request_id);
    }
}

/// The invocation metrics a runtimeDone at `time` gives: its status and duration, the bytes
/// it produced, and the post-runtime hold if the sidecar has already handed control back.
fn record_runtime_done(
    metrics: &Metrics,
    time: SystemTime,
    done: &RuntimeDone,
    resumed: Option<SystemTime>,
) {
    let figures = done.metrics.as_ref();
    let seconds = figures
        .and_then(|m| millis(m.duration_ms))
        .map(|d| d.as_secs_f64());
    metrics.invocation(done.status, seconds);
    if let Some(bytes) = figures.and_then(|m| m.produced_bytes) {
        metrics.produced_bytes(bytes);
    }
    if let Some(at) = resumed {
        metrics.hold(hold_seconds(time, at));
    }
}

/// The post-runtime hold: how long after the runtime finished the sidecar handed control
/// back, zero when it did so before the runtime finished.
fn hold_seconds(runtime_done: SystemTime, resumed: SystemTime) -> f64 {
    resumed
        .duration_since(runtime_done)
        .map_or(0.0, |d| d.as_secs_f64())
}
