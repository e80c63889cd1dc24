//! Every metric the sidecar emits, defined once.
//!
//! [`METRICS`] is the single source of truth for names, units (UCUM), descriptions,
//! instrument kinds, histogram buckets and label keys. [`Metrics`] builds from it, for
//! each definition, one `Instrument` holding both live forms of the metric: the OTel
//! instrument (exported over OTLP) and the Prometheus family (served on `/metrics`, named
//! by [`prometheus_name`]); every recording method feeds both through it, so the two
//! outputs cannot disagree and no caller records anything twice. With `SIDECAR_EMF=on` the
//! same methods also add their values to `export::emf`'s pending set, the third output
//! (CloudWatch Embedded Metric Format, under the same dotted names). Names follow the OpenTelemetry FaaS
//! semantic conventions where one exists (`faas.*`), `aws.lambda.*` for Lambda-specific
//! figures and `sidecar.*` for the sidecar's own health.
//!
//! Architecture invariant: label values are always from small closed sets (status,
//! event type, algorithm, outcome, signal); no request id, token or claim ever becomes
//! a label.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};
use prometheus::core::{MetricVec, MetricVecBuilder};
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use std::sync::Arc;

use crate::export::emf;
use crate::intake::events::Status;
use crate::records::TokenRecord;

/// One metric's definition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricDef {
    /// OTel instrument name (dotted); exporters derive their own spelling from it
    /// (Prometheus: [`prometheus_name`]).
    pub name: &'static str,
    /// UCUM unit: `s`, `By`, or a `{annotation}` for counts (`unit_word` lists the units
    /// the Prometheus naming knows).
    pub unit: &'static str,
    pub description: &'static str,
    pub kind: MetricKind,
    /// The label (attribute) keys, in the order the recording methods fill them.
    pub labels: &'static [&'static str],
}

/// The instrument a [`MetricDef`] becomes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricKind {
    /// Monotonic `u64` sum.
    Counter,
    /// `f64` distribution with explicit upper bucket boundaries (in the metric's unit).
    Histogram { buckets: &'static [f64] },
    /// Last `f64` value.
    Gauge,
}

/// Latency buckets in seconds, 1 ms to Lambda's 15-minute maximum.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0,
];

/// Fine buckets in seconds for the sidecar's own latencies (token issue, post-runtime hold),
/// which should stay in the sub-millisecond to few-millisecond range.
const FAST_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

const MIB: f64 = 1024.0 * 1024.0;

/// Memory buckets in bytes, spanning Lambda's 128 MiB to 10 GiB configurations.
const MEMORY_BYTES: &[f64] = &[
    32.0 * MIB,
    64.0 * MIB,
    128.0 * MIB,
    256.0 * MIB,
    512.0 * MIB,
    1024.0 * MIB,
    2048.0 * MIB,
    4096.0 * MIB,
    8192.0 * MIB,
    10240.0 * MIB,
];

/// Label key: an invocation's outcome (`success`, `error`, `failure`, `timeout`, `unknown`).
pub const STATUS: &str = "status";
/// Label key: a telemetry event's `type` (`platform.start`, `function`, ...).
pub const EVENT_TYPE: &str = "type";
/// Label key: why an element was skipped (`unknown_type`, `malformed`).
pub const REASON: &str = "reason";
/// Label key: the JWT signing algorithm.
pub const ALGORITHM: &str = "algorithm";
/// Label key: a token request's outcome (`issued`, `rejected`).
pub const OUTCOME: &str = "outcome";
/// Label key: the OTLP signal (`traces`, `metrics`).
pub const SIGNAL: &str = "signal";
/// Label key: which of the sidecar's HTTP listeners (`token`, `telemetry`).
pub const LISTENER: &str = "listener";
/// Label key: what a key source failed to do (`sign`, `refresh`).
pub const OPERATION: &str = "operation";

pub const INVOCATIONS: MetricDef = MetricDef {
    name: "faas.invocations",
    unit: "{invocation}",
    description: "Invocations that reached platform.runtimeDone, by status",
    kind: MetricKind::Counter,
    labels: &[STATUS],
};
pub const ERRORS: MetricDef = MetricDef {
    name: "faas.errors",
    unit: "{error}",
    description: "Invocations that ended in error or failure (timeouts are counted apart)",
    kind: MetricKind::Counter,
    labels: &[],
};
pub const TIMEOUTS: MetricDef = MetricDef {
    name: "faas.timeouts",
    unit: "{timeout}",
    description: "Invocations that hit the function timeout",
    kind: MetricKind::Counter,
    labels: &[],
};
pub const INVOKE_DURATION: MetricDef = MetricDef {
    name: "faas.invoke_duration",
    unit: "s",
    description: "Runtime duration of an invocation (platform.runtimeDone durationMs)",
    kind: MetricKind::Histogram { buckets: SECONDS },
    labels: &[],
};
pub const INIT_DURATION: MetricDef = MetricDef {
    name: "faas.init_duration",
    unit: "s",
    description: "Duration of the init phase (platform.initReport, else platform.report initDurationMs)",
    kind: MetricKind::Histogram { buckets: SECONDS },
    labels: &[],
};
pub const COLDSTARTS: MetricDef = MetricDef {
    name: "faas.coldstarts",
    unit: "{coldstart}",
    description: "Cold starts: execution environments initialised on demand (AWS_LAMBDA_INITIALIZATION_TYPE on-demand) or restored from a SnapStart snapshot; provisioned-concurrency, Managed Instances and snap-start (snapshot) inits are not counted",
    kind: MetricKind::Counter,
    labels: &[],
};
pub const MEM_USAGE: MetricDef = MetricDef {
    name: "faas.mem_usage",
    unit: "By",
    description: "Maximum memory used by an invocation (platform.report maxMemoryUsedMB)",
    kind: MetricKind::Histogram {
        buckets: MEMORY_BYTES,
    },
    labels: &[],
};
pub const BILLED_DURATION: MetricDef = MetricDef {
    name: "aws.lambda.billed_duration",
    unit: "s",
    description: "Billed duration of an invocation (platform.report billedDurationMs)",
    kind: MetricKind::Histogram { buckets: SECONDS },
    labels: &[],
};
pub const MEMORY_SIZE: MetricDef = MetricDef {
    name: "aws.lambda.memory_size",
    unit: "By",
    description: "Memory configured for the function (platform.report memorySizeMB)",
    kind: MetricKind::Gauge,
    labels: &[],
};
pub const RESTORE_DURATION: MetricDef = MetricDef {
    name: "aws.lambda.restore_duration",
    unit: "s",
    description: "Duration of a SnapStart restore (platform.restoreReport, else platform.report restoreDurationMs)",
    kind: MetricKind::Histogram { buckets: SECONDS },
    labels: &[],
};
pub const PRODUCED_BYTES: MetricDef = MetricDef {
    name: "aws.lambda.produced_bytes",
    unit: "By",
    description: "Response bytes produced by the function (platform.runtimeDone producedBytes)",
    kind: MetricKind::Counter,
    labels: &[],
};
pub const TELEMETRY_EVENTS: MetricDef = MetricDef {
    name: "sidecar.telemetry.events",
    unit: "{event}",
    description: "Telemetry API events received, by type",
    kind: MetricKind::Counter,
    labels: &[EVENT_TYPE],
};
pub const TELEMETRY_UNKNOWN: MetricDef = MetricDef {
    name: "sidecar.telemetry.unknown_events",
    unit: "{event}",
    description: "Telemetry API elements skipped: a type unknown to schema 2022-12-13, or a malformed element",
    kind: MetricKind::Counter,
    labels: &[REASON],
};
pub const LOGS_DROPPED: MetricDef = MetricDef {
    name: "sidecar.telemetry.logs_dropped",
    unit: "{record}",
    description: "Telemetry records Lambda dropped before delivering them (platform.logsDropped)",
    kind: MetricKind::Counter,
    labels: &[],
};
pub const EVICTED: MetricDef = MetricDef {
    name: "sidecar.telemetry.evicted",
    unit: "{invocation}",
    description: "Invocations evicted from the bounded derivation state before platform.runtimeDone arrived",
    kind: MetricKind::Counter,
    labels: &[],
};
pub const EXPORT_FAILURES: MetricDef = MetricDef {
    name: "sidecar.export.failures",
    unit: "{failure}",
    description: "OTLP exports (traces, metrics, logs) that failed or ran out of time, and EMF lines that could not be written, by signal",
    kind: MetricKind::Counter,
    labels: &[SIGNAL],
};
pub const EXPORT_DROPPED: MetricDef = MetricDef {
    name: "sidecar.export.dropped_items",
    unit: "{item}",
    description: "Items dropped because a bounded buffer was full: spans, metric batches, log records, records awaiting derivation or EMF lines",
    kind: MetricKind::Counter,
    labels: &[SIGNAL],
};
pub const HOLD: MetricDef = MetricDef {
    name: "sidecar.hold",
    unit: "s",
    description: "Time the sidecar held an invocation open after the runtime finished (post-runtime hold)",
    kind: MetricKind::Histogram {
        buckets: FAST_SECONDS,
    },
    labels: &[],
};
pub const TOKEN_REQUESTS: MetricDef = MetricDef {
    name: "sidecar.token.requests",
    unit: "{request}",
    description: "Token requests, by signing algorithm and outcome (issued, or the reason it was refused: bad_request, unauthorized, method_not_allowed, too_large, unsupported_media_type, error)",
    kind: MetricKind::Counter,
    labels: &[ALGORITHM, OUTCOME],
};
pub const TOKEN_DURATION: MetricDef = MetricDef {
    name: "sidecar.token.duration",
    unit: "s",
    description: "Time to answer a token request, by signing algorithm",
    kind: MetricKind::Histogram {
        buckets: FAST_SECONDS,
    },
    labels: &[ALGORITHM],
};
pub const TOKEN_UNATTRIBUTED: MetricDef = MetricDef {
    name: "sidecar.token.unattributed",
    unit: "{span}",
    description: "Token spans left without an invocation (a root span in a trace of its own), by reason: no_invocation (no invocation's window holds it, or the one it names never came), concurrent (Managed Instances: neither a request id nor a traceparent), overflow (pushed out of the bounded hold before the telemetry that decides arrived)",
    kind: MetricKind::Counter,
    labels: &[REASON],
};
pub const CONNECTIONS_REFUSED: MetricDef = MetricDef {
    name: "sidecar.connections.refused",
    unit: "{connection}",
    description: "Connections refused or closed by a limit, by listener and reason (over_capacity, evicted, header_timeout, body_timeout)",
    kind: MetricKind::Counter,
    labels: &[LISTENER, REASON],
};

pub const KEY_FAILURES: MetricDef = MetricDef {
    name: "sidecar.keys.failures",
    unit: "{failure}",
    description: "Key source calls that failed after start, by operation: sign (a KMS Sign for /token, answered 503) or refresh (a rotating key not re-read at INVOKE)",
    kind: MetricKind::Counter,
    labels: &[OPERATION],
};

/// Every metric the sidecar emits.
pub const METRICS: &[MetricDef] = &[
    INVOCATIONS,
    ERRORS,
    TIMEOUTS,
    INVOKE_DURATION,
    INIT_DURATION,
    COLDSTARTS,
    MEM_USAGE,
    BILLED_DURATION,
    MEMORY_SIZE,
    RESTORE_DURATION,
    PRODUCED_BYTES,
    TELEMETRY_EVENTS,
    TELEMETRY_UNKNOWN,
    LOGS_DROPPED,
    EVICTED,
    EXPORT_FAILURES,
    EXPORT_DROPPED,
    HOLD,
    TOKEN_REQUESTS,
    TOKEN_DURATION,
    TOKEN_UNATTRIBUTED,
    CONNECTIONS_REFUSED,
    KEY_FAILURES,
];

/// A metric's Prometheus name, exactly as Prometheus's own OTLP translation (otlptranslator,
/// with suffixes and underscore escaping: what its OTLP receiver, Mimir and Amazon Managed
/// Prometheus do) spells the OTLP metric. So one PromQL query serves both paths: a scrape of
/// `/metrics`, and the OTLP export written into Prometheus.
///
/// The rules: every character outside `[a-zA-Z0-9:]` separates words (`faas.invoke_duration`
/// is `faas`, `invoke`, `duration`); the unit's word is appended unless the name already has
/// it as a word (`aws.lambda.produced_bytes` gets no second `bytes`); a `{annotation}` unit
/// adds nothing; a counter (a monotonic sum) ends in one `total`. The words join with `_`.
pub fn prometheus_name(def: &MetricDef) -> String {
    let mut words: Vec<&str> = def
        .name
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
        .filter(|word| !word.is_empty())
        .collect();
    if let Some(unit) = unit_word(def.unit)
        && !words.contains(&unit)
    {
        words.push(unit);
    }
    if matches!(def.kind, MetricKind::Counter) {
        words.retain(|word| *word != "total");
        words.push("total");
    }
    words.join("_")
}

/// The word otlptranslator's unit map gives a UCUM unit. `None` for `{annotation}` units,
/// which it drops, and for any unit not listed here: the definitions test refuses those, so
/// a new unit is added here, with its word, before a metric can use it.
fn unit_word(unit: &str) -> Option<&'static str> {
    match unit {
        "s" => Some("seconds"),
        "ms" => Some("milliseconds"),
        "By" => Some("bytes"),
        _ => None,
    }
}

/// What was lost or failed to export (the `signal` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
    /// Function and extension log records.
    Logs,
    /// Observations dropped before derivation (the pipeline's queue was full).
    Records,
    /// CloudWatch EMF lines or observations (`SIDECAR_EMF=on`).
    Emf,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
            Signal::Records => "records",
            Signal::Emf => "emf",
        }
    }
}

/// Why a telemetry element was skipped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    UnknownType,
    Malformed,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::UnknownType => "unknown_type",
            SkipReason::Malformed => "malformed",
        }
    }
}

/// Why a token span was left without an invocation (the `reason` label of
/// `sidecar.token.unattributed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unattributed {
    /// No invocation's window holds the request, or the request id it names never came.
    NoInvocation,
    /// On Managed Instances, invocations overlap, and the caller sent neither a request id
    /// nor a traceparent: time cannot tell which invocation asked.
    Concurrent,
    /// Pushed out of the bounded hold before the telemetry that decides arrived.
    Overflow,
}

impl Unattributed {
    pub fn as_str(self) -> &'static str {
        match self {
            Unattributed::NoInvocation => "no_invocation",
            Unattributed::Concurrent => "concurrent",
            Unattributed::Overflow => "overflow",
        }
    }
}

/// One of the sidecar's HTTP listeners (the `listener` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Token,
    Telemetry,
    /// `SIDECAR_METRICS_ADDR`, in `serve` mode only.
    Metrics,
}

/// What a key source failed to do after start (the `operation` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOperation {
    /// KMS did not sign a token.
    Sign,
    /// A Secrets Manager or SSM key could not be re-read (or its new version parsed).
    Refresh,
}

impl KeyOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyOperation::Sign => "sign",
            KeyOperation::Refresh => "refresh",
        }
    }
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Token => "token",
            Listener::Telemetry => "telemetry",
            Listener::Metrics => "metrics",
        }
    }
}

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
    emf: Option<Arc<emf::Pending>>,
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
            .inspect(|family| zero_series(def, family));
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

/// Why a connection was refused or closed by a limit (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// At the cap with every connection busy: closed at accept.
    OverCapacity,
    /// At the cap: the oldest connection with no request in flight, closed to make room.
    Evicted,
    /// No complete request head within the header timeout.
    HeaderTimeout,
    /// A request body not received within the body timeout.
    BodyTimeout,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::OverCapacity => "over_capacity",
            Refusal::Evicted => "evicted",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::BodyTimeout => "body_timeout",
        }
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
        .inspect(|family| zero_series(def, family));
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

/// Creates, at zero, the one series of an unlabelled counter or histogram, so a scrape shows
/// `faas_errors_total 0` before the first error instead of nothing (a missing series breaks
/// `rate()` and alerts on it). Not for gauges: 0 bytes of memory would be a false reading.
/// The OTLP side is left alone: it reports what was recorded.
fn zero_series<B: MetricVecBuilder>(def: &MetricDef, family: &MetricVec<B>) {
    if def.labels.is_empty() {
        let _ = family.get_metric_with_label_values::<&str>(&[]);
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
    emf: Option<Arc<emf::Pending>>,
}

/// Every metric of [`METRICS`] as an `Instrument`, with one typed recording method per
/// metric so callers cannot mistype a label key. Cloning is cheap (instruments and the
/// registry are handles), so the exporter and the deriver can each hold one.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    emf: Option<Arc<emf::Pending>>,
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
    hold: Instrument<Histogram<f64>, HistogramVec>,
    token_requests: Instrument<Counter<u64>, IntCounterVec>,
    token_duration: Instrument<Histogram<f64>, HistogramVec>,
    token_unattributed: Instrument<Counter<u64>, IntCounterVec>,
    connections_refused: Instrument<Counter<u64>, IntCounterVec>,
    key_failures: Instrument<Counter<u64>, IntCounterVec>,
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

    fn build(meter: &Meter, emf: Option<Arc<emf::Pending>>) -> Self {
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
            hold: histogram(&HOLD),
            token_requests: counter(&TOKEN_REQUESTS),
            token_duration: histogram(&TOKEN_DURATION),
            token_unattributed: counter(&TOKEN_UNATTRIBUTED),
            connections_refused: counter(&CONNECTIONS_REFUSED),
            key_failures: counter(&KEY_FAILURES),
            registry: out.registry.clone(),
            emf: out.emf.clone(),
        }
    }

    /// What every instrument recorded since the last call, for the EMF output (nothing when
    /// it is off), and how many observations its bound dropped meanwhile.
    pub fn take_emf(&self) -> (Vec<emf::Entry>, u64) {
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

    /// An invocation finished (platform.runtimeDone): counts it by status, counts errors
    /// (`error`, `failure`, `unknown`) or timeouts, and records its runtime duration.
    pub fn invocation(&self, status: Status, seconds: Option<f64>) {
        self.invocations.add(1, [status.as_str()]);
        match status {
            Status::Success => {}
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
    /// init was one (on demand: [`crate::derive::FunctionInfo::init_is_cold_start`]).
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

    /// The post-runtime hold of one invocation.
    pub fn hold(&self, seconds: f64) {
        self.hold.record(seconds, []);
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
        assert_eq!(
            testing::render(&source),
            "sidecar.export.dropped_items{signal=records} = 1
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
            ("sidecar.hold", "sidecar_hold_seconds"),
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
                    emf::Recorded::Sum(sum) => format!("= {sum}"),
                    emf::Recorded::Last(last) => format!("= {last}"),
                    emf::Recorded::Values(values) => {
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
        metrics.invocation(Status::Success, None);
        metrics.token(&TokenRecord {
            start: std::time::SystemTime::UNIX_EPOCH,
            duration: std::time::Duration::from_millis(1),
            algorithm: "HS256",
            method: HttpMethod::Known("POST"),
            outcome: TokenOutcome::Issued,
            traceparent: None,
            request_id: None,
        });
        metrics.token_unattributed(Unattributed::Concurrent);
        metrics.connection_refused(Listener::Metrics, Refusal::OverCapacity);
        metrics.key_failure(KeyOperation::Refresh);
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
}
