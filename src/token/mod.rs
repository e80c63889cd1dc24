//! The token service: `GET/POST /token`, `/.well-known/jwks.json`,
//! `/.well-known/openid-configuration` and `/health` on 127.0.0.1, for the function beside
//! us, and the sidecar's `GET /metrics` (Prometheus text).
//!
//! The function is not the only thing that can reach 127.0.0.1: anything that makes the
//! function fetch a URL (a webhook, a link preview, a headless browser) can too. So every
//! request crosses [`guard`] first: on every path it refuses what a proxied or forged request
//! carries (forwarding headers, a foreign `Host`, an absolute-form target), and `/token` and
//! `/metrics` further need the per-environment secret in `X-Sidecar-Token` (see
//! [`crate::config::TokenAuth`]), which a URL cannot carry, and a JSON body, which a browser
//! cannot send cross-origin without asking first.
//!
//! Owns: the HTTP surface and its error format. Never: reads the environment (it is handed a
//! parsed [`TokenConfig`] and a loaded [`KeyRing`]), parses keys per request, or writes a
//! token, secret or claim value into a log line or a telemetry record.

pub mod aws;
pub mod claims;
pub mod discovery;
pub mod keys;
pub mod source;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::{TokenAuth, TokenConfig};
use crate::pipeline::Recorder;
use crate::records::{
    HttpMethod, REQUEST_ID_HEADER, Record, TokenOutcome, TokenRecord, TraceParent, parse_request_id,
};
use crate::server::Limits;
use crate::signals::Listener;
use crate::signals::{KeyOperation, Metrics};
use claims::{ClaimError, TokenRequest};
use keys::SignError;
use source::KeyRing;

/// Largest `POST /token` body accepted. A token request is a few hundred bytes; anything
/// near this is a mistake or an attack, and is answered 413 without being buffered further.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The header that carries the per-environment secret to `/token`.
pub const AUTH_HEADER: &str = "X-Sidecar-Token";

/// Headers a proxy adds when it relays a request. The function talks to us directly, so a
/// request carrying one came through something else and is refused on every path.
const FORWARDING_HEADERS: &[&str] = &[
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Real-IP",
    "Forwarded",
    "Via",
];

/// One message for a missing and a wrong secret, so the answer tells a prober nothing.
const UNAUTHORIZED: &str = "/token and /metrics need the X-Sidecar-Token header set to the value \
                            of the AWS_SESSION_TOKEN environment variable";

/// Everything a request needs, built once at start.
pub struct TokenService {
    config: TokenConfig,
    /// The signing key and the JWKS; the key may rotate (`source::Refresher`).
    keys: Arc<KeyRing>,
    /// The OIDC discovery document, serialized once; `None` without `JWT_JWKS_URI`.
    openid_configuration: Option<Bytes>,
    /// Where token records go for telemetry; `None` in standalone mode.
    recorder: Option<Recorder>,
    /// The `Host` values a direct request carries: `127.0.0.1:<port>` and `localhost:<port>`.
    hosts: [String; 2],
    /// What `X-Sidecar-Token` must equal; `None` with `SIDECAR_TOKEN_AUTH=off`.
    session_token: Option<Box<[u8]>>,
}

impl TokenService {
    /// `port` is the port the listener is actually bound to (tests bind port 0), which a
    /// direct request names in its `Host` header.
    pub fn new(
        config: TokenConfig,
        keys: Arc<KeyRing>,
        recorder: Option<Recorder>,
        port: u16,
    ) -> TokenService {
        let openid_configuration =
            discovery::openid_configuration(&config).map(|doc| Bytes::from(doc.to_string()));
        let session_token = match &config.auth {
            TokenAuth::SessionToken(token) => Some(token.as_bytes().into()),
            TokenAuth::Off => {
                tracing::warn!(
                    "SIDECAR_TOKEN_AUTH=off: /token issues tokens to any request that reaches \
                     127.0.0.1, including one forged through the function (SSRF), without the \
                     X-Sidecar-Token header"
                );
                None
            }
        };
        TokenService {
            config,
            keys,
            openid_configuration,
            recorder,
            hosts: [format!("127.0.0.1:{port}"), format!("localhost:{port}")],
            session_token,
        }
    }

    /// Refuses, on every path, a request that did not come straight from a local client
    /// addressing this listener: a proxy's forwarding headers, an absolute-form target (what
    /// a client sends to a proxy, `GET http://host/token`), or a `Host` other than our own
    /// loopback name and port (DNS rebinding, or a URL that names another host).
    fn check_boundary(&self, request: &Request) -> Result<(), ApiError> {
        let headers = request.headers();
        if let Some(name) = FORWARDING_HEADERS
            .iter()
            .find(|h| headers.contains_key(**h))
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                &format!(
                    "requests relayed by a proxy ({name} header) are refused: this service \
                     answers only the function on this host"
                ),
            ));
        }
        if request.uri().scheme().is_some() || request.uri().authority().is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "absolute-form request targets (a request meant for a proxy) are refused: \
                 request the path only",
            ));
        }
        let mut hosts = headers.get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(host), None)
                if self
                    .hosts
                    .iter()
                    .any(|h| host.as_bytes().eq_ignore_ascii_case(h.as_bytes())) =>
            {
                Ok(())
            }
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the Host header must be {} or {}",
                    self.hosts[0], self.hosts[1]
                ),
            )),
        }
    }

    /// Checks `X-Sidecar-Token` against the session token, in constant time.
    fn check_secret(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.session_token else {
            return Ok(());
        };
        let given = headers
            .get(AUTH_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        aws_lc_rs::constant_time::verify_slices_are_equal(given, expected)
            .map_err(|_| ApiError::new(StatusCode::UNAUTHORIZED, UNAUTHORIZED))
    }

    /// Records one `/token` request's outcome for telemetry, refused or not.
    fn record(
        &self,
        start: SystemTime,
        timer: Instant,
        method: HttpMethod,
        status: StatusCode,
        traceparent: Option<TraceParent>,
        request_id: Option<String>,
    ) {
        if let Some(recorder) = &self.recorder {
            recorder.record(Record::Token(TokenRecord {
                start,
                duration: timer.elapsed(),
                algorithm: self.config.algorithm.name(),
                method,
                outcome: if status.is_success() {
                    TokenOutcome::Issued
                } else {
                    TokenOutcome::Rejected {
                        status: status.as_u16(),
                    }
                },
                traceparent,
                request_id,
            }));
        }
    }

    /// Mints one token for `request`, with the key active when it starts, and answers it.
    ///
    /// The hot path of the sidecar: the claims are a typed struct serialized once, and the
    /// token is written into one buffer sized for it up front (header, payload and signature
    /// appended in place), then the response into another.
    async fn issue(&self, request: TokenRequest) -> Result<Response, ApiError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| ApiError::internal("the system clock is before 1970"))?
            .as_secs();
        let jti = new_jti()?;
        let claims = claims::build(request, &self.config, now, &jti)?;
        let active = self.keys.active();
        let mut payload = Vec::with_capacity(CLAIMS_CAPACITY);
        serde_json::to_writer(&mut payload, &claims)
            .map_err(|e| ApiError::internal(&format!("cannot encode the claims: {e}")))?;
        let mut token = String::with_capacity(
            active.header_b64.len()
                + 1
                + base64::encoded_len(payload.len(), false).unwrap_or(0)
                + 1
                + SIGNATURE_B64_CAPACITY,
        );
        token.push_str(&active.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = active
            .key
            .sign(token.as_bytes())
            .await
            .map_err(|e| match e {
                SignError::Local => ApiError::internal(&e.to_string()),
                // KMS unreachable, slow or refusing: not the caller's fault, and may pass.
                SignError::Kms(_) => {
                    tracing::warn!(error = %e, "KMS signing failed");
                    if let Some(recorder) = &self.recorder {
                        recorder.metrics().key_failure(KeyOperation::Sign);
                    }
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
                }
            })?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        let issued = Issued {
            token: &token,
            token_type: "Bearer",
            expires_at: claims.exp,
            expires_in: claims.ttl,
            user_id: &claims.sub,
            kid: active.key.kid(),
        };
        let mut body =
            Vec::with_capacity(token.len() + claims.sub.len() + active.key.kid().len() + 128);
        serde_json::to_writer(&mut body, &issued)
            .map_err(|e| ApiError::internal(&format!("cannot encode the response: {e}")))?;
        Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response())
    }

    /// Issues a token for a request that passed [`guard`], or answers why not.
    async fn respond(&self, request: Result<TokenRequest, ApiError>) -> Response {
        let issued = match request {
            Ok(request) => self.issue(request).await,
            Err(e) => Err(e),
        };
        issued.unwrap_or_else(IntoResponse::into_response)
    }
}

/// Room for a token's claims without a reallocation: the sidecar's own claims take ~200
/// bytes with a default subject and audience; requested claims may take more (and grow it).
const CLAIMS_CAPACITY: usize = 512;

/// Room for the longest usual base64url signature, so appending it to the token does not
/// reallocate: RSA-4096's 512 bytes (an 8192-bit key only costs one reallocation more).
const SIGNATURE_B64_CAPACITY: usize = 683;

/// The `/token` answer, serialized as it is.
#[derive(Serialize)]
struct Issued<'a> {
    token: &'a str,
    token_type: &'static str,
    expires_at: u64,
    expires_in: u64,
    user_id: &'a str,
    kid: &'a str,
}

/// In front of every route: [`TokenService::check_boundary`] on every path; for `/token`,
/// [`TokenService::check_secret`] too, and a telemetry record of the outcome whatever it was
/// (so refusals can be counted: an SSRF attempt shows as `sidecar.token.requests` with
/// `outcome=rejected`). `/metrics` needs the secret as well (it tells who asks for tokens and
/// how the function fares), but a scrape is not a token request and is not recorded.
async fn guard(State(service): State<Arc<TokenService>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path != "/token" {
        let checked = service.check_boundary(&request).and_then(|()| match path {
            "/metrics" => service.check_secret(request.headers()),
            _ => Ok(()),
        });
        return match checked {
            Ok(()) => next.run(request).await,
            Err(e) => e.into_response(),
        };
    }
    let start = SystemTime::now();
    let timer = Instant::now();
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let method = HttpMethod::parse(request.method().as_str());
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_request_id);
    let response = match service
        .check_boundary(&request)
        .and_then(|()| service.check_secret(request.headers()))
    {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    };
    service.record(
        start,
        timer,
        method,
        response.status(),
        traceparent,
        request_id,
    );
    response
}

/// A 128-bit random token id, base64url: unique without coordination.
///
/// A relying party may keep the ids it has seen to refuse a replayed token, so a jti must
/// never repeat, and must not be guessable (one could otherwise be burnt in advance). 128
/// bits from a CSPRNG give both. They come from aws-lc's `RAND_bytes` (the crypto backend
/// the keys already use), not a `getrandom` syscall per token: a thread-local NIST
/// SP 800-90A CTR-DRBG (AES-256) seeded and periodically reseeded from the OS, so the
/// bytes are as unpredictable as the kernel's while a token costs no syscall. Unlike a
/// plain userspace generator (a ChaCha `ThreadRng`), it reseeds by itself when its state
/// could have been duplicated: after a `fork` (`MADV_WIPEONFORK`) and after a VM snapshot
/// restore where the kernel exposes one (sysgenid), so two copies of the process do not
/// hand out the same ids.
fn new_jti() -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| ApiError::internal("no randomness available"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The router, separate from [`serve`] so tests can drive it without a socket.
pub fn router(service: Arc<TokenService>) -> Router {
    Router::new()
        // axum answers HEAD with the GET handler unless told otherwise; a token endpoint has
        // no use for HEAD, and a HEAD that mints a token is one more way to reach it.
        .route(
            "/token",
            get(get_token).post(post_token).head(method_not_allowed),
        )
        .route("/.well-known/jwks.json", get(jwks))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint; use /token, /.well-known/jwks.json, \
                 /.well-known/openid-configuration, /health or /metrics",
            )
        })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(service.clone(), guard))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}

/// Serves the token API on an already-bound listener until `shutdown` resolves, then lets
/// in-flight requests finish, under [`Limits::TOKEN`]. Taking the listener (not a port) lets tests bind port 0.
pub async fn serve(
    listener: TcpListener,
    service: Arc<TokenService>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = service.recorder.as_ref().map(Recorder::metrics);
    crate::server::serve(
        listener,
        router(service),
        Limits::TOKEN,
        Listener::Token,
        metrics,
        shutdown,
    )
    .await
}

async fn get_token(State(service): State<Arc<TokenService>>) -> Response {
    service.respond(Ok(TokenRequest::default())).await
}

/// Only `application/json` (parameters such as `charset` allowed): `text/plain`, form and
/// multipart bodies are what a browser may send cross-origin without a preflight.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

async fn post_token(
    State(service): State<Arc<TokenService>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !is_json(&headers) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST /token takes a JSON body with Content-Type: application/json",
        )
        .into_response();
    }
    let request = body
        .map_err(|rejection| match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            ),
            status => ApiError::new(status, &rejection.body_text()),
        })
        .and_then(|body| Ok(TokenRequest::parse(&body)?));
    service.respond(request).await
}

async fn jwks(State(service): State<Arc<TokenService>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        service.keys.jwks(),
    )
        .into_response()
}

/// Like the JWKS, public (no `X-Sidecar-Token`): it is what the deploy step publishes.
async fn openid_configuration(State(service): State<Arc<TokenService>>) -> Response {
    match &service.openid_configuration {
        Some(document) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "max-age=300"),
            ],
            document.clone(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "no OpenID discovery document: set JWT_JWKS_URI (the https URL where the JWKS is \
             published) and JWT_ISSUER (an https URL)",
        )
        .into_response(),
    }
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn metrics(State(service): State<Arc<TokenService>>) -> Response {
    match &service.recorder {
        Some(recorder) => scrape(&recorder.metrics()),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "no metrics: this token service was started without telemetry",
        )
        .into_response(),
    }
}

/// `GET /metrics`: every metric in the Prometheus text format. Also the whole of the
/// `SIDECAR_METRICS_ADDR` listener in `serve` mode (see [`crate::standalone`]).
pub fn scrape(metrics: &Metrics) -> Response {
    match metrics.prometheus_text() {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => ApiError::internal(&format!("cannot encode the metrics: {e}")).into_response(),
    }
}

/// Every error the API answers: `{"error","message","status"}` with the matching HTTP status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: &str) -> ApiError {
        ApiError {
            status,
            message: message.to_string(),
        }
    }

    fn internal(message: &str) -> ApiError {
        tracing::error!(message, "token request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<ClaimError> for ApiError {
    fn from(e: ClaimError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, &e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = self
            .status
            .canonical_reason()
            .unwrap_or("Error")
            .to_string();
        (
            self.status,
            axum::Json(
                json!({"error": error, "message": self.message, "status": self.status.as_u16()}),
            ),
        )
            .into_response()
    }
}
