//! SigV4 for OTLP/HTTP: what lets the sidecar send straight to the CloudWatch OTLP endpoints
//! (X-Ray traces, CloudWatch metrics, CloudWatch Logs) with the execution role's
//! credentials, without a collector in between.
//!
//! The signature is made in the HTTP client ([`super::answers::NotingClient`]), from the
//! request exactly as it is about to be sent: opentelemetry-otlp has already encoded the
//! body and, with `OTEL_EXPORTER_OTLP_COMPRESSION=gzip`, compressed it and set
//! `Content-Encoding`, and the client has added every header it sends (the user's, those of
//! a secret, the CloudWatch Logs ones). Every one of those headers is signed, with `host`.
//! The signer is the `aws-sigv4` crate, through [`crate::aws::sign_request`], which the AWS
//! key sources use too.
//!
//! Credentials are asked of the [`CredentialProvider`] for every request: the variables
//! Lambda gives (fixed for the environment's life), or the container credentials endpoint
//! (SnapStart), fetched again before they expire, so a change is used from the next request.
//!
//! Never: sends a request it was asked to sign without a signature (no credentials: the
//! request is not sent, and the export fails); logs a credential or a signature.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderName, HeaderValue};
use opentelemetry_http::{Bytes, Request};

use crate::aws::{CredentialProvider, sign_request};
use crate::config::SigV4Target;

/// Signs one signal's requests for its service and region.
pub(super) struct Signer {
    target: SigV4Target,
    credentials: Arc<CredentialProvider>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub(super) fn new(target: SigV4Target, credentials: Arc<CredentialProvider>) -> Signer {
        Signer {
            target,
            credentials,
        }
    }

    /// Adds the SigV4 headers to `request`, signed at `now`. `Err` names why it could not
    /// be signed (no credentials, a header that is not text); the request must not be sent.
    pub(super) async fn sign(
        &self,
        request: &mut Request<Bytes>,
        now: SystemTime,
    ) -> Result<(), String> {
        let credentials = self
            .credentials
            .get()
            .await
            .map_err(|e| format!("no AWS credentials to sign it with: {e}"))?;
        let url = request.uri().to_string();
        let headers = request
            .headers()
            .iter()
            .map(|(name, value)| {
                value
                    .to_str()
                    .map(|v| (name.as_str(), v))
                    .map_err(|_| format!("the header {name} is not text, so cannot be signed"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let signed = sign_request(
            &self.target.service,
            &self.target.region,
            &credentials,
            (request.method().as_str(), &url),
            &headers,
            request.body(),
            now,
        )
        .map_err(|e| e.to_string())?;
        for (name, value) in signed {
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| format!("the signature's {name} header is not a header value"))?;
            value.set_sensitive(true);
            request
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AwsCredentials;
    use std::time::{Duration, UNIX_EPOCH};

    /// The expected signature was made by botocore's `SigV4Auth` for the same request,
    /// credentials and time (AWS's documentation example credentials): the gzip body as
    /// sent, `content-encoding` and a user header signed with `host`.
    #[tokio::test]
    async fn signs_an_otlp_request_as_botocore_does() {
        let keys = AwsCredentials::Keys {
            access_key_id: "AKIDEXAMPLE".to_string(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_string(),
            session_token: Some("session-token-example".to_string()),
        };
        let provider = CredentialProvider::new(&keys, crate::aws::tls_config().unwrap()).unwrap();
        let signer = Signer::new(
            SigV4Target {
                service: "xray".to_string(),
                region: "us-east-1".to_string(),
            },
            Arc::new(provider),
        );
        let mut request = http::Request::builder()
            .method("POST")
            .uri("https://xray.us-east-1.amazonaws.com/v1/traces")
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "gzip")
            .header("x-tenant", "orders")
            .body(Bytes::from_static(b"\x1f\x8b\x08\x00body"))
            .unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
        signer.sign(&mut request, at).await.unwrap();
        let header = |name: &str| request.headers()[name].to_str().unwrap().to_string();
        assert_eq!(header("x-amz-date"), "20150830T123600Z");
        assert_eq!(header("x-amz-security-token"), "session-token-example");
        assert_eq!(
            header("authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/xray/aws4_request, \
             SignedHeaders=content-encoding;content-type;host;x-amz-date;x-amz-security-token;\
             x-tenant, Signature=5655f7a4d69a1f9dfb7293346d3f000b94bb0a48f6b4da8c692f9baa3930d4d0"
        );
    }
}
