//! The one list of every environment variable the sidecar honours: those `config` parses
//! and, in a build with gRPC export, those the OpenTelemetry SDK reads for itself. The unknown-`SIDECAR_*` check and the
//! errors that must not show a value work from it, and a test checks that every variable a
//! parser looks up is listed here.

use Domain::{Aws, Lambda, Logging, Otlp, Receiver, Telemetry, Token};

/// The part of the configuration a variable belongs to: the file under `config/` that owns
/// it. Other parts may read it too: `AWS_LAMBDA_FUNCTION_NAME` is the default JWT subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// `token.rs`: the token service (`JWT_*`, its port, who may ask).
    Token,
    /// `aws.rs`: region, credentials and endpoints of the AWS key sources.
    Aws,
    /// `telemetry.rs`: the Telemetry API subscription, flushes, EMF, `/metrics`, OTLP export.
    Telemetry,
    /// `otlp.rs`: OTLP straight to AWS (SigV4, CloudWatch Logs headers, headers from a secret).
    Otlp,
    /// `lambda.rs`: what Lambda sets about the function and the execution environment.
    Lambda,
    /// `logging.rs`: the sidecar's own log lines.
    Logging,
    /// `receiver.rs`: the OTLP receiver for the function's own telemetry.
    Receiver,
}

/// Who reads a variable's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// `config` parses it.
    Config,
    /// Only the OpenTelemetry SDK reads it (opentelemetry-otlp's gRPC exporters). `config`
    /// lists it, and refuses a value that is not UTF-8.
    #[cfg(feature = "grpc")]
    OtelSdk,
}

/// One environment variable the sidecar honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    pub name: &'static str,
    pub domain: Domain,
    pub reader: Reader,
    /// Its value is, or may be, key material, so [`ConfigError::Invalid`] never shows it: a
    /// PEM pasted into `JWT_PRIVATE_KEY_FILE` by mistake would otherwise be echoed whole into
    /// the logs and the `init/error` body.
    ///
    /// [`ConfigError::Invalid`]: super::ConfigError::Invalid
    pub hidden: bool,
}

impl Variable {
    const fn new(name: &'static str, domain: Domain) -> Variable {
        Variable {
            name,
            domain,
            reader: Reader::Config,
            hidden: false,
        }
    }

    const fn hidden(self) -> Variable {
        Variable {
            hidden: true,
            ..self
        }
    }

    #[cfg(feature = "grpc")]
    const fn sdk(self) -> Variable {
        Variable {
            reader: Reader::OtelSdk,
            ..self
        }
    }
}

/// Every variable the sidecar honours. The `SIDECAR_*` ones come first, in the order the
/// unknown-variable error lists them.
pub const VARIABLES: &[Variable] = &[
    Variable::new("SIDECAR_PORT", Token),
    Variable::new("SIDECAR_LOG", Logging),
    Variable::new("SIDECAR_LOG_FORMAT", Logging),
    Variable::new("SIDECAR_TELEMETRY_TYPES", Telemetry),
    Variable::new("SIDECAR_TELEMETRY_BUFFER_MS", Telemetry),
    Variable::new("SIDECAR_TELEMETRY_PORT", Telemetry),
    Variable::new("SIDECAR_FLUSH_TIMEOUT_MS", Telemetry),
    Variable::new("SIDECAR_FLUSH_INTERVAL_MS", Telemetry),
    Variable::new("SIDECAR_TOKEN_AUTH", Token),
    Variable::new("SIDECAR_METRICS_ADDR", Telemetry),
    Variable::new("SIDECAR_EMF", Telemetry),
    Variable::new("SIDECAR_EMF_NAMESPACE", Telemetry),
    Variable::new("SIDECAR_FAAS_TRIGGER", Telemetry),
    Variable::new("SIDECAR_FLUSH_STRATEGY", Telemetry),
    Variable::new("SIDECAR_FLUSH_MAX_AGE_MS", Telemetry),
    Variable::new("SIDECAR_SELF_TRACES", Telemetry),
    Variable::new("SIDECAR_OTLP_SIGV4", Otlp),
    Variable::new("SIDECAR_OTLP_SIGV4_SERVICE", Otlp),
    Variable::new("SIDECAR_OTLP_SIGV4_REGION", Otlp),
    Variable::new("SIDECAR_OTLP_LOG_GROUP", Otlp),
    Variable::new("SIDECAR_OTLP_METRICS_WITH_EMF", Otlp),
    // Names a secret; as for JWT_KEY_SOURCE, a value pasted here by mistake is not shown.
    Variable::new("SIDECAR_OTLP_HEADERS_SOURCE", Otlp).hidden(),
    Variable::new("SIDECAR_OTLP_HEADERS_REFRESH_SECONDS", Otlp),
    Variable::new("SIDECAR_OTLP_RECEIVER", Receiver),
    Variable::new("SIDECAR_OTLP_RECEIVER_ADDR", Receiver),
    Variable::new("JWT_ALGORITHM", Token),
    Variable::new("JWT_SECRET", Token).hidden(),
    Variable::new("JWT_PRIVATE_KEY", Token).hidden(),
    Variable::new("JWT_PRIVATE_KEY_FILE", Token).hidden(),
    // Names a source, but a key pasted here by mistake must not be printed: its errors show
    // the scheme at most.
    Variable::new("JWT_KEY_SOURCE", Token).hidden(),
    Variable::new("JWT_KEY_REFRESH_SECONDS", Token),
    Variable::new("JWT_KMS_VERIFY_KEYS", Token),
    Variable::new("JWT_KEY_ID", Token),
    Variable::new("JWT_ISSUER", Token),
    Variable::new("JWT_JWKS_URI", Token),
    Variable::new("JWT_AUDIENCE", Token),
    Variable::new("JWT_DEFAULT_SUBJECT", Token),
    Variable::new("JWT_TTL_SECONDS", Token),
    Variable::new("JWT_MAX_TTL_SECONDS", Token),
    Variable::new("JWT_ALLOWED_CLAIMS", Token),
    Variable::new("JWT_TYP", Token),
    Variable::new("AWS_REGION", Aws),
    Variable::new("AWS_DEFAULT_REGION", Aws),
    Variable::new("AWS_ACCESS_KEY_ID", Aws),
    Variable::new("AWS_SECRET_ACCESS_KEY", Aws).hidden(),
    // Also what `/token` callers must send (`SIDECAR_TOKEN_AUTH`); the errors about it carry
    // no value, so it needs no hiding.
    Variable::new("AWS_SESSION_TOKEN", Aws),
    // What Lambda gives with SnapStart instead of the three above (and ECS or EKS give
    // `serve`). The token is also what `/token` callers send there; the errors about it
    // carry no value.
    Variable::new("AWS_CONTAINER_CREDENTIALS_FULL_URI", Aws),
    Variable::new("AWS_CONTAINER_AUTHORIZATION_TOKEN", Aws).hidden(),
    Variable::new("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", Aws),
    Variable::new("AWS_ENDPOINT_URL", Aws),
    Variable::new("AWS_ENDPOINT_URL_SECRETS_MANAGER", Aws),
    Variable::new("AWS_ENDPOINT_URL_SSM", Aws),
    Variable::new("AWS_ENDPOINT_URL_KMS", Aws),
    Variable::new("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", Aws),
    Variable::new("AWS_LAMBDA_RUNTIME_API", Lambda),
    Variable::new("AWS_LAMBDA_FUNCTION_NAME", Lambda),
    Variable::new("AWS_LAMBDA_FUNCTION_VERSION", Lambda),
    Variable::new("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", Lambda),
    Variable::new("AWS_LAMBDA_LOG_STREAM_NAME", Lambda),
    Variable::new("AWS_LAMBDA_LOG_GROUP_NAME", Lambda),
    Variable::new("AWS_LAMBDA_INITIALIZATION_TYPE", Lambda),
    Variable::new("OTEL_SERVICE_NAME", Telemetry),
    Variable::new("OTEL_TRACES_EXPORTER", Telemetry),
    Variable::new("OTEL_METRICS_EXPORTER", Telemetry),
    Variable::new("OTEL_LOGS_EXPORTER", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_ENDPOINT", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_PROTOCOL", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_CERTIFICATE", Telemetry),
    Variable::new(
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        Telemetry,
    ),
    Variable::new("OTEL_TRACES_SAMPLER", Telemetry),
    Variable::new("OTEL_TRACES_SAMPLER_ARG", Telemetry),
    Variable::new("OTEL_SDK_DISABLED", Telemetry),
    Variable::new("OTEL_PROPAGATORS", Telemetry),
    Variable::new("OTEL_RESOURCE_ATTRIBUTES", Telemetry),
    // Checked by config (a malformed one is refused), then read again by opentelemetry-otlp,
    // which sends what config accepted. API keys and tokens: never shown.
    Variable::new("OTEL_EXPORTER_OTLP_HEADERS", Telemetry).hidden(),
    Variable::new("OTEL_EXPORTER_OTLP_TRACES_HEADERS", Telemetry).hidden(),
    Variable::new("OTEL_EXPORTER_OTLP_METRICS_HEADERS", Telemetry).hidden(),
    Variable::new("OTEL_EXPORTER_OTLP_LOGS_HEADERS", Telemetry).hidden(),
    Variable::new("OTEL_EXPORTER_OTLP_TIMEOUT", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_COMPRESSION", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", Telemetry),
    Variable::new("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", Telemetry),
    // For an endpoint without a scheme; only the gRPC exporters read these.
    #[cfg(feature = "grpc")]
    Variable::new("OTEL_EXPORTER_OTLP_INSECURE", Telemetry).sdk(),
    #[cfg(feature = "grpc")]
    Variable::new("OTEL_EXPORTER_OTLP_TRACES_INSECURE", Telemetry).sdk(),
    #[cfg(feature = "grpc")]
    Variable::new("OTEL_EXPORTER_OTLP_METRICS_INSECURE", Telemetry).sdk(),
    #[cfg(feature = "grpc")]
    Variable::new("OTEL_EXPORTER_OTLP_LOGS_INSECURE", Telemetry).sdk(),
];

/// Every `SIDECAR_*` variable, from [`VARIABLES`]. Any other name with that prefix is
/// refused: `SIDECAR_PROT=4000` is a typo, not a wish to keep the default port.
pub const SIDECAR_VARIABLES: &[&str] = &SIDECAR_NAMES;

const SIDECAR_NAMES: [&str; count_sidecar()] = sidecar_names();

/// The variable named `name`, if the sidecar honours it.
pub fn variable(name: &str) -> Option<&'static Variable> {
    VARIABLES.iter().find(|v| v.name == name)
}

const fn is_sidecar(name: &str) -> bool {
    let (name, prefix) = (name.as_bytes(), b"SIDECAR_");
    if name.len() < prefix.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if name[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn count_sidecar() -> usize {
    let (mut i, mut count) = (0, 0);
    while i < VARIABLES.len() {
        if is_sidecar(VARIABLES[i].name) {
            count += 1;
        }
        i += 1;
    }
    count
}

const fn sidecar_names<const N: usize>() -> [&'static str; N] {
    let mut names = [""; N];
    let (mut i, mut n) = (0, 0);
    while i < VARIABLES.len() {
        if is_sidecar(VARIABLES[i].name) {
            names[n] = VARIABLES[i].name;
            n += 1;
        }
        i += 1;
    }
    names
}
