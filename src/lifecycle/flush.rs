//! When to flush and for how long: the rules, as pure functions of plain values.
//!
//! Every flush runs while something waits on it: at an INVOKE the function (the flush runs
//! beside it, and holds it only when it outlasts it), at SHUTDOWN the little time before
//! Lambda's SIGKILL. So each flush gets a budget, and the rules that pick it live here, apart
//! from the clock and the I/O, where a table of cases can check each of them: [`decide`] for
//! one flush, [`shutdown_window`] and [`shutdown_wait`] for SHUTDOWN's time as a whole. The
//! event loop reads the clock, asks, and does what it is told; it computes no budget itself.

use std::time::Duration;

/// Kept free before the SHUTDOWN deadline: Lambda SIGKILLs at the deadline, and exiting needs
/// a few milliseconds after the flush.
const SHUTDOWN_MARGIN: Duration = Duration::from_millis(150);

/// Kept free before an invocation's deadline by its INVOKE flush, at the least. The flush runs
/// beside the function, and Lambda counts the time until every extension is back in
/// event/next inside the function's timeout: a flush that ran to the deadline would time the
/// invocation out, however fast the function. After the budget ends the sidecar still drops
/// the exports, records the hand-back and calls event/next: about a millisecond on an idle
/// core, but a small function gets a fraction of a vCPU, shared with its own work, and a
/// starved process can wake tens of milliseconds late. 100 ms covers that.
const INVOKE_MARGIN_FLOOR: Duration = Duration::from_millis(100);

/// And a tenth of the time left, on top of [`INVOKE_MARGIN_FLOOR`]: the deadline is Lambda's
/// wall-clock instant, the budget a monotonic timer started once the INVOKE reached the
/// sidecar, and how far the two drift apart (a wall clock being slewed or stepped) and how
/// late a timer fires grow with the length of the wait. With the defaults (a 500 ms cap, a
/// 3 s timeout) the clamp is 2.6 s and the cap decides, as before; only a cap near or past
/// the timeout is cut, e.g. a 5 s cap under a 1 s timeout flushes for 800 ms.
const INVOKE_MARGIN_DIVISOR: u32 = 10;

/// The longest SHUTDOWN waits for in-flight token requests to finish.
const DRAIN_WAIT: Duration = Duration::from_millis(200);

/// The longest SHUTDOWN waits for the `platform.report` of the invocations in flight before
/// flushing.
const REPORT_WAIT: Duration = Duration::from_millis(300);

/// The longest the SHUTDOWN flush may take, whatever deadline arrives with the event. Lambda's
/// shutdown phase is 2,000 ms with external extensions, and DRAIN_WAIT + REPORT_WAIT + this +
/// EMF_WAIT + SHUTDOWN_MARGIN (1,750 ms) fits in it. Emulators, and other platforms, may send
/// a deadline minutes away: a collector that has not taken the last batch in a second is not
/// expected to in a minute, and holding on only delays the end of the environment.
const SHUTDOWN_FLUSH_MAX: Duration = Duration::from_secs(1);

/// The longest the shutdown waits for its last EMF lines to reach stdout (a pipe Lambda
/// reads: microseconds, unless its reader is stuck).
const EMF_WAIT: Duration = Duration::from_millis(100);

/// The longest a periodic flush (Managed Instances) may take, whatever
/// `SIDECAR_FLUSH_TIMEOUT_MS` allows. SHUTDOWN can arrive in the middle of one there (at an
/// INVOKE it cannot: event/next waits until the flush is done), and is handled once it
/// ends; its own steps shrink to the time left, so 1 s of Lambda's 2 s shutdown phase
/// still leaves room to wait for reports, flush and exit before the deadline.
const PERIODIC_FLUSH_MAX: Duration = Duration::from_secs(1);

/// What the rules know before any event: the configuration and the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushSettings {
    /// `SIDECAR_FLUSH_TIMEOUT_MS`: the longest a flush may hold an invocation.
    pub cap: Duration,
    /// `SIDECAR_FLUSH_INTERVAL_MS`: the period of the timer flush, where there is one.
    pub interval: Duration,
    /// On Lambda Managed Instances the sidecar registers for SHUTDOWN only: no INVOKE comes
    /// to flush at.
    pub managed_instances: bool,
}

impl FlushSettings {
    /// The period of the timer flush: on Managed Instances, which send no INVOKE to flush at.
    /// None in the default model, where a timer would only do harm: it runs on through a
    /// freeze and fires at thaw (see `server`), so a flush it started could still be in flight
    /// when Lambda freezes the environment again, which the INVOKE flush never is; and at
    /// every INVOKE that flush already ships what the timer would.
    pub fn timer(&self) -> Option<Duration> {
        self.managed_instances.then_some(self.interval)
    }
}

/// A moment the sidecar may flush at, with what the rules need to know of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushEvent {
    /// An INVOKE received at `now_ms`, for an invocation that must end by `deadline_ms`: both
    /// in milliseconds since the Unix epoch, as Lambda gives the deadline; a deadline of 0
    /// (from some emulators) means unknown.
    Invoke { now_ms: u64, deadline_ms: u64 },
    /// A tick of the timer flush ([`FlushSettings::timer`]). `pending`: a record arrived since
    /// the last flush, or something a failed flush kept waits to be sent again.
    Tick { pending: bool },
    /// SHUTDOWN, its waits over, with `left` before its deadline ([`shutdown_window`]).
    Shutdown { left: Duration },
}

/// What to do at a [`FlushEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushDecision {
    /// Send what waits, giving up when `budget` runs out. A zero budget still flushes: the
    /// drained spans are kept for the next flush and the EMF lines written; only the exports
    /// give up at once.
    Flush { budget: Duration },
    /// Send nothing now.
    Skip,
}

/// Whether to flush at `event`, and for how long:
/// - at an INVOKE, for the cap, or until the function's deadline less a margin
///   ([`INVOKE_MARGIN_FLOOR`] and a tenth of the time left) when that comes sooner, so that
///   no cap, however long, times an invocation out (an unknown deadline leaves the cap; one
///   already passed, or inside the margin, leaves nothing);
/// - at a tick, only with something to send (an environment left idle for hours sends
///   nothing), for the cap and at most [`PERIODIC_FLUSH_MAX`];
/// - at SHUTDOWN, for what is left and at most [`SHUTDOWN_FLUSH_MAX`]: no function waits on
///   it, so the cap does not apply.
pub fn decide(settings: FlushSettings, event: FlushEvent) -> FlushDecision {
    let budget = match event {
        FlushEvent::Invoke { deadline_ms: 0, .. } => settings.cap,
        FlushEvent::Invoke {
            now_ms,
            deadline_ms,
        } => {
            let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
            let margin = INVOKE_MARGIN_FLOOR + left / INVOKE_MARGIN_DIVISOR;
            settings.cap.min(left.saturating_sub(margin))
        }
        FlushEvent::Tick { pending: false } => return FlushDecision::Skip,
        FlushEvent::Tick { pending: true } => tick_budget(settings),
        FlushEvent::Shutdown { left } => left.min(SHUTDOWN_FLUSH_MAX),
    };
    FlushDecision::Flush { budget }
}

/// How long the work of a tick may take: the cap, and at most [`PERIODIC_FLUSH_MAX`]. The
/// periodic flush gets it, and so does the key refresh beside it (alone when there is
/// nothing to flush): Managed Instances send no INVOKE, so a rotating key is re-read there.
pub fn tick_budget(settings: FlushSettings) -> Duration {
    settings.cap.min(PERIODIC_FLUSH_MAX)
}

/// The time SHUTDOWN has for all its steps, from `now_ms` on (both times in milliseconds
/// since the Unix epoch): until `deadline_ms` less [`SHUTDOWN_MARGIN`], which exiting needs
/// before Lambda's SIGKILL. Without a deadline (0, from some emulators), the longest its
/// waits and an INVOKE flush may take.
pub fn shutdown_window(settings: FlushSettings, now_ms: u64, deadline_ms: u64) -> Duration {
    if deadline_ms == 0 {
        return settings.cap + REPORT_WAIT + DRAIN_WAIT;
    }
    Duration::from_millis(deadline_ms.saturating_sub(now_ms)).saturating_sub(SHUTDOWN_MARGIN)
}

/// A step of SHUTDOWN that waits on something else, before or after its flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownWait {
    /// Token requests already accepted finish.
    TokenRequests,
    /// The `platform.report` of every invocation still in flight arrives.
    Reports,
    /// The flush's EMF lines reach stdout.
    Emf,
}

/// How long `wait` may take with `left` before SHUTDOWN's deadline: its own bound, and never
/// past the deadline; the reports at most half of what is left, so that the flush after
/// them keeps the other half.
pub fn shutdown_wait(wait: ShutdownWait, left: Duration) -> Duration {
    match wait {
        ShutdownWait::TokenRequests => DRAIN_WAIT.min(left),
        ShutdownWait::Reports => REPORT_WAIT.min(left / 2),
        ShutdownWait::Emf => EMF_WAIT.min(left),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn settings(cap: Duration) -> FlushSettings {
        FlushSettings {
            cap,
            interval: Duration::from_secs(1),
            managed_instances: false,
        }
    }

    fn flush(budget: Duration) -> FlushDecision {
        FlushDecision::Flush { budget }
    }

    #[test]
    fn each_flush_gets_the_budget_its_rule_gives() {
        use FlushEvent::{Invoke, Shutdown, Tick};
        let cases = [
            (
                "invoke, deadline later than the cap: the cap",
                ms(500),
                Invoke {
                    now_ms: 10_000,
                    deadline_ms: 13_000,
                },
                flush(ms(500)),
            ),
            (
                "invoke, deadline sooner than the cap: the deadline less 100 ms and a tenth",
                ms(500),
                Invoke {
                    now_ms: 10_000,
                    deadline_ms: 10_500,
                },
                flush(ms(350)),
            ),
            (
                "invoke, cap past a 1 s timeout: 800 ms",
                ms(5_000),
                Invoke {
                    now_ms: 10_000,
                    deadline_ms: 11_000,
                },
                flush(ms(800)),
            ),
            (
                "invoke, the largest cap under a 15 min timeout: the cap",
                ms(60_000),
                Invoke {
                    now_ms: 10_000,
                    deadline_ms: 910_000,
                },
                flush(ms(60_000)),
            ),
            (
                "invoke, cap equal to the time left: the margin still kept",
                ms(3_000),
                Invoke {
                    now_ms: 10_000,
                    deadline_ms: 13_000,
                },
                flush(ms(2_600)),
            ),
            (
                "invoke, deadline inside the margin: nothing",
                ms(500),
                Invoke {
                    now_ms: 10_000,
                    deadline_ms: 10_100,
                },
                flush(Duration::ZERO),
            ),
            (
                "invoke, deadline now: nothing",
                ms(500),
                Invoke {
                    now_ms: 10_000,
                    deadline_ms: 10_000,
                },
                flush(Duration::ZERO),
            ),
            (
                "invoke, deadline already passed: nothing",
                ms(500),
                Invoke {
                    now_ms: 10_000,
                    deadline_ms: 9_000,
                },
                flush(Duration::ZERO),
            ),
            (
                "invoke, deadline unknown (0): the cap",
                ms(500),
                Invoke {
                    now_ms: 10_000,
                    deadline_ms: 0,
                },
                flush(ms(500)),
            ),
            (
                "invoke, zero cap: nothing",
                Duration::ZERO,
                Invoke {
                    now_ms: 10_000,
                    deadline_ms: 13_000,
                },
                flush(Duration::ZERO),
            ),
            (
                "tick, nothing to send: skipped",
                ms(500),
                Tick { pending: false },
                FlushDecision::Skip,
            ),
            (
                "tick, cap under the periodic maximum: the cap",
                ms(500),
                Tick { pending: true },
                flush(ms(500)),
            ),
            (
                "tick, cap over the periodic maximum: 1 s",
                ms(5_000),
                Tick { pending: true },
                flush(PERIODIC_FLUSH_MAX),
            ),
            (
                "tick, zero cap: nothing",
                Duration::ZERO,
                Tick { pending: true },
                flush(Duration::ZERO),
            ),
            (
                "shutdown, more than 1 s left: 1 s",
                ms(500),
                Shutdown { left: ms(1_350) },
                flush(SHUTDOWN_FLUSH_MAX),
            ),
            (
                "shutdown, less than 1 s left: what is left",
                ms(500),
                Shutdown { left: ms(400) },
                flush(ms(400)),
            ),
            (
                "shutdown, nothing left: nothing",
                ms(500),
                Shutdown {
                    left: Duration::ZERO,
                },
                flush(Duration::ZERO),
            ),
            (
                "shutdown, the cap does not apply",
                ms(50),
                Shutdown { left: ms(400) },
                flush(ms(400)),
            ),
            (
                "shutdown, zero cap: what is left all the same",
                Duration::ZERO,
                Shutdown { left: ms(400) },
                flush(ms(400)),
            ),
        ];
        for (case, cap, event, expected) in cases {
            assert_eq!(decide(settings(cap), event), expected, "{case}");
        }
    }

    /// Whatever the cap (1 ms to 60 s, as `SIDECAR_FLUSH_TIMEOUT_MS` allows) and the time
    /// left (Lambda's timeouts run from 1 s to 900 s), an INVOKE flush ends at least 100 ms
    /// before the deadline.
    #[test]
    fn an_invoke_flush_never_reaches_the_deadline() {
        for cap in [1, 100, 500, 999, 1_000, 5_000, 60_000] {
            for left in [0, 50, 100, 150, 500, 1_000, 1_001, 3_000, 60_000, 900_000] {
                let event = FlushEvent::Invoke {
                    now_ms: 10_000,
                    deadline_ms: 10_000 + left,
                };
                let FlushDecision::Flush { budget } = decide(settings(ms(cap)), event) else {
                    panic!("an INVOKE always flushes");
                };
                assert!(budget <= ms(cap), "cap {cap}, left {left}: {budget:?}");
                assert!(
                    budget + INVOKE_MARGIN_FLOOR <= ms(left) || budget.is_zero(),
                    "cap {cap} ms, {left} ms left: {budget:?}"
                );
            }
        }
    }

    #[test]
    fn shutdown_keeps_the_margin_before_its_deadline() {
        let cases = [
            ("Lambda's 2 s phase", 10_000, 12_000, ms(1_850)),
            ("a deadline minutes away", 10_000, 310_000, ms(299_850)),
            (
                "a deadline inside the margin",
                10_000,
                10_100,
                Duration::ZERO,
            ),
            ("a deadline already passed", 10_000, 9_000, Duration::ZERO),
            (
                "no deadline (0): the waits and the cap",
                10_000,
                0,
                ms(1_000),
            ),
        ];
        for (case, now_ms, deadline_ms, expected) in cases {
            let window = shutdown_window(settings(ms(500)), now_ms, deadline_ms);
            assert_eq!(window, expected, "{case}");
        }
    }

    #[test]
    fn each_shutdown_wait_stops_at_its_bound_and_at_the_deadline() {
        use ShutdownWait::{Emf, Reports, TokenRequests};
        let cases = [
            (TokenRequests, ms(1_850), DRAIN_WAIT),
            (TokenRequests, ms(50), ms(50)),
            (Reports, ms(1_650), REPORT_WAIT),
            (Reports, ms(400), ms(200)),
            (Reports, Duration::ZERO, Duration::ZERO),
            (Emf, ms(350), EMF_WAIT),
            (Emf, ms(30), ms(30)),
        ];
        for (wait, left, expected) in cases {
            assert_eq!(
                shutdown_wait(wait, left),
                expected,
                "{wait:?} with {left:?} left"
            );
        }
    }

    /// Every step at its bound still ends before Lambda's SIGKILL: its shutdown phase is
    /// 2,000 ms with external extensions.
    #[test]
    fn the_shutdown_steps_fit_in_lambdas_shutdown_phase() {
        let lambda_shutdown_phase = ms(2_000);
        let steps = DRAIN_WAIT + REPORT_WAIT + SHUTDOWN_FLUSH_MAX + EMF_WAIT + SHUTDOWN_MARGIN;
        assert!(steps <= lambda_shutdown_phase, "{steps:?}");
        // And each gets its whole bound when the steps before it took theirs.
        let mut left = shutdown_window(settings(ms(500)), 0, 2_000);
        for (wait, bound) in [
            (ShutdownWait::TokenRequests, DRAIN_WAIT),
            (ShutdownWait::Reports, REPORT_WAIT),
        ] {
            assert_eq!(shutdown_wait(wait, left), bound, "{wait:?}");
            left -= bound;
        }
        assert_eq!(
            decide(settings(ms(500)), FlushEvent::Shutdown { left }),
            flush(SHUTDOWN_FLUSH_MAX)
        );
        left -= SHUTDOWN_FLUSH_MAX;
        assert_eq!(shutdown_wait(ShutdownWait::Emf, left), EMF_WAIT);
    }

    /// The key refresh of a tick has the periodic flush's budget, flush or not.
    #[test]
    fn a_ticks_work_gets_the_periodic_flush_budget() {
        for (cap, expected) in [(ms(500), ms(500)), (ms(5_000), PERIODIC_FLUSH_MAX)] {
            assert_eq!(tick_budget(settings(cap)), expected);
            assert_eq!(
                decide(settings(cap), FlushEvent::Tick { pending: true }),
                flush(expected)
            );
        }
    }

    #[test]
    fn only_managed_instances_flush_on_a_timer() {
        let default = settings(ms(500));
        assert_eq!(default.timer(), None);
        let managed = FlushSettings {
            managed_instances: true,
            ..default
        };
        assert_eq!(managed.timer(), Some(default.interval));
    }
}
