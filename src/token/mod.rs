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

pub mod claims;
pub mod discovery;
pub mod keys;
pub mod source;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::{TokenAuth, TokenConfig};
use crate::metrics::Listener;
use crate::metrics::{KeyOperation, Metrics};
use crate::pipeline::Recorder;
use crate::records::{
    HttpConnection, HttpMethod, Record, TOKEN_ROUTE, TokenOutcome, TokenRecord, TraceParent,
    parse_request_id,
};
use crate::server::{Limits, Shortcut};
use claims::{ClaimError, Claims, TokenRequest};
use keys::SignError;
use source::{ActiveKey, KeyRing};

/// Largest `POST /token` body accepted. A token request is a few hundred bytes; anything
/// near this is a mistake or an attack, and is answered 413 without being buffered further.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The header that carries the per-environment secret to `/token`.
pub const AUTH_HEADER: &str = "X-Sidecar-Token";

/// The header names looked up per request, as [`HeaderName`]s: a `&str` is parsed into a
/// name on every lookup. Lower case, as `from_static` requires; the tests check they name
/// [`AUTH_HEADER`] and [`crate::records::REQUEST_ID_HEADER`].
const AUTH: HeaderName = HeaderName::from_static("x-sidecar-token");
const REQUEST_ID: HeaderName = HeaderName::from_static("lambda-runtime-aws-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Headers a proxy adds when it relays a request, with the name the refusal gives. The
/// function talks to us directly, so a request carrying one came through something else
/// and is refused on every path.
const FORWARDING_HEADERS: [(HeaderName, &str); 6] = [
    (
        HeaderName::from_static("x-forwarded-for"),
        "X-Forwarded-For",
    ),
    (
        HeaderName::from_static("x-forwarded-host"),
        "X-Forwarded-Host",
    ),
    (
        HeaderName::from_static("x-forwarded-proto"),
        "X-Forwarded-Proto",
    ),
    (HeaderName::from_static("x-real-ip"), "X-Real-IP"),
    (header::FORWARDED, "Forwarded"),
    (header::VIA, "Via"),
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
        let session_token = match config.auth.expected() {
            Some(token) => {
                if let TokenAuth::ContainerToken(_) = config.auth {
                    tracing::info!(
                        "no AWS_SESSION_TOKEN (SnapStart): /token checks X-Sidecar-Token \
                         against AWS_CONTAINER_AUTHORIZATION_TOKEN"
                    );
                }
                Some(token.as_bytes().into())
            }
            None => {
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
    fn check_boundary(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
        if let Some((_, name)) = FORWARDING_HEADERS
            .iter()
            .find(|(h, _)| headers.contains_key(h))
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                &format!(
                    "requests relayed by a proxy ({name} header) are refused: this service \
                     answers only the function on this host"
                ),
            ));
        }
        if uri.scheme().is_some() || uri.authority().is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "absolute-form request targets (a request meant for a proxy) are refused: \
                 request the path only",
            ));
        }
        match crate::server::host_is_one_of(headers, &self.hosts) {
            true => Ok(()),
            false => Err(ApiError::new(
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
        let given = headers.get(AUTH).map(|v| v.as_bytes()).unwrap_or_default();
        aws_lc_rs::constant_time::verify_slices_are_equal(given, expected)
            .map_err(|_| ApiError::new(StatusCode::UNAUTHORIZED, UNAUTHORIZED))
    }

    /// Counts a `/token` request [`guard`] refused, in `sidecar.token.requests` only. Its
    /// caller is not known to be the function, so nothing it sent is believed: no span, and
    /// so no span in the trace its `traceparent` names, and nothing enters the pipeline.
    fn count_refused(
        &self,
        start: SystemTime,
        timer: Instant,
        method: HttpMethod,
        status: StatusCode,
    ) {
        if let Some(recorder) = &self.recorder {
            recorder.metrics().token(&TokenRecord {
                start,
                duration: timer.elapsed(),
                algorithm: self.config.algorithm.name(),
                method,
                outcome: TokenOutcome::Rejected {
                    status: status.as_u16(),
                },
                traceparent: None,
                request_id: None,
                connection: HttpConnection::default(),
            });
        }
    }

    /// Records the outcome of one `/token` request that passed [`guard`], issued or not, for
    /// telemetry: its metrics and its span.
    fn record(
        &self,
        start: SystemTime,
        timer: Instant,
        method: HttpMethod,
        status: StatusCode,
        caller: Caller,
    ) {
        let Caller {
            traceparent,
            request_id,
            connection,
        } = caller;
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
                connection,
            }));
        }
    }

    /// Mints one token for `request`, with the key active when it starts, and answers it.
    /// The path of `POST /token` and of a KMS key; `GET /token` with a local key takes
    /// [`TokenService::answer`], which shares all but the buffers and the await.
    async fn issue(&self, request: TokenRequest) -> Result<Response, ApiError> {
        let jti = Jti::new()?;
        let active = self.keys.active();
        let mut scratch = Scratch::default();
        let claims = self.signing_input(request, &jti, &active, &mut scratch)?;
        let signature = active
            .key
            .sign(scratch.input.as_bytes())
            .await
            .map_err(|e| self.sign_failed(e))?;
        let body = answer(
            &scratch.input,
            signature.as_ref(),
            &claims,
            &active,
            &mut scratch.json,
        )?;
        Ok(json_reply(StatusCode::OK, body).map(Body::from))
    }

    /// Writes the JWS signing input of a token for `request` (`header.payload`, base64url) to
    /// `scratch.input`, through `scratch.json`, and returns its claims. The claims are a typed
    /// struct serialized once, and the base64url header is encoded once per key.
    fn signing_input<'a>(
        &'a self,
        request: TokenRequest,
        jti: &'a Jti,
        active: &ActiveKey,
        scratch: &mut Scratch,
    ) -> Result<Claims<'a>, ApiError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| ApiError::internal("the system clock is before 1970"))?
            .as_secs();
        let claims = claims::build(request, &self.config, now, jti.as_str())?;
        scratch.json.clear();
        serde_json::to_writer(&mut scratch.json, &claims)
            .map_err(|e| ApiError::internal(&format!("cannot encode the claims: {e}")))?;
        let input = &mut scratch.input;
        input.clear();
        input.reserve(
            active.header_b64.len()
                + 1
                + base64::encoded_len(scratch.json.len(), false).unwrap_or(0),
        );
        input.push_str(&active.header_b64);
        input.push('.');
        URL_SAFE_NO_PAD.encode_string(&scratch.json, input);
        Ok(claims)
    }

    /// The error a failed signature answers (and, for KMS, counts).
    fn sign_failed(&self, e: SignError) -> ApiError {
        match e {
            SignError::Local => ApiError::internal(&e.to_string()),
            // KMS unreachable, slow or refusing: not the caller's fault, and may pass.
            SignError::Kms(_) => {
                tracing::warn!(error = %e, "KMS signing failed");
                if let Some(recorder) = &self.recorder {
                    recorder.metrics().key_failure(KeyOperation::Sign);
                }
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
            }
        }
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

/// `GET /token` answered before the router ([`Shortcut`]): the same checks as [`guard`], the
/// same token as `get_token`, the same telemetry record, without axum's per-request boxes
/// and futures, and with reused buffers. A request it does not issue a token for (another
/// path or method, a refusal, a KMS key, which signs over the network) goes to the router,
/// where the guard answers and records it as before.
impl Shortcut for TokenService {
    fn answer(
        &self,
        method: &Method,
        uri: &Uri,
        version: http::Version,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Option<http::Response<Bytes>> {
        if method != Method::GET || uri.path() != TOKEN_ROUTE {
            return None;
        }
        // Without a recorder (a service started without telemetry or metrics), no clock or
        // header reads for a record nobody takes.
        let started = self
            .recorder
            .is_some()
            .then(|| (SystemTime::now(), Instant::now()));
        let active = self.keys.active();
        if !active.key.signs_locally()
            || self.check_boundary(uri, headers).is_err()
            || self.check_secret(headers).is_err()
        {
            return None;
        }
        let issued = Jti::new().and_then(|jti| {
            SCRATCH.with_borrow_mut(|scratch| {
                let claims = self.signing_input(TokenRequest::default(), &jti, &active, scratch)?;
                let signature = active
                    .key
                    .sign_now(scratch.input.as_bytes())
                    .map_err(|e| self.sign_failed(e))?;
                answer(
                    &scratch.input,
                    signature.as_ref(),
                    &claims,
                    &active,
                    &mut scratch.json,
                )
            })
        });
        let response = match issued {
            Ok(body) => json_reply(StatusCode::OK, body),
            Err(e) => e.reply(),
        };
        if let Some((start, timer)) = started {
            self.record(
                start,
                timer,
                HttpMethod::parse(method.as_str()),
                response.status(),
                caller(headers, version, peer),
            );
        }
        Some(response)
    }
}

/// The buffers one token is written through: the claims' JSON (then the answer's tail) and
/// the signing input. The shortcut reuses one set per thread ([`SCRATCH`]); they hold what
/// the largest `GET /token` needed, which the configuration bounds (no caller input).
#[derive(Default)]
struct Scratch {
    json: Vec<u8>,
    input: String,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// The `/token` answer, `{"token":"…","token_type":"Bearer","expires_at":…,"expires_in":…,
/// "user_id":"…","kid":"…"}`, in one buffer of its exact size (so `Bytes` takes it without a
/// copy or a second allocation). The token is base64url and dots, which JSON takes as they
/// are: it is written in place, the rest ([`Tail`]) is serialized into `tail`.
fn answer(
    input: &str,
    signature: &[u8],
    claims: &Claims,
    active: &ActiveKey,
    tail: &mut Vec<u8>,
) -> Result<Bytes, ApiError> {
    const HEAD: &[u8] = b"{\"token\":\"";
    tail.clear();
    serde_json::to_writer(
        &mut *tail,
        &Tail {
            token_type: "Bearer",
            expires_at: claims.exp,
            expires_in: claims.ttl,
            user_id: &claims.sub,
            kid: active.key.kid(),
        },
    )
    .map_err(|e| ApiError::internal(&format!("cannot encode the response: {e}")))?;
    // `{"token_type":…}` without its `{`, after the token's closing `",`.
    let rest = tail.get(1..).unwrap_or_default();
    let signature_len = base64::encoded_len(signature.len(), false).unwrap_or(0);
    let mut body =
        Vec::with_capacity(HEAD.len() + input.len() + 1 + signature_len + 2 + rest.len());
    body.extend_from_slice(HEAD);
    body.extend_from_slice(input.as_bytes());
    body.push(b'.');
    let at = body.len();
    body.resize(at + signature_len, 0);
    URL_SAFE_NO_PAD
        .encode_slice(signature, &mut body[at..])
        .map_err(|e| ApiError::internal(&format!("cannot encode the signature: {e}")))?;
    body.extend_from_slice(b"\",");
    body.extend_from_slice(rest);
    Ok(Bytes::from(body))
}

/// The `/token` answer after its `token`, serialized as it is.
#[derive(Serialize)]
struct Tail<'a> {
    token_type: &'static str,
    expires_at: u64,
    expires_in: u64,
    user_id: &'a str,
    kid: &'a str,
}

/// A JSON answer, built without axum's `IntoResponse` (the shortcut's type; the router's
/// handlers map its body into axum's).
fn json_reply(status: StatusCode, body: Bytes) -> http::Response<Bytes> {
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// What a `/token` request tells of its caller: the invocation it names for attribution (its
/// `traceparent` and its request-id header, each when well-formed) and its connection.
struct Caller {
    traceparent: Option<TraceParent>,
    request_id: Option<String>,
    connection: HttpConnection,
}

fn caller(headers: &HeaderMap, version: http::Version, peer: Option<SocketAddr>) -> Caller {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    Caller {
        traceparent: text(TRACEPARENT).and_then(TraceParent::parse),
        request_id: text(REQUEST_ID).and_then(parse_request_id),
        connection: HttpConnection::from_head(
            text(header::HOST),
            version,
            text(header::USER_AGENT),
            peer,
        ),
    }
}

/// In front of every route: [`TokenService::check_boundary`] on every path; for `/token`,
/// [`TokenService::check_secret`] too, and the outcome recorded whatever it was. A request
/// the guard refuses is only counted (an SSRF attempt shows as `sidecar.token.requests` with
/// `outcome=unauthorized` or `bad_request`): its caller is not known to be the function, so
/// it makes no span, and its `traceparent` cannot put one into someone's trace. One that
/// passes is recorded with its span. `/metrics` needs the secret as well (it tells who asks
/// for tokens and how the function fares), but a scrape is not a token request and is not
/// recorded.
async fn guard(State(service): State<Arc<TokenService>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path != TOKEN_ROUTE {
        let checked = service
            .check_boundary(request.uri(), request.headers())
            .and_then(|()| match path {
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
    let method = HttpMethod::parse(request.method().as_str());
    if let Err(e) = service
        .check_boundary(request.uri(), request.headers())
        .and_then(|()| service.check_secret(request.headers()))
    {
        let response = e.into_response();
        service.count_refused(start, timer, method, response.status());
        return response;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let caller = caller(request.headers(), request.version(), peer);
    let response = next.run(request).await;
    service.record(start, timer, method, response.status(), caller);
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
struct Jti([u8; 22]);

impl Jti {
    fn new() -> Result<Jti, ApiError> {
        let mut bytes = [0u8; 16];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| ApiError::internal("no randomness available"))?;
        let mut jti = Jti([0; 22]);
        URL_SAFE_NO_PAD
            .encode_slice(bytes, &mut jti.0)
            .map_err(|_| ApiError::internal("cannot encode the jti"))?;
        Ok(jti)
    }

    fn as_str(&self) -> &str {
        // base64url is ASCII: never the empty fallback.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
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
    crate::server::serve_with(
        listener,
        router(service.clone()),
        Some(service),
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

impl ApiError {
    /// The answer: its status and `{"error","message","status"}`.
    fn reply(&self) -> http::Response<Bytes> {
        let error = self.status.canonical_reason().unwrap_or("Error");
        let body = json!({"error": error, "message": self.message, "status": self.status.as_u16()});
        json_reply(self.status, Bytes::from(body.to_string()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.reply().map(Body::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_name_constants_name_the_documented_headers() {
        assert!(AUTH.as_str().eq_ignore_ascii_case(AUTH_HEADER));
        assert!(
            REQUEST_ID
                .as_str()
                .eq_ignore_ascii_case(crate::records::REQUEST_ID_HEADER)
        );
    }
}
