//! The orchestrator: one sandbox lifecycle (init, N invokes with freezes, shutdown).
//!
//! `Environment::start` binds the API and spawns the extension process; `run` drives the
//! phases and returns a [`Report`]. The child is killed on drop, so a failing test or an
//! error leaves no process behind.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::api::{self, Phase, Shared};
use crate::clock::{epoch_ms, ms, rfc3339_ms};
use crate::function::{
    self, FunctionConfig, SIMULATE_ERROR, SIMULATE_TIMEOUT, TokenMode, Traceparent,
};
use crate::ids::{XrayTrace, random_hex, uuid_v4};
use crate::report::{
    InitError, InitReport, InvokeReport, InvokeStatus, Report, RssSample, ShutdownReport,
};
use crate::telemetry::Hub;

mod managed;

pub const ACCOUNT_ID: &str = "123456789012";
pub const REGION: &str = "us-east-1";
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
    /// `AWS_SESSION_TOKEN`): a test that calls the sidecar's `/token` itself sets
    /// `AWS_SESSION_TOKEN` here to know the `X-Sidecar-Token` to send.
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
    /// Emit SnapStart restore events instead of init events.
    pub snapstart: bool,
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
}

/// The levels of the JSON lines the function logs with `EnvConfig::mixed_logs`.
pub const MIXED_LOG_LEVELS: [&str; 3] = ["INFO", "WARN", "ERROR"];
/// The number of text lines the function logs with `EnvConfig::mixed_logs`.
pub const MIXED_TEXT_LINES: usize = 2;

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
            managed_instances: false,
            workers: 1,
            shutdown_in_flight: false,
        }
    }
}

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
    tasks: Vec<JoinHandle<()>>,
    function: Option<JoinHandle<()>>,
    /// Managed Instances: the runtime workers besides `function`.
    workers: Vec<JoinHandle<()>>,
    stdout_path: Option<PathBuf>,
    stderr_path: Option<PathBuf>,
    started: Instant,
    frozen: bool,
    /// The execution role's credentials, as Lambda gives them to the function and every
    /// extension: made up per environment, overridden by `EnvConfig::env`.
    credentials: [(&'static str, String); 3],
}

/// Random credentials of the shapes Lambda's have, unique to one environment. The sidecar
/// takes `AWS_SESSION_TOKEN` as the secret `/token` callers must send back, so it must be
/// unguessable, as Lambda's is.
fn credentials(env: &[(String, String)]) -> [(&'static str, String); 3] {
    [
        (
            "AWS_ACCESS_KEY_ID",
            format!("ASIA{}", random_hex(8).to_uppercase()),
        ),
        ("AWS_SECRET_ACCESS_KEY", random_hex(20)),
        ("AWS_SESSION_TOKEN", random_hex(32)),
    ]
    .map(|(name, made_up)| {
        let value = env
            .iter()
            .find(|(k, _)| k == name)
            .map_or(made_up, |(_, v)| v.clone());
        (name, value)
    })
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
        shared.update(|inner| {
            inner.refuse_telemetry = cfg.refuse_telemetry;
            inner.managed_instances = cfg.managed_instances;
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(EnvError::Bind)?;
        let addr = listener.local_addr().map_err(EnvError::Bind)?;
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
            credentials: credentials(&cfg.env),
            cfg,
            shared,
            addr,
            client,
            server: Some((stop_tx, server)),
            child: None,
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
            session_token: self.credentials[2].1.clone(),
            mixed_logs: self.cfg.mixed_logs,
        }
    }

    fn spawn_function(&mut self) {
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
                if self.cfg.rss_every > 0 && i % self.cfg.rss_every == 0 {
                    rss_samples.extend(self.rss_sample(i));
                }
                invokes.push(self.invoke(i, init.duration_ms).await);
                self.freeze_gap().await;
            }
            if self.cfg.rss_every > 0 {
                rss_samples.extend(self.rss_sample(self.cfg.invokes));
            }
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
                        && inner.extensions.iter().all(api::Extension::idle)
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

    async fn invoke(&mut self, index: usize, init_ms: f64) -> InvokeReport {
        let request_id = uuid_v4();
        let xray = XrayTrace::new(!self.cfg.unsampled_invokes.contains(&index));
        let span_id = random_hex(8);
        let timeout = Duration::from_millis(self.cfg.function_timeout_ms);
        let deadline_ms = epoch_ms() + self.cfg.function_timeout_ms;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut arn = format!(
            "arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{}",
            self.cfg.function_name
        );
        if let Some(qualifier) = &self.cfg.invoked_qualifier {
            arn = format!("{arn}:{qualifier}");
        }
        let tracing = json!({"spanId": span_id, "type": "X-Amzn-Trace-Id", "value": xray.value});
        let simulate = if self.cfg.fail_invokes.contains(&index) {
            SIMULATE_ERROR
        } else if self.cfg.timeout_invokes.contains(&index) {
            SIMULATE_TIMEOUT
        } else {
            "none"
        };
        let event = json!({
            "eventType": "INVOKE",
            "deadlineMs": deadline_ms,
            "requestId": request_id,
            "invokedFunctionArn": arn,
            "tracing": {"type": "X-Amzn-Trace-Id", "value": xray.value},
        });
        let start_wall = SystemTime::now();
        let t_start = Instant::now();
        let mut start = json!({"requestId": request_id, "version": self.cfg.function_version, "tracing": tracing});
        if self.cfg.inject_unknown {
            start["futureField"] = json!({"nested": [1, 2, 3]});
        }
        self.shared.hub.emit("platform.start", start);
        if self.cfg.inject_unknown {
            self.shared.hub.emit_item(json!({
                "time": rfc3339_ms(SystemTime::now()),
                "type": "platform.futureThing",
                "record": {"requestId": request_id, "something": "new"},
                "futureTopLevel": true,
            }));
        }
        if index == self.cfg.inject_at {
            for item in &self.cfg.inject_items {
                self.shared.hub.emit_item(item.clone());
            }
        }
        if self.cfg.logs_dropped && index == 0 {
            self.shared.hub.emit(
                "platform.logsDropped",
                json!({
                    "reason": "Consumer seems to have fallen behind as it has not acknowledged receipt of logs.",
                    "droppedRecords": 12,
                    "droppedBytes": 4096,
                }),
            );
        }
        let runtime_first = self.cfg.invoke_runtime_first;
        let to_extensions = |inner: &mut api::Inner| {
            for ext in inner.extensions.iter_mut().filter(|e| e.wants("INVOKE")) {
                ext.queue.push_back(event.clone());
            }
        };
        self.shared.update(|inner| {
            if !runtime_first {
                to_extensions(inner);
            }
            inner.active_request = Some(request_id.clone());
            inner.runtime_queue.push_back(api::Invocation {
                request_id: request_id.clone(),
                deadline_ms,
                arn: arn.clone(),
                xray_value: xray.value.clone(),
                payload: json!({"invoke": index, "simulate": simulate}),
            });
        });
        if runtime_first {
            let id = request_id.clone();
            let by = deadline.min(tokio::time::Instant::now() + RUNTIME_FIRST_MAX);
            self.shared
                .wait_until(
                    |inner| inner.token_calls.contains_key(&id) || inner.outcomes.contains_key(&id),
                    Some(by),
                )
                .await;
            self.shared.update(to_extensions);
        }

        let id = request_id.clone();
        self.shared
            .wait_until(|inner| inner.outcomes.contains_key(&id), Some(deadline))
            .await;
        let (t_resp, status, produced_bytes, error_type) = {
            let mut inner = self.shared.lock();
            inner.active_request = None;
            match inner.outcomes.get(&request_id) {
                Some(o) => (o.at, o.status, o.produced_bytes, o.error_type.clone()),
                None => (
                    Instant::now(),
                    InvokeStatus::Timeout,
                    0,
                    Some("Sandbox.Timedout".to_string()),
                ),
            }
        };
        if status == InvokeStatus::Timeout {
            // Lambda resets a runtime that timed out; start a fresh one.
            self.shared.update(|inner| {
                inner.runtime_queue.clear();
            });
            self.spawn_function();
        }
        let function_ms = ms(t_resp.saturating_duration_since(t_start));
        let response_wall = start_wall + t_resp.saturating_duration_since(t_start);
        let runtime_done = runtime_done_record(
            &request_id,
            status,
            error_type.as_deref(),
            (start_wall, response_wall, function_ms),
            produced_bytes,
            &tracing,
        );
        self.shared.hub.emit("platform.runtimeDone", runtime_done);

        // The invoke ends when every INVOKE extension is back in event/next.
        let returned = self
            .shared
            .wait_until(
                |inner| {
                    inner
                        .extensions
                        .iter()
                        .filter(|e| e.wants("INVOKE"))
                        .all(api::Extension::idle)
                },
                Some(deadline.max(tokio::time::Instant::now())),
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
            (true, Some(at)) => ms(at.saturating_duration_since(t_resp)),
            (true, None) => 0.0,
            (false, _) => ms(t_resp.elapsed()),
        };
        let duration_ms = function_ms + hold_ms;
        let mut metrics = json!({
            "durationMs": round3(duration_ms),
            "billedDurationMs": duration_ms.ceil().max(1.0) as u64,
            "memorySizeMB": self.cfg.memory_mb,
            "maxMemoryUsedMB": self.max_memory_mb(),
        });
        if index == 0 {
            let key = if self.cfg.snapstart {
                "restoreDurationMs"
            } else {
                "initDurationMs"
            };
            metrics[key] = json!(round3(init_ms));
        }
        let report = report_record(
            &request_id,
            status,
            error_type.as_deref(),
            metrics,
            &tracing,
        );
        self.shared.hub.emit("platform.report", report);
        let tokens = self
            .shared
            .lock()
            .token_calls
            .remove(&request_id)
            .unwrap_or_default();
        InvokeReport {
            request_id,
            trace_id: xray.trace_id,
            xray_value: xray.value,
            deadline_ms,
            function_ms,
            hold_ms,
            extensions_returned: returned,
            status,
            tokens,
        }
    }

    /// Peak RSS of the extension process (VmHWM), in MB, as a stand-in for Lambda's figure.
    fn max_memory_mb(&self) -> u64 {
        self.peak_rss_kb().unwrap_or(0).div_ceil(1024).max(1)
    }

    /// Peak RSS of the extension process (VmHWM) in KiB, if it is running.
    fn peak_rss_kb(&self) -> Option<u64> {
        self.memory_kb("VmHWM:")
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

    fn thaw(&mut self) {
        if self.frozen {
            self.signal(libc::SIGCONT);
            self.frozen = false;
        }
        self.shared.hub.resume();
    }

    /// Signals the extension's process group.
    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.extension_pid() {
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
                    .wait_until(
                        |inner| {
                            inner
                                .extensions
                                .iter()
                                .filter(|e| e.wants("SHUTDOWN"))
                                .all(api::Extension::idle)
                        },
                        Some(deadline),
                    )
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

/// A `platform.runtimeDone` record; `times` is (start, response, function ms).
fn runtime_done_record(
    request_id: &str,
    status: InvokeStatus,
    error_type: Option<&str>,
    (start_wall, response_wall, function_ms): (SystemTime, SystemTime, f64),
    produced_bytes: usize,
    tracing: &Value,
) -> Value {
    let mut record = json!({
        "requestId": request_id,
        "status": status.as_str(),
        "metrics": {"durationMs": round3(function_ms), "producedBytes": produced_bytes},
        "spans": [
            {"name": "responseLatency", "start": rfc3339_ms(start_wall), "durationMs": round3(function_ms)},
            {"name": "responseDuration", "start": rfc3339_ms(response_wall), "durationMs": 0.0},
        ],
        "tracing": tracing,
    });
    if let Some(t) = error_type {
        record["errorType"] = json!(t);
    }
    record
}

/// A `platform.report` record with the given `metrics` object.
fn report_record(
    request_id: &str,
    status: InvokeStatus,
    error_type: Option<&str>,
    metrics: Value,
    tracing: &Value,
) -> Value {
    let mut record = json!({
        "requestId": request_id,
        "status": status.as_str(),
        "metrics": metrics,
        "tracing": tracing,
    });
    if let Some(t) = error_type {
        record["errorType"] = json!(t);
    }
    record
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
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
