//! Configuration: every environment variable the sidecar reads, parsed once into one typed
//! [`Config`].
//!
//! The sidecar shares its environment with the function it runs beside, so a typo must not
//! silently turn into a default: an invalid value, or an unknown `SIDECAR_*` name, stops
//! start-up with a [`ConfigError`] that names the variable and what it accepts. In extension
//! mode that error is reported to Lambda through `init/error`, with [`ConfigError::error_type`]
//! as its `Lambda-Extension-Function-Error-Type`.
//!
//! This module only parses text into plain values, and imports nothing from `token`: keys are
//! turned into signing keys by `token::keys`, whose errors
//! name the variable or the key source too.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

/// Claims only the sidecar sets. A request that names one is refused, never silently ignored
/// (`token::claims`), and `JWT_ALLOWED_CLAIMS` may not name one. Defined here, as plain data,
/// so that `config` depends on nothing in `token`.
pub const SIDECAR_CLAIMS: &[&str] = &["iss", "exp", "iat", "nbf", "jti"];

/// `JWT_ALGORITHM`, parsed: the algorithms the sidecar signs with. Plain data; `token::keys`
/// turns it into a signer.
/// `none` and anything else are not representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    ES256,
    ES384,
    RS256,
    PS256,
    EdDSA,
}

impl Algorithm {
    pub const ALL: [Algorithm; 8] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::EdDSA,
    ];

    /// The JOSE `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }
}

/// Every `SIDECAR_*` variable the sidecar knows. Any other name with that prefix is refused:
/// `SIDECAR_PROT=4000` is a typo, not a wish to keep the default port.
pub const SIDECAR_VARIABLES: &[&str] = &[
    "SIDECAR_PORT",
    "SIDECAR_LOG",
    "SIDECAR_LOG_FORMAT",
    "SIDECAR_TELEMETRY_TYPES",
    "SIDECAR_TELEMETRY_BUFFER_MS",
    "SIDECAR_TELEMETRY_PORT",
    "SIDECAR_FLUSH_TIMEOUT_MS",
    "SIDECAR_FLUSH_INTERVAL_MS",
    "SIDECAR_TOKEN_AUTH",
    "SIDECAR_METRICS_ADDR",
    "SIDECAR_EMF",
    "SIDECAR_EMF_NAMESPACE",
    "SIDECAR_FAAS_TRIGGER",
];

/// `faas.trigger`'s well-known values (OpenTelemetry semantic conventions, FaaS spans):
/// what caused the invocations. The sidecar cannot see the event, so the user says which
/// applies (`SIDECAR_FAAS_TRIGGER`, default `other`, "if none of the others apply").
pub const FAAS_TRIGGERS: [&str; 5] = ["datasource", "http", "pubsub", "timer", "other"];

/// `SIDECAR_EMF_NAMESPACE`, default `LambdaSidecar`: CloudWatch accepts 1 to 255 characters
/// from letters, digits and `.-_/#: ` (at least one not a space), and reserves the `AWS/`
/// prefix for its own services. A namespace it refuses would drop every line silently.
fn emf_namespace(raw: Option<String>) -> Result<String, ConfigError> {
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
    /// ingestion and every metric × dimension set as a custom metric (README, "CloudWatch EMF").
    pub emf_namespace: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// An `EnvFilter` directive string (`SIDECAR_LOG`, RUST_LOG syntax).
    pub filter: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line: what CloudWatch Logs Insights queries best.
    Json,
    /// Human-readable lines for local development.
    Text,
}

/// What the token service needs to mint tokens. The key material is kept as given; it is
/// parsed into a signing key once, by `token::keys::SigningKey::load`.
#[derive(Clone)]
pub struct TokenConfig {
    pub algorithm: Algorithm,
    /// `JWT_KEY_SOURCE`, with the key material itself for `env`.
    pub key: KeySource,
    /// `JWT_KEY_REFRESH_SECONDS`: how often a Secrets Manager or SSM key is re-read, at most.
    pub key_refresh: Duration,
    /// `JWT_KMS_VERIFY_KEYS`: more KMS keys whose public keys the JWKS publishes.
    pub kms_verify_keys: Vec<String>,
    /// Region, credentials and endpoints, for the AWS key sources only.
    pub aws: Option<AwsSettings>,
    /// `JWT_KEY_ID`; when absent the kid is derived from the public key (RFC 7638).
    pub key_id: Option<String>,
    pub issuer: String,
    /// `JWT_AUDIENCE`: the audiences a caller may ask for; the first is the default.
    pub audiences: Vec<String>,
    pub default_subject: String,
    pub ttl: u64,
    pub max_ttl: u64,
    /// Extra claims a caller may set through `POST /token`.
    pub allowed_claims: BTreeSet<String>,
    /// `JWT_TYP`: the JOSE header's `typ`, e.g. `at+jwt` for RFC 9068 access tokens.
    pub typ: String,
    /// Who may ask for a token (`SIDECAR_TOKEN_AUTH`).
    pub auth: TokenAuth,
    /// `JWT_JWKS_URI`: the public https URL where the JWKS is published for relying parties
    /// outside the sandbox. Set, it makes the OIDC discovery document buildable (see
    /// `token::discovery`), which also needs `JWT_ISSUER` to be an https URL: both are
    /// checked here, so a half-configured issuer fails at start, not at a relying party.
    pub jwks_uri: Option<String>,
}

/// How `/token` tells the function from anything else that can reach 127.0.0.1, such as a
/// server-side request forgery through the function's own HTTP client.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenAuth {
    /// `X-Sidecar-Token` must equal this value, the `AWS_SESSION_TOKEN` Lambda gives the
    /// function and every extension: a per-environment secret that a URL cannot carry.
    SessionToken(String),
    /// `SIDECAR_TOKEN_AUTH=off`: any local caller gets a token, as before the header existed.
    Off,
}

impl std::fmt::Debug for TokenAuth {
    /// Written by hand so that the session token never reaches a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenAuth::SessionToken(_) => "SessionToken(<redacted>)",
            TokenAuth::Off => "Off",
        })
    }
}

impl std::fmt::Debug for TokenConfig {
    /// Written by hand so that a secret never reaches a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("algorithm", &self.algorithm)
            .field("key", &self.key.describe())
            .field("key_refresh", &self.key_refresh)
            .field("kms_verify_keys", &self.kms_verify_keys)
            .field("aws", &self.aws)
            .field("key_id", &self.key_id)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("default_subject", &self.default_subject)
            .field("ttl", &self.ttl)
            .field("max_ttl", &self.max_ttl)
            .field("allowed_claims", &self.allowed_claims)
            .field("typ", &self.typ)
            .field("auth", &self.auth)
            .field("jwks_uri", &self.jwks_uri)
            .finish()
    }
}

/// `JWT_KEY_SOURCE`: where the signing key comes from. Only names here; `token::source`
/// fetches.
#[derive(Clone)]
pub enum KeySource {
    /// `env` (the default): `JWT_SECRET`, `JWT_PRIVATE_KEY` or `JWT_PRIVATE_KEY_FILE`.
    Env(KeyMaterial),
    /// `secretsmanager:<secret id or ARN>`: an HMAC secret or a PEM in `SecretString`.
    SecretsManager(String),
    /// `ssm:<parameter name>`: the same in a SecureString parameter.
    Ssm(String),
    /// `kms:<key id, ARN or alias>`: KMS signs; the private key never enters the sandbox.
    Kms(String),
}

impl KeySource {
    /// What errors and logs call it: `env`, or `kind:id` (an id is not secret).
    pub fn describe(&self) -> String {
        match self {
            KeySource::Env(_) => "env".to_string(),
            KeySource::SecretsManager(id) => format!("secretsmanager:{id}"),
            KeySource::Ssm(name) => format!("ssm:{name}"),
            KeySource::Kms(key) => format!("kms:{key}"),
        }
    }
}

/// Which AWS service an endpoint is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsService {
    SecretsManager,
    Ssm,
    Kms,
}

impl AwsService {
    /// The SigV4 signing name, which is also the first label of the default endpoint.
    pub fn signing_name(self) -> &'static str {
        match self {
            AwsService::SecretsManager => "secretsmanager",
            AwsService::Ssm => "ssm",
            AwsService::Kms => "kms",
        }
    }

    /// The service-specific endpoint variable, as the AWS SDKs name it.
    fn endpoint_variable(self) -> &'static str {
        match self {
            AwsService::SecretsManager => "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            AwsService::Ssm => "AWS_ENDPOINT_URL_SSM",
            AwsService::Kms => "AWS_ENDPOINT_URL_KMS",
        }
    }
}

/// Region, credentials and endpoint of the one AWS service a key source talks to, from the
/// variables Lambda gives every extension.
#[derive(Clone)]
pub struct AwsSettings {
    pub service: AwsService,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// `AWS_ENDPOINT_URL_<SERVICE>`, else `AWS_ENDPOINT_URL`, else the public endpoint.
    pub endpoint: String,
}

impl std::fmt::Debug for AwsSettings {
    /// Written by hand so that the credentials never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSettings")
            .field("service", &self.service)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Key material as configured, not yet parsed.
#[derive(Clone)]
pub enum KeyMaterial {
    /// `JWT_SECRET`, for the HS* algorithms.
    Secret(Vec<u8>),
    /// A PEM private key, for the asymmetric algorithms; `source` names where it came from.
    Pem { pem: Vec<u8>, source: &'static str },
}

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
}

/// A configuration value the sidecar refuses to start with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The value is echoed, except for the variables in [`KEY_VARIABLES`].
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
    #[error("{var} is not a variable lambda-sidecar knows; known SIDECAR_ variables: {known}")]
    Unknown { var: String, known: String },
    /// The raw bytes are not echoed: they may be key material, and they would garble the log.
    #[error("{var} is not valid: its value is not UTF-8 text (not shown); expected UTF-8 text")]
    NotUtf8 { var: String },
}

/// Variables whose value is, or may be, key material. [`ConfigError::Invalid`] never shows
/// their value: a PEM pasted into `JWT_PRIVATE_KEY_FILE` by mistake would otherwise be echoed
/// whole into the logs and the `init/error` body.
pub const KEY_VARIABLES: &[&str] = &[
    "JWT_SECRET",
    "JWT_PRIVATE_KEY",
    "JWT_PRIVATE_KEY_FILE",
    "AWS_SECRET_ACCESS_KEY",
];

/// Name prefixes of every variable the sidecar, or the OpenTelemetry SDK inside it, reads.
/// A value under one of these that is not UTF-8 is a config error rather than "unset".
const READ_PREFIXES: &[&str] = &["SIDECAR_", "JWT_", "OTEL_", "AWS_"];

fn shown(var: &str, value: &str) -> String {
    if KEY_VARIABLES.contains(&var) {
        "<not shown>".to_string()
    } else {
        format!("{value:?}")
    }
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
        for var in vars {
            if var.starts_with("SIDECAR_") && !SIDECAR_VARIABLES.contains(&var) {
                return Err(ConfigError::Unknown {
                    var: var.to_string(),
                    known: SIDECAR_VARIABLES.join(", "),
                });
            }
        }
        let env = Env(&lookup);
        Ok(Config {
            port: env.port("SIDECAR_PORT", 3003)?,
            log: LogConfig {
                filter: match env.get("SIDECAR_LOG") {
                    None => "info".to_string(),
                    Some(filter) => match tracing_subscriber::EnvFilter::try_new(&filter) {
                        Ok(_) => filter,
                        Err(e) => {
                            return Err(ConfigError::Invalid {
                                var: "SIDECAR_LOG",
                                value: filter,
                                expected: format!(
                                    "a RUST_LOG-style filter such as info or lambda_sidecar=debug ({e})"
                                ),
                            });
                        }
                    },
                },
                format: env.choice(
                    "SIDECAR_LOG_FORMAT",
                    &[("json", LogFormat::Json), ("text", LogFormat::Text)],
                    // JSON inside Lambda (CloudWatch), text on a developer's terminal.
                    if env.get("AWS_LAMBDA_FUNCTION_NAME").is_some() {
                        LogFormat::Json
                    } else {
                        LogFormat::Text
                    },
                )?,
            },
            token: token_config(&env)?,
            telemetry: telemetry_config(&env)?,
            metrics_addr: match env.get("SIDECAR_METRICS_ADDR") {
                None => None,
                Some(raw) => Some(
                    raw.trim()
                        .parse::<SocketAddr>()
                        .ok()
                        .filter(|addr| addr.port() != 0)
                        .ok_or_else(|| ConfigError::Invalid {
                            var: "SIDECAR_METRICS_ADDR",
                            value: raw,
                            expected: "an IP address and a port from 1 to 65535, such as \
                                       0.0.0.0:9464 or [::]:9464"
                                .to_string(),
                        })?,
                ),
            },
            emf_namespace: match env.choice(
                "SIDECAR_EMF",
                &[("on", true), ("off", false)],
                false,
            )? {
                false => None,
                true => Some(emf_namespace(env.get("SIDECAR_EMF_NAMESPACE"))?),
            },
        })
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
    /// is refused first: `std::env::var` would report it as unset, and a default would
    /// silently take its place.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_process_env(|k| std::env::var(k).ok())
    }

    /// [`Config::from_env`] for the commands that print what relying parties need (`jwks`,
    /// `openid-configuration`) and serve nothing: `/token`'s session token (and so
    /// `SIDECAR_TOKEN_AUTH`) plays no part, and a deploy step has none to give. Everything
    /// else, the key above all, is parsed and refused exactly as when serving.
    pub fn from_env_to_publish() -> Result<Config, ConfigError> {
        Config::from_process_env(|k| match k {
            "SIDECAR_TOKEN_AUTH" => Some("off".to_string()),
            _ => std::env::var(k).ok(),
        })
    }

    /// The process environment's names, read through `lookup`.
    fn from_process_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        check_utf8(std::env::vars_os())?;
        let names: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect();
        Config::parse(lookup, names.iter().map(String::as_str))
    }
}

/// Refuses the first variable under [`READ_PREFIXES`] whose value is not UTF-8. A name that
/// is not UTF-8 itself can't be one the sidecar reads, so it is skipped.
fn check_utf8(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<(), ConfigError> {
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

/// `JWT_KEY_SOURCE`: `None` for `env` (the default), else the remote source, after checking
/// that no local key is set beside it and that the algorithm fits it.
fn key_source(env: &Env<'_>, algorithm: Algorithm) -> Result<Option<KeySource>, ConfigError> {
    const EXPECTED: &str = "env, secretsmanager:<secret id or ARN>, ssm:<parameter name> or \
                            kms:<key id, ARN or alias>";
    let Some(raw) = env.get("JWT_KEY_SOURCE") else {
        return Ok(None);
    };
    let invalid = |expected: String| ConfigError::Invalid {
        var: "JWT_KEY_SOURCE",
        value: raw.clone(),
        expected,
    };
    let trimmed = raw.trim();
    if trimmed.eq_ignore_ascii_case("env") {
        return Ok(None);
    }
    let (kind, id) = trimmed
        .split_once(':')
        .ok_or_else(|| invalid(EXPECTED.to_string()))?;
    if !valid_aws_id(id) {
        return Err(invalid(format!(
            "{EXPECTED}, with a non-empty id of printable characters without spaces"
        )));
    }
    let source = match kind.to_ascii_lowercase().as_str() {
        "secretsmanager" => KeySource::SecretsManager(id.to_string()),
        "ssm" => KeySource::Ssm(id.to_string()),
        "kms" => KeySource::Kms(id.to_string()),
        _ => return Err(invalid(EXPECTED.to_string())),
    };
    if let Some(var) = ["JWT_SECRET", "JWT_PRIVATE_KEY", "JWT_PRIVATE_KEY_FILE"]
        .into_iter()
        .find(|v| env.get(v).is_some())
    {
        return Err(ConfigError::Invalid {
            var,
            value: "<set>".to_string(),
            expected: format!(
                "unset when JWT_KEY_SOURCE={} (the key comes from there)",
                source.describe()
            ),
        });
    }
    if let KeySource::Kms(_) = source
        && !matches!(
            algorithm,
            Algorithm::ES256 | Algorithm::ES384 | Algorithm::RS256 | Algorithm::PS256
        )
    {
        return Err(ConfigError::Invalid {
            var: "JWT_ALGORITHM",
            value: algorithm.name().to_string(),
            expected: "ES256, ES384, RS256 or PS256 with JWT_KEY_SOURCE=kms:<key> (what KMS \
                       signs with)"
                .to_string(),
        });
    }
    Ok(Some(source))
}

/// An AWS resource name, id, ARN or alias: 1 to 2048 printable characters without spaces.
fn valid_aws_id(id: &str) -> bool {
    (1..=2048).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Region, credentials and endpoint for `service`, as the AWS SDKs read them.
fn aws_settings(env: &Env<'_>, service: AwsService) -> Result<AwsSettings, ConfigError> {
    const WHY: &str = "JWT_KEY_SOURCE names an AWS key source; Lambda sets it for every extension";
    let required = |var: &'static str| {
        env.get(var)
            .filter(|v| !v.trim().is_empty())
            .ok_or(ConfigError::Missing { var, why: WHY })
    };
    let region = match env.get("AWS_REGION").filter(|r| !r.is_empty()) {
        Some(region) => region,
        None => required("AWS_DEFAULT_REGION").map_err(|_| ConfigError::Missing {
            var: "AWS_REGION",
            why: WHY,
        })?,
    };
    if !region
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ConfigError::Invalid {
            var: "AWS_REGION",
            value: region,
            expected: "a region name such as eu-west-1".to_string(),
        });
    }
    let (endpoint_var, endpoint) = match env.get(service.endpoint_variable()) {
        Some(url) => (service.endpoint_variable(), url),
        None => match env.get("AWS_ENDPOINT_URL") {
            Some(url) => ("AWS_ENDPOINT_URL", url),
            None => (
                "AWS_ENDPOINT_URL",
                format!("https://{}.{region}.amazonaws.com", service.signing_name()),
            ),
        },
    };
    let endpoint = endpoint.trim().trim_end_matches('/').to_string();
    match endpoint.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some()
                && uri.path_and_query().is_none_or(|p| p.as_str() == "/") => {}
        _ => {
            return Err(ConfigError::Invalid {
                var: endpoint_var,
                value: endpoint,
                expected: "an http:// or https:// URL with a host and no path".to_string(),
            });
        }
    }
    Ok(AwsSettings {
        service,
        region,
        access_key_id: required("AWS_ACCESS_KEY_ID")?,
        secret_access_key: required("AWS_SECRET_ACCESS_KEY")?,
        session_token: env.get("AWS_SESSION_TOKEN").filter(|t| !t.is_empty()),
        endpoint,
    })
}

/// The key of `JWT_KEY_SOURCE=env`: `JWT_SECRET` for HS*, else a PEM from `JWT_PRIVATE_KEY`
/// or the file `JWT_PRIVATE_KEY_FILE` names.
fn env_key(env: &Env<'_>, algorithm: Algorithm) -> Result<KeyMaterial, ConfigError> {
    let material = if algorithm.is_hmac() {
        if env.get("JWT_PRIVATE_KEY").is_some() || env.get("JWT_PRIVATE_KEY_FILE").is_some() {
            return Err(ConfigError::Invalid {
                var: "JWT_ALGORITHM",
                value: algorithm.name().to_string(),
                expected: "an asymmetric algorithm (ES256, ES384, RS256, PS256, EdDSA) when \
                           JWT_PRIVATE_KEY or JWT_PRIVATE_KEY_FILE is set"
                    .to_string(),
            });
        }
        let secret = env.get("JWT_SECRET").ok_or(ConfigError::Missing {
            var: "JWT_SECRET",
            why: "an HS* algorithm needs a secret of at least 32 random bytes; there is no default",
        })?;
        KeyMaterial::Secret(secret.into_bytes())
    } else {
        if env.get("JWT_SECRET").is_some() {
            return Err(ConfigError::Invalid {
                var: "JWT_SECRET",
                value: "<redacted>".to_string(),
                expected: format!(
                    "unset when JWT_ALGORITHM={} (it signs with JWT_PRIVATE_KEY)",
                    algorithm.name()
                ),
            });
        }
        match (env.get("JWT_PRIVATE_KEY"), env.get("JWT_PRIVATE_KEY_FILE")) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    var: "JWT_PRIVATE_KEY_FILE",
                    value: "<set>".to_string(),
                    expected: "only one of JWT_PRIVATE_KEY and JWT_PRIVATE_KEY_FILE".to_string(),
                });
            }
            (Some(pem), None) => KeyMaterial::Pem {
                pem: pem.into_bytes(),
                source: "JWT_PRIVATE_KEY",
            },
            (None, Some(path)) => {
                let pem = std::fs::read(&path).map_err(|e| ConfigError::Invalid {
                    var: "JWT_PRIVATE_KEY_FILE",
                    value: path.clone(),
                    expected: format!(
                        "the path of a readable PEM file, but it is not a readable file path \
                         ({e}); the value is not shown because it may be key material: if it \
                         is a PEM key itself, put it in JWT_PRIVATE_KEY"
                    ),
                })?;
                KeyMaterial::Pem {
                    pem,
                    source: "JWT_PRIVATE_KEY_FILE",
                }
            }
            (None, None) => {
                return Err(ConfigError::Missing {
                    var: "JWT_PRIVATE_KEY",
                    why: "an asymmetric algorithm needs a PEM private key in JWT_PRIVATE_KEY or \
                          JWT_PRIVATE_KEY_FILE; there is no default",
                });
            }
        }
    };
    Ok(material)
}

fn token_config(env: &Env<'_>) -> Result<TokenConfig, ConfigError> {
    let algorithm = env.choice(
        "JWT_ALGORITHM",
        &Algorithm::ALL.map(|a| (a.name(), a)),
        Algorithm::HS256,
    )?;
    let key = match key_source(env, algorithm)? {
        Some(remote) => remote,
        None => KeySource::Env(env_key(env, algorithm)?),
    };
    let kms_verify_keys = env.list("JWT_KMS_VERIFY_KEYS");
    if !kms_verify_keys.is_empty() && !matches!(key, KeySource::Kms(_)) {
        return Err(ConfigError::Invalid {
            var: "JWT_KMS_VERIFY_KEYS",
            value: env.get("JWT_KMS_VERIFY_KEYS").unwrap_or_default(),
            expected: "unset unless JWT_KEY_SOURCE=kms:<key>".to_string(),
        });
    }
    if let Some(bad) = kms_verify_keys.iter().find(|k| !valid_aws_id(k)) {
        return Err(ConfigError::Invalid {
            var: "JWT_KMS_VERIFY_KEYS",
            value: bad.clone(),
            expected: "comma-separated KMS key ids, ARNs or aliases".to_string(),
        });
    }
    let key_refresh = Duration::from_secs(env.number("JWT_KEY_REFRESH_SECONDS", 300, 1, 86_400)?);
    let aws = match &key {
        KeySource::Env(_) => None,
        KeySource::SecretsManager(_) => Some(aws_settings(env, AwsService::SecretsManager)?),
        KeySource::Ssm(_) => Some(aws_settings(env, AwsService::Ssm)?),
        KeySource::Kms(_) => Some(aws_settings(env, AwsService::Kms)?),
    };
    let key_id = env.get("JWT_KEY_ID");
    if let Some(kid) = &key_id
        && (kid.is_empty() || kid.len() > 128 || kid.chars().any(|c| c.is_control()))
    {
        return Err(ConfigError::Invalid {
            var: "JWT_KEY_ID",
            value: kid.clone(),
            expected: "1 to 128 printable characters".to_string(),
        });
    }
    let issuer = env.non_empty("JWT_ISSUER", "lambda-sidecar")?;
    let audiences = env.list("JWT_AUDIENCE");
    let default_subject = match env.get("JWT_DEFAULT_SUBJECT") {
        Some(s) => env.non_empty("JWT_DEFAULT_SUBJECT", &s)?,
        None => env
            .get("AWS_LAMBDA_FUNCTION_NAME")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "lambda-sidecar".to_string()),
    };
    let max_ttl = env.number("JWT_MAX_TTL_SECONDS", 3600, 1, 31 * 24 * 3600)?;
    let ttl = env.number("JWT_TTL_SECONDS", 900.min(max_ttl), 1, max_ttl)?;
    let allowed_claims: BTreeSet<String> = env.list("JWT_ALLOWED_CLAIMS").into_iter().collect();
    if let Some(c) = allowed_claims
        .iter()
        .find(|c| SIDECAR_CLAIMS.contains(&c.as_str()))
    {
        return Err(ConfigError::Invalid {
            var: "JWT_ALLOWED_CLAIMS",
            value: c.clone(),
            expected: format!(
                "claim names other than {} (the sidecar sets those itself)",
                SIDECAR_CLAIMS.join(", ")
            ),
        });
    }
    let typ = env.get("JWT_TYP").unwrap_or_else(|| "JWT".to_string());
    // RFC 6838 restricted-name characters plus the `/` of a full media type: what `typ`
    // holds (RFC 7515 section 4.1.9), and nothing that needs escaping in a header.
    if typ.is_empty()
        || typ.len() > 64
        || !typ
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+/".contains(&b))
    {
        return Err(ConfigError::Invalid {
            var: "JWT_TYP",
            value: typ,
            expected: "a media type name of 1 to 64 characters (letters, digits and ! # $ & - ^ \
                       _ . + /), such as JWT or at+jwt"
                .to_string(),
        });
    }
    let jwks_uri = jwks_uri(env, algorithm, &issuer)?;
    Ok(TokenConfig {
        algorithm,
        key,
        key_refresh,
        kms_verify_keys,
        aws,
        key_id,
        jwks_uri,
        issuer,
        audiences,
        default_subject,
        ttl,
        max_ttl,
        allowed_claims,
        typ,
        auth: token_auth(env)?,
    })
}

/// `JWT_JWKS_URI`, checked with what publishing needs around it. API Gateway's JWT
/// authorizer (like any OIDC relying party) fetches `<JWT_ISSUER>/.well-known/openid-configuration`
/// and follows its `jwks_uri`, so the issuer must be an https URL too; and an HMAC secret is
/// never published, so there is nothing for the URL to point at.
fn jwks_uri(
    env: &Env<'_>,
    algorithm: Algorithm,
    issuer: &str,
) -> Result<Option<String>, ConfigError> {
    let Some(uri) = env.get("JWT_JWKS_URI") else {
        return Ok(None);
    };
    if !is_https_url(&uri) {
        return Err(ConfigError::Invalid {
            var: "JWT_JWKS_URI",
            value: uri,
            expected: "an https URL without query or fragment, where relying parties fetch the \
                       JWKS, such as https://<bucket>.s3.<region>.amazonaws.com/.well-known/jwks.json"
                .to_string(),
        });
    }
    if algorithm.is_hmac() {
        return Err(ConfigError::Invalid {
            var: "JWT_JWKS_URI",
            value: uri,
            expected: format!(
                "unset with JWT_ALGORITHM={}: an HMAC secret is never published, so there is no \
                 JWKS; relying parties outside the sandbox need an asymmetric algorithm \
                 (ES256, ES384, RS256, PS256, EdDSA)",
                algorithm.name()
            ),
        });
    }
    if !is_https_url(issuer) {
        return Err(ConfigError::Invalid {
            var: "JWT_ISSUER",
            value: issuer.to_string(),
            expected: "an https URL without query or fragment when JWT_JWKS_URI is set: relying \
                       parties fetch <JWT_ISSUER>/.well-known/openid-configuration, e.g. \
                       https://<bucket>.s3.<region>.amazonaws.com"
                .to_string(),
        });
    }
    Ok(Some(uri))
}

/// An absolute `https://host[:port][/path]` URL: no user info, query or fragment, which
/// OIDC Discovery (section 3) forbids in an issuer and which have no place in a JWKS URL.
pub fn is_https_url(raw: &str) -> bool {
    let Ok(uri) = raw.parse::<http::Uri>() else {
        return false;
    };
    uri.scheme_str() == Some("https")
        && uri.host().is_some_and(|h| !h.is_empty())
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
        && uri.query().is_none()
        && !raw.contains('#')
}

/// `SIDECAR_TOKEN_AUTH` and, when it asks for one, the `AWS_SESSION_TOKEN` callers must send.
fn token_auth(env: &Env<'_>) -> Result<TokenAuth, ConfigError> {
    #[derive(Clone, Copy)]
    enum Mode {
        SessionToken,
        Off,
    }
    let mode = env.choice(
        "SIDECAR_TOKEN_AUTH",
        &[("session-token", Mode::SessionToken), ("off", Mode::Off)],
        Mode::SessionToken,
    )?;
    if let Mode::Off = mode {
        return Ok(TokenAuth::Off);
    }
    match env.get("AWS_SESSION_TOKEN") {
        None => Err(ConfigError::Missing {
            var: "AWS_SESSION_TOKEN",
            why: "SIDECAR_TOKEN_AUTH=session-token (the default) makes /token require it in \
                  the X-Sidecar-Token header; Lambda sets it, elsewhere set it to a random value \
                  shared with the caller, or set SIDECAR_TOKEN_AUTH=off",
        }),
        Some(token) if token.is_empty() => Err(ConfigError::Missing {
            var: "AWS_SESSION_TOKEN",
            why: "it is empty, and SIDECAR_TOKEN_AUTH=session-token (the default) makes /token \
                  require it in the X-Sidecar-Token header; set it, or set SIDECAR_TOKEN_AUTH=off",
        }),
        // Callers send it as a header value, which cannot carry these bytes.
        Some(token) if !token.bytes().all(|b| b.is_ascii_graphic()) => Err(ConfigError::Invalid {
            var: "AWS_SESSION_TOKEN",
            value: "<redacted>".to_string(),
            expected: "printable ASCII without spaces, as it is sent in the X-Sidecar-Token \
                           header (SIDECAR_TOKEN_AUTH=session-token)"
                .to_string(),
        }),
        Some(token) => Ok(TokenAuth::SessionToken(token)),
    }
}

fn telemetry_config(env: &Env<'_>) -> Result<TelemetryConfig, ConfigError> {
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
    })
}

/// Typed accessors over a lookup function; each error names its variable.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn get(&self, var: &str) -> Option<String> {
        (self.0)(var)
    }

    fn number(
        &self,
        var: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(default);
        };
        match raw.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ConfigError::Invalid {
                var,
                value: raw,
                expected: format!("a whole number from {min} to {max}"),
            }),
        }
    }

    fn port(&self, var: &'static str, default: u16) -> Result<u16, ConfigError> {
        let port = self.number(var, u64::from(default), 1, 65_535)? as u16;
        if RESERVED_PORTS.contains(&port) {
            return Err(ConfigError::Invalid {
                var,
                value: port.to_string(),
                expected: format!(
                    "a port from 1 to 65535 other than {} (taken by Lambda or common extensions)",
                    RESERVED_PORTS
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        Ok(port)
    }

    fn choice<T: Copy>(
        &self,
        var: &'static str,
        options: &[(&str, T)],
        default: T,
    ) -> Result<T, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(default);
        };
        options
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(raw.trim()))
            .map(|(_, v)| *v)
            .ok_or_else(|| ConfigError::Invalid {
                var,
                value: raw,
                expected: format!(
                    "one of {}",
                    options
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
    }

    fn non_empty(&self, var: &'static str, default: &str) -> Result<String, ConfigError> {
        let value = self.get(var).unwrap_or_else(|| default.to_string());
        if value.trim().is_empty() || value.chars().any(|c| c.is_control()) {
            return Err(ConfigError::Invalid {
                var,
                value,
                expected: "a non-empty string without control characters".to_string(),
            });
        }
        Ok(value)
    }

    /// A comma-separated list; blanks around items and empty items are ignored.
    fn list(&self, var: &str) -> Vec<String> {
        self.get(var)
            .map(|raw| {
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SECRET: &str = "k7Qm2vXp9LrT4sWz8YbN3cFh6JdGa1Ue5KoP0iRt";

    /// The session token a default configuration needs, added unless a case sets it.
    const SESSION: &str = "IQoJb3JpZ2luX2VjEsession";

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.entry("AWS_SESSION_TOKEN".into())
            .or_insert_with(|| SESSION.into());
        Config::parse(|k| map.get(k).cloned(), map.keys().map(String::as_str))
    }

    /// [`parse`] without the default session token.
    fn parse_exact(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse(|k| map.get(k).cloned(), map.keys().map(String::as_str))
    }

    /// Data-driven: each case is the environment and the variable the error must name
    /// (or `None` when the configuration must be accepted).
    fn check(pairs: &[(&str, &str)], expect: Option<(&str, &str)>) {
        let result = parse(pairs);
        match (result, expect) {
            (Ok(_), None) => {}
            (Err(e), Some((var, error_type))) => {
                let message = e.to_string();
                assert!(message.contains(var), "{message:?} should name {var}");
                assert_eq!(e.error_type(), error_type, "{message}");
                assert!(!message.contains(SECRET), "secret leaked: {message}");
                assert!(
                    !message.contains(SESSION),
                    "session token leaked: {message}"
                );
            }
            (Ok(c), Some(e)) => panic!("accepted {pairs:?} as {c:?}, expected error {e:?}"),
            (Err(e), None) => panic!("refused {pairs:?}: {e}"),
        }
    }

    #[test]
    fn accepted_and_refused_environments() {
        check(&[("JWT_SECRET", SECRET)], None);
        check(&[], Some(("JWT_SECRET", "Config.MissingValue")));
        check(
            &[("JWT_SECRET", SECRET), ("SIDECAR_PORT", "70000")],
            Some(("SIDECAR_PORT", "Config.InvalidValue")),
        );
        check(
            &[("JWT_SECRET", SECRET), ("SIDECAR_PORT", "abc")],
            Some(("SIDECAR_PORT", "Config.InvalidValue")),
        );
        check(
            &[("JWT_SECRET", SECRET), ("SIDECAR_PORT", "9001")],
            Some(("SIDECAR_PORT", "Config.InvalidValue")),
        );
        check(
            &[("JWT_SECRET", SECRET), ("SIDECAR_PROT", "4000")],
            Some(("SIDECAR_PROT", "Config.UnknownVariable")),
        );
        check(
            &[("JWT_SECRET", SECRET), ("SIDECAR_LOG", "info,=[")],
            Some(("SIDECAR_LOG", "Config.InvalidValue")),
        );
        check(
            &[("JWT_SECRET", SECRET), ("SIDECAR_LOG_FORMAT", "xml")],
            Some(("SIDECAR_LOG_FORMAT", "Config.InvalidValue")),
        );
        check(
            &[("JWT_SECRET", SECRET), ("JWT_ALGORITHM", "none")],
            Some(("JWT_ALGORITHM", "Config.InvalidValue")),
        );
        check(
            &[("JWT_SECRET", SECRET), ("JWT_ALGORITHM", "ES256")],
            Some(("JWT_SECRET", "Config.InvalidValue")),
        );
        check(
            &[("JWT_ALGORITHM", "RS256")],
            Some(("JWT_PRIVATE_KEY", "Config.MissingValue")),
        );
        check(
            &[("JWT_PRIVATE_KEY", "x"), ("JWT_PRIVATE_KEY_FILE", "/x")],
            Some(("JWT_PRIVATE_KEY_FILE", "Config.InvalidValue")),
        );
        check(
            &[
                ("JWT_ALGORITHM", "ES256"),
                ("JWT_PRIVATE_KEY_FILE", "/nonexistent/key.pem"),
            ],
            Some(("JWT_PRIVATE_KEY_FILE", "Config.InvalidValue")),
        );
        check(
            &[("JWT_SECRET", SECRET), ("JWT_TTL_SECONDS", "0")],
            Some(("JWT_TTL_SECONDS", "Config.InvalidValue")),
        );
        check(
            &[("JWT_SECRET", SECRET), ("JWT_TTL_SECONDS", "7200")],
            Some(("JWT_TTL_SECONDS", "Config.InvalidValue")),
        );
        check(
            &[
                ("JWT_SECRET", SECRET),
                ("JWT_TTL_SECONDS", "7200"),
                ("JWT_MAX_TTL_SECONDS", "7200"),
            ],
            None,
        );
        check(
            &[("JWT_SECRET", SECRET), ("JWT_ALLOWED_CLAIMS", "role,exp")],
            Some(("JWT_ALLOWED_CLAIMS", "Config.InvalidValue")),
        );
        check(
            &[("JWT_SECRET", SECRET), ("JWT_ISSUER", " ")],
            Some(("JWT_ISSUER", "Config.InvalidValue")),
        );
        check(
            &[
                ("JWT_SECRET", SECRET),
                ("SIDECAR_TELEMETRY_TYPES", "platform,logs"),
            ],
            Some(("SIDECAR_TELEMETRY_TYPES", "Config.InvalidValue")),
        );
        check(
            &[
                ("JWT_SECRET", SECRET),
                ("SIDECAR_TELEMETRY_BUFFER_MS", "10"),
            ],
            Some(("SIDECAR_TELEMETRY_BUFFER_MS", "Config.InvalidValue")),
        );
        check(
            &[("JWT_SECRET", SECRET), ("SIDECAR_TELEMETRY_PORT", "4318")],
            Some(("SIDECAR_TELEMETRY_PORT", "Config.InvalidValue")),
        );
        check(
            &[("JWT_SECRET", SECRET), ("SIDECAR_FLUSH_TIMEOUT_MS", "-5")],
            Some(("SIDECAR_FLUSH_TIMEOUT_MS", "Config.InvalidValue")),
        );
        for bad in ["0", "99", "60001", "1s"] {
            check(
                &[("JWT_SECRET", SECRET), ("SIDECAR_FLUSH_INTERVAL_MS", bad)],
                Some(("SIDECAR_FLUSH_INTERVAL_MS", "Config.InvalidValue")),
            );
        }
    }

    /// `SIDECAR_EMF`: off unless asked for (each line is billed, README); the namespace is
    /// checked against CloudWatch's rules, since CloudWatch drops lines it refuses silently.
    #[test]
    fn emf() {
        let off = parse(&[("JWT_SECRET", SECRET)]).unwrap();
        assert_eq!(off.emf_namespace, None);
        let off = parse(&[("JWT_SECRET", SECRET), ("SIDECAR_EMF", "off")]).unwrap();
        assert_eq!(off.emf_namespace, None);
        let on = parse(&[("JWT_SECRET", SECRET), ("SIDECAR_EMF", "on")]).unwrap();
        assert_eq!(on.emf_namespace.as_deref(), Some("LambdaSidecar"));
        for good in ["Orders/Sidecar", "a", "my-app_1.2 #x:y", &"n".repeat(255)] {
            let on = parse(&[
                ("JWT_SECRET", SECRET),
                ("SIDECAR_EMF", "ON"),
                ("SIDECAR_EMF_NAMESPACE", good),
            ])
            .unwrap();
            assert_eq!(on.emf_namespace.as_deref(), Some(good));
        }
        check(
            &[("JWT_SECRET", SECRET), ("SIDECAR_EMF", "yes")],
            Some(("SIDECAR_EMF", "Config.InvalidValue")),
        );
        for bad in ["", "   ", "AWS/Lambda", "a\"b", "émf", &"n".repeat(256)] {
            check(
                &[
                    ("JWT_SECRET", SECRET),
                    ("SIDECAR_EMF", "on"),
                    ("SIDECAR_EMF_NAMESPACE", bad),
                ],
                Some(("SIDECAR_EMF_NAMESPACE", "Config.InvalidValue")),
            );
        }
    }

    /// `SIDECAR_FAAS_TRIGGER`: `other` unless set; exactly the semantic conventions'
    /// well-known values, and an error that lists them.
    #[test]
    fn faas_trigger() {
        let default = parse(&[("JWT_SECRET", SECRET)]).unwrap();
        assert_eq!(default.telemetry.faas_trigger, "other");
        for trigger in ["datasource", "http", "pubsub", "timer", "other"] {
            let config = parse(&[("JWT_SECRET", SECRET), ("SIDECAR_FAAS_TRIGGER", trigger)]);
            assert_eq!(config.unwrap().telemetry.faas_trigger, trigger);
        }
        for bad in ["", "sqs", "https", "cron", "http,timer"] {
            let error = parse(&[("JWT_SECRET", SECRET), ("SIDECAR_FAAS_TRIGGER", bad)])
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("SIDECAR_FAAS_TRIGGER")
                    && error.contains("datasource, http, pubsub, timer, other"),
                "{error}"
            );
        }
    }

    /// `SIDECAR_METRICS_ADDR`: an IP and a non-zero port; accepted by `serve`, refused as a
    /// configuration error inside Lambda.
    #[test]
    fn metrics_addr() {
        for bad in ["9464", "localhost:9464", "0.0.0.0:0", "0.0.0.0:70000", ""] {
            check(
                &[("JWT_SECRET", SECRET), ("SIDECAR_METRICS_ADDR", bad)],
                Some(("SIDECAR_METRICS_ADDR", "Config.InvalidValue")),
            );
        }
        let config = parse(&[("JWT_SECRET", SECRET)]).unwrap();
        assert_eq!(config.metrics_addr, None);
        assert_eq!(config.check_extension_mode(), Ok(()));
        for (raw, addr) in [
            ("0.0.0.0:9464", "0.0.0.0:9464"),
            (" [::]:9464", "[::]:9464"),
        ] {
            let config = parse(&[("JWT_SECRET", SECRET), ("SIDECAR_METRICS_ADDR", raw)]).unwrap();
            assert_eq!(config.metrics_addr, Some(addr.parse().unwrap()));
            let refused = config.check_extension_mode().unwrap_err();
            assert_eq!(refused.error_type(), "Config.InvalidValue");
            let message = refused.to_string();
            assert!(message.contains("SIDECAR_METRICS_ADDR"), "{message}");
            assert!(message.contains("serve"), "{message}");
        }
    }

    /// `SIDECAR_TOKEN_AUTH` and `JWT_TYP`: refused values name the variable (both variables
    /// when the session token is missing) and never echo the session token.
    #[test]
    fn token_auth_and_typ() {
        const LONG_TYP: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        assert_eq!(LONG_TYP.len(), 65);
        let base = [("JWT_SECRET", SECRET), ("AWS_SESSION_TOKEN", SESSION)];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            pairs
        };
        check(&base, None);
        check(&with(&[("SIDECAR_TOKEN_AUTH", "session-token")]), None);
        check(&with(&[("JWT_TYP", "at+jwt")]), None);
        check(&with(&[("JWT_TYP", "application/at+jwt")]), None);
        assert!(parse_exact(&[("JWT_SECRET", SECRET), ("SIDECAR_TOKEN_AUTH", "off")]).is_ok());
        // Unset: the error names both variables.
        let e = parse_exact(&[("JWT_SECRET", SECRET)]).unwrap_err();
        assert_eq!(e.error_type(), "Config.MissingValue");
        let message = e.to_string();
        assert!(
            message.contains("AWS_SESSION_TOKEN") && message.contains("SIDECAR_TOKEN_AUTH"),
            "{message}"
        );
        for (pairs, var, error_type) in [
            (
                vec![("JWT_SECRET", SECRET), ("AWS_SESSION_TOKEN", "")],
                "SIDECAR_TOKEN_AUTH",
                "Config.MissingValue",
            ),
            (
                vec![("JWT_SECRET", SECRET), ("AWS_SESSION_TOKEN", "a b\n")],
                "AWS_SESSION_TOKEN",
                "Config.InvalidValue",
            ),
            (
                with(&[("SIDECAR_TOKEN_AUTH", "none")]),
                "SIDECAR_TOKEN_AUTH",
                "Config.InvalidValue",
            ),
            (with(&[("JWT_TYP", "")]), "JWT_TYP", "Config.InvalidValue"),
            (
                with(&[("JWT_TYP", "at jwt")]),
                "JWT_TYP",
                "Config.InvalidValue",
            ),
            (
                with(&[("JWT_TYP", "JWT\"")]),
                "JWT_TYP",
                "Config.InvalidValue",
            ),
            (
                with(&[("JWT_TYP", LONG_TYP)]),
                "JWT_TYP",
                "Config.InvalidValue",
            ),
        ] {
            check(&pairs, Some((var, error_type)));
            let message = parse(&pairs).unwrap_err().to_string();
            assert!(
                !message.contains(SESSION) && !message.contains("a b"),
                "{message}"
            );
        }
        let c = parse(&base).unwrap();
        assert_eq!(c.token.typ, "JWT");
        assert_eq!(c.token.auth, TokenAuth::SessionToken(SESSION.to_string()));
        assert!(
            !format!("{c:?}").contains(SESSION),
            "Debug must not print it"
        );
        let c = parse(&with(&[
            ("SIDECAR_TOKEN_AUTH", "OFF"),
            ("JWT_TYP", "at+jwt"),
        ]))
        .unwrap();
        assert_eq!(
            (c.token.auth, c.token.typ.as_str()),
            (TokenAuth::Off, "at+jwt")
        );
    }

    /// `JWT_JWKS_URI`: an https URL, only with an asymmetric key and an https `JWT_ISSUER`
    /// (what a relying party's discovery needs); each refusal names the variable to fix.
    #[test]
    fn jwks_uri() {
        const URI: &str = "https://keys.s3.eu-west-1.amazonaws.com/.well-known/jwks.json";
        const ISSUER: &str = "https://keys.s3.eu-west-1.amazonaws.com";
        let es256 = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = vec![("JWT_ALGORITHM", "ES256"), ("JWT_PRIVATE_KEY", "x")];
            pairs.extend_from_slice(extra);
            pairs
        };
        assert_eq!(parse(&es256(&[])).unwrap().token.jwks_uri, None);
        let c = parse(&es256(&[("JWT_JWKS_URI", URI), ("JWT_ISSUER", ISSUER)])).unwrap();
        assert_eq!(c.token.jwks_uri.as_deref(), Some(URI));
        check(
            &es256(&[
                ("JWT_JWKS_URI", "https://idp.example:8443/keys"),
                ("JWT_ISSUER", "https://idp.example/"),
            ]),
            None,
        );
        for bad in [
            "http://keys.example/jwks.json",
            "keys.example/jwks.json",
            "https:///jwks.json",
            "https://keys.example/jwks.json?v=1",
            "https://keys.example/jwks.json#k",
            "https://user@keys.example/jwks.json",
            "https://keys.example/a b",
            "",
        ] {
            check(
                &es256(&[("JWT_JWKS_URI", bad), ("JWT_ISSUER", ISSUER)]),
                Some(("JWT_JWKS_URI", "Config.InvalidValue")),
            );
        }
        for issuer in [
            "lambda-sidecar",
            "http://issuer.example",
            "https://issuer.example?x=1",
        ] {
            check(
                &es256(&[("JWT_JWKS_URI", URI), ("JWT_ISSUER", issuer)]),
                Some(("JWT_ISSUER", "Config.InvalidValue")),
            );
        }
        // The default issuer is not a URL either.
        let e = parse(&es256(&[("JWT_JWKS_URI", URI)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("JWT_ISSUER") && e.contains("JWT_JWKS_URI"),
            "{e}"
        );
        // An HMAC secret is never published: a JWKS URL for it is a mistake.
        let e = parse(&[
            ("JWT_SECRET", SECRET),
            ("JWT_JWKS_URI", URI),
            ("JWT_ISSUER", ISSUER),
        ])
        .unwrap_err();
        assert_eq!(e.error_type(), "Config.InvalidValue");
        let message = e.to_string();
        assert!(
            message.contains("JWT_JWKS_URI") && message.contains("HMAC"),
            "{message}"
        );
        assert!(!message.contains(SECRET), "{message}");
    }

    #[test]
    fn a_pem_in_the_key_file_variable_is_not_echoed() {
        let body = "MC4CAQAwBQYDK2VwBCIEIPmZ0b3JhbmRvbWtleW1hdGVyaWFsZm9ydGVzdHM=";
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
        let e = parse(&[("JWT_ALGORITHM", "EdDSA"), ("JWT_PRIVATE_KEY_FILE", &pem)])
            .expect_err("a PEM is not a path");
        let message = e.to_string();
        assert!(message.contains("JWT_PRIVATE_KEY_FILE"), "{message}");
        assert!(message.contains("put it in JWT_PRIVATE_KEY"), "{message}");
        assert!(
            !message.contains(body) && !message.contains("BEGIN"),
            "key material echoed: {message}"
        );
        // Every key-bearing variable is hidden by the error itself, whoever builds it.
        for var in KEY_VARIABLES {
            let e = ConfigError::Invalid {
                var,
                value: body.to_string(),
                expected: "x".to_string(),
            };
            assert!(!e.to_string().contains(body), "{e}");
        }
    }

    #[test]
    fn values_that_are_not_utf8_are_refused_without_echo() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt as _;
        let raw =
            |name: &str, value: &[u8]| (OsString::from(name), OsString::from_vec(value.to_vec()));
        for var in [
            "SIDECAR_LOG_FORMAT",
            "JWT_SECRET",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ] {
            let e = check_utf8([
                raw("PATH", b"/usr/bin"),
                raw(var, b"k7Qm2vXp\xff\xfe9LrT4sWz"),
            ])
            .expect_err("not UTF-8");
            let message = e.to_string();
            assert!(
                message.contains(var) && message.contains("UTF-8"),
                "{message}"
            );
            assert!(!message.contains("k7Qm2vXp"), "value echoed: {message}");
            assert_eq!(e.error_type(), "Config.InvalidValue");
        }
        // Variables the sidecar does not read are none of its business.
        assert!(check_utf8([raw("LANG_FILE", b"\xff"), raw("SIDECAR_LOG", b"info")]).is_ok());
    }

    #[test]
    fn defaults() {
        let c = parse(&[
            ("JWT_SECRET", SECRET),
            ("AWS_LAMBDA_FUNCTION_NAME", "orders"),
        ])
        .unwrap();
        assert_eq!(c.port, 3003);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.token.algorithm, Algorithm::HS256);
        assert_eq!(c.token.issuer, "lambda-sidecar");
        assert_eq!(c.token.default_subject, "orders");
        assert_eq!((c.token.ttl, c.token.max_ttl), (900, 3600));
        assert!(c.token.audiences.is_empty() && c.token.allowed_claims.is_empty());
        assert_eq!(c.telemetry.types, ["platform", "function"]);
        assert_eq!(c.telemetry.buffer_ms, 25);
        assert_eq!(c.telemetry.port, None);
        assert_eq!(c.telemetry.flush_timeout, Duration::from_millis(500));
        assert_eq!(c.telemetry.flush_interval, Duration::from_secs(1));
        assert!(
            !format!("{c:?}").contains(SECRET),
            "Debug must not print the secret"
        );
    }

    #[test]
    fn lists_are_trimmed() {
        let c = parse(&[
            ("JWT_SECRET", SECRET),
            ("JWT_AUDIENCE", " api , billing,"),
            ("JWT_ALLOWED_CLAIMS", "role, tenant"),
            ("JWT_ALGORITHM", "hs512"),
        ])
        .unwrap();
        assert_eq!(c.token.audiences, ["api", "billing"]);
        assert!(c.token.allowed_claims.contains("tenant"));
        assert_eq!(c.token.algorithm, Algorithm::HS512);
    }

    /// JWT_KEY_SOURCE and its companions: each refusal names its variable, none shows a key
    /// or a credential; endpoints resolve as the AWS SDKs do.
    #[test]
    fn key_sources() {
        const AWS: [(&str, &str); 3] = [
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = AWS.to_vec();
            pairs.extend_from_slice(extra);
            pairs
        };
        let invalid = "Config.InvalidValue";
        for (pairs, expect) in [
            (
                with(&[("JWT_KEY_SOURCE", "vault:x")]),
                Some(("JWT_KEY_SOURCE", invalid)),
            ),
            (
                with(&[("JWT_KEY_SOURCE", "ssm:")]),
                Some(("JWT_KEY_SOURCE", invalid)),
            ),
            (
                with(&[("JWT_KEY_SOURCE", "ssm:a b")]),
                Some(("JWT_KEY_SOURCE", invalid)),
            ),
            (
                with(&[("JWT_KEY_SOURCE", "ssm:/k"), ("JWT_SECRET", SECRET)]),
                Some(("JWT_SECRET", invalid)),
            ),
            (
                with(&[("JWT_KEY_SOURCE", "kms:k")]),
                Some(("JWT_ALGORITHM", invalid)),
            ),
            (
                with(&[("JWT_KEY_SOURCE", "kms:k"), ("JWT_ALGORITHM", "EdDSA")]),
                Some(("JWT_ALGORITHM", invalid)),
            ),
            (
                vec![("JWT_KEY_SOURCE", "secretsmanager:k")],
                Some(("AWS_REGION", "Config.MissingValue")),
            ),
            (
                vec![
                    ("JWT_KEY_SOURCE", "secretsmanager:k"),
                    ("AWS_REGION", "eu-west-1"),
                    ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
                ],
                Some(("AWS_SECRET_ACCESS_KEY", "Config.MissingValue")),
            ),
            (
                with(&[("JWT_SECRET", SECRET), ("JWT_KMS_VERIFY_KEYS", "k2")]),
                Some(("JWT_KMS_VERIFY_KEYS", invalid)),
            ),
            (
                with(&[
                    ("JWT_KEY_SOURCE", "ssm:/k"),
                    ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:5000/path"),
                ]),
                Some(("AWS_ENDPOINT_URL_SSM", invalid)),
            ),
            (
                with(&[
                    ("JWT_KEY_SOURCE", "ssm:/k"),
                    ("JWT_KEY_REFRESH_SECONDS", "0"),
                ]),
                Some(("JWT_KEY_REFRESH_SECONDS", invalid)),
            ),
            (with(&[("JWT_KEY_SOURCE", "ssm:/k")]), None),
            (
                with(&[("JWT_KEY_SOURCE", "env"), ("JWT_SECRET", SECRET)]),
                None,
            ),
        ] {
            check(&pairs, expect);
        }
        let endpoint = |extra: &[(&'static str, &'static str)]| {
            let c = parse(&with(extra)).unwrap();
            c.token.aws.map(|a| a.endpoint)
        };
        assert_eq!(
            endpoint(&[("JWT_KEY_SOURCE", "secretsmanager:k")]).as_deref(),
            Some("https://secretsmanager.eu-west-1.amazonaws.com")
        );
        assert_eq!(
            endpoint(&[
                ("JWT_KEY_SOURCE", "kms:alias/jwt"),
                ("JWT_ALGORITHM", "ES256"),
                ("AWS_ENDPOINT_URL", "http://localhost:4566/"),
                ("AWS_ENDPOINT_URL_SSM", "http://ssm.local"),
            ])
            .as_deref(),
            Some("http://localhost:4566")
        );
        assert_eq!(
            endpoint(&[
                ("JWT_KEY_SOURCE", "ssm:/k"),
                ("AWS_ENDPOINT_URL", "http://localhost:4566"),
                ("AWS_ENDPOINT_URL_SSM", "http://ssm.local"),
            ])
            .as_deref(),
            Some("http://ssm.local")
        );
        let c = parse(&with(&[("JWT_KEY_SOURCE", "ssm:/k")])).unwrap();
        assert!(!format!("{c:?}").contains(SECRET), "{c:?}");
    }
}
