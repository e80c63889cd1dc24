//! What the instruments recorded since the last flush, held for the EMF output.
//!
//! Nothing is recorded for EMF by hand: every `Instrument` that OTLP and Prometheus read also
//! adds its values here (when `SIDECAR_EMF=on`), and each flush takes them and turns them into
//! CloudWatch documents (`export::emf`). Values are deltas since the last take, as CloudWatch
//! expects: counters are sums, histograms the raw observations, gauges the last value.
//!
//! Each value keeps the time of what it describes: recordings made inside [`stamped`] (the
//! deriver stamps an invocation's figures with the invocation's start, a token's with its
//! request, an event's with the event) are held apart per second, and their document
//! carries that time; the rest (the sidecar's own counts) the flush's. A flush can come long
//! after an invocation (the next INVOKE, an hour later), and CloudWatch files a value under
//! the minute of its `Timestamp`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::table::{METRICS, MetricDef, MetricKind};

/// The most histogram observations held between two flushes (100 full documents); beyond
/// it, observations are dropped and counted in `sidecar.export.dropped_items{signal="emf"}`.
pub const MAX_PENDING_VALUES: usize = 10_000;

/// A metric's value since the last flush.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    Sum(u64),
    Last(f64),
    Values(Vec<f64>),
}

/// The most distinct seconds held between two flushes: a periodic flush a minute apart
/// with invocations every second stays under it. Past it, recordings are held with the
/// unstamped ones (the flush's time) rather than growing the map.
pub const MAX_STAMPS: usize = 120;

thread_local! {
    /// The time, in epoch milliseconds, of what the recordings made now describe.
    static STAMP: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Runs `f` with the EMF values it records stamped with `at`: the time of what they
/// describe. Synchronous, and per thread, so no other recording (another task, another
/// thread) can take the stamp; nested calls restore the outer stamp when they end.
pub fn stamped<R>(at: SystemTime, f: impl FnOnce() -> R) -> R {
    let ms = at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let outer = STAMP.replace(Some(ms));
    let result = f();
    STAMP.set(outer);
    result
}

/// One metric and one combination of its label values, with what was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub def: &'static MetricDef,
    /// Label values, in the order of `def.labels`.
    pub labels: Vec<&'static str>,
    pub value: Recorded,
    /// When what it describes happened (epoch ms): the first stamp of its second; `None`
    /// for values recorded outside [`stamped`], which carry the flush's time.
    pub time_ms: Option<u64>,
}

/// The key of a held value: its second (`None`: unstamped), metric and label values.
type Key = (Option<u64>, &'static str, Vec<&'static str>);

/// What the instruments recorded since the last flush, for EMF. Bounded: label values come
/// from closed sets, and histogram observations stop at [`MAX_PENDING_VALUES`].
#[derive(Debug, Default)]
pub struct Pending {
    entries: Mutex<BTreeMap<Key, Entry>>,
    /// The first stamp seen in each second held, at most [`MAX_STAMPS`].
    seconds: Mutex<BTreeMap<u64, u64>>,
    held_values: AtomicU64,
    overflow: AtomicU64,
}

impl Pending {
    /// Adds one recording. Never panics: a poisoned lock (a panic elsewhere while holding
    /// it) is taken over, the map being valid after every statement.
    pub fn record(&self, def: &'static MetricDef, labels: &[&'static str], value: f64) {
        let second = STAMP.get().and_then(|ms| self.second_of(ms));
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = entries
            .entry((second, def.name, labels.to_vec()))
            .or_insert_with(|| Entry {
                def,
                labels: labels.to_vec(),
                time_ms: None,
                value: match def.kind {
                    MetricKind::Counter => Recorded::Sum(0),
                    MetricKind::Gauge => Recorded::Last(value),
                    MetricKind::Histogram { .. } => Recorded::Values(Vec::new()),
                },
            });
        match &mut entry.value {
            Recorded::Sum(sum) => *sum = sum.saturating_add(value as u64),
            Recorded::Last(last) => *last = value,
            Recorded::Values(values) => {
                if self.held_values.load(Ordering::Relaxed) < MAX_PENDING_VALUES as u64 {
                    values.push(value);
                    self.held_values.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.overflow.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The second `ms` falls in, held from now on; `None` when [`MAX_STAMPS`] other seconds
    /// are held already.
    fn second_of(&self, ms: u64) -> Option<u64> {
        let mut seconds = self
            .seconds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let second = ms / 1000;
        if !seconds.contains_key(&second) && seconds.len() >= MAX_STAMPS {
            return None;
        }
        let first = seconds.entry(second).or_insert(ms);
        *first = (*first).min(ms);
        Some(second)
    }

    /// Everything held, emptied, and how many observations were dropped since the last take.
    pub fn take(&self) -> (Vec<Entry>, u64) {
        let entries = std::mem::take(
            &mut *self
                .entries
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let seconds = std::mem::take(
            &mut *self
                .seconds
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        self.held_values.store(0, Ordering::Relaxed);
        let entries = entries
            .into_iter()
            .map(|((second, ..), entry)| Entry {
                time_ms: second.and_then(|s| seconds.get(&s).copied()),
                ..entry
            })
            .collect();
        (entries, self.overflow.swap(0, Ordering::Relaxed))
    }
}

/// Adds a zero, under `[FunctionName]` alone, for every counter of
/// [`METRICS`] that recorded nothing since the last flush: the
/// counter's series then has a point at every flush, so a graph shows 0 rather than a gap
/// and an alarm on errors or drops sees "0", not "missing data" (the same reason the
/// Prometheus side pre-creates its zero series). Histograms and gauges get none: a 0 s
/// duration or 0 bytes of memory would be false readings.
pub fn zero_counters(entries: &mut Vec<Entry>) {
    for def in METRICS {
        if matches!(def.kind, MetricKind::Counter)
            && !entries.iter().any(|e| e.def.name == def.name)
        {
            entries.push(Entry {
                def,
                labels: Vec::new(),
                value: Recorded::Sum(0),
                time_ms: None,
            });
        }
    }
}
