//! Lifecycle: the sidecar as a Lambda extension, from register to SHUTDOWN. This module is
//! the composition root: [`run`] registers, starts everything and hands over to the event
//! loop. The work lives in its parts:
//!
//! - `client`: every call to Lambda's Extensions and Telemetry APIs (register,
//!   `init/error`, the subscription) and the check of `AWS_LAMBDA_RUNTIME_API`.
//! - [`startup`]: the wiring (key, token server, pipeline, exporter, telemetry intake), its
//!   overlap with register, and the start-up phase timing; `serve` mode binds through it too.
//! - `event_loop`: what happens at INVOKE, at a Managed Instances tick and at SHUTDOWN.
//! - `flush`: when to flush and for how long, as pure functions.
//!
//! Never: holds an invocation longer than `SIDECAR_FLUSH_TIMEOUT_MS`, or leaves a request in
//! flight when it hands control back (a timed-out export future is dropped, which cancels it).

use std::time::Instant;

use tracing::Instrument as _;

use crate::config::{Config, ConfigError, Lambda};
use crate::selftrace::{self, SelfTraces};

mod client;
mod event_loop;
mod flush;
pub mod startup;

pub use client::check_runtime_api;
pub use startup::{StartupError, mark_process_start, phase, phase_at};

/// Errors that end the extension after start-up.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("registering with the Extensions API failed: {0}")]
    Register(lambda_extension::Error),
    #[error("start-up failed ({kind}): {0}", kind = .0.error_type())]
    Startup(StartupError),
    #[error("the Extensions API event loop failed: {0}")]
    EventLoop(lambda_extension::Error),
}

/// Runs the extension until SHUTDOWN. `config` is the already-parsed configuration, or the
/// error to report once registered: a start-up failure after register goes to `init/error`
/// (then the process exits 1); before register there is no extension id to report with.
/// `self_traces`: where the sidecar's own spans wait for a flush, when they are on.
pub async fn run(
    config: Result<Config, ConfigError>,
    self_traces: Option<SelfTraces>,
) -> Result<(), LifecycleError> {
    let started = Instant::now();
    let managed_instances = Lambda::from_env().managed_instances();
    // Key, pipeline and DNS overlap with registration (see `Prepared`).
    let prepared = startup::prepare(config, managed_instances);
    let registered = client::register(managed_instances)
        .instrument(tracing::info_span!(target: selftrace::TARGET, "sidecar.register"))
        .await
        .map_err(LifecycleError::Register)?;
    phase("registered");
    if let Ok(prepared) = &prepared {
        prepared.registered(registered.account_id.clone());
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        function = %registered.function_name,
        "registered"
    );
    let started_up = startup::start(prepared, &registered.api, managed_instances, self_traces);
    let sidecar = match started_up.await {
        Ok(sidecar) => sidecar,
        Err(e) => {
            tracing::error!(error_type = e.error_type(), error = %e, "start-up failed");
            registered.api.report_init_error(&e).await;
            return Err(LifecycleError::Startup(e));
        }
    };
    phase("ready, first event/next");
    tracing::info!(
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        token_addr = %sidecar.tokens.addr,
        telemetry_port = sidecar.telemetry_port,
        "ready"
    );
    event_loop::run(sidecar, registered.next_events, registered.handoffs).await
}
