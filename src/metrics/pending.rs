//! What the instruments recorded since the last flush, held for the EMF output.
//!
//! Nothing is recorded for EMF by hand: every `Instrument` that OTLP and Prometheus read also
//! adds its values here (when `SIDECAR_EMF=on`), and each flush takes them and turns them into
//! CloudWatch documents (`export::emf`). Values are deltas since the last take, as CloudWatch
//! expects: counters are sums, histograms the raw observations, gauges the last value.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// One metric and one combination of its label values, with what was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub def: &'static MetricDef,
    /// Label values, in the order of `def.labels`.
    pub labels: Vec<&'static str>,
    pub value: Recorded,
}

/// What the instruments recorded since the last flush, for EMF. Bounded: label values come
/// from closed sets, and histogram observations stop at [`MAX_PENDING_VALUES`].
#[derive(Debug, Default)]
pub struct Pending {
    entries: Mutex<BTreeMap<(&'static str, Vec<&'static str>), Entry>>,
    held_values: AtomicU64,
    overflow: AtomicU64,
}

impl Pending {
    /// Adds one recording. Never panics: a poisoned lock (a panic elsewhere while holding
    /// it) is taken over, the map being valid after every statement.
    pub fn record(&self, def: &'static MetricDef, labels: &[&'static str], value: f64) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = entries
            .entry((def.name, labels.to_vec()))
            .or_insert_with(|| Entry {
                def,
                labels: labels.to_vec(),
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

    /// Everything held, emptied, and how many observations were dropped since the last take.
    pub fn take(&self) -> (Vec<Entry>, u64) {
        let entries = std::mem::take(
            &mut *self
                .entries
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        self.held_values.store(0, Ordering::Relaxed);
        let entries = entries.into_values().collect();
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
            });
        }
    }
}
