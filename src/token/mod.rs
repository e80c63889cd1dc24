//! The token service: `GET/POST /token`, `/.well-known/jwks.json` and `/health` on
//! 127.0.0.1, for the function beside us.
//!
//! Owns: the HTTP surface and its error format. Never: reads the environment (it is handed a
//! parsed [`TokenConfig`] and a loaded [`SigningKey`]), parses keys per request, or writes a
//! token, secret or claim value into a log line or a telemetry record.

pub mod claims;
pub mod keys;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::TokenConfig;
use crate::pipeline::Recorder;
use crate::records::{Record, TokenOutcome, TokenRecord, TraceParent};
use crate::server::Limits;
use crate::signals::Listener;
use claims::{ClaimError, TokenRequest};
use keys::SigningKey;

/// Largest `POST /token` body accepted. A token request is a few hundred bytes; anything
/// near this is a mistake or an attack, and is answered 413 without being buffered further.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Everything a request needs, built once at start.
pub struct TokenService {
    config: TokenConfig,
    key: SigningKey,
    /// The base64url JOSE header: constant for the life of the process, so encoded once.
    header_b64: String,
    /// The JWKS document, serialized once.
    jwks: Bytes,
    /// Where token records go for telemetry; `None` in standalone mode.
    recorder: Option<Recorder>,
}

impl TokenService {
    pub fn new(config: TokenConfig, key: SigningKey, recorder: Option<Recorder>) -> TokenService {
        let header = json!({"alg": key.algorithm().name(), "typ": "JWT", "kid": key.kid()});
        let header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());
        let jwks = json!({"keys": key.public_jwk().into_iter().collect::<Vec<_>>()});
        TokenService {
            config,
            key,
            header_b64,
            jwks: Bytes::from(jwks.to_string()),
            recorder,
        }
    }

    /// Mints one token for `request`.
    fn issue(&self, request: TokenRequest) -> Result<serde_json::Value, ApiError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| ApiError::internal("the system clock is before 1970"))?
            .as_secs();
        let claims = claims::build(request, &self.config, now, new_jti()?)?;
        let payload = URL_SAFE_NO_PAD.encode(serde_json::Value::Object(claims.body).to_string());
        let signing_input = format!("{}.{payload}", self.header_b64);
        let signature = self
            .key
            .sign(signing_input.as_bytes())
            .map_err(|e| ApiError::internal(&e.to_string()))?;
        Ok(json!({
            "token": format!("{signing_input}.{signature}"),
            "token_type": "Bearer",
            "expires_at": claims.expires_at,
            "expires_in": claims.ttl,
            "user_id": claims.sub,
            "kid": self.key.kid(),
        }))
    }

    /// Issues a token and records the outcome for telemetry, whatever it was.
    fn handle(&self, headers: &HeaderMap, request: Result<TokenRequest, ApiError>) -> Response {
        let start = SystemTime::now();
        let timer = Instant::now();
        let result = request.and_then(|r| self.issue(r));
        let status = match &result {
            Ok(_) => StatusCode::OK,
            Err(e) => e.status,
        };
        if let Some(recorder) = &self.recorder {
            recorder.record(Record::Token(TokenRecord {
                start,
                duration: timer.elapsed(),
                algorithm: self.key.algorithm().name(),
                outcome: if status.is_success() {
                    TokenOutcome::Issued
                } else {
                    TokenOutcome::Rejected {
                        status: status.as_u16(),
                    }
                },
                traceparent: headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .and_then(TraceParent::parse),
            }));
        }
        match result {
            Ok(body) => (StatusCode::OK, axum::Json(body)).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// A 128-bit random token id, base64url: unique without coordination.
fn new_jti() -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| ApiError::internal("no randomness available"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The router, separate from [`serve`] so tests can drive it without a socket.
pub fn router(service: Arc<TokenService>) -> Router {
    Router::new()
        .route("/token", get(get_token).post(post_token))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/health", get(health))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint; use /token, /.well-known/jwks.json or /health",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
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

async fn get_token(State(service): State<Arc<TokenService>>, headers: HeaderMap) -> Response {
    service.handle(&headers, Ok(TokenRequest::default()))
}

async fn post_token(
    State(service): State<Arc<TokenService>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request = body
        .map_err(|rejection| match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            ),
            status => ApiError::new(status, &rejection.body_text()),
        })
        .and_then(|body| Ok(TokenRequest::parse(&body)?));
    service.handle(&headers, request)
}

async fn jwks(State(service): State<Arc<TokenService>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        service.jwks.clone(),
    )
        .into_response()
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
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
