//! The environment driven by a tiny in-process extension (an HTTP client in the test), so
//! none of this depends on the sidecar.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use lambda_env::{EnvConfig, Environment, InvokeStatus};
use serde_json::{Value, json};
use tokio::net::TcpListener;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Collects what the telemetry listener receives: every POSTed batch, in order, with
/// whether it was accepted (answered 200).
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Batch>>>);

/// One POSTed batch and whether the listener accepted it.
type Batch = (Vec<Value>, bool);

impl Received {
    /// Events of accepted batches.
    fn events(&self) -> Vec<Value> {
        let batches = self.0.lock().unwrap();
        batches
            .iter()
            .filter(|b| b.1)
            .flat_map(|b| b.0.clone())
            .collect()
    }
    /// Every batch POSTed, accepted or not.
    fn batches(&self) -> Vec<Vec<Value>> {
        self.0.lock().unwrap().iter().map(|b| b.0.clone()).collect()
    }
    fn has(&self, ty: &str, request_id: &str) -> bool {
        self.events()
            .iter()
            .any(|e| e["type"] == ty && e["record"]["requestId"] == request_id)
    }
}

/// A telemetry listener answering `fail_first` POSTs with 503, then 200.
async fn telemetry_listener(fail_first: usize) -> (u16, Received) {
    let received = Received::default();
    let r = received.clone();
    let calls = Arc::new(Mutex::new(0usize));
    let app = Router::new().route(
        "/telemetry",
        post(move |body: axum::Json<Vec<Value>>| {
            let r = r.clone();
            let calls = calls.clone();
            async move {
                let mut n = calls.lock().unwrap();
                *n += 1;
                let accept = *n > fail_first;
                r.0.lock().unwrap().push((body.0, accept));
                if accept {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, received)
}

/// A token endpoint that records the traceparent headers it sees.
/// A stand-in for the sidecar's /token that keeps each call's `traceparent` and
/// `X-Sidecar-Token`.
async fn token_server() -> (String, Arc<Mutex<Vec<(String, Option<String>)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler = move |headers: HeaderMap| {
        let s = s.clone();
        async move {
            let tp = headers
                .get("traceparent")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let secret = headers
                .get("x-sidecar-token")
                .map(|v| v.to_str().unwrap().to_string());
            s.lock().unwrap().push((tp, secret));
            axum::Json(json!({"token": "t", "token_type": "Bearer"}))
        }
    };
    let app = Router::new().route("/token", get(handler.clone()).post(handler));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

struct TestExtension {
    base: String,
    id: String,
    client: reqwest::Client,
}

impl TestExtension {
    async fn register(env: &Environment, name: &str, events: &[&str]) -> (TestExtension, Value) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let base = format!("http://{}", env.runtime_api());
        let resp = client
            .post(format!("{base}/2020-01-01/extension/register"))
            .header("Lambda-Extension-Name", name)
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let id = resp.headers()["lambda-extension-identifier"]
            .to_str()
            .unwrap()
            .to_string();
        let body: Value = resp.json().await.unwrap();
        (TestExtension { base, id, client }, body)
    }

    async fn subscribe(&self, body: Value) -> (u16, Value) {
        let resp = self
            .client
            .put(format!("{}/2022-07-01/telemetry", self.base))
            .header("Lambda-Extension-Identifier", &self.id)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn next(&self) -> Option<Value> {
        let resp = self
            .client
            .get(format!("{}/2020-01-01/extension/event/next", self.base))
            .header("Lambda-Extension-Identifier", &self.id)
            .send()
            .await
            .ok()?;
        if resp.status() != 200 {
            return None;
        }
        resp.json().await.ok()
    }
}

fn subscription(port: u16) -> Value {
    json!({
        "schemaVersion": "2022-12-13",
        "destination": {"protocol": "HTTP", "URI": format!("http://sandbox.localdomain:{port}/telemetry")},
        "types": ["platform", "function"],
        "buffering": {"maxItems": 1000, "maxBytes": 262144, "timeoutMs": 25},
    })
}

/// Waits (bounded) until `ty` for `request_id` was accepted by the listener.
async fn wait_delivered(received: &Received, ty: &str, request_id: &str) {
    for _ in 0..1000 {
        if received.has(ty, request_id) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs an extension that, like a flushing telemetry extension, holds each invoke until
/// that invoke's runtimeDone reached its listener, and on SHUTDOWN waits for the last
/// report before coming back to `event/next` (its way of saying "done").
/// Returns the INVOKE events with the epoch ms at which they arrived.
fn flushing_extension(
    ext: TestExtension,
    received: Received,
) -> tokio::task::JoinHandle<Vec<(u64, Value)>> {
    tokio::spawn(async move {
        let mut invokes: Vec<(u64, Value)> = Vec::new();
        while let Some(ev) = ext.next().await {
            match ev["eventType"].as_str().unwrap() {
                "INVOKE" => {
                    let at = now_ms();
                    let id = ev["requestId"].as_str().unwrap().to_string();
                    wait_delivered(&received, "platform.runtimeDone", &id).await;
                    invokes.push((at, ev));
                }
                "SHUTDOWN" => {
                    let deadline = ev["deadlineMs"].as_u64().unwrap();
                    assert!(deadline > now_ms(), "SHUTDOWN deadline in the past");
                    assert_eq!(ev["shutdownReason"], "spindown");
                    if let Some((_, last)) = invokes.last() {
                        wait_delivered(
                            &received,
                            "platform.report",
                            last["requestId"].as_str().unwrap(),
                        )
                        .await;
                    }
                    let _ = ext.next().await;
                    break;
                }
                other => panic!("unexpected event {other}"),
            }
        }
        invokes
    })
}

fn position(events: &[Value], ty: &str, request_id: &str) -> usize {
    events
        .iter()
        .position(|e| e["type"] == ty && e["record"]["requestId"] == request_id)
        .unwrap_or_else(|| panic!("no {ty} for {request_id}"))
}

#[tokio::test]
async fn extension_sees_invokes_deadlines_and_ordered_telemetry() {
    let (port, received) = telemetry_listener(0).await;
    let (token_url, calls) = token_server().await;
    let env = Environment::start(EnvConfig {
        env: vec![("AWS_SESSION_TOKEN".into(), "session-of-this-test".into())],
        in_process_extensions: 1,
        invokes: 3,
        tokens_per_invoke: 2,
        token_url,
        function_ms: 5,
        gap_ms: 30,
        ..EnvConfig::default()
    })
    .await
    .unwrap();
    let (ext, reg_body) = TestExtension::register(&env, "test-ext", &["INVOKE", "SHUTDOWN"]).await;
    assert_eq!(reg_body["functionName"], "lambda-env-function");
    assert_eq!(reg_body["functionVersion"], "$LATEST");
    let (status, _) = ext.subscribe(subscription(port)).await;
    assert_eq!(status, 200);

    let extension = flushing_extension(ext, received.clone());

    let report = env.run().await.unwrap();
    let invokes = extension.await.unwrap();

    assert!(report.init.error.is_none(), "{:?}", report.init.error);
    assert_eq!(report.registrations.len(), 1);
    assert_eq!(report.registrations[0].events, ["INVOKE", "SHUTDOWN"]);
    assert_eq!(report.subscriptions.len(), 1);
    assert_eq!(report.invokes.len(), 3);
    assert_eq!(invokes.len(), 3);

    let events = received.events();
    assert_eq!(events[0]["type"], "platform.initStart", "{:?}", events[0]);
    assert_eq!(events[0]["record"]["initializationType"], "on-demand");
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for t in [
        "platform.telemetrySubscription",
        "platform.extension",
        "platform.initRuntimeDone",
        "platform.initReport",
        "function",
    ] {
        assert!(types.contains(&t), "missing {t} in {types:?}");
    }
    assert!(
        types.iter().position(|t| *t == "platform.initReport")
            < types.iter().position(|t| *t == "platform.start")
    );

    for (i, (inv, (received_at, ev))) in report.invokes.iter().zip(&invokes).enumerate() {
        assert_eq!(inv.status, InvokeStatus::Success);
        assert_eq!(ev["requestId"], inv.request_id);
        let deadline = ev["deadlineMs"].as_u64().unwrap();
        assert!(
            deadline > *received_at,
            "deadline {deadline} not after receipt {received_at}"
        );
        assert_eq!(deadline, inv.deadline_ms);
        let xray = ev["tracing"]["value"].as_str().unwrap();
        assert_eq!(xray, inv.xray_value);
        let root = xray.strip_prefix("Root=1-").unwrap();
        assert_eq!(&root[..8], &inv.trace_id[..8]);
        assert_eq!(&root[9..33], &inv.trace_id[8..]);
        assert!(xray.ends_with(";Sampled=1"));
        assert_eq!(
            ev["invokedFunctionArn"],
            "arn:aws:lambda:us-east-1:123456789012:function:lambda-env-function"
        );

        let start = position(&events, "platform.start", &inv.request_id);
        let done = position(&events, "platform.runtimeDone", &inv.request_id);
        let rep = position(&events, "platform.report", &inv.request_id);
        assert!(
            start < done && done < rep,
            "invoke {i}: {start} {done} {rep}"
        );
        assert_eq!(events[done]["record"]["status"], "success");
        assert_eq!(
            events[done]["record"]["spans"][0]["name"],
            "responseLatency"
        );
        let metrics = &events[rep]["record"]["metrics"];
        assert_eq!(metrics["memorySizeMB"], 128);
        assert_eq!(
            metrics.get("initDurationMs").is_some(),
            i == 0,
            "invoke {i}: {metrics}"
        );

        // The extension held each invoke until runtimeDone arrived: a real hold.
        assert!(inv.extensions_returned);
        assert!(inv.hold_ms > 0.0, "invoke {i}: hold {}", inv.hold_ms);

        assert_eq!(inv.tokens.len(), 2);
        assert_eq!(inv.tokens[0].method, "GET");
        assert_eq!(inv.tokens[1].method, "POST");
        for t in &inv.tokens {
            assert_eq!(t.http_status, Some(200));
            assert_eq!(t.body["token"], "t");
            assert!(
                t.traceparent.starts_with(&format!("00-{}-", inv.trace_id)),
                "{}",
                t.traceparent
            );
        }
    }
    // Every call carries the environment's AWS_SESSION_TOKEN, as the sidecar requires.
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 6);
    assert!(
        calls
            .iter()
            .all(|(_, secret)| secret.as_deref() == Some("session-of-this-test")),
        "{calls:?}"
    );

    assert!(report.telemetry.posts > 0);
    assert_eq!(report.telemetry.dropped, 0);
    assert_eq!(report.telemetry.events_sent as usize, events.len());
    assert!(report.shutdown.exited_before_deadline_ms.is_some());
    assert!(!report.shutdown.killed);
}

#[tokio::test]
async fn api_rejects_like_lambda() {
    let (port, _received) = telemetry_listener(0).await;
    let env = Environment::start(EnvConfig {
        in_process_extensions: 1,
        invokes: 1,
        gap_ms: 0,
        ..EnvConfig::default()
    })
    .await
    .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{}", env.runtime_api());

    let unknown = client
        .get(format!("{base}/2020-01-01/extension/event/next"))
        .header(
            "Lambda-Extension-Identifier",
            "00000000-0000-4000-8000-000000000000",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 403);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["errorType"], "Extension.UnknownExtensionIdentifier");

    let bad_event = client
        .post(format!("{base}/2020-01-01/extension/register"))
        .header("Lambda-Extension-Name", "bad")
        .json(&json!({"events": ["INVOKE", "RESTART"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_event.status(), 403);

    let (ext, _) = TestExtension::register(&env, "test-ext", &["INVOKE"]).await;
    let mut bad_buffering = subscription(port);
    bad_buffering["buffering"]["timeoutMs"] = json!(10);
    let (status, body) = ext.subscribe(bad_buffering).await;
    assert_eq!(status, 400);
    assert_eq!(body["errorType"], "ValidationError");
    assert!(body["errorMessage"].as_str().unwrap().contains("timeoutMs"));
    let mut reserved = subscription(port);
    reserved["destination"]["URI"] = json!("http://sandbox.localdomain:9001/telemetry");
    let (status, body) = ext.subscribe(reserved).await;
    assert_eq!(
        (status, body["errorType"].as_str()),
        (400, Some("ValidationError"))
    );

    let extension = tokio::spawn(async move {
        let ev = ext.next().await.unwrap();
        assert_eq!(ev["eventType"], "INVOKE");
        // Init is over: Lambda no longer takes subscriptions or registrations.
        let late = ext.subscribe(subscription(port)).await.0;
        let _ = ext.next().await;
        late
    });
    let report = env.run().await.unwrap();
    assert_eq!(extension.await.unwrap(), 403);
    assert_eq!(report.invokes.len(), 1);
    assert!(report.subscriptions.is_empty());
}

#[tokio::test]
async fn failed_posts_are_retried_then_delivered() {
    // The first two POSTs fail: the same batch must come again, nothing is dropped.
    let (port, received) = telemetry_listener(2).await;
    let env = Environment::start(EnvConfig {
        in_process_extensions: 1,
        invokes: 1,
        gap_ms: 0,
        ..EnvConfig::default()
    })
    .await
    .unwrap();
    let (ext, _) = TestExtension::register(&env, "test-ext", &["INVOKE", "SHUTDOWN"]).await;
    assert_eq!(ext.subscribe(subscription(port)).await.0, 200);
    let extension = flushing_extension(ext, received.clone());
    let report = env.run().await.unwrap();
    assert_eq!(extension.await.unwrap().len(), 1);
    let batches = received.batches();
    assert!(batches.len() >= 3, "{} batches", batches.len());
    assert_eq!(batches[0], batches[1]);
    assert_eq!(batches[1], batches[2]);
    assert_eq!(report.telemetry.retries, 2);
    assert_eq!(report.telemetry.dropped, 0);
    assert!(report.telemetry.posts >= 1);
}

#[tokio::test]
async fn a_dead_listener_loses_batches_after_retries() {
    let env = Environment::start(EnvConfig {
        in_process_extensions: 1,
        invokes: 1,
        gap_ms: 0,
        ..EnvConfig::default()
    })
    .await
    .unwrap();
    // A port with nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (ext, _) = TestExtension::register(&env, "test-ext", &["INVOKE"]).await;
    assert_eq!(ext.subscribe(subscription(port)).await.0, 200);
    let extension = tokio::spawn(async move {
        while let Some(ev) = ext.next().await {
            assert_eq!(ev["eventType"], "INVOKE");
            // Give the init batch time to exhaust its retries (50+100+200 ms).
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
    });
    let report = env.run().await.unwrap();
    extension.abort();
    assert_eq!(report.telemetry.posts, 0);
    assert!(report.telemetry.retries >= 3, "{:?}", report.telemetry);
    assert!(report.telemetry.dropped > 0, "{:?}", report.telemetry);
}

#[tokio::test]
async fn function_errors_and_timeouts_are_reported() {
    let env = Environment::start(EnvConfig {
        invokes: 3,
        function_timeout_ms: 300,
        fail_invokes: vec![0],
        timeout_invokes: vec![1],
        gap_ms: 0,
        ..EnvConfig::default()
    })
    .await
    .unwrap();
    let report = env.run().await.unwrap();
    let statuses: Vec<InvokeStatus> = report.invokes.iter().map(|i| i.status).collect();
    // The runtime is replaced after the timeout, so the third invoke succeeds again.
    assert_eq!(
        statuses,
        [
            InvokeStatus::Error,
            InvokeStatus::Timeout,
            InvokeStatus::Success
        ]
    );
}

#[tokio::test]
async fn snapstart_and_injected_events_are_delivered() {
    let (port, received) = telemetry_listener(0).await;
    let (token_url, calls) = token_server().await;
    let env = Environment::start(EnvConfig {
        env: vec![(
            "AWS_CONTAINER_AUTHORIZATION_TOKEN".into(),
            "container-token-of-this-test".into(),
        )],
        in_process_extensions: 1,
        invokes: 2,
        tokens_per_invoke: 1,
        token_url,
        gap_ms: 0,
        snapstart: true,
        inject_unknown: true,
        logs_dropped: true,
        ..EnvConfig::default()
    })
    .await
    .unwrap();
    let (ext, _) = TestExtension::register(&env, "test-ext", &["INVOKE", "SHUTDOWN"]).await;
    assert_eq!(ext.subscribe(subscription(port)).await.0, 200);
    let extension = flushing_extension(ext, received.clone());
    let report = env.run().await.unwrap();
    assert_eq!(extension.await.unwrap().len(), 2);
    assert_eq!(report.init.initialization_type, "snap-start");

    let events = received.events();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types[0], "platform.restoreStart");
    for t in [
        "platform.restoreRuntimeDone",
        "platform.restoreReport",
        "platform.futureThing",
        "platform.logsDropped",
    ] {
        assert!(types.contains(&t), "missing {t} in {types:?}");
    }
    assert!(
        !types.iter().any(|t| t.starts_with("platform.init")),
        "{types:?}"
    );
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "platform.futureThing")
            .count(),
        2
    );
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == "platform.logsDropped")
            .count(),
        1
    );
    let future = events
        .iter()
        .find(|e| e["type"] == "platform.futureThing")
        .unwrap();
    assert_eq!(future["futureTopLevel"], true);
    let first = &report.invokes[0].request_id;
    let start = &events[position(&events, "platform.start", first)];
    assert!(start["record"]["futureField"].is_object());
    let rep = &events[position(&events, "platform.report", first)];
    assert!(rep["record"]["metrics"]["restoreDurationMs"].is_number());
    assert!(rep["record"]["metrics"].get("initDurationMs").is_none());
    // No AWS_SESSION_TOKEN with SnapStart: the function sends the container token instead.
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    assert!(
        calls
            .iter()
            .all(|(_, secret)| secret.as_deref() == Some("container-token-of-this-test")),
        "{calls:?}"
    );
}

/// Managed Instances: INVOKE registration refused as Lambda refuses it, SHUTDOWN-only
/// accepted, only schema 2025-01-29 subscribed, 4 workers running invocations at once (their
/// events interleaved in the stream), token calls naming their request id, no freeze.
#[tokio::test]
async fn managed_instances_overlap_invocations_for_a_shutdown_only_extension() {
    let (port, received) = telemetry_listener(0).await;
    let (token_url, _) = token_server().await;
    let env = Environment::start(EnvConfig {
        in_process_extensions: 1,
        managed_instances: true,
        workers: 4,
        invokes: 12,
        tokens_per_invoke: 1,
        token_url,
        function_ms: 100,
        gap_ms: 0,
        ..EnvConfig::default()
    })
    .await
    .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{}", env.runtime_api());
    let refused = client
        .post(format!("{base}/2020-01-01/extension/register"))
        .header("Lambda-Extension-Name", "invoke-ext")
        .json(&json!({"events": ["INVOKE", "SHUTDOWN"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["errorType"], "Extension.InvalidEventType");

    let (ext, _) = TestExtension::register(&env, "shutdown-ext", &["SHUTDOWN"]).await;
    let (status, body) = ext.subscribe(subscription(port)).await;
    assert_eq!(
        (status, body["errorType"].as_str()),
        (400, Some("ValidationError"))
    );
    let mut current = subscription(port);
    current["schemaVersion"] = json!("2025-01-29");
    assert_eq!(ext.subscribe(current).await.0, 200);
    let extension = tokio::spawn(async move {
        let ev = ext.next().await.unwrap();
        let _ = ext.next().await;
        ev
    });
    let report = env.run().await.unwrap();
    assert_eq!(extension.await.unwrap()["eventType"], "SHUTDOWN");
    assert_eq!(report.init.initialization_type, "lambda-managed-instances");
    assert_eq!(report.invokes.len(), 12);
    for invoke in &report.invokes {
        assert_eq!(invoke.status, InvokeStatus::Success, "{invoke:?}");
        assert_eq!(invoke.tokens.len(), 1);
    }
    // Starts of later invocations come before reports of earlier ones: overlap.
    let events = received.events();
    let first = report.invokes[0].request_id.as_str();
    let second = report.invokes[1].request_id.as_str();
    assert!(
        position(&events, "platform.start", second) < position(&events, "platform.report", first)
    );
}

/// The built-in function names its invocation in `Lambda-Runtime-Aws-Request-Id` on Managed
/// Instances only.
#[tokio::test]
async fn token_calls_name_their_request_id_on_managed_instances() {
    for managed_instances in [false, true] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let app = Router::new().route(
            "/token",
            get(move |headers: HeaderMap| {
                let s = s.clone();
                async move {
                    let id = headers
                        .get("lambda-runtime-aws-request-id")
                        .map(|v| v.to_str().unwrap().to_string());
                    s.lock().unwrap().push(id);
                    axum::Json(json!({"token": "t"}))
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let token_url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let env = Environment::start(EnvConfig {
            in_process_extensions: 1,
            managed_instances,
            invokes: 2,
            tokens_per_invoke: 1,
            token_mode: lambda_env::TokenMode::Get,
            token_url,
            gap_ms: 0,
            ..EnvConfig::default()
        })
        .await
        .unwrap();
        let events: &[&str] = if managed_instances {
            &["SHUTDOWN"]
        } else {
            &["INVOKE", "SHUTDOWN"]
        };
        let (ext, _) = TestExtension::register(&env, "ext", events).await;
        let extension = tokio::spawn(async move { while ext.next().await.is_some() {} });
        let report = env.run().await.unwrap();
        extension.abort();
        let expected: Vec<Option<String>> = report
            .invokes
            .iter()
            .map(|i| managed_instances.then(|| i.request_id.clone()))
            .collect();
        assert_eq!(*seen.lock().unwrap(), expected);
    }
}
