//! Standalone mode (`lambda-sidecar serve`): the token service without the Extensions API,
//! for local development, the examples, benchmarks and container sidecars. No Lambda to
//! observe and no OTLP export, but the token metrics still count, for `/metrics`. The
//! `OTEL_*` variables are still checked as the extension checks them (a value the extension
//! would refuse is refused here too, before it reaches a deployment), and those set are
//! named as ignored.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::metrics::noop::NoopMeterProvider;
use tokio::net::TcpListener;

use crate::config::{Config, ExportConfig};
use crate::lifecycle::startup::{self, StartupError, TokenListener};
use crate::metrics::{Listener, Metrics};
use crate::pipeline::Recorder;
use crate::server::{self, Limits};
use crate::token::{self, source};

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("the token server failed: {0}")]
    Serve(std::io::Error),
}

/// Serves tokens on 127.0.0.1:`SIDECAR_PORT`, and `/metrics` alone on `SIDECAR_METRICS_ADDR`
/// when set, until SIGINT or SIGTERM. `export` is only named: what of it is set is ignored.
pub async fn run(config: Config, export: ExportConfig) -> Result<(), StandaloneError> {
    if !export.set.is_empty() {
        tracing::warn!(
            ignored = %export.set.join(", "),
            "serve exports no telemetry: these OTEL_* variables are valid, and ignored here"
        );
    }
    // No INVOKE here, so nothing re-reads a rotating key: serve signs with the key it started
    // with.
    let keys = source::load(&config.token)
        .await
        .map_err(StartupError::from)?
        .ring;
    // Nothing exports over OTLP here, so the OTel half of every instrument is a no-op; the
    // Prometheus half counts.
    let metrics = Arc::new(Metrics::new(
        &NoopMeterProvider::new().meter(env!("CARGO_PKG_NAME")),
    ));
    let recorder = Recorder::metrics_only(metrics.clone());
    let TokenListener {
        addr,
        listener,
        service,
    } = startup::token_listener(&config, keys.clone(), recorder).await?;
    if let Some(metrics_addr) = config.metrics_addr {
        let metrics_listener = startup::bind(metrics_addr).await?;
        tracing::info!(addr = %metrics_addr, "serving /metrics");
        tokio::spawn(serve_metrics(metrics_listener, metrics.clone()));
    }
    tracing::info!(%addr, algorithm = config.token.algorithm.name(), kid = keys.active().key.kid(), "serving tokens");
    if config.emf_namespace.is_some() {
        // Outside Lambda nothing turns stdout into CloudWatch metrics; scrape /metrics.
        tracing::warn!("SIDECAR_EMF=on is for extension mode: serve writes no EMF");
    }
    token::serve(listener, service, signal())
        .await
        .map_err(StandaloneError::Serve)
}

/// The `SIDECAR_METRICS_ADDR` listener: `GET /metrics` and nothing else, for a Prometheus
/// that scrapes the container from outside. It asks for no `X-Sidecar-Token`: a scraper has
/// no session token, and the figures are counts by closed label sets, never a token or a
/// claim. The token endpoints stay on loopback. It is the one listener that may face a
/// network, so it has the same connection limits as the others. It ends with the process.
async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    let router = Router::new().route(
        "/metrics",
        get({
            let metrics = metrics.clone();
            move || std::future::ready(token::scrape(&metrics))
        }),
    );
    let limits = Limits::METRICS;
    let serving = server::serve(
        listener,
        router,
        limits,
        Listener::Metrics,
        Some(metrics),
        std::future::pending(),
    );
    if let Err(e) = serving.await {
        tracing::error!(error = %e, "the /metrics listener failed");
    }
}

/// Resolves on SIGINT or SIGTERM. If a handler can't be installed, Ctrl-C alone stops it.
async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("stopping");
}
