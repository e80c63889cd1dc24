//! A secret's text and version, from Secrets Manager (`GetSecretValue`) or SSM
//! (`GetParameter`, SecureString only), with the typed errors both users report: the signing
//! key (`JWT_KEY_SOURCE`, in `token::source`) and the exporter headers
//! (`SIDECAR_OTLP_HEADERS_SOURCE`, in `export::headers`).
//!
//! Never: puts the secret's text in an error or a log line.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::client::{AwsClient, AwsError};
use crate::config::SecretRef;

/// What went wrong reading a secret, as `init/error` reports it (`<Source>.<Kind>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceErrorKind {
    NotFound,
    AccessDenied,
    /// Not what the user can use (a key the algorithm cannot use, not a SecureString, a KMS
    /// key that is not SIGN_VERIFY, headers that are not `key=value,…`).
    WrongKeyType,
    KeyDisabled,
    /// No answer in time: network, DNS, TLS or the timeout.
    Unreachable,
    /// Any other error the service answered.
    ServiceError,
    /// No credentials to call the service with: the container credentials endpoint
    /// (SnapStart) failed, refused the authorization token or answered something unusable.
    NoCredentials,
}

impl SourceErrorKind {
    /// What an AWS error means for the source.
    pub fn of(error: &AwsError) -> SourceErrorKind {
        match error {
            AwsError::Unreachable(_) => SourceErrorKind::Unreachable,
            AwsError::Credentials(_) => SourceErrorKind::NoCredentials,
            AwsError::Service { code, .. } => match code.as_str() {
                "ResourceNotFoundException" | "ParameterNotFound" | "NotFoundException" => {
                    SourceErrorKind::NotFound
                }
                "AccessDeniedException"
                | "AccessDenied"
                | "UnrecognizedClientException"
                | "InvalidClientTokenId"
                | "ExpiredTokenException"
                | "SignatureDoesNotMatch"
                | "InvalidSignatureException" => SourceErrorKind::AccessDenied,
                "DisabledException" | "KMSInvalidStateException" => SourceErrorKind::KeyDisabled,
                "InvalidKeyUsageException" | "UnsupportedOperationException" => {
                    SourceErrorKind::WrongKeyType
                }
                _ => SourceErrorKind::ServiceError,
            },
        }
    }
}

/// A secret that could not be read. `detail` names what was wrong, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    pub kind: SourceErrorKind,
    pub detail: String,
}

impl SourceError {
    fn of(error: AwsError) -> SourceError {
        SourceError {
            kind: SourceErrorKind::of(&error),
            detail: error.to_string(),
        }
    }

    fn wrong_type(detail: String) -> SourceError {
        SourceError {
            kind: SourceErrorKind::WrongKeyType,
            detail,
        }
    }
}

/// A secret's text and version as Secrets Manager or SSM returned it.
pub struct Fetched {
    pub material: Vec<u8>,
    pub version: String,
}

/// Reads `secret`: its `SecretString` (or `SecretBinary`) and `VersionId`, or a SecureString
/// parameter's `Value` and `Version`, in one call under `timeout`.
pub async fn fetch(
    client: &AwsClient,
    secret: &SecretRef,
    timeout: Duration,
) -> Result<Fetched, SourceError> {
    let (action, body) = match secret {
        SecretRef::SecretsManager(id) => ("GetSecretValue", json!({ "SecretId": id })),
        SecretRef::Ssm(name) => (
            "GetParameter",
            json!({ "Name": name, "WithDecryption": true }),
        ),
    };
    let answer = client
        .call(action, &body, timeout)
        .await
        .map_err(SourceError::of)?;
    let text = |v: &Value| v.as_str().map(str::to_string);
    let (material, version) = match secret {
        SecretRef::SecretsManager(_) => {
            let material = match (answer.get("SecretString"), answer.get("SecretBinary")) {
                (Some(s), _) => text(s).map(String::into_bytes),
                (None, Some(b)) => b.as_str().and_then(|b| STANDARD.decode(b).ok()),
                (None, None) => None,
            };
            (material, answer.get("VersionId").and_then(text))
        }
        SecretRef::Ssm(_) => {
            let parameter = answer.get("Parameter").unwrap_or(&Value::Null);
            let kind = parameter.get("Type").and_then(Value::as_str);
            if kind != Some("SecureString") {
                return Err(SourceError::wrong_type(format!(
                    "the parameter is of type {}, not SecureString: a secret must be stored \
                     encrypted",
                    kind.unwrap_or("unknown")
                )));
            }
            (
                parameter
                    .get("Value")
                    .and_then(text)
                    .map(String::into_bytes),
                parameter.get("Version").map(Value::to_string),
            )
        }
    };
    match (material, version) {
        (Some(material), Some(version)) => Ok(Fetched { material, version }),
        _ => Err(SourceError::wrong_type(
            "the answer holds no secret text and version".into(),
        )),
    }
}
