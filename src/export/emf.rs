//! CloudWatch Embedded Metric Format (EMF): the third output of the
//! [`METRICS`](crate::metrics::METRICS) table, as JSON
//! lines on stdout, which Lambda ships to CloudWatch Logs, where each line becomes metric
//! data points in the namespace `SIDECAR_EMF_NAMESPACE`.
//!
//! Nothing is recorded for EMF by hand: every `Instrument` of `metrics` that OTLP and
//! Prometheus read also adds its values to one [`Pending`](crate::metrics::pending::Pending) (when `SIDECAR_EMF=on`), and each
//! flush turns what it holds into documents ([`documents`]) and hands them to a writer
//! thread ([`Writer`]). A flush's documents carry what was recorded since the last one (an
//! invocation's platform.report figures come after its end, so with the flush after it),
//! each under the time of what it describes: an invocation's figures carry the invocation's
//! time, however late the flush (`metrics::pending::stamped`).
//!
//! Values are what happened since the last flush (deltas), as CloudWatch expects: counters
//! are sums, histograms the raw observations (a plain array: CloudWatch computes the
//! percentiles from them; the `Values`/`Counts` form only saves space when values repeat,
//! and µs-precise latencies rarely do), gauges the last value.
//!
//! Dimensions (the spec's "dimension sets", matched exactly by CloudWatch): every metric is
//! emitted under `[FunctionName]`, so a query on the function alone finds every value, and
//! under `[FunctionName, <label>]` for each of its labels (`outcome`,
//! `algorithm`, ...). One document holds one combination of label values, so every set is
//! counted exactly once.
//!
//! Limits of the specification, enforced here: at most [`MAX_METRICS`] metrics per
//! document and [`MAX_VALUES`] values per metric (more are split over documents), at most
//! 30 dimensions per set (ours have two or three), timestamps in epoch milliseconds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError};

use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use crate::metrics::pending::{Entry, Recorded, zero_counters};
use crate::metrics::{self, MetricDef, Metrics, Signal};

/// The specification's limit on metric definitions in one document.
pub const MAX_METRICS: usize = 100;
/// The specification's limit on values of one metric in one document.
pub const MAX_VALUES: usize = 100;
/// Batches of lines waiting for the writer thread; a flush finding the queue full drops its
/// batch (counted) instead of waiting for stdout.
const QUEUE: usize = 16;
/// The dimension every metric carries.
pub const FUNCTION_NAME: &str = "FunctionName";
/// The labels that become a second dimension set `[FunctionName, label]`: those an SRE
/// filters on (rejected tokens, what was dropped or refused and why).
/// Others (a telemetry event's `type`, ten values) are summed under `[FunctionName]`: each
/// value would cost a line per flush and a billed custom metric, for a debugging detail
/// that OTLP and `/metrics` carry.
const DIMENSIONS: &[&str] = &[
    metrics::OUTCOME,
    metrics::ALGORITHM,
    metrics::REASON,
    metrics::SIGNAL,
    metrics::LISTENER,
];

/// CloudWatch's units (the MetricDatum `Unit` values), the only ones EMF accepts; [`unit`]
/// returns one of them for every definition (tested here and in `tests/emf.rs`).
pub const CLOUDWATCH_UNITS: &[&str] = &[
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// CloudWatch's unit for a [`MetricDef`] unit (UCUM). A unit without a mapping here is a
/// definition bug the tests catch; it falls back to `None`, which CloudWatch accepts.
pub fn unit(ucum: &str) -> &'static str {
    match ucum {
        "s" => "Seconds",
        "ms" => "Milliseconds",
        "By" => "Bytes",
        u if u.starts_with('{') && u.ends_with('}') => "Count",
        _ => "None",
    }
}

/// The EMF documents for `entries`, one JSON object per returned value.
pub fn documents(
    namespace: &str,
    function: &str,
    timestamp_ms: u64,
    entries: &[Entry],
) -> Vec<Value> {
    // One group per combination of dimension labels and values: its documents carry those
    // values as root members, and each of its metrics every dimension set built from those
    // keys. Entries differing only in other labels are merged.
    let mut groups: BTreeMap<Vec<(&str, &str)>, BTreeMap<&str, Entry>> = BTreeMap::new();
    for entry in entries {
        // A zero from `zero_counters` has no label values: it goes under [FunctionName] alone.
        let pairs = entry
            .def
            .labels
            .iter()
            .copied()
            .zip(entry.labels.iter().copied())
            .filter(|(key, _)| DIMENSIONS.contains(key))
            .collect();
        let group = groups.entry(pairs).or_default();
        match group.get_mut(entry.def.name) {
            None => {
                group.insert(entry.def.name, entry.clone());
            }
            Some(merged) => match (&mut merged.value, &entry.value) {
                (Recorded::Sum(a), Recorded::Sum(b)) => *a = a.saturating_add(*b),
                (Recorded::Values(a), Recorded::Values(b)) => a.extend(b),
                (a, b) => *a = b.clone(),
            },
        }
    }
    let mut documents = Vec::new();
    for (pairs, entries) in groups {
        let entries: Vec<Entry> = entries.into_values().collect();
        let mut dimensions = vec![json!([FUNCTION_NAME])];
        dimensions.extend(pairs.iter().map(|(key, _)| json!([FUNCTION_NAME, key])));
        // Round r takes the r-th slice of MAX_VALUES observations of each histogram (and, in
        // round 0, every sum and gauge), so no document names a metric twice.
        let rounds = entries
            .iter()
            .map(|e| match &e.value {
                Recorded::Values(v) => v.len().div_ceil(MAX_VALUES),
                _ => 1,
            })
            .max()
            .unwrap_or(0);
        for round in 0..rounds {
            let members: Vec<(&MetricDef, Value)> = entries
                .iter()
                .filter_map(|e| {
                    let value = match &e.value {
                        Recorded::Sum(sum) => (round == 0).then(|| json!(sum))?,
                        Recorded::Last(last) => (round == 0).then(|| json!(last))?,
                        Recorded::Values(values) => {
                            let chunk = values.chunks(MAX_VALUES).nth(round)?;
                            json!(chunk)
                        }
                    };
                    Some((e.def, value))
                })
                .collect();
            for members in members.chunks(MAX_METRICS) {
                let mut root = Map::new();
                root.insert(FUNCTION_NAME.to_string(), json!(function));
                for (key, value) in &pairs {
                    root.insert((*key).to_string(), json!(value));
                }
                let mut metrics = Vec::new();
                for (def, value) in members {
                    metrics.push(json!({"Name": def.name, "Unit": unit(def.unit)}));
                    root.insert(def.name.to_string(), value.clone());
                }
                root.insert(
                    "_aws".to_string(),
                    json!({
                        "Timestamp": timestamp_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": namespace,
                            "Dimensions": dimensions,
                            "Metrics": metrics,
                        }],
                    }),
                );
                documents.push(Value::Object(root));
            }
        }
    }
    documents
}

/// Lines to write, and who to tell once they are written.
type Batch = (Vec<String>, oneshot::Sender<()>);

/// Writes EMF lines to stdout on a thread of its own, so that a slow or closed stdout never
/// holds a flush: a flush queues its batch or, with the queue full, drops and counts it.
pub struct Writer {
    namespace: String,
    function: String,
    queue: SyncSender<Batch>,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// Starts the thread writing to stdout.
    pub fn start(namespace: String, function: String, metrics: Arc<Metrics>) -> Writer {
        Writer::with_output(std::io::stdout(), namespace, function, metrics)
    }

    /// Starts the thread writing to `output`. A write error (a closed stdout) is counted in
    /// `sidecar.export.failures{signal="emf"}` and the rest of its batch skipped.
    fn with_output(
        mut output: impl std::io::Write + Send + 'static,
        namespace: String,
        function: String,
        metrics: Arc<Metrics>,
    ) -> Writer {
        let (queue, batches) = std::sync::mpsc::sync_channel::<Batch>(QUEUE);
        let thread_metrics = metrics.clone();
        let spawned = std::thread::Builder::new()
            .name("emf-writer".to_string())
            .spawn(move || {
                for (lines, done) in batches {
                    let written = lines
                        .iter()
                        .try_for_each(|line| writeln!(output, "{line}"))
                        .and_then(|()| output.flush());
                    if written.is_err() {
                        thread_metrics.export_failure(Signal::Emf);
                    }
                    let _: Result<(), ()> = done.send(());
                }
            });
        if let Err(e) = spawned {
            // The receiver is dropped with the closure: every batch will count as a failure.
            tracing::warn!(error = %e, "the EMF writer thread could not start");
        }
        Writer {
            namespace,
            function,
            queue,
            metrics,
        }
    }

    /// Turns what the instruments recorded since the last flush into EMF lines and queues
    /// them: each value under the time of what it describes ([`Entry::time_ms`]), else
    /// `timestamp_ms`, the flush's. The receiver resolves once they are written (the
    /// shutdown flush waits on it, bounded, so the last lines are out before the process
    /// exits).
    pub fn flush(&self, timestamp_ms: u64) -> Option<oneshot::Receiver<()>> {
        let (mut entries, overflow) = self.metrics.take_emf();
        // Counted now, emitted with the next flush.
        self.metrics.dropped(Signal::Emf, overflow);
        zero_counters(&mut entries);
        let mut by_time: BTreeMap<u64, Vec<Entry>> = BTreeMap::new();
        for entry in entries {
            let time = entry.time_ms.unwrap_or(timestamp_ms);
            by_time.entry(time).or_default().push(entry);
        }
        let lines: Vec<String> = by_time
            .iter()
            .flat_map(|(time, entries)| documents(&self.namespace, &self.function, *time, entries))
            .map(|document| document.to_string())
            .collect();
        let count = lines.len() as u64;
        let (done, written) = oneshot::channel();
        match self.queue.try_send((lines, done)) {
            Ok(()) => Some(written),
            Err(TrySendError::Full(_)) => {
                self.metrics.dropped(Signal::Emf, count);
                None
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.export_failure(Signal::Emf);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::pending::{MAX_PENDING_VALUES, Pending};
    use crate::metrics::{
        ERRORS, HOLD, INVOCATIONS, METRICS, MetricKind, TOKEN_DURATION, TOKEN_REQUESTS,
    };

    fn directive(doc: &Value) -> &Value {
        &doc["_aws"]["CloudWatchMetrics"][0]
    }

    fn names(doc: &Value) -> Vec<&str> {
        directive(doc)["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn every_definition_has_a_cloudwatch_unit_other_than_none() {
        for def in METRICS {
            let unit = unit(def.unit);
            assert!(CLOUDWATCH_UNITS.contains(&unit), "{}", def.name);
            assert_ne!(
                unit, "None",
                "{}: {} has no CloudWatch unit",
                def.name, def.unit
            );
        }
        assert_eq!(unit("s"), "Seconds");
        assert_eq!(unit("By"), "Bytes");
        assert_eq!(unit("{request}"), "Count");
    }

    #[test]
    fn dimension_sets_are_function_name_and_function_name_with_each_label() {
        let pending = Pending::default();
        pending.record(&TOKEN_REQUESTS, &["ES256", "issued"], 1.0);
        pending.record(&TOKEN_REQUESTS, &["ES256", "issued"], 1.0);
        pending.record(&TOKEN_REQUESTS, &["ES256", "unauthorized"], 1.0);
        pending.record(&ERRORS, &[], 1.0);
        let (entries, overflow) = pending.take();
        assert_eq!(overflow, 0);
        let docs = documents("NS", "orders", 1_700_000_000_000, &entries);
        assert_eq!(docs.len(), 3, "{docs:#?}");
        let issued = docs
            .iter()
            .find(|d| d["outcome"] == "issued")
            .expect("issued document");
        assert_eq!(issued["sidecar.token.requests"], 2);
        assert_eq!(issued["FunctionName"], "orders");
        assert_eq!(issued["algorithm"], "ES256");
        assert_eq!(issued["_aws"]["Timestamp"], 1_700_000_000_000u64);
        assert_eq!(directive(issued)["Namespace"], "NS");
        assert_eq!(
            directive(issued)["Dimensions"],
            json!([
                ["FunctionName"],
                ["FunctionName", "algorithm"],
                ["FunctionName", "outcome"]
            ])
        );
        assert_eq!(
            directive(issued)["Metrics"],
            json!([{"Name": "sidecar.token.requests", "Unit": "Count"}])
        );
        let errors = docs
            .iter()
            .find(|d| d.get("faas.errors").is_some())
            .unwrap();
        assert_eq!(directive(errors)["Dimensions"], json!([["FunctionName"]]));
        assert!(pending.take().0.is_empty(), "taken once");
    }

    #[test]
    fn counters_with_nothing_recorded_are_zero_under_function_name_alone() {
        let pending = Pending::default();
        pending.record(&TOKEN_REQUESTS, &["ES256", "issued"], 1.0);
        pending.record(&HOLD, &[], 0.001);
        let mut entries = pending.take().0;
        zero_counters(&mut entries);
        let docs = documents("NS", "f", 0, &entries);
        let zeros: Vec<&Value> = docs
            .iter()
            .filter(|d| directive(d)["Dimensions"] == json!([["FunctionName"]]))
            .collect();
        assert_eq!(zeros.len(), 1, "{docs:#?}");
        let counters = METRICS
            .iter()
            .filter(|d| matches!(d.kind, MetricKind::Counter))
            .count();
        // Every counter but the one recorded, plus the hold's observation.
        assert_eq!(names(zeros[0]).len(), counters - 1 + 1);
        assert_eq!(zeros[0]["faas.errors"], 0);
        assert_eq!(zeros[0]["sidecar.export.failures"], 0);
        assert!(zeros[0].get("sidecar.token.requests").is_none());
        assert!(
            zeros[0].get("signal").is_none(),
            "no label member on a zero"
        );
        assert!(
            zeros[0].get("faas.mem_usage").is_none(),
            "no zero for a histogram"
        );
    }

    #[test]
    fn labels_that_are_not_dimensions_are_summed_under_function_name() {
        let pending = Pending::default();
        pending.record(&crate::metrics::TELEMETRY_EVENTS, &["platform.start"], 2.0);
        pending.record(&crate::metrics::TELEMETRY_EVENTS, &["function"], 5.0);
        pending.record(&ERRORS, &[], 1.0);
        let docs = documents("NS", "f", 0, &pending.take().0);
        assert_eq!(docs.len(), 1, "{docs:#?}");
        assert_eq!(docs[0]["sidecar.telemetry.events"], 7);
        assert_eq!(docs[0]["faas.errors"], 1);
        assert!(docs[0].get("type").is_none());
        assert_eq!(directive(&docs[0])["Dimensions"], json!([["FunctionName"]]));
    }

    /// An output that fails every write, like a closed stdout (EPIPE).
    struct Closed;

    impl std::io::Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// An output that blocks every write until the test ends, like a stdout nobody reads.
    struct Stuck(std::sync::mpsc::Receiver<()>);

    impl std::io::Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn writer(
        output: impl std::io::Write + Send + 'static,
    ) -> (Writer, crate::export::MetricsSource) {
        let source =
            crate::export::MetricsSource::new(opentelemetry_sdk::Resource::builder_empty().build());
        let metrics = Arc::new(Metrics::with_emf(&source.meter()));
        metrics.hold(0.001);
        let writer = Writer::with_output(output, "NS".into(), "f".into(), metrics);
        (writer, source)
    }

    #[test]
    fn a_closed_stdout_is_counted_and_the_flush_goes_on() {
        let (writer, source) = writer(Closed);
        for _ in 0..2 {
            let written = writer.flush(1).expect("queued");
            written.blocking_recv().expect("the writer answers");
        }
        let rendered = crate::metrics::testing::render(&source);
        assert!(
            rendered.contains("sidecar.export.failures{signal=emf} = 2"),
            "{rendered}"
        );
    }

    #[test]
    fn a_stuck_stdout_never_holds_a_flush_and_what_cannot_queue_is_counted() {
        let (release, stuck) = std::sync::mpsc::channel();
        let (writer, source) = writer(Stuck(stuck));
        // One batch in the writer's hands, QUEUE waiting: the rest is dropped at once.
        let queued = (0..QUEUE + 5)
            .filter_map(|i| writer.flush(i as u64))
            .count();
        assert!(queued <= QUEUE + 1, "{queued}");
        let rendered = crate::metrics::testing::render(&source);
        assert!(
            rendered.contains("sidecar.export.dropped_items{signal=emf}"),
            "{rendered}"
        );
        drop(release);
    }

    /// An output the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Two invocations an hour apart, flushed together later still: each one's figures carry
    /// its own time; the sidecar's own counts and the zeros, the flush's.
    #[test]
    fn each_value_carries_the_time_of_what_it_describes() {
        use crate::metrics::pending::stamped;
        use std::time::{Duration, UNIX_EPOCH};
        let source =
            crate::export::MetricsSource::new(opentelemetry_sdk::Resource::builder_empty().build());
        let metrics = Arc::new(Metrics::with_emf(&source.meter()));
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let (first, second, flushed) = (1_700_000_000_123, 1_700_003_600_456, 1_700_007_200_000);
        stamped(at(first), || {
            metrics.invocation(crate::events::Status::Success, Some(0.02));
            // Within the same second: the same document, at the second's first stamp.
            stamped(at(first + 500), || metrics.hold(0.001));
            metrics.invocation(crate::events::Status::Success, Some(0.03));
        });
        stamped(at(second), || {
            metrics.invocation(crate::events::Status::Error, Some(0.5));
        });
        metrics.export_failure(Signal::Traces);
        let output = Captured::default();
        let writer = Writer::with_output(output.clone(), "NS".into(), "f".into(), metrics);
        writer.flush(flushed).unwrap().blocking_recv().unwrap();
        let text = String::from_utf8(output.0.lock().unwrap().clone()).unwrap();
        let docs: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let time_of = |doc: &Value| doc["_aws"]["Timestamp"].as_u64().unwrap();
        let times_of = |name: &str| -> Vec<(u64, Value)> {
            let mut found: Vec<(u64, Value)> = docs
                .iter()
                .filter(|d| d.get(name).is_some())
                .map(|d| (time_of(d), d[name].clone()))
                .collect();
            found.sort_by_key(|(t, _)| *t);
            found
        };
        // Successful invocations only: the second is an error (faas.errors).
        assert_eq!(times_of("faas.invocations"), [(first, json!(2))], "{text}");
        assert_eq!(times_of("sidecar.hold"), [(first, json!([0.001]))]);
        assert_eq!(times_of("faas.errors"), [(second, json!(1))]);
        assert_eq!(times_of("sidecar.export.failures"), [(flushed, json!(1))]);
        // Counters with nothing recorded get their zero at the flush's time.
        assert_eq!(times_of("sidecar.token.requests"), [(flushed, json!(0))]);
    }

    #[test]
    fn more_than_100_values_are_split_over_documents() {
        let pending = Pending::default();
        for i in 0..250 {
            pending.record(&HOLD, &[], f64::from(i) / 1e3);
        }
        pending.record(&ERRORS, &[], 3.0);
        let docs = documents("NS", "f", 0, &pending.take().0);
        assert_eq!(docs.len(), 3);
        let lens: Vec<usize> = docs
            .iter()
            .map(|d| d["sidecar.hold"].as_array().unwrap().len())
            .collect();
        assert_eq!(lens, [100, 100, 50]);
        // The sum appears once, not in every slice.
        let errors: Vec<&Value> = docs.iter().filter_map(|d| d.get("faas.errors")).collect();
        assert_eq!(errors, [&json!(3)]);
        for doc in &docs {
            let listed = names(doc);
            assert!(listed.iter().all(|n| doc.get(*n).is_some()));
            let hold = directive(doc)["Metrics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["Name"] == "sidecar.hold")
                .unwrap();
            assert_eq!(hold["Unit"], "Seconds");
        }
    }

    #[test]
    fn more_than_100_metrics_are_split_over_documents() {
        // The table has fewer than 100 metrics: 150 made-up ones sharing no labels.
        let defs: Vec<&'static MetricDef> = (0..150)
            .map(|i| {
                &*Box::leak(Box::new(MetricDef {
                    name: Box::leak(format!("m{i}").into_boxed_str()),
                    labels: &[],
                    ..INVOCATIONS
                }))
            })
            .collect();
        let entries: Vec<Entry> = defs
            .iter()
            .map(|def| Entry {
                def,
                labels: vec![],
                value: Recorded::Sum(1),
                time_ms: None,
            })
            .collect();
        let docs = documents("NS", "f", 0, &entries);
        let counts: Vec<usize> = docs.iter().map(|d| names(d).len()).collect();
        assert_eq!(counts, [100, 50]);
        let mut all: Vec<&str> = docs.iter().flat_map(names).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 150);
    }

    #[test]
    fn pending_observations_are_bounded_and_the_overflow_counted() {
        let pending = Pending::default();
        for _ in 0..MAX_PENDING_VALUES + 7 {
            pending.record(&TOKEN_DURATION, &["ES256"], 0.001);
        }
        let (entries, overflow) = pending.take();
        assert_eq!(overflow, 7);
        assert_eq!(
            entries[0].value,
            Recorded::Values(vec![0.001; MAX_PENDING_VALUES])
        );
        // The bound is per flush period.
        pending.record(&TOKEN_DURATION, &["ES256"], 0.001);
        let (entries, overflow) = pending.take();
        assert_eq!(overflow, 0);
        assert_eq!(entries[0].value, Recorded::Values(vec![0.001]));
    }
}
