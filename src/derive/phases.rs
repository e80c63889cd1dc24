//! The init and restore phases: `platform.initStart` … `initRuntimeDone` … `initReport`
//! and the `restore*` events become one span each and the init and restore metrics.
//!
//! Each phase happens at most once per process, so its state is a small machine rather
//! than a map; its duration is recorded once, from its own report or from the first
//! `platform.report` that carries it, whichever arrives first.

use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use super::spans::{NewSpan, Outcome};
use super::{Shared, millis, seconds};
use crate::events::{
    InitReport, InitRuntimeDone, InitStart, ReportMetrics, RestoreReport, RestoreRuntimeDone,
    Status,
};

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

/// The init and restore phases of this process.
#[derive(Debug, Default)]
pub(super) struct Phases {
    init: PhaseState,
    restore: PhaseState,
    /// The init/restore duration has been recorded (from its phase report or from the
    /// first `platform.report`), so the other source does not count it again.
    init_recorded: bool,
    restore_recorded: bool,
}

impl Phases {
    /// `platform.initStart`.
    pub(super) fn init_start(&mut self, time: SystemTime, start: InitStart) {
        if let Some(phase) = self.open_phase(PhaseKind::Init) {
            phase.start = Some(time);
            phase.initialization_type = Some(start.initialization_type);
        }
    }

    /// `platform.initRuntimeDone`.
    pub(super) fn init_runtime_done(&mut self, time: SystemTime, done: InitRuntimeDone) {
        if let Some(phase) = self.open_phase(PhaseKind::Init) {
            phase
                .initialization_type
                .get_or_insert(done.initialization_type);
            phase.runtime_done = Some((time, done.status, done.error_type));
        }
    }

    /// `platform.initReport`: the init duration, and the init span.
    pub(super) fn init_report(
        &mut self,
        time: SystemTime,
        report: InitReport,
        shared: &mut Shared,
    ) {
        let duration = millis(report.metrics.duration_ms);
        self.record_init(duration.map_or(0.0, |d| d.as_secs_f64()), shared);
        let Some(mut phase) = self.close_phase(PhaseKind::Init) else {
            return;
        };
        phase
            .initialization_type
            .get_or_insert(report.initialization_type);
        let ended = Ended {
            at: time,
            duration,
            status: report.status,
            error_type: report.error_type,
        };
        end_phase(PhaseKind::Init, phase, ended, shared);
    }

    /// `platform.restoreStart`.
    pub(super) fn restore_start(&mut self, time: SystemTime) {
        if let Some(phase) = self.open_phase(PhaseKind::Restore) {
            phase.start = Some(time);
        }
    }

    /// `platform.restoreRuntimeDone`.
    pub(super) fn restore_runtime_done(&mut self, time: SystemTime, done: RestoreRuntimeDone) {
        if let Some(phase) = self.open_phase(PhaseKind::Restore) {
            phase.runtime_done = Some((time, done.status, done.error_type));
        }
    }

    /// `platform.restoreReport`: the restore duration, and the restore span.
    pub(super) fn restore_report(
        &mut self,
        time: SystemTime,
        report: RestoreReport,
        shared: &mut Shared,
    ) {
        let duration = report.metrics.as_ref().and_then(|m| millis(m.duration_ms));
        self.record_restore(duration.map(|d| d.as_secs_f64()), shared);
        let Some(phase) = self.close_phase(PhaseKind::Restore) else {
            return;
        };
        let ended = Ended {
            at: time,
            duration,
            status: Some(report.status),
            error_type: report.error_type,
        };
        end_phase(PhaseKind::Restore, phase, ended, shared);
    }

    /// The init or restore duration a `platform.report` carries (the first invocation's,
    /// after an on-demand init or a restore), unless its phase report already gave it.
    pub(super) fn reported(&mut self, metrics: &ReportMetrics, shared: &Shared) {
        if let Some(ms) = metrics.init_duration_ms {
            self.record_init(seconds(ms), shared);
        }
        if let Some(ms) = metrics.restore_duration_ms {
            self.record_restore(Some(seconds(ms)), shared);
        }
    }

    /// At SHUTDOWN: ends an open phase's span at its runtimeDone, else at `now`, marked
    /// incomplete.
    pub(super) fn finish_pending(&mut self, now: SystemTime, shared: &mut Shared) {
        for kind in [PhaseKind::Init, PhaseKind::Restore] {
            if let PhaseState::Open(mut phase) =
                std::mem::replace(self.phase(kind), PhaseState::Done)
            {
                let (end, status, error_type) =
                    phase
                        .runtime_done
                        .take()
                        .unwrap_or((now, Status::Success, None));
                let outcome = Outcome::cut_short(status, error_type.as_deref());
                phase_span(kind, phase, end, &outcome, shared);
            }
        }
    }

    fn record_init(&mut self, seconds: f64, shared: &Shared) {
        if !std::mem::replace(&mut self.init_recorded, true) {
            shared
                .metrics
                .init(seconds, shared.function.init_is_cold_start());
        }
    }

    fn record_restore(&mut self, seconds: Option<f64>, shared: &Shared) {
        if !std::mem::replace(&mut self.restore_recorded, true) {
            shared.metrics.restore(seconds);
        }
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

/// What a phase report says about its phase's end.
struct Ended {
    /// When the report was sent.
    at: SystemTime,
    duration: Option<Duration>,
    status: Option<Status>,
    error_type: Option<String>,
}

/// Ends a phase at its report: it lasted the reported duration from its start event
/// (or, without one, up to the report); the report's status wins over runtimeDone's.
fn end_phase(kind: PhaseKind, mut phase: Phase, ended: Ended, shared: &mut Shared) {
    let Ended {
        at,
        duration,
        status,
        error_type,
    } = ended;
    let end = match (phase.start, duration) {
        (Some(start), Some(duration)) => start.checked_add(duration).unwrap_or(at),
        (Some(_), None) => phase.runtime_done.as_ref().map_or(at, |(done, ..)| *done),
        (None, duration) => {
            phase.start = duration.and_then(|d| at.checked_sub(d));
            at
        }
    };
    let done = phase.runtime_done.take();
    let status = status
        .or(done.as_ref().map(|(_, status, _)| *status))
        .unwrap_or(Status::Success);
    let error_type = error_type.or_else(|| done.and_then(|(.., error_type)| error_type));
    let outcome = Outcome::reported(status, error_type.as_deref());
    phase_span(kind, phase, end, &outcome, shared);
}

/// The init or restore span: a root of its own trace, with the function's attributes.
fn phase_span(
    kind: PhaseKind,
    phase: Phase,
    end: SystemTime,
    outcome: &Outcome<'_>,
    shared: &mut Shared,
) {
    let mut attributes = shared.common.clone();
    if let Some(initialization_type) = phase.initialization_type {
        attributes.push(KeyValue::new(
            "aws.lambda.initialization_type",
            initialization_type,
        ));
    }
    let context = shared.root_context();
    let start = phase.start.unwrap_or(end);
    shared.push_span(NewSpan {
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
