//! The credentials the AWS calls (`aws::client`) and the signed OTLP requests (`export::sigv4`)
//! sign with: the variables Lambda gives every
//! extension, fixed for the environment's life, or, when those are absent, the container
//! credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`), which Lambda gives instead
//! with SnapStart so that no credentials expire inside a snapshot.
//!
//! The endpoint is called as the AWS SDKs' container provider calls it: `GET <uri>` with
//! `Authorization: <AWS_CONTAINER_AUTHORIZATION_TOKEN>` (or the contents of
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, read at each fetch), answered with
//! `{"AccessKeyId","SecretAccessKey","Token","Expiration"}`. What it hands out is cached and
//! fetched again, by the first call that needs it, once less than [`REFRESH_BEFORE`] is left
//! before `Expiration`. The clock compared is the wall clock, which a SnapStart restore
//! moves forward: credentials cached when the snapshot was taken are past their expiry after
//! a restore, and are fetched again, never reused. A failed fetch keeps credentials that
//! have not expired yet (logged); expired ones are never used.
//!
//! Never: logs or returns a credential or the authorization token (errors name the endpoint
//! and what was wrong, not a value); sends the token anywhere but the configured URI (no
//! redirect, no proxy); waits without a bound (every fetch runs under [`FETCH_TIMEOUT`]).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_smithy_types::date_time::{DateTime, Format};
use serde_json::Value;

use super::answer::{BodyError, error_chain, read_body};
use crate::config::{AwsCredentials, ContainerAuthorization};

/// Credentials are fetched again once less than this is left before they expire: the
/// margin the AWS SDKs keep, so that no signed request reaches AWS with credentials that
/// expire on the way.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// The longest one fetch from the container endpoint may take. It is local (loopback or
/// link-local), so this is generous; the AWS call that needs the credentials has its own,
/// overall, bound too.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// The most of the endpoint's answer read: four short strings.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// The most of `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` read: a token, not a document.
const MAX_TOKEN_FILE_BYTES: u64 = 16 * 1024;

/// One set of AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// `None`: they do not expire (the variables).
    pub expires: Option<SystemTime>,
}

impl std::fmt::Debug for Credentials {
    /// Written by hand so that a credential never reaches a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Usable at `now` without a fetch: more than [`REFRESH_BEFORE`] left.
    fn fresh_at(&self, now: SystemTime) -> bool {
        self.expires
            .is_none_or(|expires| now.checked_add(REFRESH_BEFORE).is_some_and(|t| t < expires))
    }

    /// Not expired at `now`: still accepted by AWS, if only for a while.
    fn valid_at(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|expires| now < expires)
    }
}

/// Why no credentials could be had from the container endpoint. Names the endpoint's
/// failure, never a credential or the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// No answer: connection refused, DNS, TLS, or [`FETCH_TIMEOUT`].
    #[error("the container credentials endpoint did not answer: {0}")]
    Unreachable(String),
    /// It answered with another status than 2xx (401 or 403: a wrong authorization token).
    #[error("the container credentials endpoint answered HTTP {0}")]
    Refused(u16),
    /// It answered 2xx with something that is not usable credentials.
    #[error("the container credentials endpoint's answer is not usable: {0}")]
    BadAnswer(String),
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` could not be read, or holds no usable token.
    #[error("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={path}: {reason}")]
    TokenFile { path: String, reason: String },
}

/// Hands out the credentials to sign with, fetching them when they come from the container
/// endpoint. One per AWS client; calls made at the same time share one fetch.
pub struct CredentialProvider {
    source: Source,
}

enum Source {
    Keys(Arc<Credentials>),
    Container(Container),
}

struct Container {
    /// Its own client: no proxy (the token goes to the URI and nowhere else), no redirect,
    /// no idle connection kept (a fetch is rare, and a connection kept across a SnapStart
    /// restore would be dead).
    http: reqwest::Client,
    uri: String,
    authorization: ContainerAuthorization,
    timeout: Duration,
    /// The last credentials fetched. Held across a fetch, so that concurrent calls wait for
    /// that one fetch rather than each making their own.
    cached: tokio::sync::Mutex<Option<Arc<Credentials>>>,
}

impl CredentialProvider {
    /// A provider for `credentials`; `tls` is the client configuration for an `https://`
    /// endpoint (the AWS client's, with the compiled-in roots).
    pub fn new(
        credentials: &AwsCredentials,
        tls: rustls::ClientConfig,
    ) -> Result<CredentialProvider, CredentialsError> {
        let source = match credentials {
            AwsCredentials::Keys {
                access_key_id,
                secret_access_key,
                session_token,
            } => Source::Keys(Arc::new(Credentials {
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.clone(),
                session_token: session_token.clone(),
                expires: None,
            })),
            AwsCredentials::Container(container) => {
                let http = reqwest::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .build()
                    .map_err(|e| CredentialsError::Unreachable(e.to_string()))?;
                Source::Container(Container {
                    http,
                    uri: container.uri.clone(),
                    authorization: container.authorization.clone(),
                    timeout: FETCH_TIMEOUT,
                    cached: tokio::sync::Mutex::new(None),
                })
            }
        };
        Ok(CredentialProvider { source })
    }

    /// The credentials to sign a request with now.
    pub async fn get(&self) -> Result<Arc<Credentials>, CredentialsError> {
        self.get_at(SystemTime::now()).await
    }

    /// [`CredentialProvider::get`] as if the wall clock read `now`.
    async fn get_at(&self, now: SystemTime) -> Result<Arc<Credentials>, CredentialsError> {
        match &self.source {
            Source::Keys(credentials) => Ok(credentials.clone()),
            Source::Container(container) => container.get(now).await,
        }
    }
}

impl Container {
    async fn get(&self, now: SystemTime) -> Result<Arc<Credentials>, CredentialsError> {
        let mut cached = self.cached.lock().await;
        if let Some(credentials) = cached.as_ref().filter(|c| c.fresh_at(now)) {
            return Ok(credentials.clone());
        }
        let fetched = match tokio::time::timeout(self.timeout, self.fetch()).await {
            Ok(result) => result.and_then(|c| check_expiry(c, now)),
            Err(_) => Err(CredentialsError::Unreachable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        };
        match fetched {
            Ok(credentials) => {
                tracing::debug!(
                    expires_in_s = credentials
                        .expires
                        .and_then(|e| e.duration_since(now).ok())
                        .map_or(0, |d| d.as_secs()),
                    "AWS credentials fetched from the container credentials endpoint"
                );
                let credentials = Arc::new(credentials);
                *cached = Some(credentials.clone());
                Ok(credentials)
            }
            Err(error) => match cached.as_ref().filter(|c| c.valid_at(now)) {
                Some(current) => {
                    tracing::warn!(
                        %error,
                        "renewing the AWS credentials failed; the current ones are used until \
                         they expire"
                    );
                    Ok(current.clone())
                }
                None => {
                    *cached = None;
                    Err(error)
                }
            },
        }
    }

    /// One `GET` to the endpoint, unbounded: the caller bounds it.
    async fn fetch(&self) -> Result<Credentials, CredentialsError> {
        let mut request = self.http.get(&self.uri);
        let token = match &self.authorization {
            ContainerAuthorization::File(path) => Some(read_token_file(path.clone()).await?),
            ContainerAuthorization::Token(token) => Some(token.clone()),
            ContainerAuthorization::None => None,
        };
        if let Some(token) = token {
            let mut value = http::HeaderValue::from_str(&token).map_err(|_| {
                CredentialsError::BadAnswer("the authorization token is no header value".into())
            })?;
            value.set_sensitive(true);
            request = request.header(http::header::AUTHORIZATION, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| CredentialsError::Unreachable(error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(CredentialsError::Refused(status.as_u16()));
        }
        let body = read_body(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| match e {
                BodyError::Broken(why) => CredentialsError::Unreachable(why),
                BodyError::TooLarge(max) => {
                    CredentialsError::BadAnswer(format!("it is larger than {max} bytes"))
                }
            })?;
        parse(&body)
    }
}

/// Refuses credentials that are expired when they arrive: AWS would refuse every request
/// signed with them, with a less helpful error.
fn check_expiry(
    credentials: Credentials,
    now: SystemTime,
) -> Result<Credentials, CredentialsError> {
    if credentials.valid_at(now) {
        Ok(credentials)
    } else {
        Err(CredentialsError::BadAnswer(
            "the credentials it handed out have already expired".into(),
        ))
    }
}

/// The endpoint's JSON answer as [`Credentials`]. `Token` may be absent (long-term keys);
/// `Expiration` is required: without it there is no telling when to fetch again.
fn parse(body: &[u8]) -> Result<Credentials, CredentialsError> {
    let bad = |why: &str| CredentialsError::BadAnswer(why.to_string());
    let json: Value = serde_json::from_slice(body).map_err(|_| bad("it is not JSON"))?;
    if !json.is_object() {
        return Err(bad("it is not a JSON object"));
    }
    // Each goes into a signed header: printable ASCII without spaces.
    let field = |name: &'static str| match json.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(CredentialsError::BadAnswer(format!(
            "{name} is not a string of printable characters"
        ))),
    };
    let required = |name: &'static str| {
        field(name)?.ok_or_else(|| CredentialsError::BadAnswer(format!("it has no {name}")))
    };
    let expiration = required("Expiration")?;
    let expires = DateTime::from_str(&expiration, Format::DateTimeWithOffset)
        .ok()
        .and_then(|d| SystemTime::try_from(d).ok())
        .ok_or_else(|| bad("Expiration is not an RFC 3339 date-time"))?;
    Ok(Credentials {
        access_key_id: required("AccessKeyId")?,
        secret_access_key: required("SecretAccessKey")?,
        session_token: field("Token")?,
        expires: Some(expires),
    })
}

/// The token in `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, read on a blocking thread (the
/// runtime has one thread, which serves `/token`), trimmed.
async fn read_token_file(path: PathBuf) -> Result<String, CredentialsError> {
    let shown = path.display().to_string();
    let failed = |reason: String| CredentialsError::TokenFile {
        path: shown.clone(),
        reason,
    };
    let read = tokio::task::spawn_blocking(move || read_bounded(&path))
        .await
        .map_err(|e| failed(format!("the reading task failed ({e})")))?;
    let bytes = read.map_err(|e| failed(e.to_string()))?;
    if bytes.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(failed(format!(
            "it is larger than {MAX_TOKEN_FILE_BYTES} bytes"
        )));
    }
    let token = std::str::from_utf8(&bytes)
        .map(str::trim)
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| (0x20..=0x7e).contains(&b)))
        .ok_or_else(|| {
            failed("it holds no token (printable ASCII, as sent in a header)".to_string())
        })?;
    Ok(token.to_string())
}

/// At most one byte more than [`MAX_TOKEN_FILE_BYTES`] of the file, so that too large shows.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;

    use crate::config::ContainerCredentials;

    const TOKEN: &str = "container-authorization-token";

    /// What the test endpoint answers, and what it saw.
    struct Endpoint {
        answer: Mutex<(StatusCode, String)>,
        delay: Mutex<Duration>,
        calls: AtomicUsize,
        authorizations: Mutex<Vec<Option<String>>>,
    }

    impl Endpoint {
        fn answer(&self, status: StatusCode, body: String) {
            *self.answer.lock().unwrap() = (status, body);
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    fn rfc3339(at: SystemTime) -> String {
        DateTime::from(at).fmt(Format::DateTime).unwrap()
    }

    fn credentials_json(key: &str, expires: SystemTime) -> String {
        serde_json::json!({
            "AccessKeyId": key,
            "SecretAccessKey": "secret-of-".to_string() + key,
            "Token": "token-of-".to_string() + key,
            "Expiration": rfc3339(expires),
        })
        .to_string()
    }

    /// An endpoint on a free loopback port: its URI and its state.
    async fn endpoint() -> (String, Arc<Endpoint>) {
        let state = Arc::new(Endpoint {
            answer: Mutex::new((StatusCode::OK, String::new())),
            delay: Mutex::new(Duration::ZERO),
            calls: AtomicUsize::new(0),
            authorizations: Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        let router = Router::new().route(
            "/credentials",
            get(move |headers: HeaderMap| {
                let state = shared.clone();
                async move {
                    state.calls.fetch_add(1, Ordering::SeqCst);
                    state.authorizations.lock().unwrap().push(
                        headers
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_string()),
                    );
                    let delay = *state.delay.lock().unwrap();
                    tokio::time::sleep(delay).await;
                    state.answer.lock().unwrap().clone()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, router).await });
        (format!("http://127.0.0.1:{port}/credentials"), state)
    }

    fn provider(uri: &str, authorization: ContainerAuthorization) -> CredentialProvider {
        let credentials = AwsCredentials::Container(ContainerCredentials {
            uri: uri.to_string(),
            authorization,
        });
        CredentialProvider::new(&credentials, crate::aws::tls_config().unwrap()).unwrap()
    }

    fn token() -> ContainerAuthorization {
        ContainerAuthorization::Token(TOKEN.to_string())
    }

    #[tokio::test]
    async fn the_variables_are_handed_out_as_they_are() {
        let keys = AwsCredentials::Keys {
            access_key_id: "AKID".into(),
            secret_access_key: "secret".into(),
            session_token: Some("session".into()),
        };
        let provider = CredentialProvider::new(&keys, crate::aws::tls_config().unwrap()).unwrap();
        let got = provider.get().await.unwrap();
        assert_eq!(
            (got.access_key_id.as_str(), got.secret_access_key.as_str()),
            ("AKID", "secret")
        );
        assert_eq!(got.session_token.as_deref(), Some("session"));
        assert_eq!(got.expires, None);
    }

    /// Fetched with the token as `Authorization`, cached while more than 5 minutes are
    /// left, fetched again once less is, and after a (simulated) SnapStart restore that
    /// moved the clock past their expiry.
    #[tokio::test]
    async fn cached_until_five_minutes_before_expiry_then_fetched_again() {
        let (uri, endpoint) = endpoint().await;
        let now = SystemTime::now();
        let expires = now + Duration::from_secs(3600);
        endpoint.answer(StatusCode::OK, credentials_json("AKID1", expires));
        let provider = provider(&uri, token());

        let first = provider.get_at(now).await.unwrap();
        assert_eq!(first.access_key_id, "AKID1");
        assert_eq!(first.secret_access_key, "secret-of-AKID1");
        assert_eq!(first.session_token.as_deref(), Some("token-of-AKID1"));
        // Whole seconds: that is what the answer carries.
        let expected = expires
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let got = first.expires.unwrap();
        assert_eq!(
            got.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            expected
        );
        assert_eq!(
            *endpoint.authorizations.lock().unwrap(),
            [Some(TOKEN.to_string())]
        );

        // 54 minutes later: 6 minutes left, the cached ones serve.
        let later = now + Duration::from_secs(54 * 60);
        assert_eq!(provider.get_at(later).await.unwrap(), first);
        assert_eq!(endpoint.calls(), 1);

        // 56 minutes later: 4 minutes left, fetched again.
        endpoint.answer(
            StatusCode::OK,
            credentials_json("AKID2", now + Duration::from_secs(2 * 3600)),
        );
        let second = provider
            .get_at(now + Duration::from_secs(56 * 60))
            .await
            .unwrap();
        assert_eq!(second.access_key_id, "AKID2");
        assert_eq!(endpoint.calls(), 2);

        // A restore a day later: the cached ones expired long ago and are not reused.
        let restored = now + Duration::from_secs(24 * 3600);
        endpoint.answer(
            StatusCode::OK,
            credentials_json("AKID3", restored + Duration::from_secs(3600)),
        );
        let third = provider.get_at(restored).await.unwrap();
        assert_eq!(third.access_key_id, "AKID3");
        assert_eq!(endpoint.calls(), 3);
        assert!(
            endpoint
                .authorizations
                .lock()
                .unwrap()
                .iter()
                .all(|a| a.as_deref() == Some(TOKEN))
        );
    }

    /// A failed renewal keeps credentials that have not expired yet; once they have (a
    /// restore after the snapshot aged), the failure is the answer, never the old ones.
    #[tokio::test]
    async fn a_failed_renewal_keeps_unexpired_credentials_but_never_expired_ones() {
        let (uri, endpoint) = endpoint().await;
        let now = SystemTime::now();
        endpoint.answer(
            StatusCode::OK,
            credentials_json("AKID1", now + Duration::from_secs(3600)),
        );
        let provider = provider(&uri, token());
        let first = provider.get_at(now).await.unwrap();

        endpoint.answer(StatusCode::INTERNAL_SERVER_ERROR, String::new());
        // 2 minutes left: renewal fails, the current ones still serve.
        let kept = provider
            .get_at(now + Duration::from_secs(58 * 60))
            .await
            .unwrap();
        assert_eq!(kept, first);
        // Expired: the failure.
        let error = provider
            .get_at(now + Duration::from_secs(2 * 3600))
            .await
            .unwrap_err();
        assert_eq!(error, CredentialsError::Refused(500));
        assert_eq!(endpoint.calls(), 3);
    }

    /// Concurrent callers share one fetch.
    #[tokio::test]
    async fn concurrent_calls_share_one_fetch() {
        let (uri, endpoint) = endpoint().await;
        endpoint.answer(
            StatusCode::OK,
            credentials_json("AKID1", SystemTime::now() + Duration::from_secs(3600)),
        );
        *endpoint.delay.lock().unwrap() = Duration::from_millis(100);
        let provider = provider(&uri, token());
        let (a, b, c) = tokio::join!(provider.get(), provider.get(), provider.get());
        assert_eq!(a.unwrap().access_key_id, "AKID1");
        assert!(b.is_ok() && c.is_ok());
        assert_eq!(endpoint.calls(), 1);
    }

    /// Each answer that is not usable credentials is a `BadAnswer` naming what is wrong,
    /// and echoes none of the values.
    #[tokio::test]
    async fn bad_answers_are_typed_errors_without_values() {
        let (uri, endpoint) = endpoint().await;
        let provider = provider(&uri, token());
        let future = rfc3339(SystemTime::now() + Duration::from_secs(3600));
        let past = rfc3339(SystemTime::now() - Duration::from_secs(60));
        let full = |expiration: &str| {
            serde_json::json!({
                "AccessKeyId": "AKID-VALUE",
                "SecretAccessKey": "SECRET-VALUE",
                "Token": "TOKEN-VALUE",
                "Expiration": expiration,
            })
        };
        let mut without_key = full(&future);
        without_key.as_object_mut().unwrap().remove("AccessKeyId");
        let mut without_secret = full(&future);
        without_secret
            .as_object_mut()
            .unwrap()
            .remove("SecretAccessKey");
        let mut without_expiration = full(&future);
        without_expiration
            .as_object_mut()
            .unwrap()
            .remove("Expiration");
        let mut spaced = full(&future);
        spaced["SecretAccessKey"] = "SECRET VALUE\r\n".into();
        for (body, why) in [
            ("not json".to_string(), "not JSON"),
            ("[1, 2]".to_string(), "not a JSON object"),
            (without_key.to_string(), "no AccessKeyId"),
            (without_secret.to_string(), "no SecretAccessKey"),
            (without_expiration.to_string(), "no Expiration"),
            (full("tomorrow").to_string(), "Expiration is not"),
            (full(&past).to_string(), "already expired"),
            (spaced.to_string(), "SecretAccessKey is not"),
            ("x".repeat(MAX_ANSWER_BYTES + 1), "larger than"),
        ] {
            endpoint.answer(StatusCode::OK, body.clone());
            let error = provider.get().await.unwrap_err();
            let text = error.to_string();
            assert!(
                matches!(error, CredentialsError::BadAnswer(_)) && text.contains(why),
                "{body:.80}: {text}"
            );
            for value in ["AKID-VALUE", "SECRET", "TOKEN-VALUE", TOKEN] {
                assert!(!text.contains(value), "{text}");
            }
        }
        // A token is optional (long-term keys), and offsets are accepted.
        let mut without_token = full("2999-01-01T01:00:00+01:00");
        without_token.as_object_mut().unwrap().remove("Token");
        endpoint.answer(StatusCode::OK, without_token.to_string());
        let got = provider.get().await.unwrap();
        assert_eq!(got.session_token, None);
    }

    /// A 401 from a wrong token, a dead endpoint and a slow one: typed errors, and the slow
    /// one within the bound.
    #[tokio::test]
    async fn refused_unreachable_and_slow_endpoints() {
        let (uri, endpoint) = endpoint().await;
        endpoint.answer(StatusCode::UNAUTHORIZED, "{}".into());
        assert_eq!(
            provider(&uri, token()).get().await.unwrap_err(),
            CredentialsError::Refused(401)
        );

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dead = format!("http://127.0.0.1:{port}/credentials");
        assert!(matches!(
            provider(&dead, token()).get().await.unwrap_err(),
            CredentialsError::Unreachable(_)
        ));

        endpoint.answer(
            StatusCode::OK,
            credentials_json("AKID1", SystemTime::now() + Duration::from_secs(3600)),
        );
        *endpoint.delay.lock().unwrap() = Duration::from_secs(30);
        let mut slow = provider(&uri, token());
        if let Source::Container(container) = &mut slow.source {
            container.timeout = Duration::from_millis(200);
        }
        let started = std::time::Instant::now();
        let error = slow.get().await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{error}");
        assert_eq!(
            error,
            CredentialsError::Unreachable("no answer within 200ms".into())
        );
    }

    /// The token file is read at each fetch (a rotated token is picked up) and sent as the
    /// header; a missing or empty file is a typed error naming the path.
    #[tokio::test]
    async fn the_token_file_is_read_at_each_fetch() {
        let (uri, endpoint) = endpoint().await;
        let dir = std::env::temp_dir().join(format!(
            "sidecar-credentials-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "first-token\n").unwrap();
        let now = SystemTime::now();
        endpoint.answer(
            StatusCode::OK,
            credentials_json("AKID1", now + Duration::from_secs(60)),
        );
        let provider = provider(&uri, ContainerAuthorization::File(file.clone()));
        provider.get_at(now).await.unwrap();
        std::fs::write(&file, "second-token").unwrap();
        provider.get_at(now).await.unwrap();
        assert_eq!(
            *endpoint.authorizations.lock().unwrap(),
            [Some("first-token".into()), Some("second-token".into())]
        );

        // Past their expiry, so that a failed fetch cannot fall back on them.
        let later = now + Duration::from_secs(120);
        std::fs::write(&file, "\n").unwrap();
        let error = provider.get_at(later).await.unwrap_err();
        assert!(
            matches!(&error, CredentialsError::TokenFile { reason, .. } if reason.contains("no token")),
            "{error}"
        );
        std::fs::remove_file(&file).unwrap();
        let error = provider.get_at(later).await.unwrap_err();
        assert!(
            matches!(&error, CredentialsError::TokenFile { path, .. } if path.ends_with("token")),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// No token configured: no `Authorization` header at all.
    #[tokio::test]
    async fn no_token_sends_no_header() {
        let (uri, endpoint) = endpoint().await;
        endpoint.answer(
            StatusCode::OK,
            credentials_json("AKID1", SystemTime::now() + Duration::from_secs(3600)),
        );
        provider(&uri, ContainerAuthorization::None)
            .get()
            .await
            .unwrap();
        assert_eq!(*endpoint.authorizations.lock().unwrap(), [None]);
    }

    #[test]
    fn debug_shows_no_credential() {
        let credentials = Credentials {
            access_key_id: "AKID-VALUE".into(),
            secret_access_key: "SECRET-VALUE".into(),
            session_token: Some("TOKEN-VALUE".into()),
            expires: None,
        };
        let text = format!("{credentials:?}");
        assert!(!text.contains("VALUE"), "{text}");
    }
}
