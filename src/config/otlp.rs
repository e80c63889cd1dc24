//! OTLP straight to AWS: SigV4 signing of the OTLP/HTTP requests (`SIDECAR_OTLP_SIGV4*`),
//! the CloudWatch Logs headers (`SIDECAR_OTLP_LOG_GROUP`), the EMF double-count guard
//! (`SIDECAR_OTLP_METRICS_WITH_EMF`) and the exporter headers read from a secret
//! (`SIDECAR_OTLP_HEADERS_SOURCE`). Plain values here; `export::sigv4` signs and
//! `export::headers` fetches.
//!
//! Which requests are signed is decided per signal by [`signing`], a pure function of the
//! mode, the signal's endpoint and the overrides: `auto` (the default) signs exactly the
//! requests to an `*.amazonaws.com` host, so that a request to AWS never leaves unsigned and
//! a request to any other collector never carries a signature.

use std::time::Duration;

use opentelemetry_otlp::Protocol;

use super::aws::{self, AwsCredentials, AwsService, AwsSettings, Needed, SecretRef};
use super::{ConfigError, Env};

/// `SIDECAR_OTLP_SIGV4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigV4Mode {
    /// Sign the requests to an `*.amazonaws.com` host, and only those.
    Auto,
    /// Sign every OTLP/HTTP request (a collector or proxy that checks SigV4 itself).
    On,
    Off,
}

/// The three OTLP signals, for what is decided per signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpSignal {
    Traces,
    Metrics,
    Logs,
}

impl OtlpSignal {
    /// The SigV4 service of the CloudWatch OTLP endpoint for the signal: what `on` signs for
    /// when neither the host nor `SIDECAR_OTLP_SIGV4_SERVICE` says.
    fn cloudwatch_service(self) -> &'static str {
        match self {
            OtlpSignal::Traces => "xray",
            OtlpSignal::Metrics => "monitoring",
            OtlpSignal::Logs => "logs",
        }
    }

    fn upper(self) -> &'static str {
        match self {
            OtlpSignal::Traces => "TRACES",
            OtlpSignal::Metrics => "METRICS",
            OtlpSignal::Logs => "LOGS",
        }
    }
}

/// What one signal's requests are signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigV4Target {
    /// The SigV4 service name (`xray`, `monitoring`, `logs`, …).
    pub service: String,
    pub region: String,
}

/// The OTLP-to-AWS settings, read with [`ExportConfig`](super::ExportConfig).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OtlpAws {
    /// Per signal: `Some` when its requests are signed.
    pub traces: Option<SigV4Target>,
    pub metrics: Option<SigV4Target>,
    pub logs: Option<SigV4Target>,
    /// What the signed requests are signed with: set when any signal is signed.
    pub credentials: Option<AwsCredentials>,
    /// `x-aws-log-group` and `x-aws-log-stream`, for logs sent to CloudWatch Logs (signed
    /// for the `logs` service).
    pub log_destination: Option<LogDestination>,
    /// `SIDECAR_OTLP_HEADERS_SOURCE`.
    pub headers_source: Option<HeadersSource>,
    /// `SIDECAR_OTLP_METRICS_WITH_EMF=on`: the user wants both CloudWatch outputs.
    pub metrics_with_emf: bool,
}

impl OtlpAws {
    /// The signing target of `signal`.
    pub fn target(&self, signal: OtlpSignal) -> Option<&SigV4Target> {
        match signal {
            OtlpSignal::Traces => self.traces.as_ref(),
            OtlpSignal::Metrics => self.metrics.as_ref(),
            OtlpSignal::Logs => self.logs.as_ref(),
        }
    }

    /// Refuses CloudWatch metrics twice over: over OTLP (signed for `monitoring`) and as EMF
    /// lines (`emf`), unless `SIDECAR_OTLP_METRICS_WITH_EMF=on`. Each would make its own
    /// CloudWatch metrics of the same counts, and a dashboard summing a namespace would count
    /// every invocation twice.
    pub fn check_emf(&self, emf: bool) -> Result<(), ConfigError> {
        let cloudwatch = self
            .metrics
            .as_ref()
            .is_some_and(|t| t.service == "monitoring");
        if emf && cloudwatch && !self.metrics_with_emf {
            return Err(ConfigError::Invalid {
                var: "SIDECAR_EMF",
                value: "on".to_string(),
                expected: "off while the metrics go to CloudWatch over OTLP \
                           (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT signed for monitoring): both \
                           would count every invocation in CloudWatch. Use one (see \
                           docs/cloudwatch.md), turn OTLP metrics off with \
                           OTEL_METRICS_EXPORTER=none, or set SIDECAR_OTLP_METRICS_WITH_EMF=on \
                           to keep both"
                    .to_string(),
            });
        }
        Ok(())
    }
}

/// Where OTLP logs go in CloudWatch Logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDestination {
    pub group: String,
    pub stream: String,
    /// A group of the user's (`SIDECAR_OTLP_LOG_GROUP`), where the stream is created at
    /// start (the endpoint writes to existing streams only); `None` for the function's own
    /// group, where Lambda has created it.
    pub create_in: Option<AwsSettings>,
}

/// `SIDECAR_OTLP_HEADERS_SOURCE`: headers read from a secret, re-read every `refresh`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadersSource {
    pub secret: SecretRef,
    pub aws: AwsSettings,
    /// `SIDECAR_OTLP_HEADERS_REFRESH_SECONDS`.
    pub refresh: Duration,
}

const SIGV4_NEEDED: &str = "SIDECAR_OTLP_SIGV4 signs the OTLP requests (an endpoint on \
    amazonaws.com, or SIDECAR_OTLP_SIGV4=on), which needs credentials: AWS_ACCESS_KEY_ID and \
    AWS_SECRET_ACCESS_KEY, or, as Lambda gives them with SnapStart, \
    AWS_CONTAINER_CREDENTIALS_FULL_URI";

const LOG_GROUP_NEEDED: Needed = Needed {
    region: "SIDECAR_OTLP_LOG_GROUP names a log group where the sidecar creates its stream; \
             Lambda sets it for every extension",
    credentials: "SIDECAR_OTLP_LOG_GROUP names a log group where the sidecar creates its \
                  stream, which needs credentials",
};

const HEADERS_NEEDED: Needed = Needed {
    region: "SIDECAR_OTLP_HEADERS_SOURCE names an AWS secret; Lambda sets it for every \
             extension",
    credentials: "SIDECAR_OTLP_HEADERS_SOURCE names an AWS secret, which needs credentials: \
                  AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or, as Lambda gives them with \
                  SnapStart, AWS_CONTAINER_CREDENTIALS_FULL_URI",
};

/// Reads the OTLP-to-AWS variables for the signals that export (`protocols`: each signal's
/// protocol, `None` when it does not export).
pub(super) fn otlp_aws(
    env: &Env<'_>,
    protocols: [(OtlpSignal, Option<Protocol>); 3],
) -> Result<OtlpAws, ConfigError> {
    let mode = env.choice(
        "SIDECAR_OTLP_SIGV4",
        &[
            ("auto", SigV4Mode::Auto),
            ("on", SigV4Mode::On),
            ("off", SigV4Mode::Off),
        ],
        SigV4Mode::Auto,
    )?;
    let service = match env.get("SIDECAR_OTLP_SIGV4_SERVICE") {
        None => None,
        Some(raw) if service_name(raw.trim()) => Some(raw.trim().to_string()),
        Some(raw) => {
            return Err(ConfigError::Invalid {
                var: "SIDECAR_OTLP_SIGV4_SERVICE",
                value: raw,
                expected: "a SigV4 service name such as xray, monitoring or logs (lowercase \
                           letters, digits and dashes)"
                    .to_string(),
            });
        }
    };
    let region = match env.get("SIDECAR_OTLP_SIGV4_REGION") {
        None => None,
        Some(raw) if aws::region_name(raw.trim()) => Some(raw.trim().to_string()),
        Some(raw) => {
            return Err(ConfigError::Invalid {
                var: "SIDECAR_OTLP_SIGV4_REGION",
                value: raw,
                expected: "a region name such as eu-west-1".to_string(),
            });
        }
    };
    let overrides = Overrides {
        service,
        region,
        aws_region: aws::region(env)?,
    };
    let mut config = OtlpAws::default();
    for (signal, protocol) in protocols {
        let Some(protocol) = protocol else { continue };
        let endpoint = endpoint_of(env, signal);
        let target = signing(mode, signal, endpoint.as_deref(), &overrides)?;
        if target.is_some() && !http(protocol) {
            return Err(ConfigError::Invalid {
                var: "SIDECAR_OTLP_SIGV4",
                value: format!("{mode:?}").to_ascii_lowercase(),
                expected: format!(
                    "off with {} (or OTEL_EXPORTER_OTLP_PROTOCOL)=grpc: only OTLP/HTTP \
                     requests are signed, and the CloudWatch OTLP endpoints take HTTP only. \
                     Use OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
                    protocol_var(signal)
                ),
            });
        }
        if target.is_some() {
            check_headers(env, signal)?;
        }
        match signal {
            OtlpSignal::Traces => config.traces = target,
            OtlpSignal::Metrics => config.metrics = target,
            OtlpSignal::Logs => config.logs = target,
        }
    }
    let signed = config.traces.is_some() || config.metrics.is_some() || config.logs.is_some();
    if signed {
        config.credentials = Some(aws::credentials(env, SIGV4_NEEDED)?);
    }
    if config.logs.as_ref().is_some_and(|t| t.service == "logs") {
        config.log_destination = Some(log_destination(env)?);
    }
    config.metrics_with_emf = env.choice(
        "SIDECAR_OTLP_METRICS_WITH_EMF",
        &[("on", true), ("off", false)],
        false,
    )?;
    config.headers_source = headers_source(env)?;
    if config.headers_source.is_some()
        && let Some((signal, _)) = protocols
            .iter()
            .find(|(_, protocol)| protocol.is_some_and(|p| !http(p)))
    {
        return Err(ConfigError::Invalid {
            var: "SIDECAR_OTLP_HEADERS_SOURCE",
            value: "<not shown>".to_string(),
            expected: format!(
                "unset with {} (or OTEL_EXPORTER_OTLP_PROTOCOL)=grpc: the headers of a secret \
                 are added to OTLP/HTTP requests only",
                protocol_var(*signal)
            ),
        });
    }
    Ok(config)
}

/// The region and service from the variables, for [`signing`].
#[derive(Debug, Clone, Default)]
struct Overrides {
    /// `SIDECAR_OTLP_SIGV4_SERVICE`.
    service: Option<String>,
    /// `SIDECAR_OTLP_SIGV4_REGION`.
    region: Option<String>,
    /// `AWS_REGION` (else `AWS_DEFAULT_REGION`).
    aws_region: Option<String>,
}

/// Whether `signal`'s requests to `endpoint` are signed, and for what: `off` never, `on`
/// always, `auto` when the host ends in `.amazonaws.com`. The service is
/// `SIDECAR_OTLP_SIGV4_SERVICE`, else the host's first label on an AWS host (`xray` of
/// `xray.us-east-1.amazonaws.com`, without a `-fips` suffix), else the signal's CloudWatch
/// service; the region is `SIDECAR_OTLP_SIGV4_REGION`, else the host's second label on an
/// AWS host, else `AWS_REGION`; none is a config error.
fn signing(
    mode: SigV4Mode,
    signal: OtlpSignal,
    endpoint: Option<&str>,
    overrides: &Overrides,
) -> Result<Option<SigV4Target>, ConfigError> {
    let host = endpoint
        .and_then(|e| e.trim().parse::<http::Uri>().ok())
        .and_then(|u| u.host().map(str::to_ascii_lowercase));
    let aws_labels = host.as_deref().and_then(aws_host);
    let sign = match mode {
        SigV4Mode::Off => false,
        SigV4Mode::On => true,
        SigV4Mode::Auto => aws_labels.is_some(),
    };
    if !sign {
        return Ok(None);
    }
    let (host_service, host_region) = aws_labels.unwrap_or_default();
    let service = overrides
        .service
        .clone()
        .or(host_service)
        .unwrap_or_else(|| signal.cloudwatch_service().to_string());
    let region = overrides
        .region
        .clone()
        .or(host_region)
        .or_else(|| overrides.aws_region.clone())
        .ok_or(ConfigError::Missing {
            var: "SIDECAR_OTLP_SIGV4_REGION",
            why: "the OTLP requests are signed with SigV4, for a region the endpoint's host \
                  does not name; AWS_REGION would do too",
        })?;
    Ok(Some(SigV4Target { service, region }))
}

/// What an `*.amazonaws.com` host says of the service and region to sign for (`None`: not
/// such a host, not signed in `auto` mode): a regional service endpoint,
/// `<service>.<region>.amazonaws.com`, names both (`xray-fips.us-gov-west-1` is `xray`); an
/// API Gateway, `<id>.execute-api.<region>.amazonaws.com`, names `execute-api` and its
/// region; any other (a load balancer's `<name>.<region>.elb.amazonaws.com`) its region at
/// most. `auto` signs all of them, so that nothing for AWS leaves unsigned; what a host does
/// not name comes from the variables or the signal.
fn aws_host(host: &str) -> Option<(Option<String>, Option<String>)> {
    let labels: Vec<&str> = host.strip_suffix(".amazonaws.com")?.split('.').collect();
    let region = labels.iter().copied().find(|l| region_shaped(l));
    let service = match labels.as_slice() {
        [service, region] if region_shaped(region) => Some(*service),
        [_, service, region] if *service == "execute-api" && region_shaped(region) => {
            Some(*service)
        }
        _ => None,
    }
    .map(|s| s.strip_suffix("-fips").unwrap_or(s))
    .filter(|s| service_name(s));
    Some((service.map(str::to_string), region.map(str::to_string)))
}

/// A region as AWS names them: two letters, one or more words, a number
/// (`us-east-1`, `us-gov-west-1`, `ap-southeast-4`).
fn region_shaped(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// A SigV4 service name: lowercase letters, digits and dashes.
fn service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(feature = "grpc")]
fn http(protocol: Protocol) -> bool {
    protocol != Protocol::Grpc
}

#[cfg(not(feature = "grpc"))]
fn http(_: Protocol) -> bool {
    true
}

/// The endpoint `signal` is sent to: its own variable, else the general one (as
/// opentelemetry-otlp reads them; the path does not matter here, only the host).
fn endpoint_of(env: &Env<'_>, signal: OtlpSignal) -> Option<String> {
    env.get(&format!("OTEL_EXPORTER_OTLP_{}_ENDPOINT", signal.upper()))
        .filter(|e| !e.trim().is_empty())
        .or_else(|| env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .filter(|e| !e.trim().is_empty())
}

/// A signed signal's headers (`OTEL_EXPORTER_OTLP_<SIGNAL>_HEADERS`, else the general one)
/// must not set what the signature sets: `authorization` or an `x-amz-*` header would be
/// replaced without a word.
fn check_headers(env: &Env<'_>, signal: OtlpSignal) -> Result<(), ConfigError> {
    let own = match signal {
        OtlpSignal::Traces => "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        OtlpSignal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        OtlpSignal::Logs => "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
    };
    let var = if env.get(own).is_some() {
        own
    } else {
        "OTEL_EXPORTER_OTLP_HEADERS"
    };
    let Some(raw) = env.get(var) else {
        return Ok(());
    };
    let clash = super::otlp_headers(var, &raw)?
        .into_iter()
        .find(|(name, _)| name == "authorization" || name.starts_with("x-amz-"));
    match clash {
        None => Ok(()),
        Some((name, _)) => Err(ConfigError::Invalid {
            var,
            value: "<not shown>".to_string(),
            expected: format!(
                "no {name} header while SIDECAR_OTLP_SIGV4 signs these requests: the SigV4 \
                 signature sets it. Set SIDECAR_OTLP_SIGV4=off to send your own"
            ),
        }),
    }
}

fn protocol_var(signal: OtlpSignal) -> &'static str {
    match signal {
        OtlpSignal::Traces => "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        OtlpSignal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        OtlpSignal::Logs => "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
    }
}

/// `SIDECAR_OTLP_LOG_GROUP` (default: the function's own, `AWS_LAMBDA_LOG_GROUP_NAME`, else
/// `/aws/lambda/<function name>`) and the stream: the execution environment's own name,
/// `AWS_LAMBDA_LOG_STREAM_NAME`, which no other environment uses. In the function's own
/// group Lambda has created it; in another, the sidecar creates it at start.
fn log_destination(env: &Env<'_>) -> Result<LogDestination, ConfigError> {
    let function = env
        .get("AWS_LAMBDA_FUNCTION_NAME")
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "lambda-sidecar".to_string());
    let default = env
        .get("AWS_LAMBDA_LOG_GROUP_NAME")
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| format!("/aws/lambda/{function}"));
    let custom = env.get("SIDECAR_OTLP_LOG_GROUP");
    let group = custom.clone().unwrap_or(default);
    // CloudWatch Logs: 1-512 characters from a-z A-Z 0-9 _ - / . #
    let valid = (1..=512).contains(&group.len())
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-/.#".contains(&b));
    if !valid {
        return Err(ConfigError::Invalid {
            var: "SIDECAR_OTLP_LOG_GROUP",
            value: group,
            expected: "a CloudWatch Logs log group name: 1 to 512 characters from letters, \
                       digits and _ - / . #"
                .to_string(),
        });
    }
    let stream = env
        .get("AWS_LAMBDA_LOG_STREAM_NAME")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "lambda-sidecar".to_string());
    let create_in = match custom {
        Some(_) => Some(aws::aws_settings(env, AwsService::Logs, LOG_GROUP_NEEDED)?),
        None => None,
    };
    Ok(LogDestination {
        group,
        stream,
        create_in,
    })
}

/// `SIDECAR_OTLP_HEADERS_SOURCE`: `secretsmanager:<id>` or `ssm:<name>`, with the AWS
/// settings to read it and `SIDECAR_OTLP_HEADERS_REFRESH_SECONDS`.
fn headers_source(env: &Env<'_>) -> Result<Option<HeadersSource>, ConfigError> {
    let refresh =
        Duration::from_secs(env.number("SIDECAR_OTLP_HEADERS_REFRESH_SECONDS", 300, 1, 86_400)?);
    let Some(raw) = env.get("SIDECAR_OTLP_HEADERS_SOURCE") else {
        return Ok(None);
    };
    let invalid = || ConfigError::Invalid {
        var: "SIDECAR_OTLP_HEADERS_SOURCE",
        value: "<not shown>".to_string(),
        expected: "secretsmanager:<secret id or ARN> or ssm:<SecureString parameter name>, \
                   with an id of printable characters without spaces"
            .to_string(),
    };
    let (kind, id) = raw.trim().split_once(':').ok_or_else(invalid)?;
    if !(1..=2048).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid());
    }
    let secret = match kind.to_ascii_lowercase().as_str() {
        "secretsmanager" => SecretRef::SecretsManager(id.to_string()),
        "ssm" => SecretRef::Ssm(id.to_string()),
        _ => return Err(invalid()),
    };
    let aws = aws::aws_settings(env, secret.service(), HEADERS_NEEDED)?;
    Ok(Some(HeadersSource {
        secret,
        aws,
        refresh,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(service: &str, region: &str) -> Option<SigV4Target> {
        Some(SigV4Target {
            service: service.to_string(),
            region: region.to_string(),
        })
    }

    /// Each mode against AWS and other hosts, with and without the overrides.
    #[test]
    fn which_requests_are_signed_and_for_what() {
        use OtlpSignal::{Logs, Metrics, Traces};
        use SigV4Mode::{Auto, Off, On};
        let none = Overrides::default();
        let region = Overrides {
            aws_region: Some("eu-west-1".to_string()),
            ..Overrides::default()
        };
        let both = Overrides {
            service: Some("custom".to_string()),
            region: Some("ap-south-1".to_string()),
            aws_region: Some("eu-west-1".to_string()),
        };
        let xray = "https://xray.us-east-1.amazonaws.com/v1/traces";
        type Case<'a> = (
            SigV4Mode,
            OtlpSignal,
            Option<&'a str>,
            &'a Overrides,
            Option<SigV4Target>,
        );
        let cases: [Case; 17] = [
            (Auto, Traces, Some(xray), &none, target("xray", "us-east-1")),
            (
                Auto,
                Metrics,
                Some("https://monitoring.eu-central-1.amazonaws.com"),
                &none,
                target("monitoring", "eu-central-1"),
            ),
            (
                Auto,
                Logs,
                Some("https://LOGS.us-west-2.AMAZONAWS.com/v1/logs"),
                &none,
                target("logs", "us-west-2"),
            ),
            (
                Auto,
                Traces,
                Some("https://xray-fips.us-gov-west-1.amazonaws.com"),
                &none,
                target("xray", "us-gov-west-1"),
            ),
            (Auto, Traces, Some("http://127.0.0.1:4318"), &region, None),
            (
                Auto,
                Traces,
                Some("https://amazonaws.com.evil.example/v1/traces"),
                &region,
                None,
            ),
            (
                Auto,
                Traces,
                Some("https://collector.example/amazonaws.com"),
                &region,
                None,
            ),
            (Off, Traces, Some(xray), &region, None),
            // Not a service endpoint, but AWS: signed all the same, with what the host says.
            (
                Auto,
                Traces,
                Some("https://otel-1234.ap-south-1.elb.amazonaws.com/v1/traces"),
                &region,
                target("xray", "ap-south-1"),
            ),
            (
                Auto,
                Logs,
                Some("https://a1b2c3.execute-api.eu-west-2.amazonaws.com/otlp"),
                &region,
                target("execute-api", "eu-west-2"),
            ),
            (
                Auto,
                Metrics,
                Some("https://weird.amazonaws.com/v1/metrics"),
                &region,
                target("monitoring", "eu-west-1"),
            ),
            (
                On,
                Traces,
                Some("http://127.0.0.1:4318"),
                &region,
                target("xray", "eu-west-1"),
            ),
            (
                On,
                Metrics,
                Some("http://127.0.0.1:4318"),
                &region,
                target("monitoring", "eu-west-1"),
            ),
            (
                On,
                Logs,
                Some("http://127.0.0.1:4318"),
                &both,
                target("custom", "ap-south-1"),
            ),
            (
                Auto,
                Traces,
                Some(xray),
                &both,
                target("custom", "ap-south-1"),
            ),
            (On, Traces, None, &region, target("xray", "eu-west-1")),
            (
                Auto,
                Traces,
                Some("https://xray.us-east-1.amazonaws.com"),
                &region,
                target("xray", "us-east-1"),
            ),
        ];
        for (mode, signal, endpoint, overrides, expected) in cases {
            assert_eq!(
                signing(mode, signal, endpoint, overrides).unwrap(),
                expected,
                "{mode:?} {signal:?} {endpoint:?} {overrides:?}"
            );
        }
        // Signing with no region to be had.
        let err = signing(On, Traces, Some("http://127.0.0.1:4318"), &none).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Missing {
                    var: "SIDECAR_OTLP_SIGV4_REGION",
                    ..
                }
            ),
            "{err}"
        );
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<super::super::ExportConfig, ConfigError> {
        let map: std::collections::HashMap<&str, &str> = pairs.iter().copied().collect();
        super::super::ExportConfig::parse(|k| map.get(k).map(|v| v.to_string()))
    }

    const KEYS: [(&str, &str); 3] = [
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        ),
    ];

    /// Signing to AWS needs credentials: without any, init stops (nothing goes unsigned).
    #[test]
    fn signing_without_credentials_is_refused() {
        let xray = (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://xray.eu-west-1.amazonaws.com/v1/traces",
        );
        let err = parse(&[xray]).unwrap_err();
        assert!(
            matches!(err, ConfigError::Missing { var: "AWS_ACCESS_KEY_ID", why } if why.contains("SIDECAR_OTLP_SIGV4")),
            "{err}"
        );
        let config = parse(&[xray, KEYS[1], KEYS[2]]).unwrap();
        assert_eq!(config.aws.traces, target("xray", "eu-west-1"));
        assert!(config.aws.credentials.is_some());
        // Off: nothing signed, nothing needed.
        let config = parse(&[xray, ("SIDECAR_OTLP_SIGV4", "off")]).unwrap();
        assert_eq!((config.aws.traces, config.aws.credentials), (None, None));
    }

    /// Logs to CloudWatch Logs get the function's log group and the environment's stream.
    #[test]
    fn logs_to_cloudwatch_name_their_group_and_stream() {
        let logs = (
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "https://logs.eu-west-1.amazonaws.com/v1/logs",
        );
        let lambda = [
            ("AWS_LAMBDA_FUNCTION_NAME", "orders"),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "2026/12/04/[$LATEST]0123abcd"),
        ];
        let config = parse(&[&[logs][..], &KEYS, &lambda].concat()).unwrap();
        assert_eq!(
            config.aws.log_destination,
            Some(LogDestination {
                group: "/aws/lambda/orders".into(),
                stream: "2026/12/04/[$LATEST]0123abcd".into(),
                create_in: None,
            })
        );
        let custom = ("SIDECAR_OTLP_LOG_GROUP", "/otlp/orders");
        let config = parse(&[&[logs, custom][..], &KEYS, &lambda].concat()).unwrap();
        let destination = config.aws.log_destination.unwrap();
        assert_eq!(destination.group, "/otlp/orders");
        assert_eq!(
            destination.create_in.map(|aws| aws.service),
            Some(AwsService::Logs)
        );
        let bad = ("SIDECAR_OTLP_LOG_GROUP", "no spaces allowed");
        let err = parse(&[&[logs, bad][..], &KEYS].concat()).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    var: "SIDECAR_OTLP_LOG_GROUP",
                    ..
                }
            ),
            "{err}"
        );
        // Traces to X-Ray need none.
        let xray = (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://xray.eu-west-1.amazonaws.com",
        );
        let config = parse(&[&[xray, ("OTEL_LOGS_EXPORTER", "none")][..], &KEYS].concat()).unwrap();
        assert_eq!(config.aws.log_destination, None);
    }

    /// A header the signature sets, set by the user too: refused, naming the variable.
    #[test]
    fn headers_the_signature_sets_are_refused() {
        let xray = (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://xray.eu-west-1.amazonaws.com",
        );
        for headers in ["authorization=Bearer%20abc", "x-amz-date=20260101T000000Z"] {
            let err =
                parse(&[&[xray, ("OTEL_EXPORTER_OTLP_HEADERS", headers)][..], &KEYS].concat())
                    .unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("OTEL_EXPORTER_OTLP_HEADERS")
                    && text.contains("SIDECAR_OTLP_SIGV4")
                    && !text.contains("abc"),
                "{text}"
            );
        }
        // Unsigned, or another header: fine.
        let off = ("SIDECAR_OTLP_SIGV4", "off");
        let auth = ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20abc");
        assert!(parse(&[xray, auth, off]).is_ok());
        let tenant = ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=orders");
        assert!(parse(&[&[xray, tenant][..], &KEYS].concat()).is_ok());
    }

    /// EMF and OTLP metrics to CloudWatch at once: refused unless asked for.
    #[test]
    fn cloudwatch_metrics_twice_over_are_refused_unless_asked_for() {
        let metrics = (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "https://monitoring.eu-west-1.amazonaws.com/v1/metrics",
        );
        let config = parse(&[&[metrics][..], &KEYS].concat()).unwrap();
        let err = config.aws.check_emf(true).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { var: "SIDECAR_EMF", expected, .. }
                if expected.contains("SIDECAR_OTLP_METRICS_WITH_EMF")),
            "{err}"
        );
        assert!(config.aws.check_emf(false).is_ok());
        let both = ("SIDECAR_OTLP_METRICS_WITH_EMF", "on");
        let config = parse(&[&[metrics, both][..], &KEYS].concat()).unwrap();
        assert!(config.aws.check_emf(true).is_ok());
        // Metrics to another collector: no double count in CloudWatch.
        let other = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert!(parse(&[other]).unwrap().aws.check_emf(true).is_ok());
    }

    /// `SIDECAR_OTLP_HEADERS_SOURCE`: the two schemes, and errors that show no value.
    #[test]
    fn the_headers_source() {
        let config = parse(
            &[
                &[("SIDECAR_OTLP_HEADERS_SOURCE", "secretsmanager:otlp-key")][..],
                &KEYS,
            ]
            .concat(),
        )
        .unwrap();
        let source = config.aws.headers_source.unwrap();
        assert_eq!(source.secret, SecretRef::SecretsManager("otlp-key".into()));
        assert_eq!(source.refresh, Duration::from_secs(300));
        let config = parse(
            &[
                &[
                    ("SIDECAR_OTLP_HEADERS_SOURCE", "ssm:/otlp/key"),
                    ("SIDECAR_OTLP_HEADERS_REFRESH_SECONDS", "5"),
                ][..],
                &KEYS,
            ]
            .concat(),
        )
        .unwrap();
        let source = config.aws.headers_source.unwrap();
        assert_eq!(
            (source.secret, source.refresh),
            (SecretRef::Ssm("/otlp/key".into()), Duration::from_secs(5))
        );
        for bad in [
            "x-api-key=s3cr3t-value",
            "vault:k",
            "ssm:",
            "ssm:with space",
        ] {
            let err =
                parse(&[&[("SIDECAR_OTLP_HEADERS_SOURCE", bad)][..], &KEYS].concat()).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("SIDECAR_OTLP_HEADERS_SOURCE") && !text.contains("s3cr3t"),
                "{text}"
            );
        }
        let err = parse(&[
            ("SIDECAR_OTLP_HEADERS_SOURCE", "ssm:/k"),
            ("AWS_REGION", "eu-west-1"),
        ])
        .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Missing {
                    var: "AWS_ACCESS_KEY_ID",
                    ..
                }
            ),
            "{err}"
        );
    }

    /// gRPC is not signed: a signing setting with it names both variables.
    #[cfg(feature = "grpc")]
    #[test]
    fn grpc_with_sigv4_is_refused_naming_both() {
        let err = parse(
            &[
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                    ("SIDECAR_OTLP_SIGV4", "on"),
                ][..],
                &KEYS,
            ]
            .concat(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("SIDECAR_OTLP_SIGV4") && text.contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
            "{text}"
        );
        let ok = parse(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert!(ok.is_ok(), "{ok:?}");
        // Nor are the headers of a secret added to gRPC requests.
        let err = parse(
            &[
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                    ("SIDECAR_OTLP_HEADERS_SOURCE", "ssm:/otlp/key"),
                ][..],
                &KEYS,
            ]
            .concat(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("SIDECAR_OTLP_HEADERS_SOURCE") && text.contains("PROTOCOL"),
            "{text}"
        );
    }
}
