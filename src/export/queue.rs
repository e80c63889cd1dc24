//! What the signal queues share: the one time budget of a flush, the rule that decides what
//! becomes of a batch whose request failed (sent again, set aside, or given up, and how long
//! the queue backs off), the loop that sends a queue front first in batches, and what a
//! queue's flush reports.
//!
//! The rule, in full (docs/signals.md, "Flush behaviour"):
//!
//! - A batch the collector refused for good (an answer the OTLP specification says not to
//!   retry: HTTP 400, 401, 413, …; see `answers.rs`) is dropped at once, counted and logged
//!   with the collector's message, and the batches behind it go on.
//! - A batch the collector did not take (no connection could be made, or a retryable
//!   answer: HTTP 408, 429, 502, 503, 504) stays at the front of its queue, and is sent
//!   again at a later flush: at most [`MAX_ATTEMPTS`] requests in all, then it is given up
//!   and counted.
//! - A request still unanswered when the budget runs out may have been received (a
//!   collector that answers late has usually taken the data), or lost (one that drops what
//!   its sender gave up on). Its batch is set aside, and the queue goes on with the next.
//!   What is set aside is sent again once, and only once the collector has answered a
//!   later request faster than the budget that cut it: a collector that was slow for a
//!   while and recovered gets it again; one that is always slower than the cap does not,
//!   since a second copy would only be cut again, and duplicate what it may have. At most
//!   [`MAX_ASIDE`] items wait so (the oldest beyond are given up), within the queue's
//!   bound; a second unanswered request gives a batch up ([`MAX_UNANSWERED`]); what is
//!   still aside after the last flush is given up. So a collector slower than the cap sees
//!   each item at most twice, not once per flush.
//! - After a flush that ended in a failed request the queue sits out the next flush, then 2,
//!   4, up to [`MAX_SKIP`] in a row: a slow collector holds one invocation in several, not
//!   every one. The last flush (SHUTDOWN) never sits out.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::{Abandoned, Metrics, Signal};

/// Most items sent in one request, to keep a request well under collectors' body limits.
pub(super) const MAX_BATCH: usize = 512;

/// Most requests made for one batch. With the backoff they span 47 flushes (8 tries and
/// 1 + 2 + 4 + 8 + 8 + 8 + 8 flushes sat out), so a collector that is down for a while and
/// comes back within that loses nothing.
pub(super) const MAX_ATTEMPTS: u32 = 8;

/// Most requests for one batch that may go unanswered. An unanswered request may well have
/// been received: a second one is the one chance a request lost on the way gets, and the
/// bound on the copies a slow collector sees.
pub(super) const MAX_UNANSWERED: u32 = 2;

/// Most items set aside after an unanswered request, waiting for the collector to answer in
/// time again: one request's worth, so a recovery re-sends one batch, however long the
/// collector was slow.
pub(super) const MAX_ASIDE: usize = MAX_BATCH;

/// Most flushes in a row a queue sits out after failed ones.
pub(super) const MAX_SKIP: u32 = 8;

/// The time one flush may take. The queues run side by side under the same budget and
/// each stops where it is when it runs out, so the flush ends by one deadline.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    total: Duration,
    started: Instant,
    /// The environment's last flush (SHUTDOWN): no queue sits it out.
    last: bool,
}

impl Budget {
    pub(super) fn starting_now(total: Duration, last: bool) -> Budget {
        Budget {
            total,
            started: Instant::now(),
            last,
        }
    }

    /// How long the flush may take in all.
    pub(super) fn total(&self) -> Duration {
        self.total
    }

    /// The environment's last flush.
    pub(super) fn is_last(&self) -> bool {
        self.last
    }

    /// No time is left: a request started now would only be cut (and counted unanswered).
    pub(super) fn spent(&self) -> bool {
        self.started.elapsed() >= self.total
    }

    /// Runs `work` until it ends (`Some`) or the budget runs out (`None`). A timed-out
    /// `work` is dropped, which cancels its request: nothing is in flight when Lambda
    /// freezes the environment.
    pub(super) async fn run<T>(self, work: impl Future<Output = T>) -> Option<T> {
        let remaining = self.total.saturating_sub(self.started.elapsed());
        tokio::time::timeout(remaining, work).await.ok()
    }
}

/// How a request for a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The collector acknowledged it.
    Delivered,
    /// The collector refused it, and would refuse it again.
    Rejected,
    /// The collector did not take it, and a later request may succeed.
    NotTaken,
    /// Sent, and no answer came in time: the collector may or may not have it.
    Unanswered,
}

/// A request that did not deliver its batch: how it ended, and what the log says of it.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) outcome: Outcome,
    detail: String,
}

impl Failure {
    /// A request that ended in `outcome` (never [`Outcome::Delivered`]), as `detail` says.
    pub(super) fn new(outcome: Outcome, detail: String) -> Failure {
        Failure { outcome, detail }
    }

    /// The budget, this long, ran out with the request in flight.
    pub(super) fn timed_out(budget: Budget) -> Failure {
        Failure {
            outcome: Outcome::Unanswered,
            detail: format!("timed out after {:?}", budget.total),
        }
    }

    /// It stops the flush of its queue: the collector is failing, not refusing one batch.
    pub(super) fn stops(&self) -> bool {
        matches!(self.outcome, Outcome::NotTaken | Outcome::Unanswered)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// The requests made so far for the batch at the front of a queue, every one failed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tries {
    pub(super) sent: u32,
    pub(super) unanswered: u32,
}

impl Tries {
    /// These tries and one more, which ended in `outcome`.
    fn and(self, outcome: Outcome) -> Tries {
        Tries {
            sent: self.sent.saturating_add(1),
            unanswered: self
                .unanswered
                .saturating_add(u32::from(outcome == Outcome::Unanswered)),
        }
    }
}

/// What becomes of a batch after a request for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Delivered: it leaves the queue.
    Delivered,
    /// It stays where it is (the front of the queue, or aside) for a later flush.
    Keep,
    /// It is set aside until the collector answers in time again.
    SetAside,
    /// It leaves the queue undelivered, counted for this reason.
    Abandon(Abandoned),
}

/// The rule: what becomes of a batch whose latest request ended in `outcome`, `tries`
/// counting every request made for it, that one included.
pub(super) fn verdict(outcome: Outcome, tries: Tries) -> Verdict {
    match outcome {
        Outcome::Delivered => Verdict::Delivered,
        Outcome::Rejected => Verdict::Abandon(Abandoned::Rejected),
        Outcome::Unanswered if tries.unanswered >= MAX_UNANSWERED => {
            Verdict::Abandon(Abandoned::Unanswered)
        }
        _ if tries.sent >= MAX_ATTEMPTS => Verdict::Abandon(Abandoned::Retries),
        Outcome::Unanswered => Verdict::SetAside,
        _ => Verdict::Keep,
    }
}

/// The flushes a queue sits out after `failed` flushes in a row ended in a failed request:
/// none after one that did not, then 1, 2, 4, …, at most [`MAX_SKIP`].
pub(super) fn backoff(failed: u32) -> u32 {
    match failed {
        0 => 0,
        n => 1u32.checked_shl(n - 1).unwrap_or(u32::MAX).min(MAX_SKIP),
    }
}

/// A queue's side of the rule: the tries of its front batch and of what is aside, and its
/// backoff.
#[derive(Debug, Default)]
pub(super) struct Retry {
    /// The requests made for the front batch, all failed.
    front: Tries,
    /// How many items that batch had: overflow that drops them all starts a new one.
    front_len: usize,
    /// The requests made for what is aside (the most any of it had).
    aside: Tries,
    /// The shortest budget that cut a request for what is aside: a later answer faster than
    /// this says the collector can answer it in time now.
    aside_cut: Option<Duration>,
    /// Flushes in a row that ended in a failed request.
    failed: u32,
    /// Flushes still to sit out.
    skip: u32,
}

impl Retry {
    /// Whether the queue sits out this flush (which then counts as sat out). Never the
    /// last one.
    pub(super) fn sits_out(&mut self, budget: Budget) -> bool {
        if self.skip == 0 || budget.last {
            return false;
        }
        self.skip -= 1;
        true
    }

    /// A request for the front batch, `len` items, ended in `outcome`: what becomes of it.
    /// Set aside, it takes its tries along.
    pub(super) fn settle(&mut self, outcome: Outcome, len: usize) -> Verdict {
        let tries = self.front.and(outcome);
        let verdict = verdict(outcome, tries);
        if verdict == Verdict::SetAside {
            self.aside = Tries {
                sent: self.aside.sent.max(tries.sent),
                unanswered: self.aside.unanswered.max(tries.unanswered),
            };
        }
        (self.front, self.front_len) = match verdict {
            Verdict::Keep => (tries, len),
            _ => (Tries::default(), 0),
        };
        verdict
    }

    /// A request for a batch set aside ended in `outcome` (cut, if unanswered, by a budget
    /// of `budget`): what becomes of it. It is never set aside twice.
    pub(super) fn settle_aside(&mut self, outcome: Outcome) -> Verdict {
        let tries = self.aside.and(outcome);
        match verdict(outcome, tries) {
            Verdict::SetAside => Verdict::Abandon(Abandoned::Unanswered),
            Verdict::Keep => {
                self.aside = tries;
                Verdict::Keep
            }
            verdict => verdict,
        }
    }

    /// Items were set aside, cut by a budget of `cut`.
    pub(super) fn set_aside(&mut self, cut: Duration) {
        self.aside_cut = Some(self.aside_cut.map_or(cut, |known| known.min(cut)));
    }

    /// Nothing is aside any more.
    pub(super) fn aside_gone(&mut self) {
        (self.aside, self.aside_cut) = (Tries::default(), None);
    }

    /// A request was delivered in `took`: is that faster than what cut the requests for
    /// what is aside?
    pub(super) fn answers_in_time(&self, took: Duration) -> bool {
        self.aside_cut.is_some_and(|cut| took < cut)
    }

    /// A flush that sent something ended, in a failed request or not: the backoff.
    pub(super) fn flushed(&mut self, failed: bool) {
        self.failed = if failed {
            self.failed.saturating_add(1)
        } else {
            0
        };
        self.skip = backoff(self.failed);
    }

    /// `dropped` items left the front of the queue by overflow, unsent.
    fn dropped_front(&mut self, dropped: usize) {
        if dropped >= self.front_len {
            (self.front, self.front_len) = (Tries::default(), 0);
        } else {
            self.front_len -= dropped;
        }
    }
}

/// The items of one signal awaiting delivery, oldest first: those set aside after an
/// unanswered request, then the queue proper; and the queue's side of the rule.
#[derive(Debug)]
pub(super) struct Queue<T> {
    aside: VecDeque<T>,
    items: VecDeque<T>,
    retry: Retry,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            aside: VecDeque::new(),
            items: VecDeque::new(),
            retry: Retry::default(),
        }
    }
}

impl<T> Queue<T> {
    pub(super) fn push(&mut self, items: impl IntoIterator<Item = T>) {
        self.items.extend(items);
    }

    /// Items waiting, aside or not.
    pub(super) fn len(&self) -> usize {
        self.aside.len() + self.items.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.aside.is_empty() && self.items.is_empty()
    }

    /// Every item waiting, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.aside.iter().chain(&self.items)
    }

    /// Drops the oldest `n` items (overflow): those aside first.
    pub(super) fn drop_oldest(&mut self, n: usize) {
        for _ in 0..n {
            if self.pop_oldest().is_none() {
                break;
            }
        }
    }

    /// Takes the oldest item out (overflow): one aside first.
    pub(super) fn pop_oldest(&mut self) -> Option<T> {
        if let Some(oldest) = self.aside.pop_front() {
            if self.aside.is_empty() {
                self.retry.aside_gone();
            }
            return Some(oldest);
        }
        let oldest = self.items.pop_front()?;
        self.retry.dropped_front(1);
        Some(oldest)
    }

    /// Gives up everything aside (counted by the caller); how many items that was.
    fn give_up_aside(&mut self) -> usize {
        let n = self.aside.len();
        self.aside.clear();
        self.retry.aside_gone();
        n
    }
}

/// What one queue's flush did: its part of the [`super::FlushReport`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Flushed {
    /// Items (metrics: batches) acknowledged by the collector.
    pub(super) sent: usize,
    /// Items still queued for a later flush.
    pub(super) pending: usize,
    /// The budget ran out before the queue was done.
    pub(super) timed_out: bool,
    /// The queue sat this flush out, backing off after failed ones.
    pub(super) sat_out: bool,
}

/// One signal's requests, as [`flush_in_order`] makes them.
pub(super) trait Batches {
    type Item;

    /// The signal, for the metrics and the log.
    const SIGNAL: Signal;

    /// How many of `queued` (oldest first, never empty) the next request carries: at
    /// least one.
    fn batch_len(&self, queued: &[Self::Item]) -> usize;

    /// Sends `batch` in one request; `Ok` once the collector has acknowledged it.
    fn send(&self, batch: &[Self::Item]) -> impl Future<Output = Result<(), Failure>> + Send;
}

/// Sends `queue` through `sender` (nothing without one) within `budget`, as the rule says;
/// a failure is logged and counted in `metrics`, and so is what is given up.
pub(super) async fn flush_in_order<B: Batches>(
    sender: Option<&B>,
    queue: &mut Queue<B::Item>,
    budget: Budget,
    metrics: &Metrics,
) -> Flushed {
    let Some(sender) = sender else {
        return Flushed::default();
    };
    let flushed = send_within(sender, queue, budget, metrics).await;
    if budget.last {
        // Nothing comes after the last flush: what is still aside is given up.
        let aside = queue.give_up_aside();
        if aside > 0 {
            metrics.abandoned(B::SIGNAL, Abandoned::Unanswered, aside as u64);
            tracing::warn!(
                signal = B::SIGNAL.as_str(),
                items = aside,
                "export given up: items whose request went unanswered not sent again"
            );
        }
    }
    Flushed {
        pending: queue.len(),
        ..flushed
    }
}

/// [`flush_in_order`] with a sender.
async fn send_within<B: Batches>(
    sender: &B,
    queue: &mut Queue<B::Item>,
    budget: Budget,
    metrics: &Metrics,
) -> Flushed {
    if queue.retry.sits_out(budget) {
        return Flushed {
            sat_out: !queue.is_empty(),
            ..Flushed::default()
        };
    }
    if queue.is_empty() || budget.spent() {
        return Flushed::default();
    }
    let mut sent = 0;
    let mut in_flight = None;
    let send = send_in_order(sender, queue, &mut sent, &mut in_flight, budget, metrics);
    let (failure, timed_out) = match budget.run(send).await {
        Some(failure) => (failure, false),
        None => {
            // The budget ran out with a request in flight.
            let failure = Failure::timed_out(budget);
            if let Some(batch) = in_flight {
                settle::<B>(queue, batch, &failure, budget, metrics);
            }
            (Some(failure), true)
        }
    };
    queue.retry.flushed(failure.is_some());
    if let Some(failure) = &failure
        && !queue.items.is_empty()
    {
        tracing::warn!(
            signal = B::SIGNAL.as_str(),
            error = %failure,
            kept = queue.items.len(),
            aside = queue.aside.len(),
            attempts = queue.retry.front.sent,
            sits_out = queue.retry.skip,
            "export failed; kept for a later flush"
        );
    }
    Flushed {
        sent,
        timed_out,
        ..Flushed::default()
    }
}

/// A request's batch: the first items of the queue proper, or of what is aside.
#[derive(Debug, Clone, Copy)]
enum Batch {
    Front(usize),
    Aside(usize),
}

/// Sends `queue` front first, a batch per request, until it is empty (`None`) or a request
/// fails in a way that [stops](Failure::stops) the flush (the failure), counting what was
/// acknowledged in `sent` and naming the batch in flight in `in_flight`. What is aside is
/// sent once a request was delivered faster than the budget that cut it. Items leave the
/// queue only once their request is acknowledged or the rule gives them up (a rejected batch
/// at once, and the next goes on): whatever a failure, or the deadline dropping this future,
/// interrupts stays queued for a later flush.
async fn send_in_order<B: Batches>(
    sender: &B,
    queue: &mut Queue<B::Item>,
    sent: &mut usize,
    in_flight: &mut Option<Batch>,
    budget: Budget,
    metrics: &Metrics,
) -> Option<Failure> {
    let mut in_time = false;
    loop {
        let aside = in_time && !queue.aside.is_empty();
        let (items, which) = if aside {
            let items = queue.aside.make_contiguous();
            let n = sender.batch_len(items);
            (&items[..n], Batch::Aside(n))
        } else if !queue.items.is_empty() {
            let items = queue.items.make_contiguous();
            let n = sender.batch_len(items);
            (&items[..n], Batch::Front(n))
        } else {
            return None;
        };
        *in_flight = Some(which);
        let started = Instant::now();
        let result = sender.send(items).await;
        *in_flight = None;
        match (result, which) {
            (Ok(()), Batch::Front(n)) => {
                in_time |= queue.retry.answers_in_time(started.elapsed());
                queue.retry.settle(Outcome::Delivered, n);
                queue.items.drain(..n);
                *sent += n;
            }
            (Ok(()), Batch::Aside(n)) => {
                queue.aside.drain(..n);
                if queue.aside.is_empty() {
                    queue.retry.aside_gone();
                }
                *sent += n;
            }
            (Err(failure), batch) => {
                settle::<B>(queue, batch, &failure, budget, metrics);
                if failure.stops() {
                    return Some(failure);
                }
            }
        }
    }
}

/// Applies the rule to `batch` of `queue`, whose request ended in `failure` (counted) under
/// `budget`: kept, set aside, or given up (dropped, logged and counted).
fn settle<B: Batches>(
    queue: &mut Queue<B::Item>,
    batch: Batch,
    failure: &Failure,
    budget: Budget,
    metrics: &Metrics,
) {
    metrics.export_failure(B::SIGNAL);
    let abandoned = |items: usize, reason: Abandoned| {
        metrics.abandoned(B::SIGNAL, reason, items as u64);
        tracing::warn!(
            signal = B::SIGNAL.as_str(),
            error = %failure,
            items,
            reason = reason.as_str(),
            "export given up: items dropped"
        );
    };
    match batch {
        Batch::Front(n) => {
            let n = n.min(queue.items.len());
            match queue.retry.settle(failure.outcome, n) {
                Verdict::Delivered | Verdict::Keep => {}
                Verdict::Abandon(reason) => {
                    queue.items.drain(..n);
                    abandoned(n, reason);
                }
                Verdict::SetAside => {
                    queue.aside.extend(queue.items.drain(..n));
                    queue.retry.set_aside(budget.total);
                    let over = queue.aside.len().saturating_sub(MAX_ASIDE);
                    if over > 0 {
                        queue.aside.drain(..over);
                        abandoned(over, Abandoned::Unanswered);
                    }
                }
            }
        }
        Batch::Aside(n) => {
            let n = n.min(queue.aside.len());
            if let Verdict::Abandon(reason) = queue.retry.settle_aside(failure.outcome) {
                queue.aside.drain(..n);
                abandoned(n, reason);
            }
        }
    }
    if queue.aside.is_empty() {
        queue.retry.aside_gone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use crate::metrics::testing;
    use Outcome::{Delivered, NotTaken, Rejected, Unanswered};

    fn tries(sent: u32, unanswered: u32) -> Tries {
        Tries { sent, unanswered }
    }

    /// The rule, case by case: `tries` counts the request that just ended.
    #[test]
    fn what_becomes_of_a_batch() {
        use Verdict::{Abandon, Keep, SetAside};
        let cases = [
            // Delivered: whatever came before.
            (Delivered, tries(1, 0), Verdict::Delivered),
            (Delivered, tries(8, 1), Verdict::Delivered),
            // Rejected: given up at once, whatever came before.
            (Rejected, tries(1, 0), Abandon(Abandoned::Rejected)),
            (Rejected, tries(3, 1), Abandon(Abandoned::Rejected)),
            // Not taken: kept, up to the last attempt.
            (NotTaken, tries(1, 0), Keep),
            (NotTaken, tries(7, 1), Keep),
            (NotTaken, tries(8, 0), Abandon(Abandoned::Retries)),
            (NotTaken, tries(8, 1), Abandon(Abandoned::Retries)),
            // Unanswered: set aside the first time, given up the second.
            (Unanswered, tries(1, 1), SetAside),
            (Unanswered, tries(5, 1), SetAside),
            (Unanswered, tries(2, 2), Abandon(Abandoned::Unanswered)),
            (Unanswered, tries(6, 2), Abandon(Abandoned::Unanswered)),
            (Unanswered, tries(8, 1), Abandon(Abandoned::Retries)),
        ];
        for (outcome, tries, expected) in cases {
            assert_eq!(verdict(outcome, tries), expected, "{outcome:?} {tries:?}");
        }
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let skips: Vec<u32> = (0..8).map(backoff).collect();
        assert_eq!(skips, [0, 1, 2, 4, 8, 8, 8, 8]);
        assert_eq!(backoff(u32::MAX), MAX_SKIP);
    }

    /// What `MAX_ATTEMPTS` is documented to cover: 47 flushes of a collector that takes
    /// nothing, from the first try to the last.
    #[test]
    fn the_attempts_span_47_flushes() {
        let mut retry = Retry::default();
        let budget = Budget::starting_now(Duration::ZERO, false);
        let mut flushes = 0;
        loop {
            flushes += 1;
            if retry.sits_out(budget) {
                continue;
            }
            let verdict = retry.settle(NotTaken, 1);
            retry.flushed(true);
            if verdict != Verdict::Keep {
                assert_eq!(verdict, Verdict::Abandon(Abandoned::Retries));
                break;
            }
        }
        assert_eq!(flushes, 47);
        assert!(!retry.sits_out(Budget::starting_now(Duration::ZERO, true)));
    }

    /// How a scripted collector answers a request.
    #[derive(Debug, Clone, Copy)]
    enum Answer {
        /// Takes it and acknowledges it.
        Ok,
        /// Takes it, and acknowledges it after this long.
        Late(Duration),
        /// Waits this long, and drops it if its sender gave up by then.
        Slow(Duration),
        /// No connection.
        Down,
        /// Refuses it for good.
        Refuse,
    }

    /// A collector answering each flush as its script says, recording what it took.
    struct Scripted {
        script: fn(flush: usize) -> Answer,
        flush: Mutex<usize>,
        received: Mutex<Vec<u32>>,
    }

    impl Batches for Scripted {
        type Item = u32;
        const SIGNAL: Signal = Signal::Traces;

        fn batch_len(&self, queued: &[u32]) -> usize {
            queued.len().min(MAX_BATCH)
        }

        async fn send(&self, batch: &[u32]) -> Result<(), Failure> {
            let flush = *self.flush.lock().unwrap();
            let answer = (self.script)(flush);
            let failure = |outcome| Err(Failure::new(outcome, format!("{answer:?}")));
            match answer {
                Answer::Ok => {
                    self.received.lock().unwrap().extend(batch);
                    Ok(())
                }
                Answer::Late(after) => {
                    self.received.lock().unwrap().extend(batch);
                    tokio::time::sleep(after).await;
                    Ok(())
                }
                Answer::Slow(after) => {
                    tokio::time::sleep(after).await;
                    self.received.lock().unwrap().extend(batch);
                    Ok(())
                }
                Answer::Down => failure(NotTaken),
                Answer::Refuse => failure(Rejected),
            }
        }
    }

    const CAP: Duration = Duration::from_millis(500);
    const LAST: Duration = Duration::from_millis(1_000);

    /// 30 flushes under the cap, 3 new items before each, then the last flush (a longer
    /// budget): what the collector received, and what was counted given up.
    async fn run(script: fn(usize) -> Answer) -> (Vec<u32>, String) {
        let collector = Scripted {
            script,
            flush: Mutex::new(0),
            received: Mutex::new(Vec::new()),
        };
        let (source, metrics) = testing::source();
        let mut queue = Queue::default();
        for flush in 0..=30 {
            *collector.flush.lock().unwrap() = flush;
            let last = flush == 30;
            if !last {
                let first = 3 * flush as u32;
                queue.push(first..first + 3);
            }
            let budget = Budget::starting_now(if last { LAST } else { CAP }, last);
            flush_in_order(Some(&collector), &mut queue, budget, &metrics).await;
        }
        assert!(queue.is_empty(), "{queue:?}");
        let received = collector.received.into_inner().unwrap();
        let abandoned = testing::render(&source)
            .lines()
            .filter(|line| line.starts_with("sidecar.export.abandoned_items"))
            .collect::<Vec<_>>()
            .join("; ");
        (received, abandoned)
    }

    /// The rule as a whole, against collectors that fail in different ways (table-driven):
    /// how many of the 90 items arrive, how many copies arrive, and what is counted.
    #[tokio::test(start_paused = true)]
    async fn what_collectors_that_fail_receive() {
        const fn ms(millis: u64) -> Duration {
            Duration::from_millis(millis)
        }
        /// A collector: its name, its script, the distinct items it receives, all the copies
        /// it receives, what is counted given up.
        type Case = (
            &'static str,
            fn(usize) -> Answer,
            usize,
            usize,
            &'static str,
        );
        let cases: [Case; 6] = [
            ("healthy", |_| Answer::Ok, 90, 90, ""),
            // Takes everything, answers after the cap (but within the last flush's longer
            // budget): every item once, and no second copy, since the collector never
            // answers faster than the cap; what was set aside is counted at the end.
            (
                "late, always",
                |_| Answer::Late(ms(700)),
                90,
                90,
                "sidecar.export.abandoned_items{reason=unanswered,signal=traces} = 87",
            ),
            // Drops what it answers too late; recovers at flush 10: what was set aside goes
            // again once it answers in time.
            (
                "slow, then healthy",
                |flush| {
                    if flush < 10 {
                        Answer::Slow(ms(2_000))
                    } else {
                        Answer::Ok
                    }
                },
                90,
                90,
                "",
            ),
            // Takes everything but answers late until flush 10: what was set aside (the 18
            // items sent at flushes 0, 2 and 5) goes again once, so arrives twice.
            (
                "late, then healthy",
                |flush| {
                    if flush < 10 {
                        Answer::Late(ms(700))
                    } else {
                        Answer::Ok
                    }
                },
                90,
                108,
                "",
            ),
            // No connection until flush 12: everything waits, and arrives once (at flush
            // 19, after tries at flushes 0, 2, 5 and 10).
            (
                "down, then healthy",
                |flush| {
                    if flush < 12 { Answer::Down } else { Answer::Ok }
                },
                90,
                90,
                "",
            ),
            // Refuses everything sent at flush 3: those are dropped and counted, the rest
            // arrive.
            (
                "refuses one flush",
                |flush| {
                    if flush == 3 {
                        Answer::Refuse
                    } else {
                        Answer::Ok
                    }
                },
                87,
                87,
                "sidecar.export.abandoned_items{reason=rejected,signal=traces} = 3",
            ),
        ];
        for (name, script, distinct, copies, abandoned) in cases {
            let (received, counted) = run(script).await;
            let mut unique = received.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(
                (unique.len(), received.len(), counted.as_str()),
                (distinct, copies, abandoned),
                "{name}: received {received:?}"
            );
        }
    }

    /// Overflow that drops the whole front batch starts the next one afresh; dropping
    /// part of it keeps its tries.
    #[test]
    fn overflow_past_the_front_batch_starts_afresh() {
        let mut retry = Retry::default();
        assert_eq!(retry.settle(NotTaken, 10), Verdict::Keep);
        retry.dropped_front(4);
        assert_eq!(retry.front, tries(1, 0));
        retry.dropped_front(6);
        assert_eq!(retry.front, Tries::default());
    }
}
