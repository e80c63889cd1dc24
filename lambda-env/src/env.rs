//! The orchestrator: one sandbox lifecycle (init, N invokes with freezes, shutdown).
//!
//! `Environment::start` binds the API and spawns the extension process; `run` drives the
//! phases and returns a [`Report`]. The child is killed on drop, so a failing test or an
//! error leaves no process behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::api;
use crate::aws::function_arn;
use crate::clock::{epoch_ms, ms, rfc3339_ms};
use crate::function::{self, FunctionConfig, TokenMode, Traceparent};
use crate::ids::random_hex;
use crate::report::{
    CredentialsReport, InitError, InitReport, InvokeReport, InvokeStatus, Report, RssSample,
    ShutdownReport,
};
use crate::state::{self, Outcome, Phase, Shared};
use crate::telemetry::Hub;

mod invocation;
mod managed;

use invocation::{Started, report_metrics, simulate, take_outcome};

pub use crate::aws::{ACCOUNT_ID, REGION};
pub use crate::function::{FUNCTION_USER_AGENT, MIXED_LOG_LEVELS, MIXED_TEXT_LINES};
const RUNTIME_VERSION: &str = "provided:al2023.v100";
const RUNTIME_VERSION_ARN: &str = "arn:aws:lambda:us-east-1::runtime:0f1b3c5d7e9a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c";
/// In `invoke_runtime_first` mode, the longest the extensions' INVOKE waits for the
/// function's token calls.
const RUNTIME_FIRST_MAX: Duration = Duration::from_secs(2);
/// Bound on the API server's graceful stop once everything else is done.
const SERVER_STOP: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("cannot bind the sandbox API: {0}")]
    Bind(std::io::Error),
    #[error("cannot create the work directory {path}: {source}")]
    WorkDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot spawn the extension {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

#[derive(Debug, Clone)]
pub struct EnvConfig {
    /// Extension executable to spawn (None: only in-process extensions, see below).
    pub extension: Option<PathBuf>,
    /// Extra environment for the extension process. It overrides the credentials the
    /// environment makes up (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`; with `snapstart`, `AWS_CONTAINER_AUTHORIZATION_TOKEN`): a test
    /// that calls the sidecar's `/token` itself sets `AWS_SESSION_TOKEN` (with `snapstart`,
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`) here to know the `X-Sidecar-Token` to send.
    pub env: Vec<(String, String)>,
    /// Registrations to wait for besides the spawned process (in-process test extensions).
    pub in_process_extensions: usize,
    pub function_name: String,
    pub memory_mb: u32,
    pub invokes: usize,
    pub tokens_per_invoke: usize,
    pub token_url: String,
    pub token_mode: TokenMode,
    /// The `traceparent` the function sends with its token calls.
    pub traceparent: Traceparent,
    /// The function names its invocation to `/token` with the `Lambda-Runtime-Aws-Request-Id`
    /// header.
    pub send_request_id: bool,
    /// Lambda hands the INVOKE to the runtime and to the extensions in no guaranteed order.
    /// On: the worst order for an extension, fixed: the extensions' `event/next` returns the
    /// INVOKE only once the function has made its token calls for it (at most 2 s later).
    pub invoke_runtime_first: bool,
    /// How long the function works (after its token calls) before responding.
    pub function_ms: u64,
    /// Function timeout: deadlineMs = now + this.
    pub function_timeout_ms: u64,
    /// Pause between invokes; the extension is frozen during it when `freeze` is on.
    pub gap_ms: u64,
    /// SIGSTOP the extension between invokes (and hold telemetry delivery), as Lambda does.
    pub freeze: bool,
    /// SHUTDOWN deadlineMs = now + this; SIGKILL after.
    pub shutdown_ms: u64,
    pub init_timeout_ms: u64,
    /// SnapStart: restore events instead of init events, and the credentials as Lambda gives
    /// them there: no `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` or `AWS_SESSION_TOKEN`,
    /// but a container credentials endpoint served by this environment, named in
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI`, with a random `AWS_CONTAINER_AUTHORIZATION_TOKEN`
    /// it requires; the built-in function sends that token as `X-Sidecar-Token`.
    pub snapstart: bool,
    /// SnapStart: how long the credentials the endpoint hands out stay valid. By default
    /// five minutes and a few seconds: the sidecar fetches again when less than five
    /// minutes are left, so its refresh runs seconds into a run, not an hour.
    pub credentials_ttl: Duration,
    /// SnapStart: the access key the endpoint hands out (id, secret), without a `Token`, e.g.
    /// an IAM user's in moto, which then checks the signatures made with it; `None`: random
    /// ones with a random `Token` at each request.
    pub container_keys: Option<(String, String)>,
    /// Per invoke, an unknown event type (`platform.futureThing`) and unknown fields.
    pub inject_unknown: bool,
    /// Emit one `platform.logsDropped` in the first invoke.
    pub logs_dropped: bool,
    /// Fault injection: the Telemetry API answers every subscription with a 500
    /// `Telemetry.ServiceException`, as the service does when it can't take one.
    pub refuse_telemetry: bool,
    /// 0-based invokes on which the function reports an error.
    pub fail_invokes: Vec<usize>,
    /// 0-based invokes on which the function overruns its timeout.
    pub timeout_invokes: Vec<usize>,
    /// 0-based invokes whose X-Ray header says `Sampled=0` (the rest say `Sampled=1`).
    pub unsampled_invokes: Vec<usize>,
    /// Where the extension's stdout/stderr files go (default: a new temp dir).
    pub work_dir: Option<PathBuf>,
    /// Sample the extension's resident memory after init, every this many invokes (thawed,
    /// before the next INVOKE) and after the last one, into `Report::rss_samples`; 0: never.
    pub rss_every: usize,
    /// Fault injection: telemetry items emitted as given (e.g. hostile ones), during the
    /// invoke of index `inject_at`, after its `platform.start`.
    pub inject_items: Vec<Value>,
    pub inject_at: usize,
    /// The version the environment runs (`AWS_LAMBDA_FUNCTION_VERSION`, the log stream's
    /// `[version]`, `platform.start`'s `version`): `$LATEST` or a published number.
    pub function_version: String,
    /// What the INVOKE's `invokedFunctionArn` ends with after the function name (an alias
    /// such as `live`, or a version); `None`: the unqualified ARN.
    pub invoked_qualifier: Option<String>,
    /// The function logs, per invoke, one JSON line at each of [`MIXED_LOG_LEVELS`] (with
    /// `requestId`, as Lambda's JSON log format writes it) and [`MIXED_TEXT_LINES`] text
    /// lines, instead of its progress lines: a known set of `function` records.
    pub mixed_logs: bool,
    /// Lines the function logs on every invoke, after its first progress line, as given: a
    /// JSON object is a line of Lambda's JSON log format (`LoggingConfig.LogFormat=JSON`),
    /// which the Telemetry API delivers as that object in the `function` record; a string is
    /// a text line.
    pub function_logs: Vec<Value>,
    /// Lambda Managed Instances: an extension may register for SHUTDOWN only (INVOKE is
    /// refused with 403 `Extension.InvalidEventType`, which fails init), the Telemetry API
    /// takes schema `2025-01-29` only, `workers` runtime workers take invocations at once,
    /// nothing is frozen, and `AWS_LAMBDA_INITIALIZATION_TYPE` is `lambda-managed-instances`.
    /// Invocations arrive `gap_ms` apart; the built-in function names its invocation in
    /// the `Lambda-Runtime-Aws-Request-Id` header of its token calls.
    pub managed_instances: bool,
    /// Runtime workers (Managed Instances): how many invocations run at once.
    pub workers: usize,
    /// Managed Instances: send SHUTDOWN as soon as the last invocation is handed to a worker,
    /// while invocations still run; they finish and report during the shutdown phase.
    pub shutdown_in_flight: bool,
    /// A runtime process (the command and its arguments) instead of the built-in function: it
    /// gets what Lambda gives a runtime (`AWS_LAMBDA_RUNTIME_API`, the function's variables,
    /// the credentials and `env`) and drives the Runtime API itself, as a real runtime does
    /// (`_X_AMZN_TRACE_ID` from each invocation's `Lambda-Runtime-Trace-Id` is its to set).
    /// Lambda freezes the whole sandbox, so with `freeze` its process group is stopped with
    /// the extension's. Its stdout and stderr go to `runtime.stdout` and `runtime.stderr` in
    /// the extension's work directory (not to the Telemetry API). The options of the built-in
    /// function (`tokens_per_invoke`, `traceparent`, logs, …) do not apply to it.
    pub runtime: Option<Vec<String>>,
}

impl Default for EnvConfig {
    fn default() -> Self {
        EnvConfig {
            extension: None,
            env: Vec::new(),
            in_process_extensions: 0,
            function_name: "lambda-env-function".to_string(),
            memory_mb: 128,
            invokes: 3,
            tokens_per_invoke: 0,
            token_url: "http://127.0.0.1:3003/token".to_string(),
            token_mode: TokenMode::Alternate,
            traceparent: Traceparent::default(),
            send_request_id: false,
            invoke_runtime_first: false,
            function_ms: 10,
            function_timeout_ms: 3_000,
            gap_ms: 100,
            freeze: true,
            shutdown_ms: 2_000,
            init_timeout_ms: 10_000,
            snapstart: false,
            credentials_ttl: DEFAULT_CREDENTIALS_TTL,
            container_keys: None,
            inject_unknown: false,
            logs_dropped: false,
            refuse_telemetry: false,
            fail_invokes: Vec::new(),
            timeout_invokes: Vec::new(),
            unsampled_invokes: Vec::new(),
            work_dir: None,
            rss_every: 0,
            inject_items: Vec::new(),
            inject_at: 0,
            function_version: "$LATEST".to_string(),
            invoked_qualifier: None,
            mixed_logs: false,
            function_logs: Vec::new(),
            managed_instances: false,
            workers: 1,
            shutdown_in_flight: false,
            runtime: None,
        }
    }
}

/// [`EnvConfig::credentials_ttl`] by default.
pub const DEFAULT_CREDENTIALS_TTL: Duration = Duration::from_secs(5 * 60 + 5);

/// `RLIMIT_NOFILE` in a Lambda execution environment (soft and hard): the extension
/// process gets the same.
pub const LAMBDA_NOFILE: libc::rlim_t = 1024;

/// A running sandbox. Dropping it kills the extension process and stops every task.
pub struct Environment {
    cfg: EnvConfig,
    shared: Arc<Shared>,
    addr: SocketAddr,
    client: reqwest::Client,
    server: Option<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>,
    child: Option<Child>,
    /// The runtime process ([`EnvConfig::runtime`]), instead of `function`.
    runtime: Option<Child>,
    tasks: Vec<JoinHandle<()>>,
    function: Option<JoinHandle<()>>,
    /// Managed Instances: the runtime workers besides `function`.
    workers: Vec<JoinHandle<()>>,
    stdout_path: Option<PathBuf>,
    stderr_path: Option<PathBuf>,
    started: Instant,
    frozen: bool,
    /// The execution role's credentials, as Lambda gives them to the function and every
    /// extension: made up per environment, overridden by `EnvConfig::env`. With SnapStart,
    /// the container credentials endpoint's URI and token instead.
    credentials: Vec<(&'static str, String)>,
}

/// The credential variables Lambda gives the function and every extension, with random
/// values of the shapes Lambda's have, unique to one environment, each overridden by `env`.
/// The sidecar takes `AWS_SESSION_TOKEN` (with SnapStart, `AWS_CONTAINER_AUTHORIZATION_TOKEN`)
/// as the secret `/token` callers must send back, so it must be unguessable, as Lambda's is.
/// With SnapStart there are no access-key variables: the AWS SDKs fetch credentials from
/// the container credentials endpoint at `api`, and so must an extension.
fn credentials(
    env: &[(String, String)],
    snapstart: bool,
    api: SocketAddr,
) -> Vec<(&'static str, String)> {
    let made_up = if snapstart {
        vec![
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("http://{api}{}", api::CREDENTIALS_PATH),
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", random_hex(32)),
        ]
    } else {
        vec![
            (
                "AWS_ACCESS_KEY_ID",
                format!("ASIA{}", random_hex(8).to_uppercase()),
            ),
            ("AWS_SECRET_ACCESS_KEY", random_hex(20)),
            ("AWS_SESSION_TOKEN", random_hex(32)),
        ]
    };
    made_up
        .into_iter()
        .map(|(name, made_up)| {
            let value = env
                .iter()
                .find(|(k, _)| k == name)
                .map_or(made_up, |(_, v)| v.clone());
            (name, value)
        })
        .collect()
}

/// The `X-Sidecar-Token` a function sends in an environment whose variables are
/// `credentials` and then `env`: `AWS_SESSION_TOKEN` if set, else (SnapStart)
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
fn header_token(credentials: &[(&'static str, String)], env: &[(String, String)]) -> String {
    let var = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| {
                credentials
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            })
            .filter(|v| !v.is_empty())
    };
    var("AWS_SESSION_TOKEN")
        .or_else(|| var("AWS_CONTAINER_AUTHORIZATION_TOKEN"))
        .unwrap_or_default()
}

/// A port that was free a moment ago on 127.0.0.1, e.g. for `SIDECAR_PORT` when tests run
/// in parallel (pass the same port in `token_url`).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts an environment and runs it to the end.
pub async fn run(cfg: EnvConfig) -> Result<Report, EnvError> {
    Environment::start(cfg).await?.run().await
}

impl Environment {
    /// Binds the API on 127.0.0.1:0, emits the init start, spawns the extension process
    /// and the function's runtime.
    pub async fn start(cfg: EnvConfig) -> Result<Environment, EnvError> {
        let client = reqwest::Client::builder().no_proxy().build()?;
        let hub = Hub::new(client.clone());
        let shared = Shared::new(cfg.function_name.clone(), hub);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(EnvError::Bind)?;
        let addr = listener.local_addr().map_err(EnvError::Bind)?;
        let credentials = credentials(&cfg.env, cfg.snapstart, addr);
        shared.update(|inner| {
            inner.refuse_telemetry = cfg.refuse_telemetry;
            inner.managed_instances = cfg.managed_instances;
            if cfg.snapstart {
                inner.credentials = Some(state::CredentialsEndpoint {
                    token: credentials
                        .iter()
                        .find(|(k, _)| *k == "AWS_CONTAINER_AUTHORIZATION_TOKEN")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default(),
                    keys: cfg.container_keys.clone(),
                    ttl: cfg.credentials_ttl,
                    served: 0,
                    refused: 0,
                });
            }
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let router = api::router(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let stop = async {
                let _ = stop_rx.await;
            };
            // A serve error ends the API; the orchestrator then times out and reports it.
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await;
        });
        let init_type = init_type(&cfg);
        let start_event = if cfg.snapstart {
            "platform.restoreStart"
        } else {
            "platform.initStart"
        };
        let mut record = json!({
            "runtimeVersion": RUNTIME_VERSION,
            "runtimeVersionArn": RUNTIME_VERSION_ARN,
        });
        if !cfg.snapstart {
            record["initializationType"] = json!(init_type);
            record["phase"] = json!("init");
        }
        shared.hub.emit(start_event, record);

        // The init phase starts here, when the processes start, as in Lambda: the emulator's
        // own set-up above (its HTTP client loads the system's root certificates, milliseconds)
        // is no part of anyone's init duration.
        let started = Instant::now();
        let mut env = Environment {
            credentials,
            cfg,
            shared,
            addr,
            client,
            server: Some((stop_tx, server)),
            child: None,
            runtime: None,
            tasks: Vec::new(),
            function: None,
            workers: Vec::new(),
            stdout_path: None,
            stderr_path: None,
            started,
            frozen: false,
        };
        if let Some(path) = env.cfg.extension.clone() {
            env.spawn_extension(path).await?;
        }
        if let Some(command) = env.cfg.runtime.clone() {
            env.spawn_runtime(&command)?;
        }
        env.spawn_function();
        if env.cfg.managed_instances {
            for _ in 1..env.cfg.workers {
                let worker = function::spawn(
                    env.function_config(),
                    env.client.clone(),
                    Arc::clone(&env.shared),
                );
                env.workers.push(worker);
            }
        }
        Ok(env)
    }

    /// The sandbox API address (what `AWS_LAMBDA_RUNTIME_API` holds).
    pub fn api_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, the form real Lambda puts in `AWS_LAMBDA_RUNTIME_API`.
    pub fn runtime_api(&self) -> String {
        self.addr.to_string()
    }

    pub fn extension_pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    async fn spawn_extension(&mut self, path: PathBuf) -> Result<(), EnvError> {
        let dir = match &self.cfg.work_dir {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!(
                "lambda-env-{}-{}",
                std::process::id(),
                random_hex(4)
            )),
        };
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|source| EnvError::WorkDir {
                path: dir.clone(),
                source,
            })?;
        let stdout_path = dir.join("extension.stdout");
        let stderr_path = dir.join("extension.stderr");
        let log_stream = format!(
            "{}/[{}]{}",
            rfc3339_ms(SystemTime::now())
                .get(..10)
                .unwrap_or("1970/01/01")
                .replace('-', "/"),
            self.cfg.function_version,
            random_hex(16)
        );
        let mut cmd = Command::new(&path);
        // Like Lambda, the extension sees the function's configuration and Lambda's own
        // variables, not whatever the caller's shell holds. PATH stays so that a wrapper
        // (e.g. running an arm64 build under qemu) still finds its tools.
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LANG", "en_US.UTF-8")
            .env("TZ", ":UTC")
            .env("AWS_LAMBDA_RUNTIME_API", self.runtime_api())
            .env("AWS_LAMBDA_FUNCTION_NAME", &self.cfg.function_name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", &self.cfg.function_version)
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                self.cfg.memory_mb.to_string(),
            )
            .env("AWS_REGION", REGION)
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_LAMBDA_LOG_STREAM_NAME", log_stream)
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", self.cfg.function_name),
            )
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", init_type(&self.cfg))
            .envs(self.credentials.iter().map(|(k, v)| (k, v)))
            .envs(self.cfg.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so freezing and killing reach helpers it spawns too
            // (Lambda freezes the whole sandbox, not one pid).
            .process_group(0)
            .kill_on_drop(true);
        // Lambda's file-descriptor quota: 1,024, soft and hard. An extension that holds every
        // connection it accepts runs out here as it would in Lambda.
        // SAFETY: between fork and exec, only the async-signal-safe setrlimit(2) is called.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: LAMBDA_NOFILE,
                    rlim_max: LAMBDA_NOFILE,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let mut child = cmd.spawn().map_err(|source| EnvError::Spawn {
            path: path.clone(),
            source,
        })?;
        for (pipe, file) in [
            (
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn AsyncRead + Send + Unpin>),
                &stdout_path,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn AsyncRead + Send + Unpin>),
                &stderr_path,
            ),
        ] {
            let Some(pipe) = pipe else { continue };
            let out = tokio::fs::File::create(file)
                .await
                .map_err(|source| EnvError::WorkDir {
                    path: file.clone(),
                    source,
                })?;
            let hub = Arc::clone(&self.shared.hub);
            self.tasks.push(tokio::spawn(capture(pipe, out, hub)));
        }
        self.child = Some(child);
        self.stdout_path = Some(stdout_path);
        self.stderr_path = Some(stderr_path);
        Ok(())
    }

    fn function_config(&self) -> FunctionConfig {
        FunctionConfig {
            runtime_base: format!("http://{}/2018-06-01/runtime", self.addr),
            token_url: self.cfg.token_url.clone(),
            tokens_per_invoke: self.cfg.tokens_per_invoke,
            token_mode: self.cfg.token_mode,
            traceparent: self.cfg.traceparent,
            // On Managed Instances, where invocations overlap, always: time cannot tell them
            // apart.
            send_request_id: self.cfg.send_request_id || self.cfg.managed_instances,
            function_ms: self.cfg.function_ms,
            session_token: header_token(&self.credentials, &self.cfg.env),
            mixed_logs: self.cfg.mixed_logs,
            logs: Arc::new(self.cfg.function_logs.clone()),
        }
    }

    /// Starts the [`EnvConfig::runtime`] process, in a process group of its own, with the
    /// variables Lambda gives a runtime: those the extension gets, less the log stream, and
    /// the function's handler.
    fn spawn_runtime(&mut self, command: &[String]) -> Result<(), EnvError> {
        let Some((program, args)) = command.split_first() else {
            return Ok(());
        };
        let path = PathBuf::from(program);
        let dir = self
            .stdout_path
            .as_ref()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(std::env::temp_dir);
        let file = |name: &str| {
            std::fs::File::create(dir.join(name)).map_err(|source| EnvError::WorkDir {
                path: dir.join(name),
                source,
            })
        };
        let mut cmd = Command::new(&path);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LANG", "en_US.UTF-8")
            .env("TZ", ":UTC")
            .env("AWS_LAMBDA_RUNTIME_API", self.runtime_api())
            .env("AWS_LAMBDA_FUNCTION_NAME", &self.cfg.function_name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", &self.cfg.function_version)
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                self.cfg.memory_mb.to_string(),
            )
            .env("AWS_REGION", REGION)
            .env("AWS_DEFAULT_REGION", REGION)
            .env("_HANDLER", "handler.handler")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", self.cfg.function_name),
            )
            .env("AWS_LAMBDA_INITIALIZATION_TYPE", init_type(&self.cfg))
            .envs(self.credentials.iter().map(|(k, v)| (k, v)))
            .envs(self.cfg.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file("runtime.stdout")?)
            .stderr(file("runtime.stderr")?)
            .process_group(0)
            .kill_on_drop(true);
        self.runtime = Some(
            cmd.spawn()
                .map_err(|source| EnvError::Spawn { path, source })?,
        );
        Ok(())
    }

    fn spawn_function(&mut self) {
        if self.cfg.runtime.is_some() {
            return;
        }
        let cfg = self.function_config();
        if let Some(old) = self.function.take() {
            old.abort();
        }
        self.function = Some(function::spawn(
            cfg,
            self.client.clone(),
            Arc::clone(&self.shared),
        ));
    }

    /// Drives init, the invokes and shutdown, then stops everything.
    pub async fn run(mut self) -> Result<Report, EnvError> {
        let init = self.init_phase().await;
        let mut invokes = Vec::new();
        let mut rss_samples = Vec::new();
        let shutdown = if init.error.is_some() {
            self.failed_init_exit().await
        } else if self.cfg.managed_instances {
            let (done, shutdown) = self.run_concurrently(&mut rss_samples).await;
            invokes = done;
            shutdown
        } else {
            for i in 0..self.cfg.invokes {
                self.sample_rss(i, &mut rss_samples);
                invokes.push(self.invoke(i, init.duration_ms).await);
                self.freeze_gap().await;
            }
            self.sample_rss(self.cfg.invokes, &mut rss_samples);
            self.shutdown_phase().await
        };
        let mut init = init;
        if let Some(err) = init.error.as_mut() {
            err.exit_code = err.exit_code.or(shutdown.exit_code);
        }
        let mut report = self.finish(init, invokes, shutdown).await;
        report.rss_samples = rss_samples;
        Ok(report)
    }

    async fn init_phase(&mut self) -> InitReport {
        let expected = self.cfg.in_process_extensions + usize::from(self.child.is_some());
        let deadline = tokio::time::Instant::from_std(
            self.started + Duration::from_millis(self.cfg.init_timeout_ms),
        );
        let shared = Arc::clone(&self.shared);
        let ready = shared.wait_until(
            |inner| {
                inner.init_error.is_some()
                    || inner.runtime_init_error.is_some()
                    || (inner.extensions.len() >= expected
                        && inner.extensions.iter().all(state::Extension::idle)
                        && inner.runtime_waiting)
            },
            Some(deadline),
        );
        let exited = wait_child(self.child.as_mut());
        let error = tokio::select! {
            ok = ready => {
                let inner = self.shared.lock();
                if let Some((_, error_type, body)) = &inner.init_error {
                    Some(InitError { error_type: error_type.clone(), body: body.clone(), exit_code: None })
                } else if let Some((error_type, body)) = &inner.runtime_init_error {
                    Some(InitError { error_type: error_type.clone(), body: body.clone(), exit_code: None })
                } else if !ok {
                    Some(InitError { error_type: "Sandbox.Timedout".into(), body: Value::Null, exit_code: None })
                } else {
                    None
                }
            }
            // An extension that reported init/error and then exited is reported with its own
            // error type, as Lambda does: both futures can be ready at once, and `select!`
            // polls them in random order. Only an exit without a report is a crash.
            code = exited => Some(match &self.shared.lock().init_error {
                Some((_, error_type, body)) => InitError {
                    error_type: error_type.clone(),
                    body: body.clone(),
                    exit_code: code,
                },
                None => InitError { error_type: "Extension.Crash".into(), body: Value::Null, exit_code: code },
            }),
        };
        let duration_ms = ms(self.started.elapsed());
        let init_type = init_type(&self.cfg);
        let status = if error.is_some() { "error" } else { "success" };
        let mut done = json!({"status": status});
        let mut report = json!({"status": status, "metrics": {"durationMs": round3(duration_ms)}});
        if let Some(e) = &error {
            done["errorType"] = json!(e.error_type);
            report["errorType"] = json!(e.error_type);
        }
        if self.cfg.snapstart {
            self.shared.hub.emit("platform.restoreRuntimeDone", done);
            self.shared.hub.emit("platform.restoreReport", report);
        } else {
            for v in [&mut done, &mut report] {
                v["initializationType"] = json!(init_type);
                v["phase"] = json!("init");
            }
            self.shared.hub.emit("platform.initRuntimeDone", done);
            self.shared.hub.emit("platform.initReport", report);
        }
        self.shared.update(|inner| inner.phase = Phase::Invoke);
        self.shared.hub.close_init();
        InitReport {
            initialization_type: init_type.to_string(),
            duration_ms,
            error,
        }
    }

    /// One on-demand invoke. The function and every INVOKE extension take part, and the
    /// invoke lasts until the last of them is done: Lambda bills the extensions' post-invoke
    /// work too, and only then freezes the sandbox.
    async fn invoke(&mut self, index: usize, init_ms: f64) -> InvokeReport {
        let started = Started::new(
            !self.cfg.unsampled_invokes.contains(&index),
            Duration::from_millis(self.cfg.function_timeout_ms),
        );
        self.emit_start(&started);
        self.inject_faults(index, &started);
        self.hand_out(index, &started).await;
        let outcome = self.await_runtime(&started).await;
        let function_ms = invocation::emit_runtime_done(&self.shared.hub, &started, &outcome);
        let (returned, hold_ms) = self.await_extensions(&started, outcome.at).await;
        self.emit_report(index, init_ms, &started, &outcome, function_ms + hold_ms);
        let tokens = self
            .shared
            .lock()
            .token_calls
            .remove(&started.request_id)
            .unwrap_or_default();
        let report = started.into_report(&outcome, function_ms, tokens);
        InvokeReport {
            hold_ms,
            extensions_returned: returned,
            frozen_unix_ms: report.responded_unix_ms + hold_ms,
            ..report
        }
    }

    /// `platform.start`, with an unknown field if `inject_unknown` asks for one.
    fn emit_start(&self, started: &Started) {
        let mut start = started.start_record(&self.cfg.function_version);
        if self.cfg.inject_unknown {
            start["futureField"] = json!({"nested": [1, 2, 3]});
        }
        self.shared.hub.emit("platform.start", start);
    }

    /// The telemetry faults the configuration injects into invoke `index`: after its
    /// `platform.start`, where an extension meets them amid an invoke's real events.
    fn inject_faults(&self, index: usize, started: &Started) {
        let hub = &self.shared.hub;
        if self.cfg.inject_unknown {
            hub.emit_item(json!({
                "time": rfc3339_ms(SystemTime::now()),
                "type": "platform.futureThing",
                "record": {"requestId": started.request_id, "something": "new"},
                "futureTopLevel": true,
            }));
        }
        if index == self.cfg.inject_at {
            for item in &self.cfg.inject_items {
                hub.emit_item(item.clone());
            }
        }
        if self.cfg.logs_dropped && index == 0 {
            hub.emit(
                "platform.logsDropped",
                json!({
                    "reason": "Consumer seems to have fallen behind as it has not acknowledged receipt of logs.",
                    "droppedRecords": 12,
                    "droppedBytes": 4096,
                }),
            );
        }
    }

    /// Hands the invoke to the runtime and the INVOKE extensions. Lambda promises no order
    /// between them: by default they get it together; with `invoke_runtime_first` the
    /// extensions only once the function made its token calls, the worst order for an
    /// extension that serves them.
    async fn hand_out(&self, index: usize, started: &Started) {
        let arn = self.invoked_arn();
        let event = invoke_event(started, &arn);
        let to_extensions = |inner: &mut state::Inner| {
            for ext in inner.extensions.iter_mut().filter(|e| e.wants("INVOKE")) {
                ext.queue.push_back(event.clone());
            }
        };
        let runtime_first = self.cfg.invoke_runtime_first;
        let simulate = simulate(&self.cfg, index);
        self.shared.update(|inner| {
            if !runtime_first {
                to_extensions(inner);
            }
            inner.active_request = Some(started.request_id.clone());
            inner
                .runtime_queue
                .push_back(started.for_runtime(arn, index, simulate));
        });
        if runtime_first {
            self.await_token_calls(started).await;
            self.shared.update(to_extensions);
        }
    }

    /// The ARN the invoke names: the function's, with `invoked_qualifier` if any.
    fn invoked_arn(&self) -> String {
        let arn = function_arn(&self.cfg.function_name);
        match &self.cfg.invoked_qualifier {
            Some(qualifier) => format!("{arn}:{qualifier}"),
            None => arn,
        }
    }

    /// Waits until the function has made its token calls for `started` (or answered
    /// without), at most [`RUNTIME_FIRST_MAX`] and never past the deadline: a function
    /// that never calls must not stall the extensions' INVOKE for long.
    async fn await_token_calls(&self, started: &Started) {
        let id = &started.request_id;
        let by = started
            .deadline
            .min(tokio::time::Instant::now() + RUNTIME_FIRST_MAX);
        self.shared
            .wait_until(
                |inner| inner.token_calls.contains_key(id) || inner.outcomes.contains_key(id),
                Some(by),
            )
            .await;
    }

    /// The runtime's answer, or a timeout at the deadline. Lambda resets a runtime that
    /// timed out, so a fresh one takes the next invoke: the old one is still busy with
    /// this one.
    async fn await_runtime(&mut self, started: &Started) -> Outcome {
        let id = &started.request_id;
        self.shared
            .wait_until(
                |inner| inner.outcomes.contains_key(id),
                Some(started.deadline),
            )
            .await;
        let outcome = {
            let mut inner = self.shared.lock();
            inner.active_request = None;
            take_outcome(&mut inner, id)
        };
        if outcome.status == InvokeStatus::Timeout {
            self.shared.update(|inner| inner.runtime_queue.clear());
            self.spawn_function();
        }
        outcome
    }

    /// Waits until every INVOKE extension is back in `event/next` (at most until the
    /// deadline): the invoke ends then. Returns whether they all came back by the deadline
    /// (Lambda times the invocation out otherwise), and how long
    /// after the runtime's response (`responded`) the last one did: the hold that Lambda
    /// reports and bills as part of the invoke's duration.
    async fn await_extensions(&self, started: &Started, responded: Instant) -> (bool, f64) {
        let returned = self
            .shared
            .wait_until(
                |inner| inner.all_idle("INVOKE"),
                Some(started.deadline.max(tokio::time::Instant::now())),
            )
            .await;
        let back_at = {
            let inner = self.shared.lock();
            inner
                .extensions
                .iter()
                .filter(|e| e.wants("INVOKE"))
                .filter_map(|e| e.last_next_at)
                .max()
        };
        let hold_ms = match (returned, back_at) {
            (true, Some(at)) => ms(at.saturating_duration_since(responded)),
            (true, None) => 0.0,
            (false, _) => ms(responded.elapsed()),
        };
        // Back after the deadline is a timeout, even when this wait's timer fired late enough
        // to see it back.
        let in_time = returned && back_at.is_none_or(|at| at <= started.deadline.into_std());
        (in_time, hold_ms)
    }

    /// `platform.report` of an invoke that lasted `duration_ms` (function and hold). The
    /// first invoke's also carries the init (or SnapStart restore) duration, as Lambda's
    /// first report after a cold start does.
    fn emit_report(
        &self,
        index: usize,
        init_ms: f64,
        started: &Started,
        outcome: &Outcome,
        duration_ms: f64,
    ) {
        let mut metrics = report_metrics(duration_ms, self.cfg.memory_mb, self.extension_pid());
        if index == 0 {
            let key = if self.cfg.snapstart {
                "restoreDurationMs"
            } else {
                "initDurationMs"
            };
            metrics[key] = json!(round3(init_ms));
        }
        invocation::emit_report(&self.shared.hub, started, outcome, metrics);
    }

    /// Peak RSS of the extension process (VmHWM) in KiB, if it is running.
    fn peak_rss_kb(&self) -> Option<u64> {
        self.memory_kb("VmHWM:")
    }

    /// Samples the extension's memory into `samples` as `EnvConfig::rss_every` asks: before
    /// invoke `index` when one is due, and after the last (`index` = `invokes`). Both modes
    /// sample at the same points, so their samples compare.
    fn sample_rss(&self, index: usize, samples: &mut Vec<RssSample>) {
        let every = self.cfg.rss_every;
        if every > 0 && (index.is_multiple_of(every) || index == self.cfg.invokes) {
            samples.extend(self.rss_sample(index));
        }
    }

    /// The current and peak RSS, after `invokes` invokes.
    fn rss_sample(&self, invokes: usize) -> Option<RssSample> {
        Some(RssSample {
            invokes,
            rss_kb: self.memory_kb("VmRSS:")?,
            peak_kb: self.peak_rss_kb()?,
        })
    }

    /// A `/proc/PID/status` figure of the extension process in KiB, if it is running.
    fn memory_kb(&self, field: &str) -> Option<u64> {
        proc_status_kb(self.extension_pid()?, field)
    }

    /// The pause between two invokes. Lambda freezes the whole sandbox there (with
    /// `freeze`): the extension's process group gets SIGSTOP and the Telemetry API holds
    /// its deliveries, so an extension that leaves work for "later" finds it undone at the
    /// next invoke, as it would in Lambda.
    async fn freeze_gap(&mut self) {
        let gap = Duration::from_millis(self.cfg.gap_ms);
        if !self.cfg.freeze {
            tokio::time::sleep(gap).await;
            return;
        }
        self.shared.hub.pause().await;
        self.signal(libc::SIGSTOP);
        self.frozen = true;
        tokio::time::sleep(gap).await;
        self.thaw();
    }

    /// Wakes the extension and resumes telemetry delivery; harmless when not frozen.
    fn thaw(&mut self) {
        if self.frozen {
            self.signal(libc::SIGCONT);
            self.frozen = false;
        }
        self.shared.hub.resume();
    }

    /// Signals the extension's process group, and the runtime's.
    fn signal(&self, sig: libc::c_int) {
        let runtime = self.runtime.as_ref().and_then(Child::id);
        for pid in [self.extension_pid(), runtime].into_iter().flatten() {
            signal_group(pid, sig);
        }
    }

    async fn shutdown_phase(&mut self) -> ShutdownReport {
        self.thaw();
        if let Some(f) = self.function.take() {
            f.abort();
        }
        let peak_rss_kb = self.peak_rss_kb();
        let deadline_ms = epoch_ms() + self.cfg.shutdown_ms;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.cfg.shutdown_ms);
        let event = json!({"eventType": "SHUTDOWN", "shutdownReason": "spindown", "deadlineMs": deadline_ms});
        self.shared.update(|inner| {
            inner.phase = Phase::Shutdown;
            for ext in inner.extensions.iter_mut().filter(|e| e.wants("SHUTDOWN")) {
                ext.queue.push_back(event.clone());
            }
        });
        let mut report = self.wait_exit(deadline).await;
        report.deadline_ms = Some(deadline_ms);
        report.peak_rss_kb = peak_rss_kb;
        report
    }

    /// After a failed init Lambda tears the sandbox down: give the process the shutdown
    /// budget to exit on its own (it should, after init/error), then kill it.
    async fn failed_init_exit(&mut self) -> ShutdownReport {
        self.thaw();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.cfg.shutdown_ms);
        self.wait_exit(deadline).await
    }

    async fn wait_exit(&mut self, deadline: tokio::time::Instant) -> ShutdownReport {
        let mut report = ShutdownReport::default();
        match self.child.as_mut() {
            Some(child) => {
                tokio::select! {
                    status = child.wait() => {
                        report.exit_code = status.ok().and_then(|s| s.code());
                        report.exited_before_deadline_ms = Some(ms(deadline.saturating_duration_since(tokio::time::Instant::now())));
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        if let Some(pid) = child.id() {
                            signal_group(pid, libc::SIGKILL);
                        }
                        report.killed = child.kill().await.is_ok();
                        report.exit_code = child.try_wait().ok().flatten().and_then(|s| s.code());
                    }
                }
            }
            None => {
                let back = self
                    .shared
                    .wait_until(|inner| inner.all_idle("SHUTDOWN"), Some(deadline))
                    .await;
                if back {
                    report.exited_before_deadline_ms = Some(ms(
                        deadline.saturating_duration_since(tokio::time::Instant::now())
                    ));
                }
            }
        }
        report
    }

    async fn finish(
        mut self,
        init: InitReport,
        invokes: Vec<InvokeReport>,
        shutdown: ShutdownReport,
    ) -> Report {
        self.shared.update(|inner| inner.phase = Phase::Closed);
        let telemetry = self.shared.hub.stop();
        if let Some((stop, server)) = self.server.take() {
            let _ = stop.send(());
            let abort = server.abort_handle();
            if tokio::time::timeout(SERVER_STOP, server).await.is_err() {
                abort.abort();
            }
        }
        // Let the output capture drain what the exited process wrote.
        for t in self.tasks.drain(..) {
            let abort = t.abort_handle();
            if tokio::time::timeout(SERVER_STOP, t).await.is_err() {
                abort.abort();
            }
        }
        let inner = self.shared.lock();
        Report {
            credentials: inner
                .credentials
                .as_ref()
                .map(|c| CredentialsReport {
                    served: c.served,
                    refused: c.refused,
                })
                .unwrap_or_default(),
            registrations: inner.extensions.iter().map(|e| e.reg.clone()).collect(),
            subscriptions: inner.subscriptions.clone(),
            init,
            invokes,
            exit_errors: inner.exit_errors.clone(),
            telemetry,
            shutdown,
            stdout_path: self.stdout_path.clone(),
            stderr_path: self.stderr_path.clone(),
            rss_samples: Vec::new(),
        }
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped process; the group takes its helpers along.
        if let Some(child) = self.child.as_mut() {
            if let Some(pid) = child.id() {
                signal_group(pid, libc::SIGKILL);
            }
            let _ = child.start_kill();
        }
        if let Some(f) = self.function.take() {
            f.abort();
        }
        if let Some(pid) = self.runtime.as_ref().and_then(Child::id) {
            signal_group(pid, libc::SIGKILL);
        }
        for w in &self.workers {
            w.abort();
        }
        for t in &self.tasks {
            t.abort();
        }
        if let Some((_, server)) = self.server.take() {
            server.abort();
        }
        self.shared.hub.stop();
    }
}

/// A `kB` figure of `/proc/PID/status`, if the process is running.
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// kill(2) to the process group led by `pid` (our child, spawned with `process_group(0)`).
fn signal_group(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe {
            libc::kill(-pid, sig);
        }
    }
}

fn init_type(cfg: &EnvConfig) -> &'static str {
    if cfg.managed_instances {
        "lambda-managed-instances"
    } else if cfg.snapstart {
        "snap-start"
    } else {
        "on-demand"
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The INVOKE event the extensions registered for it get from `event/next`.
fn invoke_event(started: &Started, arn: &str) -> Value {
    json!({
        "eventType": "INVOKE",
        "deadlineMs": started.deadline_ms,
        "requestId": started.request_id,
        "invokedFunctionArn": arn,
        "tracing": {"type": "X-Amzn-Trace-Id", "value": started.xray.value},
    })
}

/// Resolves with the exit code when the child exits; never resolves without a child.
async fn wait_child(child: Option<&mut Child>) -> Option<i32> {
    match child {
        Some(c) => c.wait().await.ok().and_then(|s| s.code()),
        None => std::future::pending().await,
    }
}

/// Copies one output stream of the extension to its file and to `extension` telemetry.
async fn capture(pipe: Box<dyn AsyncRead + Send + Unpin>, mut out: tokio::fs::File, hub: Arc<Hub>) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if out.write_all(line.as_bytes()).await.is_err() || out.write_all(b"\n").await.is_err() {
            return;
        }
        hub.emit("extension", Value::String(line));
    }
    let _ = out.flush().await;
}
