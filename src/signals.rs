//! Every metric the sidecar emits, defined once.
//!
//! [`METRICS`] is the single source of truth for names, units (UCUM), descriptions,
//! instrument kinds, histogram buckets and label keys: the OTel instruments in
//! [`Metrics`] are built from it, and the Prometheus `/metrics` and CloudWatch EMF
//! outputs are meant to be generated from it too. Names follow the OpenTelemetry FaaS
//! semantic conventions where one exists (`faas.*`), `aws.lambda.*` for Lambda-specific
//! figures and `sidecar.*` for the sidecar's own health.
//!
//! Architecture invariant: label values are always from small closed sets (status,
//! event type, algorithm, outcome, signal); no request id, token or claim ever becomes
//! a label.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};

use crate::intake::events::Status;
use crate::records::TokenOutcome;

/// One metric's definition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricDef {
    /// OTel instrument name (dotted); exporters derive their own spelling from it.
    pub name: &'static str,
    /// UCUM unit: `s`, `By`, or a `{annotation}` for counts.
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
    description: "Execution environments initialised or restored from a SnapStart snapshot",
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
    description: "OTLP exports that failed or ran out of time, by signal",
    kind: MetricKind::Counter,
    labels: &[SIGNAL],
};
pub const EXPORT_DROPPED: MetricDef = MetricDef {
    name: "sidecar.export.dropped_items",
    unit: "{item}",
    description: "Items dropped because a bounded buffer was full: spans, metric batches or records awaiting derivation",
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
    description: "Token requests, by signing algorithm and outcome (issued or rejected)",
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
pub const CONNECTIONS_REFUSED: MetricDef = MetricDef {
    name: "sidecar.connections.refused",
    unit: "{connection}",
    description: "Connections refused or closed by a limit, by listener and reason (over_capacity, evicted, header_timeout, body_timeout)",
    kind: MetricKind::Counter,
    labels: &[LISTENER, REASON],
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
    CONNECTIONS_REFUSED,
];

/// What was lost or failed to export (the `signal` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
    /// Observations dropped before derivation (the pipeline's queue was full).
    Records,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Records => "records",
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

/// One of the sidecar's HTTP listeners (the `listener` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Token,
    Telemetry,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Token => "token",
            Listener::Telemetry => "telemetry",
        }
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

/// The OTel instruments built from [`METRICS`], with one typed recording method per
/// metric so callers cannot mistype a label key. Cloning is cheap (instruments are
/// handles), so the exporter and the deriver can each hold one.
#[derive(Debug, Clone)]
pub struct Metrics {
    invocations: Counter<u64>,
    errors: Counter<u64>,
    timeouts: Counter<u64>,
    invoke_duration: Histogram<f64>,
    init_duration: Histogram<f64>,
    coldstarts: Counter<u64>,
    mem_usage: Histogram<f64>,
    billed_duration: Histogram<f64>,
    memory_size: Gauge<f64>,
    restore_duration: Histogram<f64>,
    produced_bytes: Counter<u64>,
    telemetry_events: Counter<u64>,
    telemetry_unknown: Counter<u64>,
    logs_dropped: Counter<u64>,
    evicted: Counter<u64>,
    export_failures: Counter<u64>,
    export_dropped: Counter<u64>,
    hold: Histogram<f64>,
    token_requests: Counter<u64>,
    token_duration: Histogram<f64>,
    connections_refused: Counter<u64>,
}

fn counter(meter: &Meter, def: &MetricDef) -> Counter<u64> {
    debug_assert_eq!(def.kind, MetricKind::Counter, "{}", def.name);
    meter
        .u64_counter(def.name)
        .with_unit(def.unit)
        .with_description(def.description)
        .build()
}

fn histogram(meter: &Meter, def: &MetricDef) -> Histogram<f64> {
    let buckets = match def.kind {
        MetricKind::Histogram { buckets } => buckets,
        other => unreachable!("{} is a {other:?}, not a histogram", def.name),
    };
    meter
        .f64_histogram(def.name)
        .with_unit(def.unit)
        .with_description(def.description)
        .with_boundaries(buckets.to_vec())
        .build()
}

fn gauge(meter: &Meter, def: &MetricDef) -> Gauge<f64> {
    debug_assert_eq!(def.kind, MetricKind::Gauge, "{}", def.name);
    meter
        .f64_gauge(def.name)
        .with_unit(def.unit)
        .with_description(def.description)
        .build()
}

/// Attributes for a metric from its definition's label keys and the given values, so
/// the keys are spelled only in [`METRICS`].
fn labels<const N: usize>(def: &MetricDef, values: [&'static str; N]) -> [KeyValue; N] {
    debug_assert_eq!(def.labels.len(), N, "{}", def.name);
    std::array::from_fn(|i| KeyValue::new(def.labels[i], values[i]))
}

impl Metrics {
    /// Builds every instrument of [`METRICS`] on `meter`.
    pub fn new(meter: &Meter) -> Self {
        Metrics {
            invocations: counter(meter, &INVOCATIONS),
            errors: counter(meter, &ERRORS),
            timeouts: counter(meter, &TIMEOUTS),
            invoke_duration: histogram(meter, &INVOKE_DURATION),
            init_duration: histogram(meter, &INIT_DURATION),
            coldstarts: counter(meter, &COLDSTARTS),
            mem_usage: histogram(meter, &MEM_USAGE),
            billed_duration: histogram(meter, &BILLED_DURATION),
            memory_size: gauge(meter, &MEMORY_SIZE),
            restore_duration: histogram(meter, &RESTORE_DURATION),
            produced_bytes: counter(meter, &PRODUCED_BYTES),
            telemetry_events: counter(meter, &TELEMETRY_EVENTS),
            telemetry_unknown: counter(meter, &TELEMETRY_UNKNOWN),
            logs_dropped: counter(meter, &LOGS_DROPPED),
            evicted: counter(meter, &EVICTED),
            export_failures: counter(meter, &EXPORT_FAILURES),
            export_dropped: counter(meter, &EXPORT_DROPPED),
            hold: histogram(meter, &HOLD),
            token_requests: counter(meter, &TOKEN_REQUESTS),
            token_duration: histogram(meter, &TOKEN_DURATION),
            connections_refused: counter(meter, &CONNECTIONS_REFUSED),
        }
    }

    /// An invocation finished (platform.runtimeDone): counts it by status, counts errors
    /// (`error`, `failure`, `unknown`) or timeouts, and records its runtime duration.
    pub fn invocation(&self, status: Status, seconds: Option<f64>) {
        self.invocations
            .add(1, &labels(&INVOCATIONS, [status.as_str()]));
        match status {
            Status::Success => {}
            Status::Timeout => self.timeouts.add(1, &[]),
            Status::Error | Status::Failure | Status::Unknown => self.errors.add(1, &[]),
        }
        if let Some(seconds) = seconds {
            self.invoke_duration.record(seconds, &[]);
        }
    }

    /// Response bytes an invocation produced.
    pub fn produced_bytes(&self, bytes: u64) {
        self.produced_bytes.add(bytes, &[]);
    }

    /// The platform.report figures of one invocation.
    pub fn report(&self, billed_seconds: f64, max_memory_bytes: f64, memory_size_bytes: f64) {
        self.billed_duration.record(billed_seconds, &[]);
        self.mem_usage.record(max_memory_bytes, &[]);
        self.memory_size.record(memory_size_bytes, &[]);
    }

    /// An environment finished its init phase: one cold start and its duration.
    pub fn init(&self, seconds: f64) {
        self.coldstarts.add(1, &[]);
        self.init_duration.record(seconds, &[]);
    }

    /// An environment was restored from a SnapStart snapshot: one cold start and its
    /// restore duration (when reported).
    pub fn restore(&self, seconds: Option<f64>) {
        self.coldstarts.add(1, &[]);
        if let Some(seconds) = seconds {
            self.restore_duration.record(seconds, &[]);
        }
    }

    /// One telemetry event of a known type was received.
    pub fn telemetry_event(&self, event_type: &'static str) {
        self.telemetry_events
            .add(1, &labels(&TELEMETRY_EVENTS, [event_type]));
    }

    /// Telemetry elements skipped while parsing a batch.
    pub fn skipped_events(&self, reason: SkipReason, count: u64) {
        if count > 0 {
            self.telemetry_unknown
                .add(count, &labels(&TELEMETRY_UNKNOWN, [reason.as_str()]));
        }
    }

    /// Lambda reported dropping this many telemetry records (platform.logsDropped).
    pub fn logs_dropped(&self, records: u64) {
        self.logs_dropped.add(records, &[]);
    }

    /// An unfinished invocation was evicted from the bounded derivation state.
    pub fn evicted(&self) {
        self.evicted.add(1, &[]);
    }

    /// An OTLP export of `signal` failed or timed out.
    pub fn export_failure(&self, signal: Signal) {
        self.export_failures
            .add(1, &labels(&EXPORT_FAILURES, [signal.as_str()]));
    }

    /// `items` of `signal` were dropped because a bounded buffer was full.
    pub fn dropped(&self, signal: Signal, items: u64) {
        if items > 0 {
            self.export_dropped
                .add(items, &labels(&EXPORT_DROPPED, [signal.as_str()]));
        }
    }

    /// The post-runtime hold of one invocation.
    pub fn hold(&self, seconds: f64) {
        self.hold.record(seconds, &[]);
    }

    /// One finished token request.
    pub fn token(&self, algorithm: &'static str, outcome: TokenOutcome, seconds: f64) {
        self.token_requests
            .add(1, &labels(&TOKEN_REQUESTS, [algorithm, outcome.as_str()]));
        self.token_duration
            .record(seconds, &labels(&TOKEN_DURATION, [algorithm]));
    }

    /// A connection to `listener` was refused or closed by a limit.
    pub fn connection_refused(&self, listener: Listener, reason: Refusal) {
        self.connections_refused.add(
            1,
            &labels(&CONNECTIONS_REFUSED, [listener.as_str(), reason.as_str()]),
        );
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
                matches!(def.unit, "s" | "By")
                    || (def.unit.starts_with('{') && def.unit.ends_with('}')),
                "{}: unit {}",
                def.name,
                def.unit
            );
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
}
