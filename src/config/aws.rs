//! Region, credentials and endpoints of the AWS key sources (`JWT_KEY_SOURCE`), read from
//! the `AWS_*` variables as the AWS SDKs read them.
//!
//! Credentials come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`,
//! which Lambda gives every extension, or, when those are absent, from the container
//! credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`), which is what Lambda gives
//! instead with SnapStart, so that no credentials expire inside a snapshot. Only the names
//! are read here; `token::credentials` fetches.

use std::net::IpAddr;
use std::path::PathBuf;

use super::{ConfigError, Env};

/// Which AWS service an endpoint is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsService {
    SecretsManager,
    Ssm,
    Kms,
    /// CloudWatch Logs: the log stream of OTLP logs in a group of the user's.
    Logs,
}

impl AwsService {
    /// The SigV4 signing name, which is also the first label of the default endpoint.
    pub fn signing_name(self) -> &'static str {
        match self {
            AwsService::SecretsManager => "secretsmanager",
            AwsService::Ssm => "ssm",
            AwsService::Kms => "kms",
            AwsService::Logs => "logs",
        }
    }

    /// The service-specific endpoint variable, as the AWS SDKs name it.
    fn endpoint_variable(self) -> &'static str {
        match self {
            AwsService::SecretsManager => "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            AwsService::Ssm => "AWS_ENDPOINT_URL_SSM",
            AwsService::Kms => "AWS_ENDPOINT_URL_KMS",
            AwsService::Logs => "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS",
        }
    }
}

/// A secret the sidecar reads from AWS (a signing key, exporter headers): only its name here;
/// `aws::secrets` fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `secretsmanager:<secret id or ARN>`: its `SecretString`.
    SecretsManager(String),
    /// `ssm:<parameter name>`: a SecureString parameter.
    Ssm(String),
}

impl SecretRef {
    /// What errors and logs call it: `kind:id` (an id is not secret).
    pub fn describe(&self) -> String {
        match self {
            SecretRef::SecretsManager(id) => format!("secretsmanager:{id}"),
            SecretRef::Ssm(name) => format!("ssm:{name}"),
        }
    }

    /// The service it is read from.
    pub fn service(&self) -> AwsService {
        match self {
            SecretRef::SecretsManager(_) => AwsService::SecretsManager,
            SecretRef::Ssm(_) => AwsService::Ssm,
        }
    }
}

/// Region, credentials and endpoint of the one AWS service a key source talks to, from the
/// variables Lambda gives every extension.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsSettings {
    pub service: AwsService,
    pub region: String,
    pub credentials: AwsCredentials,
    /// `AWS_ENDPOINT_URL_<SERVICE>`, else `AWS_ENDPOINT_URL`, else the public endpoint.
    pub endpoint: String,
}

/// Where the AWS calls get their credentials. The variables win when they are set, as in
/// the AWS SDKs' default chain.
#[derive(Clone, PartialEq, Eq)]
pub enum AwsCredentials {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`: fixed for the
    /// life of the environment.
    Keys {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    },
    /// The container credentials endpoint, which hands out credentials with an expiry:
    /// what Lambda gives with SnapStart instead of the variables above.
    Container(ContainerCredentials),
}

/// `AWS_CONTAINER_CREDENTIALS_FULL_URI` and how to authorize the `GET` to it.
#[derive(Clone, PartialEq, Eq)]
pub struct ContainerCredentials {
    /// The URI, checked by [`container_uri`]: https, or http to a loopback or link-local
    /// address.
    pub uri: String,
    pub authorization: ContainerAuthorization,
}

/// The `Authorization` header of the `GET` to the container credentials endpoint.
#[derive(Clone, PartialEq, Eq)]
pub enum ContainerAuthorization {
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`: the file is read at each fetch, as the AWS
    /// SDKs read it (EKS rotates it); it wins over the variable, as in the SDKs.
    File(PathBuf),
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN` (Lambda SnapStart).
    Token(String),
    /// Neither is set: no header.
    None,
}

impl std::fmt::Debug for AwsCredentials {
    /// Written by hand so that a credential never reaches a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AwsCredentials::Keys { .. } => f.write_str("Keys(<redacted>)"),
            AwsCredentials::Container(c) => f
                .debug_struct("Container")
                .field("uri", &c.uri)
                .field(
                    "authorization",
                    &match &c.authorization {
                        ContainerAuthorization::File(path) => format!("file {}", path.display()),
                        ContainerAuthorization::Token(_) => "<redacted>".to_string(),
                        ContainerAuthorization::None => "none".to_string(),
                    },
                )
                .finish(),
        }
    }
}

impl std::fmt::Debug for AwsSettings {
    /// Written by hand so that the credentials never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSettings")
            .field("service", &self.service)
            .field("region", &self.region)
            .field("credentials", &self.credentials)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Why the AWS variables are needed, for the errors when they are missing: who asks for them
/// (`JWT_KEY_SOURCE names an AWS key source`, …).
#[derive(Debug, Clone, Copy)]
pub(super) struct Needed {
    /// Why a region is needed.
    pub(super) region: &'static str,
    /// Why credentials are needed, and where they come from.
    pub(super) credentials: &'static str,
}

/// What the key sources need the AWS variables for.
pub(super) const KEY_SOURCE: Needed = Needed {
    region: "JWT_KEY_SOURCE names an AWS key source; Lambda sets it for every extension",
    credentials: "JWT_KEY_SOURCE names an AWS key source, which needs credentials: \
                  AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or, as Lambda gives them with \
                  SnapStart, AWS_CONTAINER_CREDENTIALS_FULL_URI",
};

/// `AWS_REGION`, else `AWS_DEFAULT_REGION`, checked to be a region name; `None` when neither
/// is set.
pub(super) fn region(env: &Env<'_>) -> Result<Option<String>, ConfigError> {
    let Some((var, region)) = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .into_iter()
        .find_map(|var| {
            env.get(var)
                .filter(|r| !r.trim().is_empty())
                .map(|r| (var, r))
        })
    else {
        return Ok(None);
    };
    if region_name(&region) {
        Ok(Some(region))
    } else {
        Err(ConfigError::Invalid {
            var,
            value: region,
            expected: "a region name such as eu-west-1".to_string(),
        })
    }
}

/// A region name as AWS spells them: letters, digits and dashes.
pub(super) fn region_name(region: &str) -> bool {
    !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Region, credentials and endpoint for `service`, as the AWS SDKs read them.
pub(super) fn aws_settings(
    env: &Env<'_>,
    service: AwsService,
    needed: Needed,
) -> Result<AwsSettings, ConfigError> {
    let region = region(env)?.ok_or(ConfigError::Missing {
        var: "AWS_REGION",
        why: needed.region,
    })?;
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
        credentials: credentials(env, needed.credentials)?,
        endpoint,
    })
}

/// The credentials as the AWS SDKs' default chain reads them here: the access-key
/// variables when set, else the container credentials endpoint; neither is a
/// [`ConfigError::Missing`] with `why`.
pub(super) fn credentials(env: &Env<'_>, why: &'static str) -> Result<AwsCredentials, ConfigError> {
    let set = |var: &str| env.get(var).is_some_and(|v| !v.trim().is_empty());
    let required = |var: &'static str| {
        env.get(var)
            .filter(|v| !v.trim().is_empty())
            .ok_or(ConfigError::Missing { var, why })
    };
    if set("AWS_ACCESS_KEY_ID") || set("AWS_SECRET_ACCESS_KEY") {
        Ok(AwsCredentials::Keys {
            access_key_id: required("AWS_ACCESS_KEY_ID")?,
            secret_access_key: required("AWS_SECRET_ACCESS_KEY")?,
            session_token: env.get("AWS_SESSION_TOKEN").filter(|t| !t.is_empty()),
        })
    } else if let Some(container) = container_credentials(env)? {
        Ok(AwsCredentials::Container(container))
    } else {
        Err(ConfigError::Missing {
            var: "AWS_ACCESS_KEY_ID",
            why,
        })
    }
}

/// The container credentials endpoint, when `AWS_CONTAINER_CREDENTIALS_FULL_URI` is set.
fn container_credentials(env: &Env<'_>) -> Result<Option<ContainerCredentials>, ConfigError> {
    let Some(raw) = env
        .get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .filter(|v| !v.trim().is_empty())
    else {
        return Ok(None);
    };
    let uri = container_uri(&raw).ok_or_else(|| ConfigError::Invalid {
        var: "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        value: raw.clone(),
        expected: CONTAINER_URI_EXPECTED.to_string(),
    })?;
    let authorization = match env
        .get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
        .filter(|v| !v.is_empty())
    {
        Some(path) => ContainerAuthorization::File(PathBuf::from(path)),
        None => match container_token(env)? {
            Some(token) => ContainerAuthorization::Token(token),
            None => ContainerAuthorization::None,
        },
    };
    Ok(Some(ContainerCredentials { uri, authorization }))
}

/// `AWS_CONTAINER_AUTHORIZATION_TOKEN`, when set and not empty, checked to fit in a header
/// (it is sent as `Authorization`, and the function sends it back as `X-Sidecar-Token`).
pub(super) fn container_token(env: &Env<'_>) -> Result<Option<String>, ConfigError> {
    match env
        .get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
        .filter(|t| !t.is_empty())
    {
        None => Ok(None),
        Some(token) if is_header_value(&token) => Ok(Some(token)),
        Some(token) => Err(ConfigError::Invalid {
            var: "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            value: token,
            expected: "printable ASCII (spaces inside only), as it is sent in an HTTP header"
                .to_string(),
        }),
    }
}

/// Printable ASCII, spaces allowed only inside: what a header carries unchanged (HTTP trims
/// the spaces around a value, and forbids control characters).
fn is_header_value(value: &str) -> bool {
    !value.is_empty()
        && value.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && !value.starts_with(' ')
        && !value.ends_with(' ')
}

const CONTAINER_URI_EXPECTED: &str = "an https:// URL, or an http:// URL to a loopback or \
     link-local host (127.0.0.0/8, [::1], localhost, 169.254.0.0/16, [fd00:ec2::23]): the \
     authorization token must not cross a network in clear; without user info";

/// `AWS_CONTAINER_CREDENTIALS_FULL_URI`, if the sidecar may send the authorization token to
/// it: any `https://` URL, or an `http://` one whose host cannot be off this machine or its
/// link: loopback (`127.0.0.0/8`, `::1`, `localhost`) or link-local (`169.254.0.0/16`, where
/// Lambda, ECS and EKS serve theirs, and EKS's `fd00:ec2::23`). No user info.
pub fn container_uri(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let uri: http::Uri = raw.parse().ok()?;
    let authority = uri.authority()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host();
    let local = || {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => ip.is_loopback() || ip.is_link_local(),
            Ok(IpAddr::V6(ip)) => {
                ip.is_loopback()
                    || ip == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)
            }
            Err(_) => bare.eq_ignore_ascii_case("localhost"),
        }
    };
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Some(raw.to_string()),
        Some("http") if local() => Some(raw.to_string()),
        _ => None,
    }
}
