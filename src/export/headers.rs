//! Exporter headers from a secret (`SIDECAR_OTLP_HEADERS_SOURCE`): the API key a vendor's
//! OTLP intake needs, kept in Secrets Manager or SSM instead of the function's
//! configuration, in the `key=value,…` form of `OTEL_EXPORTER_OTLP_HEADERS`.
//!
//! Read as `JWT_KEY_SOURCE` reads a key (the same client, errors and refresh, from
//! `crate::aws`): once at start, where a failure stops init with a typed
//! [`HeadersSourceError`]; then again, at most every `SIDECAR_OTLP_HEADERS_REFRESH_SECONDS`,
//! by the first request of a flush that finds the interval passed (so inside the flush's
//! budget, while the function runs). A new version is used from that request on: a rotation
//! needs no restart. A failed refresh keeps the current headers (logged) and is tried again
//! one interval later. The headers of the secret are added to every OTLP/HTTP request of
//! every signal, over a header of the same name from the variables.
//!
//! Never: logs, returns or puts in an error a header's value.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{HeaderName, HeaderValue};

use crate::aws::{AwsClient, SourceError, SourceErrorKind};
use crate::config::{ConfigError, HeadersSource, otlp_headers};

/// The longest one read of the secret may take (as for a key).
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The variable errors name.
const VAR: &str = "SIDECAR_OTLP_HEADERS_SOURCE";

/// The headers of one version of the secret.
pub(super) type Headers = Arc<Vec<(HeaderName, HeaderValue)>>;

/// A secret that could not give usable headers, as `init/error` reports it
/// (`HeadersSource.<Kind>`). Names the source, never a value.
#[derive(Debug, thiserror::Error)]
#[error("SIDECAR_OTLP_HEADERS_SOURCE={origin}: {detail}")]
pub struct HeadersSourceError {
    pub kind: SourceErrorKind,
    pub origin: String,
    pub detail: String,
}

impl HeadersSourceError {
    pub fn error_type(&self) -> &'static str {
        match self.kind {
            SourceErrorKind::NotFound => "HeadersSource.NotFound",
            SourceErrorKind::AccessDenied => "HeadersSource.AccessDenied",
            SourceErrorKind::WrongKeyType => "HeadersSource.WrongType",
            SourceErrorKind::KeyDisabled => "HeadersSource.Disabled",
            SourceErrorKind::Unreachable => "HeadersSource.Unreachable",
            SourceErrorKind::ServiceError => "HeadersSource.ServiceError",
            SourceErrorKind::NoCredentials => "HeadersSource.NoCredentials",
        }
    }
}

/// The headers of the secret, and what re-reads them.
pub struct SecretHeaders {
    client: AwsClient,
    source: HeadersSource,
    state: Mutex<State>,
    /// Held by the one request that re-reads the secret; the others send with the current
    /// headers meanwhile.
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for SecretHeaders {
    /// By hand: the headers' values never reach a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretHeaders")
            .field("source", &self.source.secret.describe())
            .finish_non_exhaustive()
    }
}

struct State {
    /// `None` until [`SecretHeaders::load`] has read them.
    headers: Option<Headers>,
    version: String,
    last_check: Instant,
}

impl SecretHeaders {
    /// The client for the secret's service; nothing is read yet.
    pub fn new(source: HeadersSource) -> Result<Arc<SecretHeaders>, HeadersSourceError> {
        let client = AwsClient::new(source.aws.clone()).map_err(|e| HeadersSourceError {
            kind: SourceErrorKind::of(&e),
            origin: source.secret.describe(),
            detail: e.to_string(),
        })?;
        Ok(Arc::new(SecretHeaders {
            client,
            source,
            state: Mutex::new(State {
                headers: None,
                version: String::new(),
                last_check: Instant::now(),
            }),
            refreshing: tokio::sync::Mutex::new(()),
        }))
    }

    /// The first read, at start: its failure stops init.
    pub async fn load(&self) -> Result<(), HeadersSourceError> {
        let (headers, version) = self.fetch().await?;
        tracing::info!(
            source = %self.source.secret.describe(),
            headers = headers.len(),
            "OTLP exporter headers read from the secret"
        );
        let mut state = self.state();
        state.headers = Some(headers);
        state.version = version;
        state.last_check = Instant::now();
        Ok(())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Written whole under the lock: a poisoned one is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The headers to send now, re-read first when the refresh interval has passed (by one
    /// request; the others use the current ones). `None` before [`SecretHeaders::load`]:
    /// the request must not go without them.
    pub(super) async fn current(&self, now: Instant) -> Option<Headers> {
        let due = {
            let state = self.state();
            now.duration_since(state.last_check) >= self.source.refresh
        };
        if due && let Ok(_refreshing) = self.refreshing.try_lock() {
            self.refresh(now).await;
        }
        self.state().headers.clone()
    }

    async fn refresh(&self, now: Instant) {
        // As a key's refresh: the next attempt is one interval later, whatever this gives.
        self.state().last_check = now;
        match self.fetch().await {
            Ok((headers, version)) => {
                let mut state = self.state();
                if state.version != version {
                    tracing::info!(
                        source = %self.source.secret.describe(),
                        "OTLP exporter headers rotated"
                    );
                    state.headers = Some(headers);
                    state.version = version;
                }
            }
            Err(error) => tracing::warn!(
                %error,
                "re-reading the OTLP exporter headers failed; the current ones are kept"
            ),
        }
    }

    /// One read of the secret, parsed as `OTEL_EXPORTER_OTLP_HEADERS` is.
    async fn fetch(&self) -> Result<(Headers, String), HeadersSourceError> {
        let origin = self.source.secret.describe();
        let failed = |e: SourceError| HeadersSourceError {
            kind: e.kind,
            origin: origin.clone(),
            detail: e.detail,
        };
        let fetched = crate::aws::fetch(&self.client, &self.source.secret, FETCH_TIMEOUT)
            .await
            .map_err(failed)?;
        let wrong = |detail: String| HeadersSourceError {
            kind: SourceErrorKind::WrongKeyType,
            origin: origin.clone(),
            detail,
        };
        let text = String::from_utf8(fetched.material)
            .map_err(|_| wrong("the secret is not UTF-8 text".to_string()))?;
        let pairs = otlp_headers(VAR, &text).map_err(|e| match e {
            ConfigError::Invalid { expected, .. } => wrong(format!(
                "the secret's text is not valid: expected {expected}"
            )),
            other => wrong(other.to_string()),
        })?;
        let mut headers = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            // Checked by `otlp_headers` already; a failure here is not echoed either.
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| wrong("a key is not a header name".to_string()))?;
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| wrong(format!("the value of {name} is not a header value")))?;
            value.set_sensitive(true);
            headers.push((name, value));
        }
        Ok((Arc::new(headers), fetched.version))
    }
}
