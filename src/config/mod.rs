//! Configuration: every environment variable the sidecar honours is listed in [`VARIABLES`],
//! read here and nowhere else, and handed out as plain typed values:
//!
//! - [`Config`]: what every mode needs (the token service, the sidecar's own logs, the
//!   telemetry settings), parsed once.
//! - [`ExportConfig`]: the OTLP export and its sampler (`OTEL_*`), read by the extension
//!   alone, after `Config`: `serve` and the print commands export nothing.
//! - [`Lambda`]: what Lambda sets (the function, the Runtime API, the initialization type).
//!   Never refused, so that the extension can still register, and report a `Config` error
//!   through `init/error`.
//!
//! The sidecar shares its environment with the function it runs beside, so a typo must not
//! silently turn into a default: an invalid value, or an unknown `SIDECAR_*` name, stops
//! start-up with a [`ConfigError`] that names the variable and what it accepts. In extension
//! mode that error is reported to Lambda through `init/error`, with [`ConfigError::error_type`]
//! as its `Lambda-Extension-Function-Error-Type`.
//!
//! Every parser reads through a lookup function, so tests need no process environment; the
//! process environment itself is read in one place, `ProcessEnv::read`. This module only
//! parses text into plain values, and imports nothing from `token`: keys are turned into
//! signing keys by `token::keys`, whose errors name the variable or the key source too.
//!
//! One file per domain: `token` (`JWT_*`, the key source, `/token`'s caller check), `aws`
//! (the region, credentials — the variables, or the container credentials endpoint that
//! SnapStart gives instead — and endpoints of the AWS key sources), `telemetry` (the
//! Telemetry API subscription, flushes, EMF, `/metrics`, and `ExportConfig`), `otlp` (OTLP
//! straight to AWS: SigV4 signing, CloudWatch Logs headers, exporter headers from a secret),
//! `receiver` (the OTLP receiver's switch and address), `lambda`,
//! `logging` (the sidecar's own log lines); `lookup` has the typed accessors they parse
//! through, `variables` the list.

mod aws;
mod lambda;
mod logging;
mod lookup;
mod otlp;
mod receiver;
mod telemetry;
#[cfg(test)]
mod tests;
mod token;
mod variables;

use std::ffi::OsString;
use std::net::SocketAddr;

pub use aws::{
    AwsCredentials, AwsService, AwsSettings, ContainerAuthorization, ContainerCredentials,
    SecretRef, container_uri,
};
pub use lambda::Lambda;
pub use logging::{LogConfig, LogFormat};
use lookup::Env;
pub use otlp::{HeadersSource, LogDestination, OtlpAws, OtlpSignal, SigV4Mode, SigV4Target};
pub use receiver::{DEFAULT_RECEIVER_ADDR, ReceiverConfig};
pub use telemetry::{
    Compression, ExportConfig, FAAS_TRIGGERS, FLUSH_STRATEGIES, FlushStrategy, ForwardTarget, Otlp,
    TelemetryConfig, otlp_headers,
};
pub use token::{
    Algorithm, KeyMaterial, KeySource, SIDECAR_CLAIMS, TokenAuth, TokenConfig, is_https_url,
};
pub use variables::{Domain, Reader, SIDECAR_VARIABLES, VARIABLES, Variable, variable};

/// Ports another party already owns inside a Lambda execution environment: 9001 (Runtime
/// API), 9002/9003 (the lambda-extension crate's listeners), 3000 (Lambda Insights), 2773
/// (Parameters and Secrets extension), 4317/4318 (OpenTelemetry collector layers).
pub const RESERVED_PORTS: &[u16] = &[9001, 9002, 9003, 3000, 2773, 4317, 4318];

/// The whole configuration, parsed and validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Port of the token service on 127.0.0.1 (`SIDECAR_PORT`).
    pub port: u16,
    pub log: LogConfig,
    pub token: TokenConfig,
    pub telemetry: TelemetryConfig,
    /// `SIDECAR_METRICS_ADDR`: in `serve` mode only, a second listener serving `/metrics` alone,
    /// without the `X-Sidecar-Token` header, for a Prometheus outside the container.
    pub metrics_addr: Option<SocketAddr>,
    /// `SIDECAR_EMF=on`: the CloudWatch namespace (`SIDECAR_EMF_NAMESPACE`) of the EMF lines
    /// written to stdout. `None` (the default): no EMF, because every line is billed as log
    /// ingestion and every metric × dimension set as a custom metric (docs/signals.md,
    /// "CloudWatch EMF").
    pub emf_namespace: Option<String>,
    /// The OTLP receiver for the function's own telemetry (`SIDECAR_OTLP_RECEIVER*`), when
    /// on; extension mode only.
    pub receiver: Option<ReceiverConfig>,
    /// What start-up should say but not refuse: a `JWT_*` or `OTEL_*` name one typo away
    /// from one the sidecar reads ([`near_misses`]). Logged once logging is set up.
    pub warnings: Vec<String>,
}

/// A configuration value the sidecar refuses to start with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The value is echoed, except for the [`hidden`](Variable::hidden) variables.
    #[error("{var}={} is not valid: expected {expected}", shown(.var, .value))]
    Invalid {
        var: &'static str,
        value: String,
        expected: String,
    },
    #[error("{var} is required: {why}")]
    Missing {
        var: &'static str,
        why: &'static str,
    },
    /// The value is not echoed: it is a secret.
    #[error("JWT_SECRET is refused: {reason}")]
    WeakSecret { reason: String },
    #[error("{var} is not a usable key for {algorithm}: {reason}")]
    InvalidKey {
        var: &'static str,
        algorithm: &'static str,
        reason: String,
    },
    #[error("{var} is not a variable lambda-sidecar knows; {known}")]
    Unknown { var: String, known: String },
    /// The raw bytes are not echoed: they may be key material, and they would garble the log.
    #[error("{var} is not valid: its value is not UTF-8 text (not shown); expected UTF-8 text")]
    NotUtf8 { var: String },
    /// Every error of one configuration, so that a fresh setup is fixed in one go rather
    /// than one start-up per mistake. Never empty, never of one (that one is returned as
    /// itself), never nested.
    #[error("{} configuration errors: {}", .0.len(), numbered(.0))]
    Several(Vec<ConfigError>),
}

/// `1) …; 2) …`: the errors of [`ConfigError::Several`] on one line (a log line, an
/// `init/error` message).
fn numbered(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{}) {e}", i + 1))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Collects configuration errors, so that parsing goes on past the first and reports them
/// all ([`ConfigError::Several`]).
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<ConfigError>);

impl Errors {
    /// The value of `result`, or `None` with its error kept (once: the general OTLP
    /// variables are read for each signal, and one mistake is one error).
    pub(crate) fn take<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(ConfigError::Several(errors)) => {
                errors.into_iter().for_each(|e| self.push(e));
                None
            }
            Err(error) => {
                self.push(error);
                None
            }
        }
    }

    fn push(&mut self, error: ConfigError) {
        if !self.0.contains(&error) {
            self.0.push(error);
        }
    }

    /// `Ok` when nothing was kept; else the one error, or all of them.
    pub(crate) fn into_result(mut self) -> Result<(), ConfigError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => Err(ConfigError::Several(self.0)),
        }
    }
}

/// Name prefixes of every variable the sidecar, or the OpenTelemetry SDK inside it, reads.
/// A value under one of these that is not UTF-8 is a config error rather than "unset".
const READ_PREFIXES: &[&str] = &["SIDECAR_", "JWT_", "OTEL_", "AWS_"];

/// How an [`ConfigError::Invalid`] shows `value`: not at all for a hidden variable, and
/// without the user info of a URL (`https://user:password@host` is how some endpoints carry
/// credentials; JWT_JWKS_URI and JWT_ISSUER refuse it, and would otherwise print it).
fn shown(var: &str, value: &str) -> String {
    if variable(var).is_some_and(|v| v.hidden) {
        return "<not shown>".to_string();
    }
    let redacted = value.split_once("://").and_then(|(scheme, rest)| {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        let (_, host) = authority.rsplit_once('@')?;
        let tail = &rest[authority.len()..];
        Some(format!("{scheme}://<user info not shown>@{host}{tail}"))
    });
    format!("{:?}", redacted.as_deref().unwrap_or(value))
}

impl ConfigError {
    /// The `Lambda-Extension-Function-Error-Type` reported through `init/error`
    /// (`Category.Reason`, as Lambda documents).
    pub fn error_type(&self) -> &'static str {
        match self {
            ConfigError::Invalid { .. } => "Config.InvalidValue",
            ConfigError::Missing { .. } => "Config.MissingValue",
            ConfigError::WeakSecret { .. } => "Config.InvalidSecret",
            ConfigError::InvalidKey { .. } => "Config.InvalidKey",
            ConfigError::Unknown { .. } => "Config.UnknownVariable",
            ConfigError::NotUtf8 { .. } => "Config.InvalidValue",
            ConfigError::Several(errors) => errors
                .first()
                .map_or("Config.InvalidValue", ConfigError::error_type),
        }
    }

    /// `first` and `second` together: both results' errors, all of them, or both values.
    /// For the extension, which parses [`Config`] and [`ExportConfig`] apart but reports
    /// their errors at once.
    pub fn both<A, B>(
        first: Result<A, ConfigError>,
        second: Result<B, ConfigError>,
    ) -> Result<(A, B), ConfigError> {
        let mut errors = Errors::default();
        let (a, b) = (errors.take(first), errors.take(second));
        errors.into_result()?;
        match (a, b) {
            (Some(a), Some(b)) => Ok((a, b)),
            // Both are `Some` when no error was kept.
            _ => Err(ConfigError::Several(Vec::new())),
        }
    }
}

impl Config {
    /// Parses the configuration from `lookup` (the process environment in production, a map in
    /// tests). `vars` lists every variable name present, to catch unknown `SIDECAR_*` names.
    pub fn parse<'a>(
        lookup: impl Fn(&str) -> Option<String>,
        vars: impl IntoIterator<Item = &'a str>,
    ) -> Result<Config, ConfigError> {
        let names: Vec<&str> = vars.into_iter().collect();
        let mut errors = Errors::default();
        for var in &names {
            if var.starts_with("SIDECAR_") && !SIDECAR_VARIABLES.contains(var) {
                let known = match suggestion(var) {
                    Some(near) => format!("did you mean {near}? Known SIDECAR_ variables: "),
                    None => "known SIDECAR_ variables: ".to_string(),
                };
                errors.push(ConfigError::Unknown {
                    var: var.to_string(),
                    known: known + &SIDECAR_VARIABLES.join(", "),
                });
            }
        }
        let env = Env(&lookup);
        let port = errors.take(env.port("SIDECAR_PORT", 3003));
        let log = errors.take(logging::log_config(&env));
        let token = errors.take(token::token_config(&env));
        let telemetry = errors.take(telemetry::telemetry_config(&env));
        let metrics_addr = errors.take(telemetry::metrics_addr(&env));
        let emf_namespace = errors.take(telemetry::emf_namespace(&env));
        let receiver = errors.take(receiver::receiver_config(&env));
        errors.into_result()?;
        match (
            port,
            log,
            token,
            telemetry,
            metrics_addr,
            emf_namespace,
            receiver,
        ) {
            (
                Some(port),
                Some(log),
                Some(token),
                Some(telemetry),
                Some(metrics_addr),
                Some(emf_namespace),
                Some(receiver),
            ) => Ok(Config {
                port,
                log,
                token,
                telemetry,
                metrics_addr,
                emf_namespace,
                receiver,
                warnings: near_misses(&names),
            }),
            // Every part is `Some` when no error was kept.
            _ => Err(ConfigError::Several(Vec::new())),
        }
    }

    /// Refuses what only `lambda-sidecar serve` can use. Nothing outside a Lambda execution
    /// environment can connect to it, so `SIDECAR_METRICS_ADDR` there would be a listener no
    /// Prometheus can reach: a mistake to report, not a setting to ignore.
    pub fn check_extension_mode(&self) -> Result<(), ConfigError> {
        match self.metrics_addr {
            None => Ok(()),
            Some(addr) => Err(ConfigError::Invalid {
                var: "SIDECAR_METRICS_ADDR",
                value: addr.to_string(),
                expected: "unset inside Lambda, where nothing outside the execution environment \
                           can connect: it is for `lambda-sidecar serve`. Scrape /metrics on \
                           127.0.0.1:SIDECAR_PORT (with X-Sidecar-Token), or export over OTLP"
                    .to_string(),
            }),
        }
    }

    /// Parses the process environment. A variable the sidecar reads whose value is not UTF-8
    /// is refused first: read as text it would be unset, and a default would silently take
    /// its place.
    pub fn from_env() -> Result<Config, ConfigError> {
        let env = ProcessEnv::read();
        Config::from_process_env(&env, |k| env.get(k))
    }

    /// [`Config::from_env`] for the commands that print what relying parties need (`jwks`,
    /// `openid-configuration`) and serve nothing: `/token`'s session token (and so
    /// `SIDECAR_TOKEN_AUTH`) plays no part, and a deploy step has none to give. Everything
    /// else, the key above all, is parsed and refused exactly as when serving.
    pub fn from_env_to_publish() -> Result<Config, ConfigError> {
        let env = ProcessEnv::read();
        Config::from_process_env(&env, |k| match k {
            "SIDECAR_TOKEN_AUTH" => Some("off".to_string()),
            _ => env.get(k),
        })
    }

    /// The process environment's names, read through `lookup`.
    fn from_process_env(
        env: &ProcessEnv,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        check_utf8(&env.0)?;
        Config::parse(lookup, env.names())
    }
}

/// The process environment. [`ProcessEnv::read`] is the one place the sidecar reads
/// `std::env`: everything else parses through a lookup function, so that tests need no
/// process environment and no other module reads a variable of its own.
struct ProcessEnv(Vec<(OsString, OsString)>);

impl ProcessEnv {
    fn read() -> ProcessEnv {
        ProcessEnv(std::env::vars_os().collect())
    }

    /// The value of `name`: `None` when unset or not UTF-8 (which [`check_utf8`] refuses,
    /// for the variables the sidecar reads).
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k.as_os_str() == name)
            .and_then(|(_, v)| v.to_str())
            .map(str::to_owned)
    }

    /// Every name that is UTF-8: a name that is not can't be one the sidecar reads.
    fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|(k, _)| k.to_str())
    }
}

/// Refuses the first variable under [`READ_PREFIXES`] whose value is not UTF-8. A name that
/// is not UTF-8 itself can't be one the sidecar reads, so it is skipped.
fn check_utf8(vars: &[(OsString, OsString)]) -> Result<(), ConfigError> {
    for (name, value) in vars {
        if let Some(name) = name.to_str()
            && READ_PREFIXES.iter().any(|p| name.starts_with(p))
            && value.to_str().is_none()
        {
            return Err(ConfigError::NotUtf8 {
                var: name.to_string(),
            });
        }
    }
    Ok(())
}

/// The prefixes whose names [`near_misses`] checks. `JWT_*` and `OTEL_*` are shared with the
/// function (its own OpenTelemetry SDK reads `OTEL_*` names the sidecar does not), so a
/// near miss there is a warning; an unknown `SIDECAR_*` name is an error, with the same
/// suggestion.
const CHECKED_PREFIXES: &[&str] = &["JWT_", "OTEL_"];

/// A warning for each `JWT_*` or `OTEL_*` name in `names` that the sidecar does not read
/// but that is one or two edits from one it does (`JWT_AUDIENCES`,
/// `OTEL_EXPORTER_OTLP_ENDPIONT`): as written it is silently ignored, and the default
/// takes its place.
pub fn near_misses(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|name| {
            CHECKED_PREFIXES.iter().any(|p| name.starts_with(p)) && variable(name).is_none()
        })
        .filter_map(|name| {
            let near = suggestion(name)?;
            Some(format!(
                "{name} is not a variable lambda-sidecar reads (did you mean {near}?); \
                 it is ignored"
            ))
        })
        .collect()
}

/// The known variable closest to `name`, when it is close enough to be a typo: at most one
/// edit for names up to 10 characters, two beyond (an edit: a character added, removed,
/// replaced, or two neighbours swapped).
fn suggestion(name: &str) -> Option<&'static str> {
    let limit = if name.len() <= 10 { 1 } else { 2 };
    VARIABLES
        .iter()
        .map(|v| (edit_distance(name, v.name), v.name))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

/// The optimal-string-alignment distance between `a` and `b` (Levenshtein, with a swap of
/// two neighbouring characters as one edit): what a typo costs. Bytes, as variable names
/// are ASCII.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    // Three rows of the dynamic-programming table: two back, one back, this one.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            current[j] = best;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}
