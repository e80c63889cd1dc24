//! Lifecycle: the Extensions API (register, the event/next loop, init/error) and what the
//! sidecar does at each event.
//!
//! Start-up order, all inside Lambda's init phase: the key is loaded (parsed, or fetched from
//! its AWS source), the OTLP clients, metric instruments and pipeline built and
//! `sandbox.localdomain` resolved *while* the extension registers (see `Prepared`); then the
//! token server starts (the function's own init may already ask for a token), the telemetry
//! listener binds, and the Telemetry API subscription is made. Any failure after register is
//! reported through `init/error` with a typed error, then the process exits 1; before
//! register there is no extension id to report with, so it only logs and exits.
//!
//! At INVOKE: record it, flush what earlier invocations left (bounded by the flush cap), then
//! let the `lambda-extension` crate call event/next. The flush runs while the function runs,
//! so it only costs the function time when it outlasts the function.
//! On Lambda Managed Instances there is no INVOKE (the sidecar registers for SHUTDOWN only):
//! a timer flushes every `SIDECAR_FLUSH_INTERVAL_MS` instead, under the same cap (and at
//! most `PERIODIC_FLUSH_MAX`, since SHUTDOWN may arrive in the middle of one).
//! At SHUTDOWN: wait briefly for the `platform.report` of every invocation still in flight,
//! flush within the deadline and a fixed cap (`SHUTDOWN_FLUSH_MAX`), let in-flight token
//! requests finish, exit 0.
//!
//! Never: holds an invocation longer than `SIDECAR_FLUSH_TIMEOUT_MS`, or leaves a request in
//! flight when it hands control back (a timed-out export future is dropped, which cancels it).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt as _;
use lambda_extension::requests::{ErrorRequest, init_error};
use lambda_extension::{Extension, LambdaEvent, NextEvent, service_fn};
use lambda_runtime_api_client::Client;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Interval, MissedTickBehavior};

use crate::config::{Config, ConfigError};
use crate::derive::{Deriver, FunctionInfo};
use crate::export::{ExportClients, ExportConfig, Exporter, MetricsSource};
use crate::pipeline::{Pipeline, Recorder};
use crate::records::{InvokeRecord, Record};
use crate::signals::{KeyOperation, Metrics};
use crate::token::TokenService;
use crate::token::source::{self, KeySourceError, LoadError, Loaded, Refresher};
use crate::{intake, token};

/// Must equal the file name under /opt/extensions (the layer ships `extensions/lambda-sidecar`).
pub const EXTENSION_NAME: &str = "lambda-sidecar";

/// Kept free before the SHUTDOWN deadline: Lambda SIGKILLs at the deadline, and exiting needs
/// a few milliseconds after the flush.
const SHUTDOWN_MARGIN: Duration = Duration::from_millis(150);

/// The longest SHUTDOWN waits for the `platform.report` of the invocations in flight before
/// flushing.
const REPORT_WAIT: Duration = Duration::from_millis(300);

/// The longest `init/error` may take before the process exits anyway.
const INIT_ERROR_WAIT: Duration = Duration::from_secs(2);

/// The longest SHUTDOWN waits for in-flight token requests to finish.
const DRAIN_WAIT: Duration = Duration::from_millis(200);

/// The longest the SHUTDOWN flush may take, whatever deadline arrives with the event. Lambda's
/// shutdown phase is 2,000 ms with external extensions, and DRAIN_WAIT + REPORT_WAIT + this +
/// EMF_WAIT + SHUTDOWN_MARGIN (1,750 ms) fits in it. Emulators, and other platforms, may send a deadline
/// minutes away: a collector that has not taken the last batch in a second is not expected to
/// in a minute, and holding on only delays the end of the environment.
const SHUTDOWN_FLUSH_MAX: Duration = Duration::from_secs(1);

/// The longest a periodic flush (Managed Instances) may take, whatever
/// `SIDECAR_FLUSH_TIMEOUT_MS` allows. SHUTDOWN can arrive in the middle of one there (at an
/// INVOKE it cannot: event/next waits until the flush is done), and is handled once it
/// ends; its own steps shrink to the time left, so 1 s of Lambda's 2 s shutdown phase
/// still leaves room to wait for reports, flush and exit before the deadline.
const PERIODIC_FLUSH_MAX: Duration = Duration::from_secs(1);

/// The longest the shutdown waits for its last EMF lines to reach stdout (a pipe Lambda
/// reads: microseconds, unless its reader is stuck).
const EMF_WAIT: Duration = Duration::from_millis(100);

/// Why start-up failed after register: each variant becomes an `init/error` error type.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    KeySource(#[from] KeySourceError),
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

/// Checks `AWS_LAMBDA_RUNTIME_API` before the `lambda-extension` crate reads it (the crate
/// panics on a missing or unparsable value). Accepts `host:port` (Lambda) and
/// `http://host:port/prefix` (emulators).
pub fn check_runtime_api() -> Result<(), String> {
    let value = std::env::var("AWS_LAMBDA_RUNTIME_API")
        .map_err(|_| "AWS_LAMBDA_RUNTIME_API is not set".to_string())?;
    let uri: http::Uri = value.parse().map_err(|e| {
        format!("AWS_LAMBDA_RUNTIME_API={value:?} is not valid: expected host:port or http://host:port/prefix ({e})")
    })?;
    match (uri.host(), uri.scheme_str()) {
        (Some(_), None | Some("http")) => Ok(()),
        _ => Err(format!(
            "AWS_LAMBDA_RUNTIME_API={value:?} is not valid: expected host:port or http://host:port/prefix"
        )),
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

/// An event handed over by the crate's event/next loop, and the way to let the loop go on.
type Handoff = (NextEvent, oneshot::Sender<()>);

/// Runs the extension until SHUTDOWN. `config` is the already-parsed configuration, or the
/// error to report once registered.
pub async fn run(config: Result<Config, ConfigError>) -> Result<(), LifecycleError> {
    let started = Instant::now();
    let managed_instances = std::env::var("AWS_LAMBDA_INITIALIZATION_TYPE")
        .is_ok_and(|t| t == "lambda-managed-instances");
    // On Lambda Managed Instances, registering for INVOKE fails init: SHUTDOWN only there.
    let events: &[&str] = if managed_instances {
        &["SHUTDOWN"]
    } else {
        &["INVOKE", "SHUTDOWN"]
    };

    // The crate drives event/next; each event is handed to our loop below, and the crate
    // calls event/next again only when we answer on the oneshot.
    let (handoff_tx, mut handoff_rx) = mpsc::channel::<Handoff>(1);
    let processor = service_fn(move |event: LambdaEvent| {
        let handoff_tx = handoff_tx.clone();
        async move {
            let (done, wait) = oneshot::channel();
            handoff_tx.send((event.next, done)).await?;
            // An error here means our loop ended (SHUTDOWN handled): nothing more to do.
            let _ = wait.await;
            Ok::<(), lambda_extension::Error>(())
        }
    });
    // Key, pipeline and DNS overlap with registration (see `Prepared`).
    let prepared = prepare(config, managed_instances);
    let registered = Extension::new()
        .with_extension_name(EXTENSION_NAME)
        .with_events(events)
        .with_events_processor(processor)
        .register()
        .await
        .map_err(LifecycleError::Register)?;
    phase("registered");
    tracing::info!(
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        function = %registered.function_name,
        "registered"
    );

    let client = Client::builder()
        .build()
        .map_err(|e| LifecycleError::Register(e.into()))?;
    let mut sidecar = match start(
        prepared,
        &registered.extension_id,
        &client,
        managed_instances,
    )
    .await
    {
        Ok(sidecar) => sidecar,
        Err(e) => {
            tracing::error!(error_type = e.error_type(), error = %e, "start-up failed");
            report_init_error(&client, &registered.extension_id, &e).await;
            return Err(LifecycleError::Startup(e));
        }
    };
    phase("ready, first event/next");
    tracing::info!(
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        token_addr = %sidecar.token_addr,
        telemetry_port = sidecar.telemetry_port,
        "ready"
    );

    // Managed Instances send no INVOKE to flush at: a timer does. Not in the default model,
    // where it would only do harm: a timer runs on through a freeze and fires at thaw (see
    // `server`), so a flush it started could still be in flight when Lambda freezes the
    // environment again, which the INVOKE flush never is; and at every INVOKE that flush
    // already ships what the timer would.
    let mut ticks = managed_instances.then(|| {
        let first = tokio::time::Instant::now() + sidecar.flush_interval;
        let mut ticks = tokio::time::interval_at(first, sidecar.flush_interval);
        // A flush that outlasts the interval delays the next tick rather than queuing a
        // burst of them: one flush at a time (the loop runs one), at most one per interval.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks
    });
    let event_loop = registered.run();
    tokio::pin!(event_loop);
    loop {
        tokio::select! {
            // SHUTDOWN before another tick: a tick due while a slow flush ran would
            // otherwise win half the time and run a second flush into the deadline.
            biased;
            result = &mut event_loop => {
                // The crate's loop only ends on an error (event/next failed).
                return match result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(LifecycleError::EventLoop(e)),
                };
            }
            handoff = handoff_rx.recv() => {
                let Some((event, done)) = handoff else { return Ok(()) };
                match event {
                    NextEvent::Invoke(invoke) => {
                        sidecar.on_invoke(invoke).await;
                        let _ = done.send(());
                    }
                    NextEvent::Shutdown(shutdown) => {
                        sidecar.on_shutdown(shutdown).await;
                        return Ok(());
                    }
                }
            }
            () = tick(&mut ticks) => {
                sidecar.on_tick().await;
                // The next tick a full interval after this flush ended, not at once: a
                // slow collector gets a flush per interval, not back-to-back flushes.
                if let Some(ticks) = ticks.as_mut() {
                    ticks.reset();
                }
            }
        }
    }
}

/// The next tick of the periodic flush; never, without one.
async fn tick(ticks: &mut Option<Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Everything running after a successful start.
struct Sidecar {
    pipeline: Pipeline,
    recorder: Recorder,
    exporter: Exporter,
    flush_timeout: Duration,
    flush_interval: Duration,
    /// On Managed Instances, how long SHUTDOWN first lets buffered telemetry arrive: two
    /// Telemetry API buffering periods (`SIDECAR_TELEMETRY_BUFFER_MS`). Zero otherwise.
    settle: Duration,
    token_addr: SocketAddr,
    telemetry_port: u16,
    /// Tells the token server to stop accepting and finish in-flight requests.
    stop_token: watch::Sender<bool>,
    token_server: tokio::task::JoinHandle<std::io::Result<()>>,
    stop_intake: watch::Sender<bool>,
    /// Re-reads a Secrets Manager or SSM key at INVOKE.
    refresher: Option<Refresher>,
}

/// Start-up work that needs no extension id, started before register so that it overlaps
/// with the register round-trip instead of adding to it: loading the key (parsing it on a
/// blocking thread, or fetching it from AWS); on a blocking thread, building the exporters'
/// HTTP/TLS clients, the metric instruments (the OTel SDK allocates a map per instrument)
/// and the pipeline; and resolving `sandbox.localdomain` (a DNS query where /etc/hosts does
/// not answer it). Errors wait until there is an extension id to report them with.
struct Prepared {
    config: Config,
    /// Logs are exported: derive them, and subscribe to the log streams.
    logs: bool,
    keys: tokio::task::JoinHandle<Result<Loaded, LoadError>>,
    telemetry: tokio::task::JoinHandle<SocketAddr>,
    built: tokio::task::JoinHandle<Result<Built, ConfigError>>,
}

/// The telemetry side, built before register (see [`Prepared`]).
struct Built {
    pipeline: Pipeline,
    recorder: Recorder,
    exporter: Exporter,
}

fn prepare(
    config: Result<Config, ConfigError>,
    managed_instances: bool,
) -> Result<Prepared, StartupError> {
    let config = config?;
    config.check_extension_mode()?;
    let export_config = ExportConfig::parse(|k| std::env::var(k).ok())?;
    let function = FunctionInfo::from_vars(|k| std::env::var(k).ok());
    let resource = crate::export::resource(&function, std::env::var("OTEL_SERVICE_NAME").is_ok());
    let token_config = config.token.clone();
    let logs = export_config.logs.is_some();
    phase("extension config parsed");
    let telemetry = tokio::spawn(telemetry_addr(config.telemetry.port.unwrap_or(0)));
    let keys = tokio::spawn(async move {
        let loaded = source::load(&token_config).await;
        phase("key loaded");
        loaded
    });
    let emf_namespace = config.emf_namespace.clone();
    let trigger = config.telemetry.faas_trigger;
    let built = tokio::task::spawn_blocking(move || {
        let clients = ExportClients::build(&export_config, &resource)?;
        phase("export clients built");
        let source = Arc::new(MetricsSource::with_temporality(
            resource,
            export_config.temporality,
        ));
        let signals = Arc::new(match emf_namespace {
            Some(_) => Metrics::with_emf(&source.meter()),
            None => Metrics::new(&source.meter()),
        });
        let mut exporter = Exporter::new(clients, source, signals.clone());
        if let Some(namespace) = emf_namespace {
            exporter = exporter.with_emf(crate::export::emf::Writer::start(
                namespace,
                function.name.clone(),
                signals.clone(),
            ));
        }
        let mut deriver = Deriver::new(function, signals.clone())
            .with_sampler(export_config.sampler)
            .with_trigger(trigger)
            .with_overlapping_invocations(managed_instances);
        if logs {
            deriver = deriver.with_logs();
        }
        // On a blocking thread of the runtime: `Pipeline::start` can spawn its task here.
        let (pipeline, recorder) = Pipeline::start(deriver, signals);
        phase("pipeline started");
        Ok(Built {
            pipeline,
            recorder,
            exporter,
        })
    });
    Ok(Prepared {
        config,
        logs,
        keys,
        telemetry,
        built,
    })
}

async fn start(
    prepared: Result<Prepared, StartupError>,
    extension_id: &str,
    client: &Client,
    managed_instances: bool,
) -> Result<Sidecar, StartupError> {
    let Prepared {
        config,
        logs,
        keys,
        telemetry,
        built,
    } = prepared?;
    let Loaded { ring, refresher } = keys
        .await
        .map_err(|e| StartupError::Internal(e.to_string()))??;
    let Built {
        pipeline,
        recorder,
        exporter,
    } = built
        .await
        .map_err(|e| StartupError::Internal(e.to_string()))??;
    phase("key and pipeline awaited");

    // Tokens first: the function's own init may ask for one as soon as we are registered.
    let token_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, config.port));
    let token_listener = bind(token_addr).await?;
    let token_port = token_listener
        .local_addr()
        .map_err(|source| StartupError::Bind {
            addr: token_addr,
            source,
        })?
        .port();
    let service = Arc::new(TokenService::new(
        config.token.clone(),
        ring,
        Some(recorder.clone()),
        token_port,
    ));
    phase("token listener bound");
    let (stop_token, token_stopped) = watch::channel(false);
    let token_server = tokio::spawn(token::serve(
        token_listener,
        service,
        stopped(token_stopped),
    ));

    let telemetry_addr = telemetry
        .await
        .map_err(|e| StartupError::Internal(e.to_string()))?;
    phase("sandbox.localdomain resolved");
    let telemetry_listener = bind(telemetry_addr).await?;
    let telemetry_port = telemetry_listener
        .local_addr()
        .map_err(|source| StartupError::Bind {
            addr: telemetry_addr,
            source,
        })?
        .port();
    phase("telemetry listener bound");
    let path = intake::secret_path().map_err(|e| StartupError::Internal(e.to_string()))?;
    let destination = format!("http://sandbox.localdomain:{telemetry_port}{path}");
    let (stop_intake, intake_stopped) = watch::channel(false);
    tokio::spawn(intake::serve(
        telemetry_listener,
        recorder.clone(),
        path,
        stopped(intake_stopped),
    ));
    let types = subscribed_types(&config.telemetry.types, logs);
    // Only log streams configured and logs off: nothing to subscribe to.
    if !types.is_empty() {
        subscribe(
            client,
            extension_id,
            &config,
            &types,
            &destination,
            managed_instances,
        )
        .await?;
        phase("subscribed");
    }
    Ok(Sidecar {
        pipeline,
        recorder,
        exporter,
        flush_timeout: config.telemetry.flush_timeout,
        flush_interval: config.telemetry.flush_interval,
        settle: if managed_instances {
            2 * Duration::from_millis(u64::from(config.telemetry.buffer_ms))
        } else {
            Duration::ZERO
        },
        token_addr,
        telemetry_port,
        stop_token,
        token_server,
        stop_intake,
        refresher,
    })
}

/// The longest start-up waits for `sandbox.localdomain` to resolve. Lambda answers it from
/// /etc/hosts at once; an emulator's resolver may instead wait on DNS.
const RESOLVE_WAIT: Duration = Duration::from_secs(1);

/// Where the telemetry listener binds: the address `sandbox.localdomain` resolves to, which
/// is where the Telemetry API delivers, else loopback (emulators deliver there). Never the
/// wildcard address: that would let anything that reaches the host post telemetry.
pub async fn telemetry_addr(port: u16) -> SocketAddr {
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

/// Resolves when the watched flag turns true (or its sender is gone).
async fn stopped(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}

/// `PUT /2022-07-01/telemetry`: schema 2022-12-13 (2025-01-29 on Managed Instances), our
/// listener as `destination` (it holds the secret path: never log it). The lambda-extension
/// crate's own subscription hard-codes the older schema and its own listener, so it is not
/// used.
async fn subscribe(
    client: &Client,
    extension_id: &str,
    config: &Config,
    types: &[&str],
    destination: &str,
    managed_instances: bool,
) -> Result<(), StartupError> {
    let body = serde_json::json!({
        "schemaVersion": if managed_instances { "2025-01-29" } else { "2022-12-13" },
        "destination": {"protocol": "HTTP", "URI": destination},
        "types": types,
        "buffering": {"maxItems": 1000, "maxBytes": 262_144, "timeoutMs": config.telemetry.buffer_ms},
    });
    let request = lambda_runtime_api_client::build_request()
        .method("PUT")
        .uri("/2022-07-01/telemetry")
        .header("Lambda-Extension-Identifier", extension_id)
        .header("Content-Type", "application/json")
        .body(body.to_string().into())
        .map_err(|e| StartupError::Subscribe(e.to_string()))?;
    let response = client
        .call(request)
        .await
        .map_err(|e| StartupError::Subscribe(e.to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Err(StartupError::Subscribe(format!("HTTP {status}: {body}")))
}

/// The Telemetry API types to subscribe to: those configured (`SIDECAR_TELEMETRY_TYPES`)
/// that something uses. `platform` feeds spans and metrics; `function` and `extension` only
/// log records, so without a logs exporter they are left out: Lambda would otherwise POST
/// every line the function writes to a listener that throws it away.
fn subscribed_types(configured: &[String], logs: bool) -> Vec<&str> {
    configured
        .iter()
        .map(String::as_str)
        .filter(|t| logs || *t == "platform")
        .collect()
}

/// `POST /extension/init/error`. Best effort: the process exits non-zero either way.
async fn report_init_error(client: &Client, extension_id: &str, error: &StartupError) {
    let message = error.to_string();
    let request = init_error(
        extension_id,
        error.error_type(),
        Some(ErrorRequest {
            error_message: &message,
            error_type: error.error_type(),
            stack_trace: Vec::new(),
        }),
    );
    let result = match request {
        // Lambda answers at once; the bound is for an emulator (or a broken API) that never
        // does, so that a failed start always ends in an exit.
        Ok(request) => tokio::time::timeout(INIT_ERROR_WAIT, client.call(request))
            .await
            .map_err(|_| format!("no answer within {INIT_ERROR_WAIT:?}"))
            .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string())),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "init/error could not be reported");
    }
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Sidecar {
    async fn on_invoke(&mut self, invoke: lambda_extension::InvokeEvent) {
        let received = SystemTime::now();
        tracing::info!(request_id = %invoke.request_id, "received INVOKE");
        let xray = Some(invoke.tracing.value).filter(|v| !v.is_empty());
        self.recorder.record(Record::Invoke(InvokeRecord {
            request_id: invoke.request_id.clone(),
            deadline_ms: invoke.deadline_ms,
            invoked_arn: invoke.invoked_function_arn,
            xray,
            received,
        }));
        // Never past the function's own deadline (0 from some emulators means "unknown").
        let to_deadline =
            Duration::from_millis(invoke.deadline_ms.saturating_sub(epoch_ms(received)));
        let budget = if invoke.deadline_ms == 0 {
            self.flush_timeout
        } else {
            self.flush_timeout.min(to_deadline)
        };
        let (spans, logs) = self.pipeline.drain().await;
        self.exporter.queue_logs(logs);
        // The key refresh shares the flush's bound and runs beside it: when the budget runs
        // out its request is dropped (cancelled), so nothing is in flight at the freeze.
        let recorder = &self.recorder;
        let refresh = async {
            let Some(refresher) = &mut self.refresher else {
                return;
            };
            let failure =
                match tokio::time::timeout(budget, refresher.on_invoke(Instant::now())).await {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => format!("{e} ({})", e.error_type()),
                    Err(_) => "cut short by the flush budget".to_string(),
                };
            tracing::warn!(error = %failure, "key refresh failed; the current key keeps signing");
            recorder.metrics().key_failure(KeyOperation::Refresh);
        };
        let (report, ()) = tokio::join!(self.exporter.flush(spans, budget), refresh);
        tracing::debug!(?report, "flushed at INVOKE");
        self.recorder.record(Record::Resumed {
            request_id: invoke.request_id,
            at: SystemTime::now(),
        });
    }

    /// The periodic flush (Managed Instances): what finished since the last one, under the
    /// same cap as an INVOKE flush and at most [`PERIODIC_FLUSH_MAX`]; the span buffer's
    /// bound and its overflow count apply.
    /// An environment left idle for hours sends nothing: without a new record and with
    /// nothing kept from a failed flush, the tick is skipped (counts made outside records,
    /// such as refused connections, go with the next flush).
    async fn on_tick(&mut self) {
        let spans = match self.pipeline.drain_if_changed().await {
            Some((spans, logs)) => {
                self.exporter.queue_logs(logs);
                spans
            }
            None if self.exporter.idle() => return,
            None => Vec::new(),
        };
        let budget = self.flush_timeout.min(PERIODIC_FLUSH_MAX);
        let report = self.exporter.flush(spans, budget).await;
        tracing::debug!(?report, "periodic flush");
    }

    async fn on_shutdown(mut self, shutdown: lambda_extension::ShutdownEvent) {
        let now = SystemTime::now();
        tracing::info!(reason = %shutdown.shutdown_reason, "received SHUTDOWN");
        let deadline = if shutdown.deadline_ms == 0 {
            Instant::now() + self.flush_timeout + REPORT_WAIT + DRAIN_WAIT
        } else {
            Instant::now()
                + Duration::from_millis(shutdown.deadline_ms.saturating_sub(epoch_ms(now)))
                    .saturating_sub(SHUTDOWN_MARGIN)
        };
        // Token requests already accepted finish; no new ones start.
        let _ = self.stop_token.send(true);
        let _ = tokio::time::timeout(
            DRAIN_WAIT.min(deadline.saturating_duration_since(Instant::now())),
            &mut self.token_server,
        )
        .await;
        // Every invocation still in flight, not only the last INVOKE's: on Managed Instances
        // several run at once. No INVOKE names them there, so one that began just before
        // SHUTDOWN is known only from its platform.start, which Lambda may still hold for a
        // buffering period: `settle` lets it arrive before the wait counts what is in flight.
        let wait = REPORT_WAIT.min(deadline.saturating_duration_since(Instant::now()) / 2);
        let reports = async {
            tokio::time::sleep(self.settle).await;
            self.pipeline.await_reports().await;
        };
        if tokio::time::timeout(wait, reports).await.is_err() {
            tracing::warn!("some platform.report did not arrive before the shutdown flush");
        }
        let (spans, logs) = self.pipeline.finish(SystemTime::now()).await;
        self.exporter.queue_logs(logs);
        let budget = SHUTDOWN_FLUSH_MAX.min(deadline.saturating_duration_since(Instant::now()));
        let report = self.exporter.flush(spans, budget).await;
        self.exporter
            .emf_written(EMF_WAIT.min(deadline.saturating_duration_since(Instant::now())))
            .await;
        let _ = self.stop_intake.send(true);
        tracing::info!(
            spans_sent = report.spans_sent,
            spans_pending = report.spans_pending,
            logs_sent = report.logs_sent,
            logs_pending = report.logs_pending,
            metrics_sent = report.metrics_sent,
            timed_out = report.timed_out,
            "shutdown flush done"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_streams_are_subscribed_only_when_logs_are_exported() {
        let all = ["platform", "function", "extension"].map(String::from);
        assert_eq!(subscribed_types(&all, true), all);
        assert_eq!(subscribed_types(&all, false), ["platform"]);
        assert_eq!(
            subscribed_types(&["function".to_string()], true),
            ["function"]
        );
    }

    #[tokio::test]
    async fn the_telemetry_listener_never_binds_the_wildcard_address() {
        let addr = telemetry_addr(0).await;
        let listener = bind(addr).await.unwrap();
        let local = listener.local_addr().unwrap();
        assert!(!local.ip().is_unspecified(), "{local}");
    }
}
