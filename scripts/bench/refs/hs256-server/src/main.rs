//! The `/token` reference of `make bench` (issue 9): a minimal hyper server that signs an HS256
//! token with jsonwebtoken on every `GET /token`, on one current-thread runtime as the sidecar
//! runs. The claims are of the sidecar's size (iss, sub, aud, iat, exp, jti); the jti is a
//! counter, so the reference makes no syscall per token.
//!
//! Environment: `BENCH_PORT` (listens on 127.0.0.1), `JWT_SECRET`.
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;
use tokio::net::TcpListener;

const TTL: u64 = 3600;
static NEXT_JTI: AtomicU64 = AtomicU64::new(0);

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: String,
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn token(key: &EncodingKey) -> Response<Full<Bytes>> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        iss: "https://bench.example",
        sub: "lambda-env-function",
        aud: "bench",
        iat: now,
        exp: now + TTL,
        jti: format!("{:032x}", NEXT_JTI.fetch_add(1, Ordering::Relaxed)),
    };
    match encode(&Header::default(), &claims, key) {
        Ok(jwt) => reply(
            StatusCode::OK,
            format!(r#"{{"token":"{jwt}","token_type":"Bearer","expires_in":{TTL}}}"#),
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{{\"error\":\"{e}\"}}"),
        ),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port = std::env::var("BENCH_PORT").unwrap_or_else(|_| "3003".into());
    let secret = std::env::var("JWT_SECRET").unwrap_or_default();
    let key: &'static EncodingKey =
        Box::leak(Box::new(EncodingKey::from_secret(secret.as_bytes())));
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| async move {
                Ok::<_, Infallible>(match req.uri().path() {
                    "/token" => token(key),
                    _ => reply(StatusCode::NOT_FOUND, String::new()),
                })
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
