//! The JSON result of one environment run. Tests read these fields; `lambda-env run`
//! writes them to `--report FILE`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub registrations: Vec<Registration>,
    /// Accepted Telemetry API request bodies, as the extension sent them.
    pub subscriptions: Vec<Value>,
    pub init: InitReport,
    pub invokes: Vec<InvokeReport>,
    /// `/extension/exit/error` calls.
    pub exit_errors: Vec<ExtensionError>,
    pub telemetry: TelemetryReport,
    pub shutdown: ShutdownReport,
    /// Where the extension process's stdout/stderr were written (None without a process).
    pub stdout_path: Option<PathBuf>,
    pub stderr_path: Option<PathBuf>,
    /// The extension process's resident memory, sampled as `EnvConfig::rss_every` asks.
    #[serde(default)]
    pub rss_samples: Vec<RssSample>,
    /// SnapStart: the container credentials endpoint's requests.
    #[serde(default)]
    pub credentials: CredentialsReport,
}

/// What the container credentials endpoint (SnapStart) was asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialsReport {
    /// Requests with the right `Authorization` header, answered with credentials.
    pub served: u64,
    /// Requests without it (or with another value), answered 401.
    pub refused: u64,
}

/// Resident memory of the extension process at one point of the run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RssSample {
    /// Invokes completed when it was read (0: right after init).
    pub invokes: usize,
    /// VmRSS, in KiB.
    pub rss_kb: u64,
    /// VmHWM (the peak so far), in KiB.
    pub peak_kb: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub name: String,
    pub events: Vec<String>,
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitReport {
    /// `on-demand`, `snap-start` or `lambda-managed-instances`.
    pub initialization_type: String,
    pub duration_ms: f64,
    pub error: Option<InitError>,
}

/// Why init failed: an extension's `/init/error`, the process exiting, or the 10 s limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitError {
    /// `Lambda-Extension-Function-Error-Type`, or `Extension.Crash` / `Sandbox.Timedout`.
    pub error_type: String,
    /// The JSON body the extension posted (Null when it posted none).
    pub body: Value,
    /// Exit code if the process exited during init or right after reporting the error.
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtensionError {
    pub extension: String,
    pub error_type: String,
    pub body: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvokeStatus {
    Success,
    Error,
    Timeout,
}

impl InvokeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvokeStatus::Success => "success",
            InvokeStatus::Error => "error",
            InvokeStatus::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvokeReport {
    pub request_id: String,
    /// 32-hex W3C trace id (the X-Ray root's hex parts joined).
    pub trace_id: String,
    /// The `X-Amzn-Trace-Id` value sent to the runtime and the extensions.
    pub xray_value: String,
    /// Absolute deadline (epoch ms) sent in the INVOKE event.
    pub deadline_ms: u64,
    /// From handing the event to the runtime until its response (or the deadline).
    pub function_ms: f64,
    /// PostRuntimeExtensionsDuration: last INVOKE extension back in `event/next` minus the
    /// runtime's response time (0 if they were back before the response).
    pub hold_ms: f64,
    /// False when an INVOKE extension had not called `event/next` again by the deadline.
    pub extensions_returned: bool,
    /// When the invocation started (Unix ms, wall clock).
    #[serde(default)]
    pub started_unix_ms: f64,
    /// When the runtime responded (or the deadline came): `platform.runtimeDone`'s moment.
    #[serde(default)]
    pub responded_unix_ms: f64,
    /// When the invocation ended and the environment froze: the response plus the hold
    /// (Managed Instances, which do not freeze: the response).
    #[serde(default)]
    pub frozen_unix_ms: f64,
    pub status: InvokeStatus,
    pub tokens: Vec<TokenCall>,
}

/// One call the built-in function made to the sidecar's token endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCall {
    /// `GET` or `POST`.
    pub method: String,
    /// None when no HTTP answer came (connection refused, timeout).
    pub http_status: Option<u16>,
    pub latency_ms: f64,
    /// The JSON body (or the raw text as a JSON string when it was not JSON).
    pub body: Value,
    /// The `traceparent` header sent with the call (empty when none was).
    pub traceparent: String,
    /// Transport error text when `http_status` is None.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TelemetryReport {
    /// Successful POSTs (2xx) across subscribers.
    pub posts: u64,
    /// Retried attempts (non-2xx or connection error) across subscribers.
    pub retries: u64,
    /// Events in batches given up after the last retry.
    pub dropped: u64,
    /// Events delivered in successful POSTs.
    pub events_sent: u64,
    /// Events still buffered when the environment stopped.
    pub undelivered: u64,
    pub subscribers: Vec<SubscriberStats>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubscriberStats {
    pub extension: String,
    /// Destination as subscribed (`http://sandbox.localdomain:PORT/...`).
    pub uri: String,
    pub posts: u64,
    pub retries: u64,
    pub dropped: u64,
    pub events_sent: u64,
    pub undelivered: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShutdownReport {
    /// The SHUTDOWN event's deadlineMs (epoch ms); None when no SHUTDOWN was sent.
    pub deadline_ms: Option<u64>,
    /// Exit code of the extension process (None if it was killed by a signal or there was none).
    pub exit_code: Option<i32>,
    /// True when it had to be SIGKILLed at the deadline.
    pub killed: bool,
    /// How long before the deadline it exited (in-process extensions: came back to `event/next`).
    pub exited_before_deadline_ms: Option<f64>,
    /// Peak resident memory of the extension process (VmHWM) when SHUTDOWN was sent, in KiB.
    #[serde(default)]
    pub peak_rss_kb: Option<u64>,
}
