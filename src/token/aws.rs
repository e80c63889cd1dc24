//! The AWS calls the key sources make (Secrets Manager, SSM, KMS): JSON 1.1 requests signed
//! with SigV4 (written here on aws-lc-rs) and sent with reqwest, both already in the tree.
//!
//! Why not the AWS SDK for Rust, nor the `aws-sigv4` crate: README "Key sources" has the
//! measured figures. In short, the SDK costs megabytes of binary for four operations, and
//! both it and `aws-sigv4` (with its 23 crates, among them a second SHA-2/HMAC beside aws-lc-rs)
//! now need Rust 1.94, above this crate's `rust-version`. The part of SigV4 a JSON `POST /`
//! needs is short, and is checked against botocore's signer (unit test) and against moto
//! enforcing IAM (tests/key_sources.rs).
//!
//! Never: logs or returns a credential; follows a redirect (it would resend the signed
//! request elsewhere); waits without a bound (every call runs under a timeout, and a dropped
//! future cancels its request).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{digest, hmac};
use serde_json::Value;

use crate::config::{AwsService, AwsSettings};

/// The most of a response body read: the largest answer here (a 4 KiB RSA public key, a
/// 64 KiB secret) fits many times over.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// An AWS call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// No answer: connection refused, DNS, TLS, or the timeout.
    #[error("{0}")]
    Unreachable(String),
    /// The service answered with an error: its `__type` (without namespace) and message.
    #[error("{code} (HTTP {status}): {message}")]
    Service {
        status: u16,
        code: String,
        message: String,
    },
}

/// A client for one service, with the credentials Lambda gave the extension.
pub struct AwsClient {
    http: reqwest::Client,
    settings: AwsSettings,
    /// `host[:port]` of the endpoint, as the signed `host` header carries it.
    host: String,
}

impl AwsClient {
    pub fn new(settings: AwsSettings) -> Result<AwsClient, AwsError> {
        let host = settings
            .endpoint
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.authority().map(|a| a.as_str().to_string()))
            .ok_or_else(|| AwsError::Unreachable("the endpoint has no host".to_string()))?;
        // Mozilla's roots compiled in, as for the OTLP client (export/otlp.rs): reading the
        // system store costs milliseconds of cold start.
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| AwsError::Unreachable(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AwsError::Unreachable(e.to_string()))?;
        Ok(AwsClient {
            http,
            settings,
            host,
        })
    }

    pub fn service(&self) -> AwsService {
        self.settings.service
    }

    /// `POST /` with `X-Amz-Target: <prefix>.<action>` and `body`, answered within `timeout`.
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
        };
        let target = format!("{prefix}.{action}");
        let body = body.to_string().into_bytes();
        let headers = sign(
            &self.settings,
            &self.host,
            &target,
            &body,
            SystemTime::now(),
        );
        let mut request = self
            .http
            .post(format!("{}/", self.settings.endpoint))
            .header("content-type", CONTENT_TYPE)
            .header("x-amz-target", &target);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let exchange = async {
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
            let mut bytes = Vec::new();
            let mut response = response;
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| AwsError::Unreachable(error_chain(&e)))?
            {
                if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(AwsError::Unreachable(format!(
                        "the answer is larger than {MAX_RESPONSE_BYTES} bytes"
                    )));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok((status, error_type, bytes))
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

/// The error and its causes: reqwest's own text ("error sending request") says nothing of why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The SigV4 headers (`x-amz-date`, `x-amz-security-token`, `authorization`) for a JSON 1.1
/// `POST /` with no query string, signing `content-type`, `host`, the date, the session token
/// and `x-amz-target` (what botocore signs for these services).
fn sign(
    settings: &AwsSettings,
    host: &str,
    target: &str,
    body: &[u8],
    now: SystemTime,
) -> Vec<(&'static str, String)> {
    let (date, time) = utc(now);
    let amz_date = format!("{date}T{time}Z");
    let mut headers = vec![
        ("content-type", CONTENT_TYPE.to_string()),
        ("host", host.to_string()),
        ("x-amz-date", amz_date.clone()),
    ];
    if let Some(token) = &settings.session_token {
        headers.push(("x-amz-security-token", token.clone()));
    }
    headers.push(("x-amz-target", target.to_string()));
    let signed_headers = headers
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers
        .iter()
        .map(|(n, v)| format!("{n}:{}\n", v.trim()))
        .collect();
    let canonical_request = format!(
        "POST\n/\n\n{canonical_headers}\n{signed_headers}\n{}",
        hex(digest::digest(&digest::SHA256, body).as_ref())
    );
    let service = settings.service.signing_name();
    let scope = format!("{date}/{}/{service}/aws4_request", settings.region);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(digest::digest(&digest::SHA256, canonical_request.as_bytes()).as_ref())
    );
    let mac = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
            .as_ref()
            .to_vec()
    };
    let mut key = mac(
        format!("AWS4{}", settings.secret_access_key).as_bytes(),
        &date,
    );
    for part in [settings.region.as_str(), service, "aws4_request"] {
        key = mac(&key, part);
    }
    let signature = hex(&mac(&key, &string_to_sign));
    let mut out = vec![("x-amz-date", amz_date)];
    if let Some(token) = &settings.session_token {
        out.push(("x-amz-security-token", token.clone()));
    }
    out.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, \
             Signature={signature}",
            settings.access_key_id
        ),
    ));
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `(YYYYMMDD, HHMMSS)` in UTC (Howard Hinnant's days-to-civil algorithm).
fn utc(t: SystemTime) -> (String, String) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}{month:02}{day:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected headers were made by botocore 1.44's `SigV4Auth` for the same request,
    /// credentials and time (AWS's documentation example credentials).
    #[test]
    fn signs_as_botocore_does() {
        let settings = AwsSettings {
            service: AwsService::SecretsManager,
            region: "us-east-1".to_string(),
            access_key_id: "AKIDEXAMPLE".to_string(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string(),
            session_token: Some("session-token-example".to_string()),
            endpoint: "http://127.0.0.1:5000".to_string(),
        };
        let at = UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
        let headers = sign(
            &settings,
            "127.0.0.1:5000",
            "secretsmanager.GetSecretValue",
            br#"{"SecretId":"jwt-key"}"#,
            at,
        );
        assert_eq!(
            headers,
            [
                ("x-amz-date", "20150830T123600Z".to_string()),
                ("x-amz-security-token", "session-token-example".to_string()),
                (
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/secretsmanager/\
                     aws4_request, SignedHeaders=content-type;host;x-amz-date;\
                     x-amz-security-token;x-amz-target, \
                     Signature=6850200ff6ef255b75ecbab1bb7a9ab9caee856271b526011d428d547113d7b5"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn utc_dates() {
        for (secs, date, time) in [
            (0, "19700101", "000000"),
            (951_782_400, "20000229", "000000"),
            (1_764_329_999, "20251128", "113959"),
        ] {
            assert_eq!(
                utc(UNIX_EPOCH + Duration::from_secs(secs)),
                (date.to_string(), time.to_string())
            );
        }
    }
}
