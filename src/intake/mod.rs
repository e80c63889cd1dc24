//! Telemetry intake: the HTTP endpoint Lambda's Telemetry API POSTs batches to.
//!
//! Owns: the listener and its answers. It answers 200 as soon as a batch is read, parsed and
//! queued, so Lambda never re-sends a batch we already have; it counts and skips event types
//! and fields it doesn't know instead of failing the batch; it answers 400 only to a body that
//! is not a JSON array (re-sending that would not help) and 413 to one over the size limit.
//! It accepts POST on one path only: a random secret chosen at start ([`secret_path`]) and
//! given to the Telemetry API in the subscription, so a local process that finds the port
//! still cannot inject events; anything else is 404 without the body being read.
//! Never: derives anything, waits for the pipeline (deriving happens on the pipeline task),
//! or logs the secret path.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;

use crate::metrics::Listener;
use crate::pipeline::Recorder;
use crate::records::Record;
use crate::server::Limits;

/// Lambda sends at most 2 × maxBytes (1 MiB at the top of the range) plus metadata per POST.
pub const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024 + 64 * 1024;

/// A fresh destination path: `/` and 128 random bits in hex. Unguessable, so only the
/// Telemetry API, which is told it in the subscription, can post to the listener.
pub fn secret_path() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().fold(String::from("/"), |mut path, b| {
        path.push_str(&format!("{b:02x}"));
        path
    }))
}

/// Serves the Telemetry API destination on an already-bound listener until `shutdown`,
/// under [`Limits::TELEMETRY`], accepting POST on `path` (from [`secret_path`]) only.
///
/// The listener stays open through SHUTDOWN until the final flush is done, so the last
/// invocation's `platform.report` is still accepted (rotel's extension closes first and
/// loses it).
pub async fn serve(
    listener: TcpListener,
    recorder: Recorder,
    path: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let metrics = Some(recorder.metrics());
    let app = Router::new()
        .route(&path, post(receive))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES))
        .with_state(recorder);
    crate::server::serve(
        listener,
        app,
        Limits::TELEMETRY,
        Listener::Telemetry,
        metrics,
        shutdown,
    )
    .await
}

/// Any other path or method: 404, and the body is never read.
async fn not_found() -> StatusCode {
    StatusCode::NOT_FOUND
}

async fn receive(
    State(recorder): State<Recorder>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            tracing::warn!(status = %rejection.status(), "telemetry batch refused");
            return rejection.status().into_response();
        }
    };
    match crate::events::parse_batch(&body) {
        Ok(batch) => {
            recorder.record(Record::Telemetry(batch));
            StatusCode::OK.into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, bytes = body.len(), "telemetry body is not a JSON array");
            StatusCode::BAD_REQUEST.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::derive::Deriver;
    use crate::function::FunctionInfo;
    use crate::pipeline::Pipeline;

    #[tokio::test]
    async fn only_a_post_on_the_secret_path_is_taken() {
        let (_source, metrics) = crate::metrics::testing::source();
        let metrics = Arc::new(metrics);
        let function = FunctionInfo::from_vars(|_| None);
        let (_pipeline, recorder) =
            Pipeline::start(Deriver::new(function, metrics.clone()), metrics);
        let path = secret_path().unwrap();
        assert_eq!(path.len(), 33, "{path}");
        assert!(path[1..].bytes().all(|b| b.is_ascii_hexdigit()), "{path}");
        assert_ne!(path, secret_path().unwrap());

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            recorder,
            path.clone(),
            std::future::pending(),
        ));
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let post = |p: &str| client.post(format!("http://{addr}{p}")).body("[]").send();
        assert_eq!(post(&path).await.unwrap().status(), StatusCode::OK);
        for other in ["/", "/telemetry", &format!("{path}/x"), &path[..32]] {
            let status = post(other).await.unwrap().status();
            assert_eq!(status, StatusCode::NOT_FOUND, "POST {other}");
        }
        let get = client.get(format!("http://{addr}{path}")).send().await;
        assert_eq!(get.unwrap().status(), StatusCode::NOT_FOUND);
    }
}
