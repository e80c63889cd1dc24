//! The built-in function: an in-process task that drives the Runtime API over HTTP like a
//! real runtime (`invocation/next` -> work -> `response`/`error`).
//!
//! Its work is what the sidecar serves: per invoke, first thing, it calls the token endpoint
//! K times, with a W3C `traceparent` derived from the invoke's X-Ray trace ([`Traceparent`])
//! and optionally the request-id header, so the sidecar's spans can be checked to join the
//! Lambda trace and the invocation that asked.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::api::RUNTIME_ERROR_HEADER;
use crate::clock::{epoch_ms, ms, rfc3339_ms};
use crate::ids::{random_hex, w3c_trace_id};
use crate::report::TokenCall;
use crate::state::Shared;

/// Which token request the function makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    Get,
    Post,
    /// GET on even calls, POST `{"sub":"user-<n>"}` on odd ones.
    Alternate,
}

/// The `traceparent` the function sends with each token call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Traceparent {
    /// The invoke's X-Ray trace id with a new span id of the function's own (a function that
    /// traces itself).
    #[default]
    OwnSpan,
    /// X-Ray's `Root` and `Parent`, with `Sampled` as the flag: what the example function
    /// sends (`examples/nodejs-function/src/traceparent.ts`).
    XrayParent,
    /// No `traceparent` header.
    None,
}

/// The Runtime API's request-id header, which the function may send back to the sidecar's
/// `/token` to name its invocation.
pub const REQUEST_ID_HEADER: &str = "Lambda-Runtime-Aws-Request-Id";

/// The `User-Agent` the function's token calls send, as an HTTP client library would.
pub const FUNCTION_USER_AGENT: &str = "lambda-env-function/1.0";

/// The levels of the JSON lines the function logs with `EnvConfig::mixed_logs`: as
/// Lambda's JSON log format writes them for Python (`WARNING`, `CRITICAL`) and Node.js
/// (`INFO`), in the casings runtimes use.
pub const MIXED_LOG_LEVELS: [&str; 3] = ["INFO", "warning", "CRITICAL"];
/// The number of text lines the function logs with `EnvConfig::mixed_logs`.
pub const MIXED_TEXT_LINES: usize = 2;

/// What the orchestrator asks of one invoke, carried in the event payload.
pub(crate) const SIMULATE_ERROR: &str = "error";
pub(crate) const SIMULATE_TIMEOUT: &str = "timeout";

const TOKEN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub(crate) struct FunctionConfig {
    /// `http://127.0.0.1:PORT/2018-06-01/runtime`
    pub runtime_base: String,
    pub token_url: String,
    pub tokens_per_invoke: usize,
    pub token_mode: TokenMode,
    pub traceparent: Traceparent,
    /// Send [`REQUEST_ID_HEADER`] with each token call.
    pub send_request_id: bool,
    pub function_ms: u64,
    /// `AWS_SESSION_TOKEN` (with SnapStart, `AWS_CONTAINER_AUTHORIZATION_TOKEN`), sent as
    /// `X-Sidecar-Token` as a real function would.
    pub session_token: String,
    /// `EnvConfig::mixed_logs`.
    pub mixed_logs: bool,
    /// `EnvConfig::function_logs`.
    pub logs: Arc<Vec<Value>>,
}

pub(crate) fn spawn(
    cfg: FunctionConfig,
    client: reqwest::Client,
    shared: Arc<Shared>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The loop ends when the API closes; a transport error ends this runtime as a
        // crashed runtime would end, and the orchestrator then sees a timeout.
        let _ = run(&cfg, &client, &shared).await;
    })
}

async fn run(
    cfg: &FunctionConfig,
    client: &reqwest::Client,
    shared: &Shared,
) -> Result<(), reqwest::Error> {
    loop {
        let next = client
            .get(format!("{}/invocation/next", cfg.runtime_base))
            .send()
            .await?;
        if !next.status().is_success() {
            return Ok(());
        }
        let header = |name: &str| {
            next.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let request_id = header("lambda-runtime-aws-request-id");
        let deadline_ms: u64 = header("lambda-runtime-deadline-ms").parse().unwrap_or(0);
        let xray = header("lambda-runtime-trace-id");
        let payload: Value = next.json().await.unwrap_or(Value::Null);
        let invoke = payload.get("invoke").and_then(Value::as_u64).unwrap_or(0) as usize;
        let simulate = payload
            .get("simulate")
            .and_then(Value::as_str)
            .unwrap_or("none");

        let log = |line: String| {
            if !cfg.mixed_logs {
                shared.hub.emit("function", Value::String(line));
            }
        };
        log(format!("handling request {request_id} (invoke {invoke})"));
        if cfg.mixed_logs {
            mixed_logs(shared, &request_id, invoke);
        }
        for line in cfg.logs.iter() {
            shared.hub.emit("function", line.clone());
        }

        let traceparent = traceparent(cfg.traceparent, &xray);
        let request_id_header = cfg.send_request_id.then_some(request_id.as_str());
        let mut calls = Vec::with_capacity(cfg.tokens_per_invoke);
        for k in 0..cfg.tokens_per_invoke {
            let n = invoke * cfg.tokens_per_invoke + k;
            let call = token_call(cfg, client, &traceparent, request_id_header, k, n).await;
            log(format!(
                "token call {k}: {} {:?} in {:.1} ms",
                call.method, call.http_status, call.latency_ms
            ));
            calls.push(call);
        }
        let summary: Vec<Option<u16>> = calls.iter().map(|c| c.http_status).collect();
        shared.update(|inner| inner.token_calls.insert(request_id.clone(), calls));

        tokio::time::sleep(Duration::from_millis(cfg.function_ms)).await;
        if simulate == SIMULATE_TIMEOUT {
            // Overrun the deadline; the orchestrator gives up on us at the deadline.
            let now = epoch_ms();
            tokio::time::sleep(Duration::from_millis(
                deadline_ms.saturating_sub(now) + 1_000,
            ))
            .await;
        }
        let base = format!("{}/invocation/{request_id}", cfg.runtime_base);
        if simulate == SIMULATE_ERROR {
            log(format!("failing request {request_id} on purpose"));
            client
                .post(format!("{base}/error"))
                .header(RUNTIME_ERROR_HEADER, "Function.Injected")
                .json(&json!({"errorMessage": "injected failure", "errorType": "InjectedError", "stackTrace": []}))
                .send()
                .await?;
        } else {
            log(format!("request {request_id} done"));
            client
                .post(format!("{base}/response"))
                .json(&json!({"statusCode": 200, "tokenStatuses": summary}))
                .send()
                .await?;
        }
    }
}

/// One JSON line per level of [`MIXED_LOG_LEVELS`], shaped as Lambda's JSON log
/// format writes them, and [`MIXED_TEXT_LINES`] text lines.
fn mixed_logs(shared: &Shared, request_id: &str, invoke: usize) {
    for (k, level) in MIXED_LOG_LEVELS.iter().enumerate() {
        shared.hub.emit(
            "function",
            json!({
                "timestamp": rfc3339_ms(SystemTime::now()),
                "level": level,
                "requestId": request_id,
                "message": format!("json line {k} of invoke {invoke}"),
                "invoke": invoke,
            }),
        );
    }
    for k in 0..MIXED_TEXT_LINES {
        shared.hub.emit(
            "function",
            Value::String(format!("text line {k} of invoke {invoke}")),
        );
    }
}

/// The `traceparent` of each token call (`None`: send none), made from the invoke's X-Ray
/// header; a closure, since [`Traceparent::OwnSpan`] draws a new span id per call.
fn traceparent(mode: Traceparent, xray: &str) -> impl Fn() -> Option<String> + use<> {
    let trace_id = w3c_trace_id(xray).unwrap_or_else(|| random_hex(16));
    let field = |name: &str| {
        xray.split(';')
            .find_map(|f| f.trim().strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let parent = field("Parent");
    let flags = if field("Sampled").as_deref() == Some("1") {
        "01"
    } else {
        "00"
    };
    move || match mode {
        Traceparent::OwnSpan => Some(format!("00-{trace_id}-{}-01", random_hex(8))),
        Traceparent::XrayParent => parent
            .as_ref()
            .map(|parent| format!("00-{trace_id}-{parent}-{flags}")),
        Traceparent::None => None,
    }
}

async fn token_call(
    cfg: &FunctionConfig,
    client: &reqwest::Client,
    traceparent: impl Fn() -> Option<String>,
    request_id: Option<&str>,
    k: usize,
    n: usize,
) -> TokenCall {
    let post = match cfg.token_mode {
        TokenMode::Get => false,
        TokenMode::Post => true,
        TokenMode::Alternate => k % 2 == 1,
    };
    let traceparent = traceparent();
    let mut req = if post {
        client
            .post(&cfg.token_url)
            .json(&json!({"sub": format!("user-{n}")}))
    } else {
        client.get(&cfg.token_url)
    };
    if let Some(traceparent) = &traceparent {
        req = req.header("traceparent", traceparent);
    }
    if let Some(request_id) = request_id {
        req = req.header(REQUEST_ID_HEADER, request_id);
    }
    let started = Instant::now();
    let res = req
        .header("X-Sidecar-Token", &cfg.session_token)
        .header("User-Agent", FUNCTION_USER_AGENT)
        .timeout(TOKEN_TIMEOUT)
        .send()
        .await;
    let (http_status, body, error) = match res {
        Ok(r) => {
            let status = r.status().as_u16();
            match r.bytes().await {
                Ok(b) => {
                    let body = serde_json::from_slice(&b).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&b).into_owned())
                    });
                    (Some(status), body, None)
                }
                Err(e) => (Some(status), Value::Null, Some(e.to_string())),
            }
        }
        Err(e) => (None, Value::Null, Some(e.to_string())),
    };
    TokenCall {
        method: if post { "POST" } else { "GET" }.to_string(),
        http_status,
        latency_ms: ms(started.elapsed()),
        body,
        traceparent: traceparent.unwrap_or_default(),
        error,
    }
}
