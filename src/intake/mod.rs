//! Telemetry intake: the HTTP endpoint Lambda's Telemetry API POSTs batches to.
//!
//! Owns: the listener and its answers. It answers 200 as soon as a batch is read, parsed and
//! queued, so Lambda never re-sends a batch we already have; it counts and skips event types
//! and fields it doesn't know instead of failing the batch; it answers 400 only to a body that
//! is not a JSON array (re-sending that would not help) and 413 to one over the size limit.
//! Never: derives anything or waits for the pipeline (deriving happens on the pipeline task).

pub mod events;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;

use crate::pipeline::Recorder;
use crate::records::Record;

/// Lambda sends at most 2 × maxBytes (1 MiB at the top of the range) plus metadata per POST.
pub const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024 + 64 * 1024;

/// Serves the Telemetry API destination on an already-bound listener until `shutdown`.
///
/// The listener stays open through SHUTDOWN until the final flush is done, so the last
/// invocation's `platform.report` is still accepted (rotel's extension closes first and
/// loses it).
pub async fn serve(
    listener: TcpListener,
    recorder: Recorder,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/", post(receive))
        .route("/{*path}", post(receive))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES))
        .with_state(recorder);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
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
    match events::parse_batch(&body) {
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
