//! Every metric the sidecar emits, recorded once into every output.
//!
//! [`table`] defines each metric once ([`METRICS`]). [`Metrics`] builds from it, for each
//! definition, one `Instrument` holding both live forms of the metric: the OTel instrument
//! (exported over OTLP) and the Prometheus family (served on `/metrics`, named by
//! [`prometheus_name`]); every recording method feeds both through it, so the two outputs
//! cannot disagree and no caller records anything twice. With `SIDECAR_EMF=on` the same
//! methods also add their values to a [`pending::Pending`] store, which `export::emf` turns
//! into CloudWatch Embedded Metric Format documents (the third output, under the same dotted
//! names).
//!
//! Architecture invariant: label values are always from small closed sets (status,
//! event type, algorithm, outcome, signal); no request id, token or claim ever becomes
//! a label.

pub mod pending;
pub mod table;

pub use table::*;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};
use prometheus::core::{MetricVec, MetricVecBuilder};
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use std::sync::Arc;

use crate::events::Status;
use crate::records::TokenRecord;
use pending::{Entry, Pending};

/// One [`MetricDef`] in both live forms: `otel`, read by the OTLP exporter, and `prom`, the
/// Prometheus family served on `/metrics`. Recording goes through its methods only, which
/// feed both from the same values, so the two outputs always agree. (A Prometheus family
/// refuses only a label count other than its definition's, a bug the debug assertion in
/// [`Instrument::attributes`] catches in tests; like the OTel side, recording never panics.)
#[derive(Debug, Clone)]
struct Instrument<O, P> {
    def: &'static MetricDef,
    otel: O,
    prom: P,
    /// The EMF output's pending values, when `SIDECAR_EMF=on`.
    emf: Option<Arc<Pending>>,
}

impl Instrument<Counter<u64>, IntCounterVec> {
    fn counter(out: &Outputs, def: &'static MetricDef) -> Self {
        debug_assert!(matches!(def.kind, MetricKind::Counter), "{}", def.name);
        let otel = out
            .meter
            .u64_counter(def.name)
            .with_unit(def.unit)
            .with_description(def.description)
            .build();
        let prom = IntCounterVec::new(Opts::new(prometheus_name(def), def.description), def.labels)
            .inspect(|family| create_zero_series(def, family));
        Instrument::register(out, def, otel, prom)
    }

    fn add<const N: usize>(&self, value: u64, values: [&'static str; N]) {
        self.otel.add(value, &self.attributes(values));
        if let Ok(series) = self.prom.get_metric_with_label_values(&values) {
            series.inc_by(value);
        }
        self.emf(value as f64, &values);
    }
}

impl Instrument<Histogram<f64>, HistogramVec> {
    fn histogram(out: &Outputs, def: &'static MetricDef) -> Self {
        let buckets = match def.kind {
            MetricKind::Histogram { buckets } => buckets,
            other => unreachable!("{} is a {other:?}, not a histogram", def.name),
        };
        let otel = out
            .meter
            .f64_histogram(def.name)
            .with_unit(def.unit)
            .with_description(def.description)
            .with_boundaries(buckets.to_vec())
            .build();
        let prom = HistogramVec::new(
            HistogramOpts::new(prometheus_name(def), def.description).buckets(buckets.to_vec()),
            def.labels,
        )
        .inspect(|family| create_zero_series(def, family));
        Instrument::register(out, def, otel, prom)
    }

    fn record<const N: usize>(&self, value: f64, values: [&'static str; N]) {
        self.otel.record(value, &self.attributes(values));
        if let Ok(series) = self.prom.get_metric_with_label_values(&values) {
            series.observe(value);
        }
        self.emf(value, &values);
    }
}

impl Instrument<Gauge<f64>, GaugeVec> {
    fn gauge(out: &Outputs, def: &'static MetricDef) -> Self {
        debug_assert!(matches!(def.kind, MetricKind::Gauge), "{}", def.name);
        let otel = out
            .meter
            .f64_gauge(def.name)
            .with_unit(def.unit)
            .with_description(def.description)
            .build();
        let prom = GaugeVec::new(Opts::new(prometheus_name(def), def.description), def.labels);
        Instrument::register(out, def, otel, prom)
    }

    fn set<const N: usize>(&self, value: f64, values: [&'static str; N]) {
        self.otel.record(value, &self.attributes(values));
        if let Ok(series) = self.prom.get_metric_with_label_values(&values) {
            series.set(value);
        }
        self.emf(value, &values);
    }
}

/// Creates, at zero, the series [`table::zero_series`] lists for `def` (the one series of an
/// unlabelled counter or histogram; every closed-set combination of a labelled counter), so
/// a scrape shows `faas_errors_total 0` before the first error instead of nothing. The
/// OTLP side is left alone: it reports what was recorded.
fn create_zero_series<B: MetricVecBuilder>(def: &MetricDef, family: &MetricVec<B>) {
    for values in table::zero_series(def) {
        let _ = family.get_metric_with_label_values(&values);
    }
}

impl<O, P> Instrument<O, P>
where
    P: prometheus::core::Collector + Clone + 'static,
{
    /// Adds the Prometheus family to `registry`. The family can only be refused for a
    /// malformed or duplicate name or label key, which [`METRICS`] never has (the signals
    /// tests build every instrument): a static-definition bug, not a runtime condition.
    fn register(
        out: &Outputs,
        def: &'static MetricDef,
        otel: O,
        prom: prometheus::Result<P>,
    ) -> Self {
        let prom = prom
            .and_then(|prom| out.registry.register(Box::new(prom.clone())).map(|()| prom))
            .unwrap_or_else(|e| panic!("{}: not a valid Prometheus family: {e}", def.name));
        Instrument {
            def,
            otel,
            prom,
            emf: out.emf.clone(),
        }
    }

    /// Hands the recorded value to the EMF output, when it is on.
    fn emf(&self, value: f64, values: &[&'static str]) {
        if let Some(pending) = &self.emf {
            pending.record(self.def, values, value);
        }
    }

    /// OTel attributes from the definition's label keys and the given values, so the keys
    /// are spelled only in [`METRICS`]; the Prometheus family takes the values positionally
    /// against the same keys.
    fn attributes<const N: usize>(&self, values: [&'static str; N]) -> [KeyValue; N] {
        debug_assert_eq!(self.def.labels.len(), N, "{}", self.def.name);
        std::array::from_fn(|i| KeyValue::new(self.def.labels[i], values[i]))
    }
}

/// Where the instruments being built write: the OTel meter, the Prometheus registry and, when
/// EMF is on, its pending set.
struct Outputs<'a> {
    meter: &'a Meter,
    registry: Registry,
    emf: Option<Arc<Pending>>,
}

/// Every metric of [`METRICS`] as an `Instrument`, with one typed recording method per
/// metric so callers cannot mistype a label key. Cloning is cheap (instruments and the
/// registry are handles), so the exporter and the deriver can each hold one.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    emf: Option<Arc<Pending>>,
    invocations: Instrument<Counter<u64>, IntCounterVec>,
    errors: Instrument<Counter<u64>, IntCounterVec>,
    timeouts: Instrument<Counter<u64>, IntCounterVec>,
    invoke_duration: Instrument<Histogram<f64>, HistogramVec>,
    init_duration: Instrument<Histogram<f64>, HistogramVec>,
    coldstarts: Instrument<Counter<u64>, IntCounterVec>,
    mem_usage: Instrument<Histogram<f64>, HistogramVec>,
    billed_duration: Instrument<Histogram<f64>, HistogramVec>,
    memory_size: Instrument<Gauge<f64>, GaugeVec>,
    restore_duration: Instrument<Histogram<f64>, HistogramVec>,
    produced_bytes: Instrument<Counter<u64>, IntCounterVec>,
    telemetry_events: Instrument<Counter<u64>, IntCounterVec>,
    telemetry_unknown: Instrument<Counter<u64>, IntCounterVec>,
    logs_dropped: Instrument<Counter<u64>, IntCounterVec>,
    evicted: Instrument<Counter<u64>, IntCounterVec>,
    export_failures: Instrument<Counter<u64>, IntCounterVec>,
    export_dropped: Instrument<Counter<u64>, IntCounterVec>,
    export_abandoned: Instrument<Counter<u64>, IntCounterVec>,
    hold: Instrument<Histogram<f64>, HistogramVec>,
    end_missed: Instrument<Counter<u64>, IntCounterVec>,
    token_requests: Instrument<Counter<u64>, IntCounterVec>,
    token_duration: Instrument<Histogram<f64>, HistogramVec>,
    token_unattributed: Instrument<Counter<u64>, IntCounterVec>,
    connections_refused: Instrument<Counter<u64>, IntCounterVec>,
    key_failures: Instrument<Counter<u64>, IntCounterVec>,
    receiver_items: Instrument<Counter<u64>, IntCounterVec>,
    receiver_refused: Instrument<Counter<u64>, IntCounterVec>,
}

impl Metrics {
    /// Builds every instrument of [`METRICS`]: the OTel side on `meter`, the Prometheus side
    /// in a registry of its own, read by [`Metrics::prometheus_text`].
    pub fn new(meter: &Meter) -> Self {
        Metrics::build(meter, None)
    }

    /// As [`Metrics::new`], and every recording also feeds the EMF output, read by
    /// [`Metrics::take_emf`].
    pub fn with_emf(meter: &Meter) -> Self {
        Metrics::build(meter, Some(Arc::default()))
    }

    fn build(meter: &Meter, emf: Option<Arc<Pending>>) -> Self {
        let out = Outputs {
            meter,
            registry: Registry::new(),
            emf,
        };
        let counter = |def| Instrument::counter(&out, def);
        let histogram = |def| Instrument::histogram(&out, def);
        Metrics {
            invocations: counter(&INVOCATIONS),
            errors: counter(&ERRORS),
            timeouts: counter(&TIMEOUTS),
            invoke_duration: histogram(&INVOKE_DURATION),
            init_duration: histogram(&INIT_DURATION),
            coldstarts: counter(&COLDSTARTS),
            mem_usage: histogram(&MEM_USAGE),
            billed_duration: histogram(&BILLED_DURATION),
            memory_size: Instrument::gauge(&out, &MEMORY_SIZE),
            restore_duration: histogram(&RESTORE_DURATION),
            produced_bytes: counter(&PRODUCED_BYTES),
            telemetry_events: counter(&TELEMETRY_EVENTS),
            telemetry_unknown: counter(&TELEMETRY_UNKNOWN),
            logs_dropped: counter(&LOGS_DROPPED),
            evicted: counter(&EVICTED),
            export_failures: counter(&EXPORT_FAILURES),
            export_dropped: counter(&EXPORT_DROPPED),
            export_abandoned: counter(&EXPORT_ABANDONED),
            hold: histogram(&HOLD),
            end_missed: counter(&END_MISSED),
            token_requests: counter(&TOKEN_REQUESTS),
            token_duration: histogram(&TOKEN_DURATION),
            token_unattributed: counter(&TOKEN_UNATTRIBUTED),
            connections_refused: counter(&CONNECTIONS_REFUSED),
            key_failures: counter(&KEY_FAILURES),
            receiver_items: counter(&RECEIVER_ITEMS),
            receiver_refused: counter(&RECEIVER_REFUSED),
            registry: out.registry.clone(),
            emf: out.emf.clone(),
        }
    }

    /// What every instrument recorded since the last call, for the EMF output (nothing when
    /// it is off), and how many observations its bound dropped meanwhile.
    pub fn take_emf(&self) -> (Vec<Entry>, u64) {
        self.emf
            .as_ref()
            .map_or_else(|| (Vec::new(), 0), |pending| pending.take())
    }

    /// Every metric in the Prometheus text format (version 0.0.4), each family with its HELP
    /// (the definition's description) and TYPE.
    pub fn prometheus_text(&self) -> Result<String, prometheus::Error> {
        let mut text = String::new();
        prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text)?;
        Ok(text)
    }

    /// An invocation finished (platform.runtimeDone): counts it as a success
    /// (`faas.invocations`, which the FaaS semantic conventions define as successful
    /// invocations), an error (`error`, `failure`, `unknown`: `faas.errors`) or a timeout
    /// (`faas.timeouts`), and records its runtime duration.
    pub fn invocation(&self, status: Status, seconds: Option<f64>) {
        match status {
            Status::Success => self.invocations.add(1, []),
            Status::Timeout => self.timeouts.add(1, []),
            Status::Error | Status::Failure | Status::Unknown => self.errors.add(1, []),
        }
        if let Some(seconds) = seconds {
            self.invoke_duration.record(seconds, []);
        }
    }

    /// Response bytes an invocation produced.
    pub fn produced_bytes(&self, bytes: u64) {
        self.produced_bytes.add(bytes, []);
    }

    /// The platform.report figures of one invocation.
    /// Each figure only when the report has it (Managed Instances may leave them out).
    pub fn report(
        &self,
        billed_seconds: Option<f64>,
        max_memory_bytes: Option<f64>,
        memory_size_bytes: Option<f64>,
    ) {
        if let Some(seconds) = billed_seconds {
            self.billed_duration.record(seconds, []);
        }
        if let Some(bytes) = max_memory_bytes {
            self.mem_usage.record(bytes, []);
        }
        if let Some(bytes) = memory_size_bytes {
            self.memory_size.set(bytes, []);
        }
    }

    /// An environment finished its init phase: its duration, and one cold start when the
    /// init was one (on demand: [`crate::function::FunctionInfo::init_is_cold_start`]).
    pub fn init(&self, seconds: f64, cold_start: bool) {
        if cold_start {
            self.coldstarts.add(1, []);
        }
        self.init_duration.record(seconds, []);
    }

    /// An environment was restored from a SnapStart snapshot: one cold start and its
    /// restore duration (when reported).
    pub fn restore(&self, seconds: Option<f64>) {
        self.coldstarts.add(1, []);
        if let Some(seconds) = seconds {
            self.restore_duration.record(seconds, []);
        }
    }

    /// One telemetry event of a known type was received.
    pub fn telemetry_event(&self, event_type: &'static str) {
        self.telemetry_events.add(1, [event_type]);
    }

    /// Telemetry elements skipped while parsing a batch.
    pub fn skipped_events(&self, reason: SkipReason, count: u64) {
        if count > 0 {
            self.telemetry_unknown.add(count, [reason.as_str()]);
        }
    }

    /// Lambda reported dropping this many telemetry records (platform.logsDropped).
    pub fn logs_dropped(&self, records: u64) {
        self.logs_dropped.add(records, []);
    }

    /// An unfinished invocation was evicted from the bounded derivation state.
    pub fn evicted(&self) {
        self.evicted.add(1, []);
    }

    /// An OTLP export of `signal` failed or timed out.
    pub fn export_failure(&self, signal: Signal) {
        self.export_failures.add(1, [signal.as_str()]);
    }

    /// `items` of `signal` were dropped because a bounded buffer was full.
    pub fn dropped(&self, signal: Signal, items: u64) {
        if items > 0 {
            self.export_dropped.add(items, [signal.as_str()]);
        }
    }

    /// The exporter stopped trying to deliver `items` of `signal`.
    pub fn abandoned(&self, signal: Signal, reason: Abandoned, items: u64) {
        if items > 0 {
            self.export_abandoned
                .add(items, [signal.as_str(), reason.as_str()]);
        }
    }

    /// The post-runtime hold of one invocation.
    pub fn hold(&self, seconds: f64) {
        self.hold.record(seconds, []);
    }

    /// An end flush gave up waiting for its invocation's `platform.runtimeDone`.
    pub fn end_missed(&self) {
        self.end_missed.add(1, []);
    }

    /// One finished token request.
    pub fn token(&self, token: &TokenRecord) {
        self.token_requests
            .add(1, [token.algorithm, token.outcome.as_str()]);
        self.token_duration
            .record(token.duration.as_secs_f64(), [token.algorithm]);
    }

    /// A token span was left without an invocation.
    pub fn token_unattributed(&self, reason: Unattributed) {
        self.token_unattributed.add(1, [reason.as_str()]);
    }

    /// A key source call failed after start.
    pub fn key_failure(&self, operation: KeyOperation) {
        self.key_failures.add(1, [operation.as_str()]);
    }

    /// A connection to `listener` was refused or closed by a limit.
    pub fn received(&self, signal: Signal, outcome: Received, items: u64) {
        if items > 0 {
            self.receiver_items
                .add(items, [signal.as_str(), outcome.as_str()]);
        }
    }

    pub fn receiver_refused(&self, signal: Signal, reason: RequestRefusal) {
        self.receiver_refused
            .add(1, [signal.as_str(), reason.as_str()]);
    }

    pub fn connection_refused(&self, listener: Listener, reason: Refusal) {
        self.connections_refused
            .add(1, [listener.as_str(), reason.as_str()]);
    }
}

/// Reading metrics back in tests, through the same [`crate::export::MetricsSource`] the
/// exporter uses.
#[cfg(test)]
pub(crate) mod testing {
    use std::fmt::Display;

    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};

    use super::Metrics;
    use crate::export::MetricsSource;

    pub(crate) fn source() -> (MetricsSource, Metrics) {
        let source = MetricsSource::new(Resource::builder_empty().build());
        let metrics = Metrics::new(&source.meter());
        (source, metrics)
    }

    /// Every data point as one sorted line: `name{k=v} = value` for sums and gauges,
    /// `name{k=v} count=N sum=S` for histograms (values rounded to µ-units).
    pub(crate) fn render(source: &MetricsSource) -> String {
        let collected = source.collect().unwrap();
        let mut lines = Vec::new();
        let round = |v: f64| (v * 1e6).round() / 1e6;
        for metric in collected.scope_metrics().flat_map(|scope| scope.metrics()) {
            let name = metric.name();
            let line = |attrs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>,
                        value: &dyn Display| {
                let mut attrs: Vec<String> =
                    attrs.map(|kv| format!("{}={}", kv.key, kv.value)).collect();
                attrs.sort();
                let attrs = if attrs.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", attrs.join(","))
                };
                format!("{name}{attrs} {value}")
            };
            match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                    lines.extend(
                        sum.data_points()
                            .map(|p| line(&mut p.attributes(), &format!("= {}", p.value()))),
                    );
                }
                AggregatedMetrics::F64(MetricData::Gauge(gauge)) => {
                    lines.extend(
                        gauge
                            .data_points()
                            .map(|p| line(&mut p.attributes(), &format!("= {}", p.value()))),
                    );
                }
                AggregatedMetrics::F64(MetricData::Histogram(histogram)) => {
                    lines.extend(histogram.data_points().map(|p| {
                        line(
                            &mut p.attributes(),
                            &format!("count={} sum={}", p.count(), round(p.sum())),
                        )
                    }));
                }
                other => panic!("{name}: unexpected data {other:?}"),
            }
        }
        lines.sort();
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{HttpMethod, TokenOutcome};

    #[test]
    fn exporter_health_metrics() {
        let (source, metrics) = testing::source();
        metrics.export_failure(Signal::Traces);
        metrics.export_failure(Signal::Traces);
        metrics.export_failure(Signal::Metrics);
        metrics.dropped(Signal::Traces, 7);
        metrics.dropped(Signal::Records, 0);
        metrics.dropped(Signal::Records, 1);
        metrics.abandoned(Signal::Traces, Abandoned::Retries, 0);
        metrics.abandoned(Signal::Traces, Abandoned::Unanswered, 3);
        assert_eq!(
            testing::render(&source),
            "sidecar.export.abandoned_items{reason=unanswered,signal=traces} = 3
sidecar.export.dropped_items{signal=records} = 1
sidecar.export.dropped_items{signal=traces} = 7
sidecar.export.failures{signal=metrics} = 1
sidecar.export.failures{signal=traces} = 2"
        );
    }

    #[test]
    fn definitions_are_unique_and_well_formed() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "duplicate metric name");
        for def in METRICS {
            assert!(
                unit_word(def.unit).is_some()
                    || (def.unit.starts_with('{') && def.unit.ends_with('}')),
                "{}: unit {} has no Prometheus word in unit_word",
                def.name,
                def.unit
            );
            for label in def.labels {
                // Valid Prometheus label names as they are: the OTLP translation leaves them
                // unchanged, so both paths carry the same label.
                assert!(
                    !label.starts_with("__")
                        && label.starts_with(|c: char| c.is_ascii_lowercase())
                        && label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{}: label {label}",
                    def.name
                );
            }
            assert!(!def.description.is_empty(), "{}", def.name);
            if let MetricKind::Histogram { buckets } = def.kind {
                assert!(
                    buckets.windows(2).all(|w| w[0] < w[1]),
                    "{}: buckets not increasing",
                    def.name
                );
            }
        }
    }

    /// Every definition's Prometheus name, written out by hand from otlptranslator's rules:
    /// a new metric fails here until its name is confirmed.
    #[test]
    fn prometheus_names_are_those_of_the_otlp_translation() {
        let expected = [
            ("faas.invocations", "faas_invocations_total"),
            ("faas.errors", "faas_errors_total"),
            ("faas.timeouts", "faas_timeouts_total"),
            ("faas.invoke_duration", "faas_invoke_duration_seconds"),
            ("faas.init_duration", "faas_init_duration_seconds"),
            ("faas.coldstarts", "faas_coldstarts_total"),
            ("faas.mem_usage", "faas_mem_usage_bytes"),
            (
                "aws.lambda.billed_duration",
                "aws_lambda_billed_duration_seconds",
            ),
            ("aws.lambda.memory_size", "aws_lambda_memory_size_bytes"),
            (
                "aws.lambda.restore_duration",
                "aws_lambda_restore_duration_seconds",
            ),
            // The unit's word is already in the name: not appended twice.
            (
                "aws.lambda.produced_bytes",
                "aws_lambda_produced_bytes_total",
            ),
            ("sidecar.telemetry.events", "sidecar_telemetry_events_total"),
            (
                "sidecar.telemetry.unknown_events",
                "sidecar_telemetry_unknown_events_total",
            ),
            (
                "sidecar.telemetry.logs_dropped",
                "sidecar_telemetry_logs_dropped_total",
            ),
            (
                "sidecar.telemetry.evicted",
                "sidecar_telemetry_evicted_total",
            ),
            ("sidecar.export.failures", "sidecar_export_failures_total"),
            (
                "sidecar.export.dropped_items",
                "sidecar_export_dropped_items_total",
            ),
            (
                "sidecar.export.abandoned_items",
                "sidecar_export_abandoned_items_total",
            ),
            ("sidecar.hold", "sidecar_hold_seconds"),
            ("sidecar.flush.end_missed", "sidecar_flush_end_missed_total"),
            ("sidecar.token.requests", "sidecar_token_requests_total"),
            ("sidecar.token.duration", "sidecar_token_duration_seconds"),
            (
                "sidecar.token.unattributed",
                "sidecar_token_unattributed_total",
            ),
            (
                "sidecar.connections.refused",
                "sidecar_connections_refused_total",
            ),
            ("sidecar.keys.failures", "sidecar_keys_failures_total"),
            ("sidecar.receiver.items", "sidecar_receiver_items_total"),
            (
                "sidecar.receiver.refused_requests",
                "sidecar_receiver_refused_requests_total",
            ),
        ];
        let mut defined: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        let mut listed: Vec<&str> = expected.iter().map(|(otel, _)| *otel).collect();
        defined.sort_unstable();
        listed.sort_unstable();
        assert_eq!(
            defined, listed,
            "every metric, and only those, is listed here"
        );
        for (otel, prom) in expected {
            let def = METRICS.iter().find(|m| m.name == otel).unwrap();
            assert_eq!(prometheus_name(def), prom, "{otel} ({})", def.unit);
        }
        // Rules no definition exercises yet.
        let def = |name, unit, kind| MetricDef {
            name,
            unit,
            description: "-",
            kind,
            labels: &[],
        };
        let cases = [
            (
                def("a.latency", "ms", MetricKind::Gauge),
                "a_latency_milliseconds",
            ),
            (
                def("a.requests_total", "{request}", MetricKind::Counter),
                "a_requests_total",
            ),
            (
                def("a.total.size", "By", MetricKind::Counter),
                "a_size_bytes_total",
            ),
            (def("a..b__c", "s", MetricKind::Gauge), "a_b_c_seconds"),
        ];
        for (def, prom) in cases {
            assert_eq!(prometheus_name(&def), prom, "{}", def.name);
        }
    }

    /// The Prometheus samples of `metrics`, `name{k=v,...}` (labels sorted) to value, without
    /// the `_bucket` series and without zeros (the families' pre-created zero series).
    fn prometheus_samples(metrics: &Metrics) -> Vec<String> {
        let text = metrics.prometheus_text().unwrap();
        let mut samples: Vec<String> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let value: f64 = value.parse().unwrap();
                let (name, labels) = series.split_once('{').unwrap_or((series, ""));
                let mut labels: Vec<String> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|l| l.replace('"', ""))
                    .collect();
                labels.sort();
                (value != 0.0 && !name.ends_with("_bucket"))
                    .then(|| format!("{name}{{{}}} {}", labels.join(","), round(value)))
            })
            .collect();
        samples.sort();
        samples
    }

    fn round(v: f64) -> f64 {
        (v * 1e6).round() / 1e6
    }

    /// Each recording method feeds both outputs: every OTel data point (as
    /// [`testing::render`] prints it) has the same value in the Prometheus text under the
    /// translated name, and the Prometheus text has nothing else.
    #[test]
    fn every_recording_reaches_otel_and_prometheus_alike() {
        let (source, metrics) = testing::source();
        let token = |outcome, millis| TokenRecord {
            start: std::time::SystemTime::UNIX_EPOCH,
            duration: std::time::Duration::from_millis(millis),
            algorithm: "ES256",
            method: HttpMethod::Known("GET"),
            outcome,
            traceparent: None,
            request_id: None,
            connection: Default::default(),
        };
        metrics.invocation(Status::Success, Some(0.02));
        metrics.invocation(Status::Success, Some(0.5));
        metrics.invocation(Status::Timeout, None);
        metrics.invocation(Status::Error, Some(1.25));
        metrics.produced_bytes(100);
        metrics.report(Some(0.1), Some(64.0 * MIB), Some(128.0 * MIB));
        metrics.init(0.3, true);
        metrics.restore(Some(0.2));
        metrics.telemetry_event("platform.start");
        metrics.telemetry_event("platform.start");
        metrics.telemetry_event("function");
        metrics.skipped_events(SkipReason::UnknownType, 2);
        metrics.logs_dropped(3);
        metrics.evicted();
        metrics.export_failure(Signal::Traces);
        metrics.dropped(Signal::Records, 4);
        metrics.hold(0.001);
        metrics.end_missed();
        metrics.token(&token(TokenOutcome::Issued, 2));
        metrics.token(&token(TokenOutcome::Issued, 3));
        metrics.token(&token(TokenOutcome::Rejected { status: 401 }, 1));
        metrics.connection_refused(Listener::Token, Refusal::Evicted);
        metrics.connection_refused(Listener::Telemetry, Refusal::HeaderTimeout);

        let mut from_otel: Vec<String> = testing::render(&source)
            .lines()
            .flat_map(|line| {
                let (series, value) = line.split_once(' ').unwrap();
                let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
                let def = METRICS.iter().find(|m| m.name == name).unwrap();
                let prom = prometheus_name(def);
                let labels = labels.trim_end_matches('}');
                match value.strip_prefix("= ") {
                    Some(value) => vec![format!("{prom}{{{labels}}} {value}")],
                    None => {
                        let (count, sum) = value.split_once(' ').unwrap();
                        vec![
                            format!("{prom}_count{{{labels}}} {}", &count["count=".len()..]),
                            format!("{prom}_sum{{{labels}}} {}", &sum["sum=".len()..]),
                        ]
                    }
                }
            })
            .collect();
        from_otel.sort();
        assert_eq!(prometheus_samples(&metrics), from_otel);
        assert!(from_otel.len() > METRICS.len(), "every metric recorded");
    }

    /// With EMF on, each recording method feeds EMF too, with the same values: per metric and
    /// label set, the EMF sum equals the OTel sum, and the EMF observations have the OTel
    /// histogram's count and sum.
    #[test]
    fn every_recording_reaches_emf_alike() {
        let source =
            crate::export::MetricsSource::new(opentelemetry_sdk::Resource::builder_empty().build());
        let metrics = Metrics::with_emf(&source.meter());
        metrics.invocation(Status::Success, Some(0.02));
        metrics.invocation(Status::Error, Some(1.25));
        metrics.invocation(Status::Timeout, None);
        metrics.report(Some(0.1), Some(64.0 * MIB), Some(128.0 * MIB));
        metrics.init(0.3, true);
        metrics.hold(0.001);
        metrics.hold(0.002);
        metrics.token(&TokenRecord {
            start: std::time::SystemTime::UNIX_EPOCH,
            duration: std::time::Duration::from_millis(2),
            algorithm: "ES256",
            method: HttpMethod::Known("POST"),
            outcome: TokenOutcome::Issued,
            traceparent: None,
            request_id: None,
            connection: Default::default(),
        });
        metrics.connection_refused(Listener::Token, Refusal::Evicted);
        let (entries, overflow) = metrics.take_emf();
        assert_eq!(overflow, 0);
        let mut from_emf: Vec<String> = entries
            .iter()
            .map(|e| {
                let mut labels: Vec<String> = e
                    .def
                    .labels
                    .iter()
                    .zip(&e.labels)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                labels.sort();
                let labels = if labels.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", labels.join(","))
                };
                let value = match &e.value {
                    pending::Recorded::Sum(sum) => format!("= {sum}"),
                    pending::Recorded::Last(last) => format!("= {last}"),
                    pending::Recorded::Values(values) => {
                        format!("count={} sum={}", values.len(), round(values.iter().sum()))
                    }
                };
                format!("{}{labels} {value}", e.def.name)
            })
            .collect();
        from_emf.sort();
        assert_eq!(from_emf.join("\n"), testing::render(&source));
        assert!(metrics.take_emf().0.is_empty(), "taken once");
        assert!(Metrics::new(&source.meter()).take_emf().0.is_empty());
    }

    /// Every family carries its definition's description as HELP and its kind as TYPE.
    #[test]
    fn every_family_has_help_and_type_from_its_definition() {
        let (_, metrics) = testing::source();
        metrics.report(Some(0.1), Some(64.0 * MIB), Some(128.0 * MIB));
        metrics.telemetry_event("function");
        metrics.skipped_events(SkipReason::Malformed, 1);
        metrics.export_failure(Signal::Metrics);
        metrics.dropped(Signal::Traces, 1);
        metrics.abandoned(Signal::Logs, Abandoned::Unanswered, 2);
        metrics.invocation(Status::Success, None);
        metrics.token(&TokenRecord {
            start: std::time::SystemTime::UNIX_EPOCH,
            duration: std::time::Duration::from_millis(1),
            algorithm: "HS256",
            method: HttpMethod::Known("POST"),
            outcome: TokenOutcome::Issued,
            traceparent: None,
            request_id: None,
            connection: Default::default(),
        });
        metrics.token_unattributed(Unattributed::Concurrent);
        metrics.connection_refused(Listener::Metrics, Refusal::OverCapacity);
        metrics.key_failure(KeyOperation::Refresh);
        metrics.received(Signal::Traces, Received::Accepted, 1);
        metrics.receiver_refused(Signal::Logs, RequestRefusal::TooLarge);
        let text = metrics.prometheus_text().unwrap();
        for def in METRICS {
            let name = prometheus_name(def);
            let kind = match def.kind {
                MetricKind::Counter => "counter",
                MetricKind::Histogram { .. } => "histogram",
                MetricKind::Gauge => "gauge",
            };
            let header = format!("# HELP {name} {}\n# TYPE {name} {kind}\n", def.description);
            assert!(text.contains(&header), "{header}not in:\n{text}");
        }
    }

    /// A fresh recorder already shows every closed-set series of the labelled counters the
    /// dashboards chart, at 0: the export failures, dropped items, unknown telemetry and
    /// refused connections a healthy run never records.
    #[test]
    fn labelled_counters_exist_at_zero_from_the_start() {
        let (_, metrics) = testing::source();
        let text = metrics.prometheus_text().unwrap();
        for series in [
            r#"sidecar_export_failures_total{signal="traces"} 0"#,
            r#"sidecar_export_failures_total{signal="emf"} 0"#,
            r#"sidecar_export_dropped_items_total{signal="records"} 0"#,
            r#"sidecar_telemetry_unknown_events_total{reason="malformed"} 0"#,
            r#"sidecar_telemetry_unknown_events_total{reason="unknown_type"} 0"#,
            r#"sidecar_connections_refused_total{listener="token",reason="header_timeout"} 0"#,
            r#"sidecar_connections_refused_total{listener="telemetry",reason="over_capacity"} 0"#,
            r#"sidecar_token_unattributed_total{reason="no_invocation"} 0"#,
            r#"sidecar_keys_failures_total{operation="sign"} 0"#,
            "faas_errors_total 0",
        ] {
            assert!(text.contains(series), "{series} not in:\n{text}");
        }
        // Every pre-created series is one of its family's closed set, once.
        for def in METRICS {
            let series = zero_series(def);
            let mut unique = series.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), series.len(), "{}", def.name);
            assert!(series.iter().all(|values| values.len() == def.labels.len()));
        }
    }

    /// The token latency buckets resolve what an HS256 token costs (tens of microseconds):
    /// latencies of 8, 20, 40 and 80 µs land in four different buckets, not all in the first.
    #[test]
    fn token_latency_buckets_resolve_microseconds() {
        let MetricKind::Histogram { buckets } = TOKEN_DURATION.kind else {
            panic!("not a histogram");
        };
        let bucket = |seconds: f64| buckets.iter().position(|le| seconds <= *le);
        let seen: Vec<Option<usize>> = [8e-6, 20e-6, 40e-6, 80e-6].map(bucket).to_vec();
        let mut distinct = seen.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{seen:?} of {buckets:?}");
        assert!(buckets[0] <= 10e-6, "{buckets:?}");
    }
}
