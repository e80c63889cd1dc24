//! The AWS calls the key sources and the exporter headers make (Secrets Manager, SSM, KMS):
//! JSON 1.1 requests signed with SigV4 by the `aws-sigv4` crate and sent with reqwest, already
//! in the tree. [`sign_request`] is also what signs OTLP requests (`export::sigv4`).
//!
//! Why `aws-sigv4` rather than the AWS SDK for Rust or SigV4 written here: docs/performance.md,
//! "Key sources" has the measured figures. In short, the SDK costs megabytes of binary for four
//! operations; SigV4 is a standard, and the project prefers a maintained library to
//! hand-written code for one, which this crate is (the SDK's own signer) at a small cost. Its
//! output is checked against botocore's signer (unit test) and against moto enforcing IAM
//! (tests/key_sources.rs).
//!
//! The credentials come from [`CredentialProvider`]: the variables Lambda gives, or the
//! container credentials endpoint SnapStart gives instead, fetched again before they expire.
//!
//! Never: logs or returns a credential; follows a redirect (it would resend the signed
//! request elsewhere); waits without a bound (every call runs under a timeout, and a dropped
//! future cancels its request).

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use serde_json::Value;

use super::answer::{BodyError, error_chain, read_body};
use super::credentials::{CredentialProvider, Credentials, CredentialsError};
use crate::config::{AwsService, AwsSettings};
use crate::selftrace;
use tracing::Instrument as _;

/// The most of a response body read: the largest answer here (a 4 KiB RSA public key, a
/// 64 KiB secret) fits many times over.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// An AWS call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// No answer: connection refused, DNS, TLS, or the timeout; or the request could not be
    /// made (a client or a signature that could not be built).
    #[error("{0}")]
    Unreachable(String),
    /// The service answered with an error: its `__type` (without namespace) and message.
    #[error("{code} (HTTP {status}): {message}")]
    Service {
        status: u16,
        code: String,
        message: String,
    },
    /// No credentials to sign with: the container credentials endpoint failed.
    #[error("no AWS credentials: {0}")]
    Credentials(#[from] CredentialsError),
}

/// A client for one service, with the credentials Lambda gave the extension.
pub struct AwsClient {
    http: reqwest::Client,
    settings: AwsSettings,
    credentials: CredentialProvider,
    /// `<endpoint>/`, the URL every call posts to and signs.
    url: String,
}

/// The TLS configuration of every AWS client: Mozilla's roots compiled in, as for the OTLP
/// client (export/otlp.rs): reading the system store costs milliseconds of cold start.
pub fn tls_config() -> Result<rustls::ClientConfig, AwsError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| AwsError::Unreachable(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

impl AwsClient {
    pub fn new(settings: AwsSettings) -> Result<AwsClient, AwsError> {
        // Config checks this already; checked again here because the signer would panic on
        // a URL without a host.
        let url = format!("{}/", settings.endpoint);
        if url
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::len))
            .is_none()
        {
            return Err(AwsError::Unreachable(
                "the endpoint has no host".to_string(),
            ));
        }
        let tls = tls_config()?;
        let credentials = CredentialProvider::new(&settings.credentials, tls.clone())?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AwsError::Unreachable(e.to_string()))?;
        Ok(AwsClient {
            http,
            settings,
            credentials,
            url,
        })
    }

    pub fn service(&self) -> AwsService {
        self.settings.service
    }

    /// `POST /` with `X-Amz-Target: <prefix>.<action>` and `body`, answered within `timeout`,
    /// which also bounds getting the credentials (a fetch from the container endpoint).
    pub async fn call(
        &self,
        action: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, AwsError> {
        let prefix = match self.settings.service {
            AwsService::SecretsManager => "secretsmanager",
            AwsService::Ssm => "AmazonSSM",
            AwsService::Kms => "TrentService",
            AwsService::Logs => "Logs_20140328",
        };
        let target = format!("{prefix}.{action}");
        // A self-trace span (`SIDECAR_SELF_TRACES`), as the semantic conventions name an AWS
        // SDK call; disabled, and never built, when they are off.
        let span = tracing::info_span!(
            target: selftrace::TARGET,
            "sidecar.aws_call",
            otel.name = format!("{}/{action}", rpc_service(self.settings.service)),
            otel.kind = "client",
            rpc.system = "aws-api",
            rpc.service = rpc_service(self.settings.service),
            rpc.method = action,
            otel.status_code = tracing::field::Empty,
        );
        let result = self
            .exchange(&target, body, timeout)
            .instrument(span.clone())
            .await;
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    /// [`AwsClient::call`]'s request and answer, under `timeout`.
    async fn exchange(
        &self,
        target: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, AwsError> {
        let body = body.to_string().into_bytes();
        let exchange = async {
            let credentials = self.credentials.get().await?;
            let headers = sign(
                &self.settings,
                &credentials,
                &self.url,
                target,
                &body,
                SystemTime::now(),
            )?;
            let mut request = self
                .http
                .post(&self.url)
                .header("content-type", CONTENT_TYPE)
                .header("x-amz-target", target);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let response = request
                .body(body)
                .send()
                .await
                .map_err(|e| AwsError::Unreachable(error_chain(&e)))?;
            let status = response.status().as_u16();
            let error_type = response
                .headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = read_body(response, MAX_RESPONSE_BYTES)
                .await
                .map_err(|e| match e {
                    BodyError::Broken(why) => AwsError::Unreachable(why),
                    BodyError::TooLarge(max) => {
                        AwsError::Unreachable(format!("the answer is larger than {max} bytes"))
                    }
                })?;
            Ok::<_, AwsError>((status, error_type, bytes))
        };
        let (status, error_type, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| AwsError::Unreachable(format!("no answer within {timeout:?}")))??;
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(json);
        }
        Err(service_error(status, error_type.as_deref(), &json, &bytes))
    }
}

/// The service as `rpc.service` names it for an AWS SDK call: the API's service id.
fn rpc_service(service: AwsService) -> &'static str {
    match service {
        AwsService::SecretsManager => "SecretsManager",
        AwsService::Ssm => "SSM",
        AwsService::Kms => "KMS",
        AwsService::Logs => "CloudWatchLogs",
    }
}

/// The error code of a failed call: the `x-amzn-ErrorType` header, else the JSON `__type`,
/// else an XML `<Code>` (what an IAM or signature refusal may come as), else from the status.
/// Namespaces (`...#Code`) and suffixes (`Code:http://...`) are cut.
fn service_error(status: u16, header: Option<&str>, json: &Value, body: &[u8]) -> AwsError {
    let text = String::from_utf8_lossy(body);
    let xml = |tag: &str| {
        let open = format!("<{tag}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find('<')? + start;
        Some(text[start..end].to_string())
    };
    let code = header
        .map(str::to_string)
        .or_else(|| {
            json.get("__type")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .or_else(|| xml("Code"))
        .map(|c| {
            let c = c.split(':').next().unwrap_or_default();
            c.rsplit('#').next().unwrap_or(c).to_string()
        })
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| match status {
            403 => "AccessDenied".to_string(),
            404 => "NotFoundException".to_string(),
            _ => "UnknownError".to_string(),
        });
    let message = json
        .get("message")
        .or_else(|| json.get("Message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| xml("Message"))
        .unwrap_or_default()
        .chars()
        .take(512)
        .collect();
    AwsError::Service {
        status,
        code,
        message,
    }
}

const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The SigV4 headers (`x-amz-date`, `authorization`, `x-amz-security-token`) for a JSON 1.1
/// `POST` of `body` to `url`, signing `content-type`, `host` (from `url`), the date, the
/// session token and `x-amz-target` (what botocore signs for these services).
fn sign(
    settings: &AwsSettings,
    credentials: &Credentials,
    url: &str,
    target: &str,
    body: &[u8],
    now: SystemTime,
) -> Result<Vec<(&'static str, String)>, AwsError> {
    let headers = [("content-type", CONTENT_TYPE), ("x-amz-target", target)];
    sign_request(
        settings.service.signing_name(),
        &settings.region,
        credentials,
        ("POST", url),
        &headers,
        body,
        now,
    )
    .map_err(|e| AwsError::Unreachable(e.to_string()))
}

/// A request that could not be signed: a URL without a host, a header value that is not
/// text. Names what was wrong, never a credential.
#[derive(Debug, thiserror::Error)]
#[error("signing: {0}")]
pub struct SignError(String);

/// The SigV4 headers (`x-amz-date`, `authorization`, and `x-amz-security-token` with a
/// session token) for `method` `url` with `headers` and `body`, signed for `service` in
/// `region` at `now` by the `aws-sigv4` crate, with its default settings (the payload's
/// SHA-256 in the canonical request, not sent as a header; the path normalised and encoded
/// twice, as for every service but S3). Every header in `headers` is signed, with `host`
/// (from `url`): the caller passes what it sends.
pub fn sign_request(
    service: &str,
    region: &str,
    credentials: &Credentials,
    (method, url): (&str, &str),
    headers: &[(&str, &str)],
    body: &[u8],
    now: SystemTime,
) -> Result<Vec<(&'static str, String)>, SignError> {
    let failed = |e: &dyn std::error::Error| SignError(e.to_string());
    let identity = aws_credential_types::Credentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        credentials.session_token.clone(),
        credentials.expires,
        "lambda-environment",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| failed(&e))?
        .into();
    let request = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| failed(&e))?;
    let (instructions, _signature) = aws_sigv4::http_request::sign(request, &params)
        .map_err(|e| failed(&e))?
        .into_parts();
    let (headers, _query) = instructions.into_parts();
    Ok(headers
        .iter()
        .map(|h| (h.name(), h.value().to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// The expected headers were made by botocore 1.44's `SigV4Auth` for the same request,
    /// credentials and time (AWS's documentation example credentials).
    #[test]
    fn signs_as_botocore_does() {
        let credentials = Credentials {
            access_key_id: "AKIDEXAMPLE".to_string(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string(),
            session_token: Some("session-token-example".to_string()),
            expires: None,
        };
        let settings = AwsSettings {
            service: AwsService::SecretsManager,
            region: "us-east-1".to_string(),
            credentials: crate::config::AwsCredentials::Keys {
                access_key_id: credentials.access_key_id.clone(),
                secret_access_key: credentials.secret_access_key.clone(),
                session_token: credentials.session_token.clone(),
            },
            endpoint: "http://127.0.0.1:5000".to_string(),
        };
        let at = UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
        let mut headers = sign(
            &settings,
            &credentials,
            "http://127.0.0.1:5000/",
            "secretsmanager.GetSecretValue",
            br#"{"SecretId":"jwt-key"}"#,
            at,
        )
        .unwrap();
        headers.sort();
        assert_eq!(
            headers,
            [
                (
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/secretsmanager/\
                     aws4_request, SignedHeaders=content-type;host;x-amz-date;\
                     x-amz-security-token;x-amz-target, \
                     Signature=6850200ff6ef255b75ecbab1bb7a9ab9caee856271b526011d428d547113d7b5"
                        .to_string()
                ),
                ("x-amz-date", "20150830T123600Z".to_string()),
                ("x-amz-security-token", "session-token-example".to_string()),
            ]
        );
    }
}
