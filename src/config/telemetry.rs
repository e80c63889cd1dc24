//! The telemetry side: the Telemetry API subscription (`SIDECAR_TELEMETRY_*`), the flushes
//! (`SIDECAR_FLUSH_*`), `faas.trigger`, CloudWatch EMF (`SIDECAR_EMF*`) and the separate
//! `/metrics` listener of `serve` (`SIDECAR_METRICS_ADDR`); and, apart from [`Config`],
//! the OTLP export (the standard `OTEL_*` variables: [`ExportConfig`]) with its sampler.
//!
//! [`Config`]: super::Config

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_otlp::Protocol;
use opentelemetry_sdk::metrics::Temporality;

use super::otlp::{OtlpAws, OtlpSignal, otlp_aws};
use super::{ConfigError, Env, Errors, ProcessEnv};
use crate::sampling::{Propagators, Root, Sampler};

/// `faas.trigger`'s well-known values (OpenTelemetry semantic conventions, FaaS spans):
/// what caused the invocations. The sidecar cannot see the event, so the user says which
/// applies (`SIDECAR_FAAS_TRIGGER`, default `other`, "if none of the others apply").
pub const FAAS_TRIGGERS: [&str; 5] = ["datasource", "http", "pubsub", "timer", "other"];

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Telemetry API record types to subscribe to (`SIDECAR_TELEMETRY_TYPES`).
    pub types: Vec<String>,
    /// Telemetry API `buffering.timeoutMs` (`SIDECAR_TELEMETRY_BUFFER_MS`).
    pub buffer_ms: u32,
    /// Fixed listener port; `None` lets the OS pick a free one when the listener binds, so
    /// the sidecar never clashes with another extension in the same function.
    pub port: Option<u16>,
    /// The most an INVOKE flush may take (`SIDECAR_FLUSH_TIMEOUT_MS`); the SHUTDOWN flush
    /// has its own fixed cap (`lifecycle`).
    pub flush_timeout: Duration,
    /// `faas.trigger` on every invocation span (`SIDECAR_FAAS_TRIGGER`): one of
    /// [`FAAS_TRIGGERS`].
    pub faas_trigger: &'static str,
    /// How often to flush when no INVOKE comes (`SIDECAR_FLUSH_INTERVAL_MS`): on Lambda
    /// Managed Instances, where the sidecar registers for SHUTDOWN only.
    pub flush_interval: Duration,
    /// When an invocation's telemetry is sent (`SIDECAR_FLUSH_STRATEGY`).
    pub flush_strategy: FlushStrategy,
    /// `SIDECAR_FLUSH_MAX_AGE_MS`: with the `adaptive` strategy, invocations further apart
    /// than this are flushed at their end, closer ones at the next INVOKE.
    pub flush_max_age: Duration,
    /// `SIDECAR_SELF_TRACES`: the sidecar's own work (register, subscribe, key loading,
    /// flushes, KMS signing) as spans beside the function's.
    pub self_traces: bool,
}

/// When an invocation's spans, metrics and logs leave the sidecar (`SIDECAR_FLUSH_STRATEGY`;
/// docs/signals.md, "When telemetry is sent", compares them with `make bench`'s figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushStrategy {
    /// At the next INVOKE, beside the function: no hold, but the data waits for that INVOKE.
    Invoke,
    /// At the end of each invocation, once its `platform.runtimeDone` has arrived: fresh,
    /// for a short post-runtime hold that Lambda bills.
    End,
    /// At an INVOKE once `SIDECAR_FLUSH_INTERVAL_MS` has passed since the last flush (on
    /// Managed Instances, every interval on a timer).
    Periodic,
    /// Per invocation, from the recent gaps between invocations: `End` when they are rarer
    /// than `SIDECAR_FLUSH_MAX_AGE_MS`, else `Invoke`.
    Adaptive,
}

/// The values of `SIDECAR_FLUSH_STRATEGY`.
pub const FLUSH_STRATEGIES: [(&str, FlushStrategy); 4] = [
    ("invoke", FlushStrategy::Invoke),
    ("end", FlushStrategy::End),
    ("periodic", FlushStrategy::Periodic),
    ("adaptive", FlushStrategy::Adaptive),
];

impl FlushStrategy {
    /// The strategy may wait for `platform.runtimeDone` before the sidecar hands an
    /// invocation back: the Telemetry API must then deliver it as soon as it can.
    pub fn may_flush_at_end(self) -> bool {
        matches!(self, FlushStrategy::End | FlushStrategy::Adaptive)
    }
}

pub(super) fn telemetry_config(env: &Env<'_>) -> Result<TelemetryConfig, ConfigError> {
    const TYPES: &[&str] = &["platform", "function", "extension"];
    let types = match env.get("SIDECAR_TELEMETRY_TYPES") {
        None => vec!["platform".to_string(), "function".to_string()],
        Some(raw) => {
            let types = env.list("SIDECAR_TELEMETRY_TYPES");
            if types.is_empty() || types.iter().any(|t| !TYPES.contains(&t.as_str())) {
                return Err(ConfigError::Invalid {
                    var: "SIDECAR_TELEMETRY_TYPES",
                    value: raw,
                    expected: "a comma-separated subset of platform, function, extension"
                        .to_string(),
                });
            }
            types
        }
    };
    let port = match env.get("SIDECAR_TELEMETRY_PORT") {
        None => None,
        Some(_) => Some(env.port("SIDECAR_TELEMETRY_PORT", 0)?),
    };
    Ok(TelemetryConfig {
        types,
        buffer_ms: env.number("SIDECAR_TELEMETRY_BUFFER_MS", 25, 25, 30_000)? as u32,
        port,
        flush_timeout: Duration::from_millis(env.number(
            "SIDECAR_FLUSH_TIMEOUT_MS",
            500,
            1,
            60_000,
        )?),
        faas_trigger: env.choice(
            "SIDECAR_FAAS_TRIGGER",
            &FAAS_TRIGGERS.map(|trigger| (trigger, trigger)),
            "other",
        )?,
        // 1 s: an invocation's spans and counts reach the collector about a second after it
        // ends, like a busy function's in the default model (flushed at the next INVOKE), at
        // the cost of one request per signal per second. Collectors batch every 1–10 s; more
        // than a minute would leave metrics stale on dashboards that scrape every minute.
        flush_interval: Duration::from_millis(env.number(
            "SIDECAR_FLUSH_INTERVAL_MS",
            1_000,
            100,
            60_000,
        )?),
        flush_strategy: env.choice(
            "SIDECAR_FLUSH_STRATEGY",
            &FLUSH_STRATEGIES,
            FlushStrategy::Adaptive,
        )?,
        // 2 s: the age a dashboard or an alarm does not notice (they refresh every 10 s to a
        // minute), and the gap below which an end flush would cost the most for the least:
        // invocations that close together each pay a post-runtime hold (the runtimeDone
        // delivery, ~25 ms, and the flush) that delays the next one, while at the next INVOKE
        // the data leaves at most one gap (< 2 s) later, with no hold at all.
        flush_max_age: Duration::from_millis(env.number(
            "SIDECAR_FLUSH_MAX_AGE_MS",
            2_000,
            100,
            60_000,
        )?),
        self_traces: env.choice(
            "SIDECAR_SELF_TRACES",
            &[("on", true), ("off", false)],
            false,
        )?,
    })
}

/// `SIDECAR_METRICS_ADDR`: an IP address and a non-zero port, when set.
pub(super) fn metrics_addr(env: &Env<'_>) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(raw) = env.get("SIDECAR_METRICS_ADDR") else {
        return Ok(None);
    };
    raw.trim()
        .parse::<SocketAddr>()
        .ok()
        .filter(|addr| addr.port() != 0)
        .map(Some)
        .ok_or_else(|| ConfigError::Invalid {
            var: "SIDECAR_METRICS_ADDR",
            value: raw,
            expected: "an IP address and a port from 1 to 65535, such as 0.0.0.0:9464 or \
                       [::]:9464"
                .to_string(),
        })
}

/// `SIDECAR_EMF` (`on` or `off`, the default) and, when on, its namespace.
pub(super) fn emf_namespace(env: &Env<'_>) -> Result<Option<String>, ConfigError> {
    match env.choice("SIDECAR_EMF", &[("on", true), ("off", false)], false)? {
        false => Ok(None),
        true => Ok(Some(emf_namespace_value(env.get("SIDECAR_EMF_NAMESPACE"))?)),
    }
}

/// `SIDECAR_EMF_NAMESPACE`, default `LambdaSidecar`: CloudWatch accepts 1 to 255 characters
/// from letters, digits and `.-_/#: ` (at least one not a space), and reserves the `AWS/`
/// prefix for its own services. A namespace it refuses would drop every line silently.
fn emf_namespace_value(raw: Option<String>) -> Result<String, ConfigError> {
    let Some(raw) = raw else {
        return Ok("LambdaSidecar".to_string());
    };
    let valid = (1..=255).contains(&raw.chars().count())
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_/#: ".contains(c))
        && raw.chars().any(|c| c != ' ')
        && !raw.starts_with("AWS/");
    if valid {
        Ok(raw)
    } else {
        Err(ConfigError::Invalid {
            var: "SIDECAR_EMF_NAMESPACE",
            value: raw,
            expected: "1 to 255 characters from letters, digits, space and . - _ / # :, \
                       not all spaces and not starting with AWS/"
                .to_string(),
        })
    }
}

const TEMPORALITY_VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
const SAMPLER_VAR: &str = "OTEL_TRACES_SAMPLER";
const SAMPLER_ARG_VAR: &str = "OTEL_TRACES_SAMPLER_ARG";

/// What a `grpc` protocol gets from a build without the `grpc` feature: tonic and h2 weigh
/// about 0.45 MB of machine code, and http/protobuf (the default) needs neither.
#[cfg(not(feature = "grpc"))]
const GRPC_NOT_BUILT: &str = "http/protobuf: this build has no gRPC export \
    (build with the `grpc` Cargo feature, e.g. LAYER_FEATURES=grpc scripts/package/layer.sh)";

/// Where and how to export, read from the standard `OTEL_*` variables. Read apart from
/// [`Config`](super::Config), by the extension (and checked by `serve`, which exports
/// nothing). Endpoints, timeouts, the service name and the resource attributes are read
/// here and handed to opentelemetry-otlp and the resource explicitly; headers and
/// compression are read by opentelemetry-otlp itself when the exporters are built
/// (`export::ExportClients`), the headers checked here first ([`otlp_headers`]), as the SDK
/// would skip a malformed one without a word.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportConfig {
    pub traces: Option<Otlp>,
    pub metrics: Option<Otlp>,
    /// Function and extension logs. On by default like the other signals (the OTel spec's
    /// `OTEL_LOGS_EXPORTER` default is `otlp`): the lines are already in CloudWatch Logs, so
    /// a backend that also bills log ingestion bills them twice; `OTEL_LOGS_EXPORTER=none`
    /// keeps them out (docs/signals.md, "Logs").
    pub logs: Option<Otlp>,
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`: a PEM file of CA certificates trusted besides the
    /// compiled-in Mozilla roots (for a collector behind a private CA).
    pub certificate: Option<String>,
    /// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`: `cumulative` (default), `delta`
    /// or `lowmemory`, case-insensitive as the spec says.
    pub temporality: Temporality,
    /// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, handed to derivation.
    pub sampler: Sampler,
    /// `OTEL_PROPAGATORS`: which incoming trace contexts derivation believes.
    pub propagators: Propagators,
    /// `OTEL_SERVICE_NAME`, when set and not empty. It wins over a `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`, as the SDK specification says; without either,
    /// `service.name` is the function's name (`export::resource`).
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, percent-decoded, in order. A value with a malformed member
    /// is discarded whole, with a warning, as the specification says.
    pub resource_attributes: Vec<(String, String)>,
    /// What the sidecar ignores, said once at start (an unsupported propagator, a discarded
    /// `OTEL_RESOURCE_ATTRIBUTES`); the caller logs them.
    pub warnings: Vec<String>,
    /// The `OTEL_*` variables of [`VARIABLES`](super::VARIABLES) that are set in the process
    /// environment ([`ExportConfig::from_env`]; [`ExportConfig::parse`] leaves it empty):
    /// what `serve`, which exports nothing, names as checked and ignored.
    pub set: Vec<&'static str>,
    /// Straight to AWS: which signals are signed with SigV4, the CloudWatch Logs headers, the
    /// exporter headers from a secret (`SIDECAR_OTLP_*`, `config/otlp.rs`).
    pub aws: OtlpAws,
    /// Where the function's own telemetry, taken by the OTLP receiver, is forwarded: each
    /// signal's endpoint, with the headers and compression opentelemetry-otlp uses for the
    /// sidecar's own exporters, per signal exported over OTLP/HTTP.
    pub forward: ForwardTargets,
}

/// One [`ForwardTarget`] per signal; `None` where the signal is not exported over OTLP/HTTP.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForwardTargets {
    pub traces: Option<ForwardTarget>,
    pub metrics: Option<ForwardTarget>,
    pub logs: Option<ForwardTarget>,
}

/// An OTLP/HTTP endpoint, with what the sidecar's own exporter of the signal sends with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardTarget {
    /// The signal's [`Otlp::endpoint`].
    pub endpoint: String,
    /// `OTEL_EXPORTER_OTLP_{SIGNAL}_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS`: (lowercase
    /// name, decoded value). Hold API keys: never logged.
    pub headers: Vec<(String, String)>,
    pub compression: Compression,
    /// The signal's [`Otlp::timeout`].
    pub timeout: Duration,
}

/// `OTEL_EXPORTER_OTLP_{SIGNAL}_COMPRESSION`, else `OTEL_EXPORTER_OTLP_COMPRESSION`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

/// Where and how one signal is exported over OTLP.
#[derive(Debug, Clone, PartialEq)]
pub struct Otlp {
    /// `traces`, `metrics` or `logs`.
    pub signal: &'static str,
    pub protocol: Protocol,
    /// The URL requests go to: the signal's own endpoint
    /// (`OTEL_EXPORTER_OTLP_{SIGNAL}_ENDPOINT`) as given, else the general one with
    /// `/v1/{signal}` appended for OTLP/HTTP (gRPC uses it as given), as the OTLP exporter
    /// specification says.
    pub endpoint: String,
    /// The variable `endpoint` came from: the one the user set, for the errors about it.
    pub endpoint_var: &'static str,
    /// `OTEL_EXPORTER_OTLP_{SIGNAL}_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT`, else the
    /// specification's 10 s: the most one export request may take. A flush never waits
    /// longer than its own budget (`SIDECAR_FLUSH_TIMEOUT_MS`, and the SHUTDOWN cap), so a
    /// request is cut by whichever ends first.
    pub timeout: Duration,
}

/// The variables of one signal.
struct SignalVars {
    /// `traces`, `metrics` or `logs`: the path `/v1/{name}` of OTLP/HTTP.
    name: &'static str,
    exporter: &'static str,
    protocol: &'static str,
    endpoint: &'static str,
    timeout: &'static str,
}

const SIGNALS: [SignalVars; 3] = [
    SignalVars {
        name: "traces",
        exporter: "OTEL_TRACES_EXPORTER",
        protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        endpoint: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        timeout: "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    },
    SignalVars {
        name: "metrics",
        exporter: "OTEL_METRICS_EXPORTER",
        protocol: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        endpoint: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        timeout: "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    },
    SignalVars {
        name: "logs",
        exporter: "OTEL_LOGS_EXPORTER",
        protocol: "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
        endpoint: "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
        timeout: "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
    },
];

const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TIMEOUT_VAR: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
const DISABLED_VAR: &str = "OTEL_SDK_DISABLED";
const PROPAGATORS_VAR: &str = "OTEL_PROPAGATORS";
const RESOURCE_VAR: &str = "OTEL_RESOURCE_ATTRIBUTES";

/// The OTLP exporter specification's default timeout.
const DEFAULT_TIMEOUT_MS: u64 = 10_000;

impl ExportConfig {
    /// [`ExportConfig::parse`] of the process environment.
    pub fn from_env() -> Result<ExportConfig, ConfigError> {
        let env = ProcessEnv::read();
        let mut config = ExportConfig::parse(|k| env.get(k))?;
        config.set = env
            .names()
            .filter(|name| name.starts_with("OTEL_"))
            .filter_map(|name| Some(super::variable(name)?.name))
            .collect();
        Ok(config)
    }

    /// A signal is exported when an OTLP endpoint is configured for it (general or
    /// per-signal), its `OTEL_*_EXPORTER` is not `none` and `OTEL_SDK_DISABLED` is not
    /// `true`. Without an endpoint, nothing is sent: a sidecar with no collector must not
    /// knock on localhost:4318 at every invoke. Every invalid value is reported, at once.
    pub fn parse(lookup: impl Fn(&str) -> Option<String>) -> Result<ExportConfig, ConfigError> {
        let env = Env(&lookup);
        let mut errors = Errors::default();
        for var in HEADERS_VARS {
            if let Some(raw) = lookup(var) {
                errors.take(otlp_headers(var, &raw));
            }
        }
        let disabled = errors
            .take(env.choice(
                DISABLED_VAR,
                &[("true", true), ("false", false), ("", false)],
                false,
            ))
            .unwrap_or(false);
        let sampler = errors.take(Sampler::parse(&lookup)).unwrap_or_default();
        let [traces, metrics, logs] =
            SIGNALS.map(|vars| errors.take(signal(&env, &vars, disabled)).flatten());
        let temporality = errors
            .take(match lookup(TEMPORALITY_VAR) {
                Some(v) if !v.trim().is_empty() => {
                    v.trim().parse().map_err(|()| ConfigError::Invalid {
                        var: TEMPORALITY_VAR,
                        value: v,
                        expected: "cumulative, delta or lowmemory".to_string(),
                    })
                }
                _ => Ok(Temporality::Cumulative),
            })
            .unwrap_or(Temporality::Cumulative);
        // Straight to AWS (config/otlp.rs), for the signals that export.
        let protocol = |otlp: &Option<Otlp>| otlp.as_ref().map(|o| o.protocol);
        let aws = errors
            .take(otlp_aws(
                &env,
                [
                    (OtlpSignal::Traces, protocol(&traces)),
                    (OtlpSignal::Metrics, protocol(&metrics)),
                    (OtlpSignal::Logs, protocol(&logs)),
                ],
            ))
            .unwrap_or_default();
        let [forward_traces, forward_metrics, forward_logs] = [&traces, &metrics, &logs]
            .map(|otlp| errors.take(forward_target(&lookup, otlp)).flatten());
        errors.into_result()?;
        let mut warnings = Vec::new();
        let propagators = propagators(lookup(PROPAGATORS_VAR), &mut warnings);
        let resource_attributes = resource_attributes(lookup(RESOURCE_VAR), &mut warnings);
        Ok(ExportConfig {
            sampler,
            traces,
            metrics,
            logs,
            aws,
            certificate: lookup("OTEL_EXPORTER_OTLP_CERTIFICATE").filter(|p| !p.is_empty()),
            temporality,
            propagators,
            service_name: lookup("OTEL_SERVICE_NAME").filter(|name| !name.trim().is_empty()),
            resource_attributes,
            warnings,
            set: Vec::new(),
            forward: ForwardTargets {
                traces: forward_traces,
                metrics: forward_metrics,
                logs: forward_logs,
            },
        })
    }

    /// Whether any signal is exported.
    pub fn exports(&self) -> bool {
        self.traces.is_some() || self.metrics.is_some() || self.logs.is_some()
    }
}

/// One signal's export: `None` when it is off (no endpoint, its exporter `none`, or the SDK
/// disabled). The errors name the variable the user set: the per-signal endpoint, else the
/// general one.
fn signal(env: &Env<'_>, vars: &SignalVars, disabled: bool) -> Result<Option<Otlp>, ConfigError> {
    if let Some(v) = env.get(vars.exporter) {
        match v.trim() {
            "none" => return Ok(None),
            "otlp" => {}
            _ => {
                return Err(ConfigError::Invalid {
                    var: vars.exporter,
                    value: v,
                    expected: "otlp or none".to_string(),
                });
            }
        }
    }
    let own = env.get(vars.endpoint).filter(|e| !e.trim().is_empty());
    let (endpoint_var, endpoint) = match own {
        Some(endpoint) => (vars.endpoint, endpoint),
        None => match env.get(ENDPOINT_VAR).filter(|e| !e.trim().is_empty()) {
            Some(endpoint) => (ENDPOINT_VAR, endpoint),
            None => return Ok(None),
        },
    };
    let endpoint = endpoint.trim().to_string();
    if !is_http_url(&endpoint) {
        return Err(ConfigError::Invalid {
            var: endpoint_var,
            value: endpoint,
            expected: "an http:// or https:// URL with a host, such as \
                       http://127.0.0.1:4318 or https://otlp.example.com"
                .to_string(),
        });
    }
    let protocol = protocol(env, vars)?;
    let timeout = match env.get(vars.timeout) {
        Some(_) => env.number(vars.timeout, DEFAULT_TIMEOUT_MS, 1, 600_000)?,
        None => env.number(TIMEOUT_VAR, DEFAULT_TIMEOUT_MS, 1, 600_000)?,
    };
    if disabled {
        return Ok(None);
    }
    let endpoint = match (endpoint_var == ENDPOINT_VAR, protocol) {
        (true, Protocol::HttpBinary) => {
            format!("{}/v1/{}", endpoint.trim_end_matches('/'), vars.name)
        }
        _ => endpoint,
    };
    Ok(Some(Otlp {
        signal: vars.name,
        protocol,
        endpoint,
        endpoint_var,
        timeout: Duration::from_millis(timeout),
    }))
}

/// Where the OTLP receiver forwards what the function sent of `otlp`'s signal: `None` unless
/// the signal is exported over OTLP/HTTP. Its headers and compression are read as
/// opentelemetry-otlp reads them for the sidecar's own exporter of the signal.
fn forward_target(
    lookup: &impl Fn(&str) -> Option<String>,
    otlp: &Option<Otlp>,
) -> Result<Option<ForwardTarget>, ConfigError> {
    let Some(otlp) = otlp.as_ref().filter(|o| o.protocol == Protocol::HttpBinary) else {
        return Ok(None);
    };
    let (headers_var, compression_var) = match otlp.signal {
        "traces" => (HEADERS_VARS[1], COMPRESSION_VARS[1]),
        "metrics" => (HEADERS_VARS[2], COMPRESSION_VARS[2]),
        _ => (HEADERS_VARS[3], COMPRESSION_VARS[3]),
    };
    let headers = match lookup(headers_var) {
        Some(raw) => otlp_headers(headers_var, &raw)?,
        None => match lookup(HEADERS_VARS[0]) {
            Some(raw) => otlp_headers(HEADERS_VARS[0], &raw)?,
            None => Vec::new(),
        },
    };
    let mut compression = Compression::None;
    for var in [compression_var, COMPRESSION_VARS[0]] {
        if let Some(raw) = lookup(var) {
            compression = match raw.trim().to_ascii_lowercase().as_str() {
                "gzip" => Compression::Gzip,
                "none" | "" => Compression::None,
                _ => {
                    return Err(ConfigError::Invalid {
                        var,
                        value: raw,
                        expected: "gzip or none".to_string(),
                    });
                }
            };
            break;
        }
    }
    Ok(Some(ForwardTarget {
        endpoint: otlp.endpoint.clone(),
        headers,
        compression,
        timeout: otlp.timeout,
    }))
}

/// The variables that choose OTLP compression: the general one, and the per-signal ones that
/// replace it for their signal.
const COMPRESSION_VARS: [&str; 4] = [
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
    "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION",
    "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION",
];

/// An absolute `http` or `https` URL with a host: what an OTLP exporter can send to. Without
/// the check, `collector:4318` (no scheme) or `htp://…` started fine and every flush failed.
fn is_http_url(raw: &str) -> bool {
    raw.parse::<http::Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|host| !host.is_empty())
    })
}

/// The signal's protocol: its own variable, else the general one, else `http/protobuf`.
fn protocol(env: &Env<'_>, vars: &SignalVars) -> Result<Protocol, ConfigError> {
    let (var, raw): (&'static str, _) = match env.get(vars.protocol) {
        Some(v) => (vars.protocol, Some(v)),
        None => (PROTOCOL_VAR, env.get(PROTOCOL_VAR)),
    };
    match raw.as_deref().map(str::trim) {
        None | Some("http/protobuf") => Ok(Protocol::HttpBinary),
        #[cfg(feature = "grpc")]
        Some("grpc") => Ok(Protocol::Grpc),
        // gRPC export is an opt-in build (the `grpc` Cargo feature): refused here, at
        // init, rather than exporting nothing.
        #[cfg(not(feature = "grpc"))]
        Some("grpc") => Err(ConfigError::Invalid {
            var,
            value: "grpc".to_string(),
            expected: GRPC_NOT_BUILT.to_string(),
        }),
        Some(other) => Err(ConfigError::Invalid {
            var,
            value: other.to_string(),
            expected: "http/protobuf or grpc".to_string(),
        }),
    }
}

/// `OTEL_PROPAGATORS` (the specification's comma-separated list, default
/// `tracecontext,baggage`). The sidecar reads trace context, it injects none, and has two
/// parsers: `tracecontext` (a `/token` caller's `traceparent`) and `xray` (also
/// `xray-lambda`: the X-Ray context Lambda hands over). Unset, both are read. Set, those it
/// lists are read; `none` reads neither. Any other name (`baggage`, `b3`, `b3multi`,
/// `jaeger`, `ottrace`, or one the function's own SDK registered) is not an error, since the
/// function shares the variable, but a warning says it is ignored here.
fn propagators(raw: Option<String>, warnings: &mut Vec<String>) -> Propagators {
    let Some(raw) = raw.filter(|raw| !raw.trim().is_empty()) else {
        return Propagators::default();
    };
    let mut read = Propagators {
        tracecontext: false,
        xray: false,
    };
    let mut ignored = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name.to_ascii_lowercase().as_str() {
            "tracecontext" => read.tracecontext = true,
            "xray" | "xray-lambda" => read.xray = true,
            "none" => {}
            _ => ignored.push(name.chars().take(64).collect::<String>()),
        }
    }
    if !ignored.is_empty() {
        warnings.push(format!(
            "{PROPAGATORS_VAR}: {} ignored by lambda-sidecar, which reads only tracecontext \
             (a /token caller's traceparent) and xray (Lambda's X-Ray context)",
            ignored.join(", ")
        ));
    }
    read
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value` members separated by commas, values
/// percent-decoded (the W3C Baggage form, as the SDK specification says). A value with a
/// malformed member (no `=`, an empty key, a broken `%`) is discarded whole, with a warning,
/// as the specification says: the function's SDK, which reads the same variable, discards
/// it too.
fn resource_attributes(raw: Option<String>, warnings: &mut Vec<String>) -> Vec<(String, String)> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    let parsed: Option<Vec<(String, String)>> = raw
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|member| {
            let (key, value) = member.split_once('=')?;
            let key = key.trim();
            if key.is_empty() {
                return None;
            }
            Some((key.to_string(), percent_decode(value.trim())?))
        })
        .collect();
    parsed.unwrap_or_else(|| {
        warnings.push(format!(
            "{RESOURCE_VAR} discarded: a member is not key=value with a non-empty key and a \
             percent-encoded value"
        ));
        Vec::new()
    })
}

/// The variables that hold OTLP request headers: the general one, and the per-signal ones
/// that replace it for their signal (not merged, as the spec says).
const HEADERS_VARS: [&str; 4] = [
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
];

/// What an `OTEL_EXPORTER_OTLP_*HEADERS` variable holds, as the OTel spec defines it.
const HEADERS_FORM: &str = "comma-separated key=value pairs (the W3C Baggage list form, \
    without properties), each key an HTTP header name, each value non-empty and \
    percent-encoded where it needs it (%2C for a comma, %25 for a percent sign), such as \
    authorization=Bearer%20<token>,x-tenant=orders";

/// The headers an `OTEL_EXPORTER_OTLP_*HEADERS` value `raw` of `var` asks for, as (lowercase
/// name, percent-decoded value): members split at `,`, each at its first `=`, blanks around
/// members, keys and values trimmed, empty members skipped. opentelemetry-otlp reads the same
/// variables when it builds the exporters and splits them the same way, but skips without a
/// word a member with no `=`, an empty key or value, or what is not a valid header (and sends
/// a value whose percent-encoding is broken as written): `Authorization Bearer X` started
/// fine and sent nothing. Every such member is refused here instead, so what passes is what
/// the SDK sends. The check uses the `http` crate's `HeaderName` and `HeaderValue`, as the
/// SDK does. Errors name the variable, the member's position and, when it is a valid header
/// name, its key; never a value (they hold API keys and tokens).
pub fn otlp_headers(var: &'static str, raw: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let members: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    let count = members.len();
    let mut headers = Vec::with_capacity(count);
    for (i, member) in members.into_iter().enumerate() {
        let invalid = |what: String| ConfigError::Invalid {
            var,
            value: "<not shown>".to_string(),
            expected: format!("{HEADERS_FORM}; member {} of {count} {what}", i + 1),
        };
        let (key, value) = member
            .split_once('=')
            .ok_or_else(|| invalid("has no '=' between key and value".to_string()))?;
        let (key, value) = (key.trim(), value.trim());
        let name = http::HeaderName::from_bytes(key.as_bytes()).map_err(|_| {
            invalid(if key.is_empty() {
                "has an empty key".to_string()
            } else {
                "has a key that is not an HTTP header name (letters, digits and \
                 !#$%&'*+-.^_`|~, no spaces)"
                    .to_string()
            })
        })?;
        let what = |problem: &str| invalid(format!("({name}) {problem}"));
        if value.is_empty() {
            return Err(what("has an empty value"));
        }
        let decoded = percent_decode(value).ok_or_else(|| {
            what("has a '%' not followed by two hex digits, or encoding no UTF-8 text")
        })?;
        if http::HeaderValue::from_str(&decoded).is_err() {
            return Err(what("has a value with control characters once decoded"));
        }
        headers.push((name.as_str().to_string(), decoded));
    }
    Ok(headers)
}

/// `raw` with every `%XX` replaced by the byte it encodes; `None` when a `%` is not followed
/// by two hex digits or the bytes are not UTF-8.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The sampler's variables are read here, with every other variable; `sampling` keeps the
/// decision, pure.
impl Sampler {
    /// Reads `OTEL_TRACES_SAMPLER` (case-insensitive, as the spec says of enum values) and,
    /// for the ratio samplers, `OTEL_TRACES_SAMPLER_ARG` (default 1.0). Unlike the spec's
    /// "warn and use the default", an invalid value is a config error: silently exporting
    /// every trace (or none) is the surprise an operator pays for.
    pub fn parse(lookup: impl Fn(&str) -> Option<String>) -> Result<Sampler, ConfigError> {
        let name = match lookup(SAMPLER_VAR) {
            Some(v) if !v.trim().is_empty() => v,
            _ => return Ok(Sampler::default()),
        };
        let ratio = || -> Result<f64, ConfigError> {
            match lookup(SAMPLER_ARG_VAR) {
                Some(arg) if !arg.trim().is_empty() => match arg.trim().parse::<f64>() {
                    Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
                    _ => Err(ConfigError::Invalid {
                        var: SAMPLER_ARG_VAR,
                        value: arg,
                        expected: "a sampling probability between 0 and 1, e.g. 0.25".to_owned(),
                    }),
                },
                _ => Ok(1.0),
            }
        };
        let (parent_based, root) = match name.trim().to_ascii_lowercase().as_str() {
            "always_on" => (false, Root::AlwaysOn),
            "always_off" => (false, Root::AlwaysOff),
            "traceidratio" => (false, Root::Ratio(ratio()?)),
            "parentbased_always_on" => (true, Root::AlwaysOn),
            "parentbased_always_off" => (true, Root::AlwaysOff),
            "parentbased_traceidratio" => (true, Root::Ratio(ratio()?)),
            _ => {
                return Err(ConfigError::Invalid {
                    var: SAMPLER_VAR,
                    value: name,
                    expected: "always_on, always_off, traceidratio, parentbased_always_on, \
                               parentbased_always_off or parentbased_traceidratio"
                        .to_owned(),
                });
            }
        };
        Ok(Sampler { parent_based, root })
    }
}
