//! When to flush and for how long: the rules, as pure functions of plain values.
//!
//! Every flush runs while something waits on it: at an INVOKE the function (the flush runs
//! beside it, and holds it only when it outlasts it), at the end of an invocation the
//! caller's next invocation (Lambda bills that post-runtime hold), at SHUTDOWN the little
//! time before Lambda's SIGKILL. So each flush gets a budget, and the rules that pick it live
//! here, apart from the clock and the I/O, where a table of cases can check each of them:
//! [`decide`] for one flush (at the INVOKE, at the invocation's end, or not at all, as
//! `SIDECAR_FLUSH_STRATEGY` and the recent gaps between invocations ([`Cadence`]) say),
//! [`shutdown_window`] and [`shutdown_wait`] for SHUTDOWN's time as a whole. The event loop
//! reads the clock, asks, and does what it is told; it computes no budget itself.
//!
//! The `adaptive` rule: flush at the end of an invocation unless each of the last
//! [`GAPS`] gaps between INVOKEs was shorter than `SIDECAR_FLUSH_MAX_AGE_MS`; then at the
//! next INVOKE, which comes within that gap, so the data is no older than the gap (and
//! nothing holds the function). Datadog's extension (bottlecap's `flush_control`) instead
//! flushes every 20 s once a function is invoked more than once every 2 minutes: between
//! 2 s and 2 min apart, this rule still flushes each invocation as it ends (data ~30 ms old,
//! not up to 20 s), and below 2 s its data is at most one gap old, for no hold at all.

use std::time::Duration;

use crate::config::FlushStrategy;

/// How many recent gaps between INVOKEs the `adaptive` rule looks at. The longest of them
/// decides: one long gap among them sends the next [`GAPS`] invocations' data at their end,
/// so a function that turns busy after a quiet spell switches to INVOKE flushes after four
/// quick invocations, and one that turns quiet switches back at its first slow one. After a
/// cold start only the gaps seen count: the second INVOKE already decides by its own gap.
pub const GAPS: usize = 4;

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

/// The longest an INVOKE flush waits for the previous invocation's `platform.runtimeDone`
/// before it drains. The environment froze as that invocation's runtime responded, so its
/// runtimeDone, still in the Telemetry API's buffer, is delivered only after the thaw, in
/// the same instant as this INVOKE: draining at once would leave that invocation for the
/// next flush, a whole gap later (`make bench`: invocations every 0.5 s reached the collector
/// at p99 1,026 ms instead of about 500). Its POST takes about a millisecond over loopback;
/// the wait runs beside the function, so it only holds a function shorter than itself.
const PREVIOUS_END_WAIT: Duration = Duration::from_millis(3);

/// What the rules know before any event: the configuration and the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushSettings {
    /// `SIDECAR_FLUSH_TIMEOUT_MS`: the longest a flush may hold an invocation.
    pub cap: Duration,
    /// `SIDECAR_FLUSH_INTERVAL_MS`: the period of the timer flush, where there is one, and
    /// of the `periodic` strategy's INVOKE flushes.
    pub interval: Duration,
    /// On Lambda Managed Instances the sidecar registers for SHUTDOWN only: no INVOKE comes
    /// to flush at.
    pub managed_instances: bool,
    /// `SIDECAR_FLUSH_STRATEGY`, as it can apply here ([`strategy`]).
    pub strategy: FlushStrategy,
    /// `SIDECAR_FLUSH_MAX_AGE_MS`: the gap the `adaptive` rule compares with.
    pub max_age: Duration,
}

/// The strategy that applies: the configured one, except on Managed Instances (no INVOKE:
/// always `periodic`, on a timer) and without `platform` events subscribed (no
/// `platform.runtimeDone` ever comes to end an invocation: `end` and `adaptive` flush at
/// INVOKE).
pub fn strategy(
    configured: FlushStrategy,
    managed_instances: bool,
    platform_subscribed: bool,
) -> FlushStrategy {
    match configured {
        _ if managed_instances => FlushStrategy::Periodic,
        FlushStrategy::End | FlushStrategy::Adaptive if !platform_subscribed => {
            FlushStrategy::Invoke
        }
        configured => configured,
    }
}

/// What the recent INVOKEs tell the rules, from [`Cadence::invoked`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recent {
    /// The longest of the last [`GAPS`] gaps between INVOKEs, the one ending now included;
    /// `None` at the first INVOKE.
    pub longest_gap: Option<Duration>,
    /// The time since the last flush began; `None` before the first.
    pub since_flush: Option<Duration>,
}

/// The INVOKE history the rules need, kept by the event loop from plain times (milliseconds
/// since the Unix epoch, as Lambda's deadlines): [`GAPS`] gaps and the last flush, nothing
/// that grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cadence {
    last_invoke_ms: Option<u64>,
    gaps: [u64; GAPS],
    /// Gaps recorded, up to [`GAPS`]; the next one goes to `next`.
    kept: usize,
    next: usize,
    last_flush_ms: Option<u64>,
}

impl Cadence {
    /// An INVOKE arrived at `now_ms`: records the gap since the last one, and returns what
    /// the rules should know.
    pub fn invoked(&mut self, now_ms: u64) -> Recent {
        if let Some(last) = self.last_invoke_ms {
            self.gaps[self.next] = now_ms.saturating_sub(last);
            self.next = (self.next + 1) % GAPS;
            self.kept = (self.kept + 1).min(GAPS);
        }
        self.last_invoke_ms = Some(now_ms);
        Recent {
            longest_gap: self.gaps[..self.kept]
                .iter()
                .max()
                .map(|gap| Duration::from_millis(*gap)),
            since_flush: self
                .last_flush_ms
                .map(|at| Duration::from_millis(now_ms.saturating_sub(at))),
        }
    }

    /// A flush began at `at_ms`.
    pub fn flushed(&mut self, at_ms: u64) {
        self.last_flush_ms = Some(at_ms);
    }
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
    /// (from some emulators) means unknown. `recent`: what the INVOKEs before it tell.
    Invoke {
        now_ms: u64,
        deadline_ms: u64,
        recent: Recent,
    },
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
    /// Wait at most `wait` for this invocation's `platform.runtimeDone` (then derive what it
    /// ended), and only then flush, for `budget`: the hand-back to Lambda waits for both.
    /// Past `wait` the flush goes ahead without it, and the miss is counted.
    AtEnd { wait: Duration, budget: Duration },
    /// Send nothing now.
    Skip,
}

/// Whether to flush at `event`, and for how long:
/// - at an INVOKE, as the strategy says ([`at_invoke`]), for the cap, or until the
///   function's deadline less a margin ([`INVOKE_MARGIN_FLOOR`] and a tenth of the time
///   left) when that comes sooner, so that no cap, however long, times an invocation out
///   (an unknown deadline leaves the cap; one already passed, or inside the margin, leaves
///   nothing);
/// - at a tick, only with something to send (an environment left idle for hours sends
///   nothing), for the cap and at most [`PERIODIC_FLUSH_MAX`];
/// - at SHUTDOWN, for what is left and at most [`SHUTDOWN_FLUSH_MAX`]: no function waits on
///   it, so the cap does not apply.
pub fn decide(settings: FlushSettings, event: FlushEvent) -> FlushDecision {
    let budget = match event {
        FlushEvent::Invoke {
            now_ms,
            deadline_ms,
            recent,
        } => return at_invoke(settings, now_ms, deadline_ms, recent),
        FlushEvent::Tick { pending: false } => return FlushDecision::Skip,
        FlushEvent::Tick { pending: true } => tick_budget(settings),
        FlushEvent::Shutdown { left } => left.min(SHUTDOWN_FLUSH_MAX),
    };
    FlushDecision::Flush { budget }
}

/// How long the work done for an INVOKE received at `now_ms` may hold the invocation: the
/// cap, or the time until `deadline_ms` less the margin when that is shorter (0: unknown).
pub fn invoke_budget(settings: FlushSettings, now_ms: u64, deadline_ms: u64) -> Duration {
    if deadline_ms == 0 {
        return settings.cap;
    }
    settings.cap.min(before_margin(now_ms, deadline_ms))
}

/// The time from `now_ms` to `deadline_ms`, less [`INVOKE_MARGIN_FLOOR`] and a tenth.
fn before_margin(now_ms: u64, deadline_ms: u64) -> Duration {
    let left = Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    left.saturating_sub(INVOKE_MARGIN_FLOOR + left / INVOKE_MARGIN_DIVISOR)
}

/// The rule of an INVOKE, by strategy:
/// - `invoke`: flush now, beside the function;
/// - `periodic`: flush now if `SIDECAR_FLUSH_INTERVAL_MS` has passed since the last flush
///   began (or none did yet), else skip;
/// - `end`: flush at the invocation's end;
/// - `adaptive`: at the INVOKE when each of the last [`GAPS`] gaps was shorter than
///   `SIDECAR_FLUSH_MAX_AGE_MS`, else at the end (the first INVOKE, with no gap known, too).
///
/// An end flush waits for `platform.runtimeDone` until the deadline less the margin and the
/// flush's budget, so that the flush, whenever it starts, still ends before the margin; when
/// that leaves no time to wait, or the deadline is unknown (0: no safe bound on the wait),
/// the INVOKE flush is done instead.
fn at_invoke(
    settings: FlushSettings,
    now_ms: u64,
    deadline_ms: u64,
    recent: Recent,
) -> FlushDecision {
    let budget = invoke_budget(settings, now_ms, deadline_ms);
    let at_end = match settings.strategy {
        FlushStrategy::Invoke => false,
        FlushStrategy::Periodic => {
            if recent.since_flush.is_some_and(|s| s < settings.interval) {
                return FlushDecision::Skip;
            }
            false
        }
        FlushStrategy::End => true,
        FlushStrategy::Adaptive => recent.longest_gap.is_none_or(|g| g >= settings.max_age),
    };
    let wait = before_margin(now_ms, deadline_ms).saturating_sub(budget);
    if !at_end || deadline_ms == 0 || wait.is_zero() {
        return FlushDecision::Flush { budget };
    }
    FlushDecision::AtEnd { wait, budget }
}

/// How long an INVOKE flush with `budget` may wait for the previous invocation's
/// runtimeDone, when it has not arrived yet: [`PREVIOUS_END_WAIT`], within the budget.
pub fn previous_end_wait(budget: Duration) -> Duration {
    PREVIOUS_END_WAIT.min(budget)
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
            strategy: FlushStrategy::Invoke,
            max_age: Duration::from_secs(2),
        }
    }

    /// An INVOKE at `now_ms` with nothing known of the INVOKEs before it.
    fn invoke(now_ms: u64, deadline_ms: u64) -> FlushEvent {
        FlushEvent::Invoke {
            now_ms,
            deadline_ms,
            recent: Recent::default(),
        }
    }

    fn flush(budget: Duration) -> FlushDecision {
        FlushDecision::Flush { budget }
    }

    #[test]
    fn each_flush_gets_the_budget_its_rule_gives() {
        use FlushEvent::{Shutdown, Tick};
        let cases = [
            (
                "invoke, deadline later than the cap: the cap",
                ms(500),
                invoke(10_000, 13_000),
                flush(ms(500)),
            ),
            (
                "invoke, deadline sooner than the cap: the deadline less 100 ms and a tenth",
                ms(500),
                invoke(10_000, 10_500),
                flush(ms(350)),
            ),
            (
                "invoke, cap past a 1 s timeout: 800 ms",
                ms(5_000),
                invoke(10_000, 11_000),
                flush(ms(800)),
            ),
            (
                "invoke, the largest cap under a 15 min timeout: the cap",
                ms(60_000),
                invoke(10_000, 910_000),
                flush(ms(60_000)),
            ),
            (
                "invoke, cap equal to the time left: the margin still kept",
                ms(3_000),
                invoke(10_000, 13_000),
                flush(ms(2_600)),
            ),
            (
                "invoke, deadline inside the margin: nothing",
                ms(500),
                invoke(10_000, 10_100),
                flush(Duration::ZERO),
            ),
            (
                "invoke, deadline now: nothing",
                ms(500),
                invoke(10_000, 10_000),
                flush(Duration::ZERO),
            ),
            (
                "invoke, deadline already passed: nothing",
                ms(500),
                invoke(10_000, 9_000),
                flush(Duration::ZERO),
            ),
            (
                "invoke, deadline unknown (0): the cap",
                ms(500),
                invoke(10_000, 0),
                flush(ms(500)),
            ),
            (
                "invoke, zero cap: nothing",
                Duration::ZERO,
                invoke(10_000, 13_000),
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
                let event = invoke(10_000, 10_000 + left);
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

    fn with(strategy: FlushStrategy) -> FlushSettings {
        FlushSettings {
            strategy,
            ..settings(ms(500))
        }
    }

    /// An INVOKE at 10 s with a 3 s timeout, after gaps whose longest is `gap_ms` and a
    /// flush `since_ms` ago (`None`: not known).
    fn after(gap_ms: Option<u64>, since_ms: Option<u64>) -> FlushEvent {
        FlushEvent::Invoke {
            now_ms: 10_000,
            deadline_ms: 13_000,
            recent: Recent {
                longest_gap: gap_ms.map(ms),
                since_flush: since_ms.map(ms),
            },
        }
    }

    /// With a 3 s timeout and a 500 ms cap: the margin is 400 ms, so the end flush waits
    /// for runtimeDone until 2.1 s in and still ends 400 ms before the deadline.
    const AT_END: FlushDecision = FlushDecision::AtEnd {
        wait: ms(2_100),
        budget: ms(500),
    };

    #[test]
    fn each_strategy_flushes_an_invocation_where_its_rule_says() {
        use FlushStrategy::{Adaptive, End, Invoke, Periodic};
        let now = flush(ms(500));
        let cases = [
            ("invoke: at the INVOKE", Invoke, after(None, None), now),
            (
                "invoke: rare or frequent alike",
                Invoke,
                after(Some(60_000), Some(60_000)),
                now,
            ),
            ("end: at the end", End, after(None, None), AT_END),
            ("end: frequent too", End, after(Some(10), Some(10)), AT_END),
            (
                "end: deadline unknown, no safe bound on the wait: at the INVOKE",
                End,
                invoke(10_000, 0),
                now,
            ),
            (
                "end: a 1 s timeout leaves 300 ms to wait",
                End,
                FlushEvent::Invoke {
                    now_ms: 10_000,
                    deadline_ms: 11_000,
                    recent: Recent::default(),
                },
                FlushDecision::AtEnd {
                    wait: ms(300),
                    budget: ms(500),
                },
            ),
            (
                "end: no time left to wait: at the INVOKE, under the clamp",
                End,
                invoke(10_000, 10_500),
                flush(ms(350)),
            ),
            (
                "end: deadline passed: nothing, at once",
                End,
                invoke(10_000, 9_000),
                flush(Duration::ZERO),
            ),
            (
                "periodic: the first flush",
                Periodic,
                after(None, None),
                now,
            ),
            (
                "periodic: an interval since the last flush",
                Periodic,
                after(Some(300), Some(1_000)),
                now,
            ),
            (
                "periodic: within the interval: skipped",
                Periodic,
                after(Some(300), Some(999)),
                FlushDecision::Skip,
            ),
            (
                "adaptive: the first INVOKE, no gap known: at the end",
                Adaptive,
                after(None, None),
                AT_END,
            ),
            (
                "adaptive: gaps all under the max age: at the INVOKE",
                Adaptive,
                after(Some(1_999), Some(1_999)),
                now,
            ),
            (
                "adaptive: back to back: at the INVOKE",
                Adaptive,
                after(Some(1), Some(1)),
                now,
            ),
            (
                "adaptive: a gap of the max age: at the end",
                Adaptive,
                after(Some(2_000), Some(2_000)),
                AT_END,
            ),
            (
                "adaptive: rare: at the end",
                Adaptive,
                after(Some(3_600_000), Some(3_600_000)),
                AT_END,
            ),
            (
                "adaptive: frequent, deadline unknown: at the INVOKE",
                Adaptive,
                invoke(10_000, 0),
                now,
            ),
        ];
        for (case, strategy, event, expected) in cases {
            assert_eq!(decide(with(strategy), event), expected, "{case}");
        }
    }

    /// Whatever the cap and the time left, an end flush that waited its whole wait and then
    /// took its whole budget still ends before the margin.
    #[test]
    fn an_end_flush_never_reaches_the_deadline() {
        for cap in [1, 100, 500, 1_000, 5_000, 60_000] {
            for left in [0, 150, 500, 1_000, 3_000, 60_000, 900_000] {
                let settings = FlushSettings {
                    strategy: FlushStrategy::End,
                    ..settings(ms(cap))
                };
                let (wait, budget) = match decide(settings, invoke(10_000, 10_000 + left)) {
                    FlushDecision::AtEnd { wait, budget } => (wait, budget),
                    FlushDecision::Flush { budget } => (Duration::ZERO, budget),
                    FlushDecision::Skip => panic!("end never skips"),
                };
                assert!(
                    wait + budget + INVOKE_MARGIN_FLOOR <= ms(left) || budget.is_zero(),
                    "cap {cap} ms, {left} ms left: waits {wait:?}, flushes {budget:?}"
                );
            }
        }
    }

    #[test]
    fn the_cadence_keeps_the_last_gaps_and_the_last_flush() {
        let mut cadence = Cadence::default();
        assert_eq!(cadence.invoked(1_000), Recent::default(), "first INVOKE");
        cadence.flushed(1_000);
        let steps = [
            (6_000, Some(5_000), Some(5_000)),
            (6_500, Some(5_000), Some(5_500)),
            (7_000, Some(5_000), Some(6_000)),
            (7_500, Some(5_000), Some(6_500)),
            // The 5 s gap is now the fifth last: only the four 500 ms gaps count.
            (8_000, Some(500), Some(7_000)),
            (8_001, Some(500), Some(7_001)),
        ];
        for (now, gap, since) in steps {
            assert_eq!(
                cadence.invoked(now),
                Recent {
                    longest_gap: gap.map(ms),
                    since_flush: since.map(ms),
                },
                "INVOKE at {now}"
            );
        }
        cadence.flushed(8_001);
        // A clock stepped back counts as no gap, not as a huge one.
        assert_eq!(
            cadence.invoked(7_000),
            Recent {
                longest_gap: Some(ms(500)),
                since_flush: Some(Duration::ZERO),
            }
        );
    }

    /// Adaptive over a run of INVOKEs: quiet, then busy, then quiet again.
    #[test]
    fn adaptive_follows_the_rate() {
        let settings = with(FlushStrategy::Adaptive);
        let mut cadence = Cadence::default();
        let mut decisions = Vec::new();
        for now in [
            0, 10_000, 10_500, 11_000, 11_500, 12_000, 12_500, 20_000, 20_500,
        ] {
            let recent = cadence.invoked(now);
            let decision = decide(
                settings,
                FlushEvent::Invoke {
                    now_ms: now,
                    deadline_ms: now + 3_000,
                    recent,
                },
            );
            decisions.push(matches!(decision, FlushDecision::AtEnd { .. }));
        }
        assert_eq!(
            decisions,
            [true, true, true, true, true, false, false, true, true],
            "at the end until four quick gaps in a row, and again after a slow one"
        );
    }

    #[test]
    fn the_strategy_that_applies() {
        use FlushStrategy::{Adaptive, End, Invoke, Periodic};
        let cases = [
            (Adaptive, false, true, Adaptive),
            (End, false, true, End),
            (Invoke, false, true, Invoke),
            (Periodic, false, true, Periodic),
            (Adaptive, true, true, Periodic),
            (End, true, true, Periodic),
            (Invoke, true, false, Periodic),
            (Adaptive, false, false, Invoke),
            (End, false, false, Invoke),
            (Periodic, false, false, Periodic),
        ];
        for (configured, managed, platform, expected) in cases {
            assert_eq!(
                strategy(configured, managed, platform),
                expected,
                "{configured:?}, managed {managed}, platform {platform}"
            );
        }
    }

    #[test]
    fn an_invoke_flush_waits_briefly_for_the_previous_runtime_done_within_its_budget() {
        for (budget, expected) in [
            (ms(500), PREVIOUS_END_WAIT),
            (ms(3), ms(3)),
            (ms(1), ms(1)),
            (Duration::ZERO, Duration::ZERO),
        ] {
            assert_eq!(previous_end_wait(budget), expected, "{budget:?}");
        }
    }
}
