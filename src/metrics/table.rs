//! The metric table: every metric the sidecar emits, defined once, and the closed sets of
//! label values.
//!
//! [`METRICS`] is the single source of truth for names, units (UCUM), descriptions,
//! instrument kinds, histogram buckets and label keys; every output (OTLP, Prometheus, EMF)
//! is generated from it. Names follow the OpenTelemetry FaaS semantic conventions where one
//! exists (`faas.*`), `aws.lambda.*` for Lambda-specific figures and `sidecar.*` for the
//! sidecar's own health.
//!
//! Architecture invariant: label values are always from small closed sets (status,
//! event type, algorithm, outcome, signal); no request id, token or claim ever becomes
//! a label. This module imports nothing: it is vocabulary.

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
/// which should stay in the microsecond to few-millisecond range. They start at 5 µs: an
/// HS256 token is answered in tens of microseconds (an ES256 one in about a hundred), so with
/// a first bucket at 100 µs nearly every token fell in it and p50/p99 were interpolation.
const FAST_SECONDS: &[f64] = &[
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

pub(super) const MIB: f64 = 1024.0 * 1024.0;

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
    description: "Successful invocations (platform.runtimeDone status success), as the FaaS semantic conventions define it: errors and failures are faas.errors, timeouts faas.timeouts",
    kind: MetricKind::Counter,
    labels: &[],
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
pub const EXPORT_ABANDONED: MetricDef = MetricDef {
    name: "sidecar.export.abandoned_items",
    unit: "{item}",
    description: "Spans, log records and delta metric batches the exporter stopped trying to deliver, by signal and reason: rejected (the collector refused them with an answer not to retry, such as HTTP 400), retries (not taken after 8 attempts), unanswered (a request went unanswered and the batch was not, or not successfully, sent again: the collector may have it)",
    kind: MetricKind::Counter,
    labels: &[SIGNAL, REASON],
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
pub const END_MISSED: MetricDef = MetricDef {
    name: "sidecar.flush.end_missed",
    unit: "{invocation}",
    description: "Invocations whose end flush gave up waiting for platform.runtimeDone before the deadline (their telemetry left with a later flush)",
    kind: MetricKind::Counter,
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
pub const RECEIVER_ITEMS: MetricDef = MetricDef {
    name: "sidecar.receiver.items",
    unit: "{item}",
    description: "Spans, metric data points and log records the function sent to the OTLP receiver, by signal and outcome: accepted (queued for export), invalid (refused in partial_success: a malformed id), unsampled (dropped at export: the invocation's trace is not sampled), not_exported (the signal has no OTLP/HTTP exporter)",
    kind: MetricKind::Counter,
    labels: &[SIGNAL, OUTCOME],
};
pub const RECEIVER_REFUSED: MetricDef = MetricDef {
    name: "sidecar.receiver.refused_requests",
    unit: "{request}",
    description: "Requests to the OTLP receiver refused whole, by signal and reason: undecodable (400), too_large (413), unsupported_media_type (415), queue_full (429: the signal's queue had no room; the SDK may send it again), foreign_host (400: a Host other than the receiver's loopback address)",
    kind: MetricKind::Counter,
    labels: &[SIGNAL, REASON],
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
    EXPORT_ABANDONED,
    HOLD,
    END_MISSED,
    TOKEN_REQUESTS,
    TOKEN_DURATION,
    TOKEN_UNATTRIBUTED,
    CONNECTIONS_REFUSED,
    KEY_FAILURES,
    RECEIVER_ITEMS,
    RECEIVER_REFUSED,
];

/// The series of `def` that exist from the start, at zero, before anything is recorded:
/// each as its label values, in the order of `def.labels`. A missing series is "No data"
/// on a dashboard and breaks `rate()` and the alerts built on it, so every counter whose
/// labels come from a closed set is created with all of them: a healthy run shows
/// `sidecar_export_failures_total{signal="traces"} 0`, not nothing. Unlabelled counters and
/// histograms have their one series. Not gauges (0 bytes of memory would be a false
/// reading), nor counters labelled by an open or configuration-given value (the algorithm),
/// nor those whose combinations would add dozens of series for detail a dashboard does not
/// chart (events by type, abandoned items by signal and reason).
pub fn zero_series(def: &MetricDef) -> Vec<Vec<&'static str>> {
    use Signal::{Emf, Logs, Metrics, Records, Traces};
    let one = |values: &[&'static str]| values.iter().map(|v| vec![*v]).collect();
    match def.name {
        _ if matches!(def.kind, MetricKind::Gauge) => Vec::new(),
        _ if def.labels.is_empty() => vec![Vec::new()],
        name if name == EXPORT_FAILURES.name => {
            one(&[Traces, Metrics, Logs, Emf].map(Signal::as_str))
        }
        name if name == EXPORT_DROPPED.name => {
            one(&[Traces, Metrics, Logs, Records, Emf].map(Signal::as_str))
        }
        name if name == TELEMETRY_UNKNOWN.name => {
            one(&[SkipReason::UnknownType, SkipReason::Malformed].map(SkipReason::as_str))
        }
        name if name == TOKEN_UNATTRIBUTED.name => one(&[
            Unattributed::NoInvocation,
            Unattributed::Concurrent,
            Unattributed::Overflow,
        ]
        .map(Unattributed::as_str)),
        name if name == KEY_FAILURES.name => {
            one(&[KeyOperation::Sign, KeyOperation::Refresh].map(KeyOperation::as_str))
        }
        name if name == CONNECTIONS_REFUSED.name => {
            let listeners = [Listener::Token, Listener::Telemetry, Listener::Metrics];
            let refusals = [
                Refusal::OverCapacity,
                Refusal::Evicted,
                Refusal::HeaderTimeout,
                Refusal::BodyTimeout,
            ];
            listeners
                .iter()
                .flat_map(|l| refusals.iter().map(|r| vec![l.as_str(), r.as_str()]))
                .collect()
        }
        _ => Vec::new(),
    }
}

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
pub(super) fn unit_word(unit: &str) -> Option<&'static str> {
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

/// Why the exporter stopped trying to deliver a batch (the `reason` label of
/// `sidecar.export.abandoned_items`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// The collector refused it with an answer the OTLP specification says not to retry.
    Rejected,
    /// The collector did not take it (no connection, or a retryable answer) at any of the
    /// attempts a batch gets.
    Retries,
    /// A request for it went unanswered and it was not, or not successfully, sent again: the
    /// collector may have received it.
    Unanswered,
}

impl Abandoned {
    pub fn as_str(self) -> &'static str {
        match self {
            Abandoned::Rejected => "rejected",
            Abandoned::Retries => "retries",
            Abandoned::Unanswered => "unanswered",
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
    /// The OTLP receiver (`SIDECAR_OTLP_RECEIVER_ADDR`).
    Receiver,
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
            Listener::Receiver => "receiver",
        }
    }
}

/// What became of items the function sent to the OTLP receiver (the `outcome` label of
/// `sidecar.receiver.items`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Accepted,
    Invalid,
    Unsampled,
    NotExported,
}

impl Received {
    pub fn as_str(self) -> &'static str {
        match self {
            Received::Accepted => "accepted",
            Received::Invalid => "invalid",
            Received::Unsampled => "unsampled",
            Received::NotExported => "not_exported",
        }
    }
}

/// Why the OTLP receiver refused a whole request (the `reason` label of
/// `sidecar.receiver.refused_requests`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestRefusal {
    Undecodable,
    TooLarge,
    UnsupportedMediaType,
    /// 429: the signal's queue had no room for it.
    QueueFull,
    /// A `Host` other than the receiver's own loopback address (DNS rebinding).
    ForeignHost,
}

impl RequestRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestRefusal::Undecodable => "undecodable",
            RequestRefusal::TooLarge => "too_large",
            RequestRefusal::UnsupportedMediaType => "unsupported_media_type",
            RequestRefusal::QueueFull => "queue_full",
            RequestRefusal::ForeignHost => "foreign_host",
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
