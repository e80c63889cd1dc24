//! Start-up: the wiring of the key, the token server, the pipeline, the exporter and the
//! telemetry intake, and the timing of its phases.
//!
//! Order, all inside Lambda's init phase: the key is loaded (parsed, or fetched from its AWS
//! source), the OTLP clients, metric instruments and pipeline built and
//! `sandbox.localdomain` resolved *while* the extension registers (`prepare`); then
//! (`start`) the token server starts (the function's own init may already ask for a
//! token), the telemetry listener and the OTLP receiver bind, and the Telemetry API
//! subscription is made. Any
//! failure after register is a [`StartupError`], which becomes the `init/error` type; before
//! register there is no extension id to report with, so it only logs and exits.
//!
//! The token listener and [`bind`] serve `lambda-sidecar serve` too ([`token_listener`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use super::client::{ExtensionsApi, subscribed_types};
use super::event_loop::Sidecar;
use super::flush::{self, Cadence, FlushSettings};
use crate::config::{Config, ConfigError, ExportConfig, Lambda, ReceiverConfig};
use crate::derive::Deriver;
use crate::export::{
    ExportClients, Exporter, HeadersSourceError, LogStreamError, MetricsSource, SecretHeaders,
    create_log_stream,
};
use crate::function::FunctionInfo;
use crate::intake;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Recorder};
use crate::receiver;
use crate::selftrace::{self, SelfTraces};
use crate::token::source::{self, KeyRing, KeySourceError, LoadError, Loaded};
use crate::token::{self, TokenService};

/// The longest start-up waits for `sandbox.localdomain` to resolve. Lambda answers it from
/// /etc/hosts at once; an emulator's resolver may instead wait on DNS.
const RESOLVE_WAIT: Duration = Duration::from_secs(1);

/// The Telemetry API's shortest `buffering.timeoutMs`.
const FASTEST_BUFFER_MS: u32 = 25;

/// Why start-up failed after register: each variant becomes an `init/error` error type.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    KeySource(#[from] KeySourceError),
    #[error(transparent)]
    HeadersSource(#[from] HeadersSourceError),
    #[error(transparent)]
    LogStream(#[from] LogStreamError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the Telemetry API refused the subscription: {0}")]
    Subscribe(String),
    #[error("start-up task failed: {0}")]
    Internal(String),
}

impl StartupError {
    pub fn error_type(&self) -> &'static str {
        match self {
            StartupError::Config(e) => e.error_type(),
            StartupError::KeySource(e) => e.error_type(),
            StartupError::HeadersSource(e) => e.error_type(),
            StartupError::LogStream(e) => e.error_type(),
            StartupError::Bind { .. } => "Extension.PortUnavailable",
            StartupError::Subscribe(_) => "Extension.TelemetrySubscriptionFailed",
            StartupError::Internal(_) => "Extension.InternalError",
        }
    }
}

impl From<LoadError> for StartupError {
    fn from(e: LoadError) -> StartupError {
        match e {
            LoadError::Config(e) => StartupError::Config(e),
            LoadError::Source(e) => StartupError::KeySource(e),
        }
    }
}

/// When `main` began, the origin of the start-up phase times.
static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Records when the process began (the top of `main`): every start-up phase is logged as the
/// microseconds since then, so that `make bench` can tell exec and loading (its own clock
/// minus these) from the sidecar's own start-up.
pub fn mark_process_start() -> Instant {
    *PROCESS_START.get_or_init(Instant::now)
}

/// Logs that a start-up phase ended: target `lambda_sidecar::startup`, at debug, so
/// `SIDECAR_LOG=info,lambda_sidecar::startup=debug` shows the breakdown. Free when that level
/// is off: the macro checks the level before it reads the clock.
pub fn phase(name: &'static str) {
    tracing::debug!(
        target: "lambda_sidecar::startup",
        phase = name,
        elapsed_us = PROCESS_START.get().map_or(0, |t| t.elapsed().as_micros() as u64),
        "start-up phase"
    );
}

/// `phase` for a phase that ended before logging was set up (`at` since the process began).
pub fn phase_at(name: &'static str, at: Duration) {
    tracing::debug!(
        target: "lambda_sidecar::startup",
        phase = name,
        elapsed_us = at.as_micros() as u64,
        "start-up phase"
    );
}

/// Start-up work that needs no extension id, started before register so that it overlaps
/// with the register round-trip instead of adding to it: loading the key (parsing it on a
/// blocking thread, or fetching it from AWS); on a blocking thread, building the exporters'
/// HTTP/TLS clients, the metric instruments (the OTel SDK allocates a map per instrument)
/// and the pipeline; and resolving `sandbox.localdomain` (a DNS query where /etc/hosts does
/// not answer it). Errors wait until there is an extension id to report them with.
pub(super) struct Prepared {
    config: Config,
    /// Logs are exported: derive them, and subscribe to the log streams.
    logs: bool,
    keys: JoinHandle<Result<Loaded, LoadError>>,
    /// The first read of `SIDECAR_OTLP_HEADERS_SOURCE`, when set.
    headers: Option<JoinHandle<Result<(), HeadersSourceError>>>,
    /// The OTLP logs' stream, created in a group of the user's (`SIDECAR_OTLP_LOG_GROUP`).
    log_stream: Option<JoinHandle<Result<(), LogStreamError>>>,
    telemetry: JoinHandle<SocketAddr>,
    built: JoinHandle<Result<Built, ConfigError>>,
    /// The account id register answers with: the resource's `cloud.account.id` (see
    /// [`build`]).
    account: std::sync::mpsc::SyncSender<Option<String>>,
}

/// The telemetry side, built before register (see [`Prepared`]).
struct Built {
    pipeline: Pipeline,
    recorder: Recorder,
    exporter: Exporter,
}

/// Checks the configuration for extension mode and starts the work of [`Prepared`].
pub(super) fn prepare(
    config: Result<Config, ConfigError>,
    managed_instances: bool,
) -> Result<Prepared, StartupError> {
    // Every configuration error at once: `Config`'s, the extension-mode check's and the
    // export's.
    let config = config.and_then(|config| config.check_extension_mode().map(|()| config));
    let (config, export_config) = ConfigError::both(config, ExportConfig::from_env())?;
    export_config
        .aws
        .check_emf(config.emf_namespace.is_some())?;
    for warning in &export_config.warnings {
        tracing::warn!("{warning}");
    }
    let function = Lambda::from_env().function;
    let token_config = config.token.clone();
    let logs = export_config.logs.is_some();
    phase("extension config parsed");
    let telemetry = tokio::spawn(telemetry_addr(config.telemetry.port.unwrap_or(0)));
    let key_load = tracing::info_span!(target: selftrace::TARGET, "sidecar.key_load");
    let keys = tokio::spawn(
        async move {
            let loaded = source::load(&token_config).await;
            phase("key loaded");
            loaded
        }
        .instrument(key_load),
    );
    let secret = export_config
        .aws
        .headers_source
        .clone()
        .map(SecretHeaders::new)
        .transpose()?;
    let headers = secret.clone().map(|secret| {
        tokio::spawn(async move {
            let loaded = secret.load().await;
            phase("exporter headers loaded");
            loaded
        })
    });
    let log_stream = export_config
        .aws
        .log_destination
        .clone()
        .filter(|destination| destination.create_in.is_some())
        .map(|destination| tokio::spawn(async move { create_log_stream(&destination).await }));
    let shape = Shape {
        emf_namespace: config.emf_namespace.clone(),
        trigger: config.telemetry.faas_trigger,
        managed_instances,
        receiving: config.receiver.is_some(),
    };
    let (account, account_id) = std::sync::mpsc::sync_channel(1);
    let built = tokio::task::spawn_blocking(move || {
        build(export_config, account_id, secret, function, shape)
    });
    Ok(Prepared {
        config,
        logs,
        keys,
        headers,
        log_stream,
        telemetry,
        built,
        account,
    })
}

impl Prepared {
    /// Hands the build the account id register answered with (`None` when Lambda gave
    /// none), for the resource.
    pub(super) fn registered(&self, account_id: Option<String>) {
        // The build took it already, or ended: nothing waits for it.
        let _ = self.account.try_send(account_id);
    }
}

/// What [`build`] takes from the configuration and the platform besides the exporters'.
struct Shape {
    /// EMF on, in this namespace.
    emf_namespace: Option<String>,
    /// `faas.trigger` of the invocation spans.
    trigger: &'static str,
    /// Invocations may overlap (Lambda Managed Instances).
    managed_instances: bool,
    /// The OTLP receiver is on: the deriver publishes the invocations' trace contexts.
    receiving: bool,
}

/// Builds the telemetry side (see [`Prepared`]): the exporters' clients, the metric
/// instruments, the exporter (writing EMF when `shape` says so) and the pipeline with its
/// deriver. On a blocking thread of the runtime, so that `Pipeline::start` can spawn its
/// task.
///
/// The resource waits for register's account id (`account_id`), so that metrics and logs
/// carry `cloud.account.id` and `cloud.resource_id` as spans do: the clients, the costly
/// part, are built first, while register is under way. If register fails, the sender is
/// dropped with `Prepared` and the build goes on without the account.
fn build(
    export_config: ExportConfig,
    account_id: std::sync::mpsc::Receiver<Option<String>>,
    secret: Option<Arc<SecretHeaders>>,
    function: FunctionInfo,
    shape: Shape,
) -> Result<Built, ConfigError> {
    let Shape {
        emf_namespace,
        trigger,
        managed_instances,
        receiving,
    } = shape;
    let mut clients = ExportClients::build(&export_config, secret)?;
    phase("export clients built");
    let account = account_id.recv().ok().flatten();
    let resource = crate::export::resource(&function, &export_config, account.as_deref());
    clients.set_resource(&resource);
    let source = Arc::new(MetricsSource::with_temporality(
        resource,
        export_config.temporality,
    ));
    let metrics = Arc::new(match emf_namespace {
        Some(_) => Metrics::with_emf(&source.meter()),
        None => Metrics::new(&source.meter()),
    });
    let mut exporter = Exporter::new(clients, source, metrics.clone());
    if let Some(namespace) = emf_namespace {
        exporter = exporter.with_emf(crate::export::emf::Writer::start(
            namespace,
            function.name.clone(),
            metrics.clone(),
        ));
    }
    let mut deriver = Deriver::new(function, metrics.clone())
        .with_sampler(export_config.sampler)
        .with_propagators(export_config.propagators)
        .with_trigger(trigger)
        .with_overlapping_invocations(managed_instances);
    if export_config.logs.is_some() {
        deriver = deriver.with_logs();
    }
    if receiving {
        deriver = deriver.with_invocation_traces(exporter.invocation_traces());
    }
    let (pipeline, recorder) = Pipeline::start(deriver, metrics);
    phase("pipeline started");
    Ok(Built {
        pipeline,
        recorder,
        exporter,
    })
}

/// Once registered: waits for what [`prepare`] started, then starts the token server first
/// (the function's own init may ask for a token as soon as we are registered), then the
/// telemetry intake, and subscribes it to the Telemetry API.
pub(super) async fn start(
    prepared: Result<Prepared, StartupError>,
    api: &ExtensionsApi,
    managed_instances: bool,
    self_traces: Option<SelfTraces>,
) -> Result<Sidecar, StartupError> {
    let Prepared {
        config,
        logs,
        keys,
        headers,
        log_stream,
        telemetry,
        built,
        account: _,
    } = prepared?;
    let Loaded { ring, refresher } = joined(keys).await??;
    if let Some(headers) = headers {
        joined(headers).await??;
    }
    if let Some(log_stream) = log_stream {
        joined(log_stream).await??;
    }
    let Built {
        pipeline,
        recorder,
        exporter,
    } = joined(built).await??;
    phase("key and pipeline awaited");

    let tokens = token_listener(&config, ring, recorder.clone()).await?;
    phase("token listener bound");
    let tokens = TokenServer::spawn(tokens);

    let telemetry_addr = joined(telemetry).await?;
    phase("sandbox.localdomain resolved");
    let intake = start_intake(telemetry_addr, recorder.clone()).await?;
    if let Some(receiver) = config.receiver {
        start_receiver(receiver, &exporter, &recorder, &intake.stop).await?;
    }
    let types = subscribed_types(&config.telemetry.types, logs);
    let strategy = flush::strategy(
        config.telemetry.flush_strategy,
        managed_instances,
        types.contains(&"platform"),
    );
    // Only log streams configured and logs off: nothing to subscribe to.
    if !types.is_empty() {
        // An end flush holds the invocation until runtimeDone arrives: Lambda's shortest
        // buffering then, whatever SIDECAR_TELEMETRY_BUFFER_MS says.
        let buffer_ms = if strategy.may_flush_at_end() {
            FASTEST_BUFFER_MS
        } else {
            config.telemetry.buffer_ms
        };
        let span = tracing::info_span!(
            target: selftrace::TARGET,
            "sidecar.subscribe",
            telemetry.buffering_ms = buffer_ms,
        );
        api.subscribe(&types, &intake.destination, buffer_ms, managed_instances)
            .instrument(span)
            .await?;
        phase("subscribed");
    }
    Ok(Sidecar {
        pipeline,
        recorder,
        exporter,
        flush: FlushSettings {
            cap: config.telemetry.flush_timeout,
            interval: config.telemetry.flush_interval,
            managed_instances,
            strategy,
            max_age: config.telemetry.flush_max_age,
        },
        cadence: Cadence::default(),
        previous: None,
        settle: if managed_instances {
            2 * Duration::from_millis(u64::from(config.telemetry.buffer_ms))
        } else {
            Duration::ZERO
        },
        tokens,
        telemetry_port: intake.port,
        stop_intake: intake.stop,
        refresher,
        self_traces,
    })
}

/// Awaits a start-up task; one that panicked or was cancelled is an internal error.
async fn joined<T>(task: JoinHandle<T>) -> Result<T, StartupError> {
    task.await
        .map_err(|e| StartupError::Internal(e.to_string()))
}

/// The token listener, bound, and the service that answers on it.
pub struct TokenListener {
    /// Where it was asked to listen: 127.0.0.1:`SIDECAR_PORT`.
    pub addr: SocketAddr,
    pub listener: TcpListener,
    pub service: Arc<TokenService>,
}

/// Binds 127.0.0.1:`SIDECAR_PORT` and builds the token service for it, in both modes. The
/// service is built after the bind because it checks `Host` against the port the listener
/// got, which the system picks when `SIDECAR_PORT` is 0.
pub async fn token_listener(
    config: &Config,
    keys: Arc<KeyRing>,
    recorder: Recorder,
) -> Result<TokenListener, StartupError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, config.port));
    let listener = bind(addr).await?;
    let port = port_of(&listener, addr)?;
    let service = Arc::new(TokenService::new(
        config.token.clone(),
        keys,
        Some(recorder),
        port,
    ));
    Ok(TokenListener {
        addr,
        listener,
        service,
    })
}

/// The token server, running on a task of its own, and the switch that stops it.
pub(super) struct TokenServer {
    /// Where it listens: 127.0.0.1:`SIDECAR_PORT`.
    pub(super) addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TokenServer {
    /// Serves `tokens` until [`TokenServer::finish`].
    fn spawn(tokens: TokenListener) -> TokenServer {
        let (stop, stopped_flag) = watch::channel(false);
        let task = tokio::spawn(token::serve(
            tokens.listener,
            tokens.service,
            stopped(stopped_flag),
        ));
        TokenServer {
            addr: tokens.addr,
            stop,
            task,
        }
    }

    /// Stops taking requests, and waits at most `limit` for those already accepted: a
    /// function still finishing its own shutdown may be waiting on one.
    pub(super) async fn finish(&mut self, limit: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(limit, &mut self.task).await;
    }
}

/// The telemetry intake, serving.
struct Intake {
    port: u16,
    /// The URL the Telemetry API delivers to: it holds the secret path, so never log it.
    destination: String,
    /// Stops the listener.
    stop: watch::Sender<bool>,
}

/// Binds the telemetry listener on `addr` and serves the intake there, on a random path
/// (the only one it answers), pushing batches to `recorder`.
async fn start_intake(addr: SocketAddr, recorder: Recorder) -> Result<Intake, StartupError> {
    let listener = bind(addr).await?;
    let port = port_of(&listener, addr)?;
    phase("telemetry listener bound");
    let path = intake::secret_path().map_err(|e| StartupError::Internal(e.to_string()))?;
    let destination = format!("http://sandbox.localdomain:{port}{path}");
    let (stop, intake_stopped) = watch::channel(false);
    tokio::spawn(intake::serve(
        listener,
        recorder,
        path,
        stopped(intake_stopped),
    ));
    Ok(Intake {
        port,
        destination,
        stop,
    })
}

/// Binds the OTLP receiver on `config.addr` and serves it until the intake stops (after the
/// SHUTDOWN flush), handing what the function sends to `exporter`'s inbox. At the default
/// address, a port already taken (another extension's OpenTelemetry collector) leaves the
/// sidecar running without its receiver, with a warning; at an address the user set, it
/// stops start-up.
async fn start_receiver(
    config: ReceiverConfig,
    exporter: &Exporter,
    recorder: &Recorder,
    stop: &watch::Sender<bool>,
) -> Result<(), StartupError> {
    let listener = match bind(config.addr).await {
        Ok(listener) => listener,
        Err(e) if !config.explicit => {
            tracing::warn!(error = %e, "OTLP receiver not started: its default port is taken");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    phase("OTLP receiver bound");
    tokio::spawn(receiver::serve(
        listener,
        exporter.inbox(),
        recorder.metrics(),
        stopped(stop.subscribe()),
    ));
    Ok(())
}

/// Where the telemetry listener binds: the address `sandbox.localdomain` resolves to, which
/// is where the Telemetry API delivers, else loopback (emulators deliver there). Never the
/// wildcard address: that would let anything that reaches the host post telemetry.
async fn telemetry_addr(port: u16) -> SocketAddr {
    let resolved = tokio::time::timeout(
        RESOLVE_WAIT,
        tokio::net::lookup_host(("sandbox.localdomain", port)),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .and_then(|mut addrs| addrs.next())
    .filter(|addr| !addr.ip().is_unspecified());
    match resolved {
        Some(addr) => {
            tracing::info!(%addr, "telemetry listener on the address of sandbox.localdomain");
            addr
        }
        None => {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            tracing::info!(%addr, "sandbox.localdomain does not resolve: telemetry listener on loopback");
            addr
        }
    }
}

/// Binds `addr`, naming it in the error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })
}

/// The port `listener` got (the system picks one for port 0), naming `addr` in the error.
fn port_of(listener: &TcpListener, addr: SocketAddr) -> Result<u16, StartupError> {
    listener
        .local_addr()
        .map(|local| local.port())
        .map_err(|source| StartupError::Bind { addr, source })
}

/// Resolves when the watched flag turns true (or its sender is gone).
async fn stopped(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_telemetry_listener_never_binds_the_wildcard_address() {
        let addr = telemetry_addr(0).await;
        let listener = bind(addr).await.unwrap();
        let local = listener.local_addr().unwrap();
        assert!(!local.ip().is_unspecified(), "{local}");
    }
}
