//! The sandbox's HTTP API on 127.0.0.1:<random port>: Runtime API, Extensions API and
//! Telemetry API, all backed by one shared state ([`crate::state`]) that the orchestrator
//! drives.
//!
//! `event/next` and `invocation/next` block on the caller's own queue, like Lambda's:
//! an extension only ever sees events queued for it.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

use crate::aws::ACCOUNT_ID;
use crate::clock::rfc3339_ms;
use crate::ids::{random_hex, uuid_v4};
use crate::report::{ExtensionError, InvokeStatus, Registration};
use crate::state::{Extension, Inner, Outcome, Phase, Shared};
use crate::telemetry;

pub const EXTENSION_ID_HEADER: &str = "lambda-extension-identifier";
pub const EXTENSION_NAME_HEADER: &str = "lambda-extension-name";
pub const EXTENSION_ERROR_HEADER: &str = "lambda-extension-function-error-type";
pub const RUNTIME_ERROR_HEADER: &str = "lambda-runtime-function-error-type";
/// Where SnapStart's container credentials endpoint is served, on the same address as the
/// other APIs. A path of lambda-env's own: what matters is that it is loopback, and that the
/// whole URL is handed over in `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
pub const CREDENTIALS_PATH: &str = "/credentials";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/2020-01-01/extension/register", post(register))
        .route("/2020-01-01/extension/event/next", get(event_next))
        .route(
            "/2020-01-01/extension/init/error",
            post(extension_init_error),
        )
        .route(
            "/2020-01-01/extension/exit/error",
            post(extension_exit_error),
        )
        .route("/2022-07-01/telemetry", put(subscribe))
        .route("/2018-06-01/runtime/invocation/next", get(invocation_next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(invocation_response),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(invocation_error),
        )
        .route("/2018-06-01/runtime/init/error", post(runtime_init_error))
        .route(CREDENTIALS_PATH, get(container_credentials))
        .with_state(shared)
}

/// A Lambda API error: `{"errorMessage","errorType"}` with a status.
pub(crate) struct ApiError {
    status: StatusCode,
    error_type: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"errorMessage": self.message, "errorType": self.error_type});
        (self.status, axum::Json(body)).into_response()
    }
}

impl ApiError {
    fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error_type,
            message: message.into(),
        }
    }
}

fn error(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(status, error_type, message).into_response()
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Resolves `Lambda-Extension-Identifier` to an index; 403 like Lambda when unknown.
fn extension_index(inner: &Inner, headers: &HeaderMap) -> Result<usize, ApiError> {
    let Some(id) = header(headers, EXTENSION_ID_HEADER) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Extension.MissingExtensionIdentifier",
            "missing Lambda-Extension-Identifier header",
        ));
    };
    inner
        .extensions
        .iter()
        .position(|e| e.reg.id == id)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "Extension.UnknownExtensionIdentifier",
                format!("Unknown extension {id}"),
            )
        })
}

/// SnapStart's container credentials endpoint, as the AWS SDKs' container provider calls it:
/// `GET` with `Authorization: <AWS_CONTAINER_AUTHORIZATION_TOKEN>`, answered with
/// `AccessKeyId`, `SecretAccessKey`, `Token` and `Expiration` (RFC 3339, `credentials_ttl`
/// from now). Random credentials at each request, or `container_keys` without a `Token`. A
/// request without the right header gets 401; 404 when the environment is not SnapStart.
async fn container_credentials(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let mut inner = s.lock();
    let Some(endpoint) = inner.credentials.as_mut() else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            "no container credentials outside SnapStart",
        );
    };
    let given = headers.get(axum::http::header::AUTHORIZATION);
    if given.map(HeaderValue::as_bytes) != Some(endpoint.token.as_bytes()) {
        endpoint.refused += 1;
        return error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthorizationToken",
            "the Authorization header must be AWS_CONTAINER_AUTHORIZATION_TOKEN",
        );
    }
    endpoint.served += 1;
    let expiration = rfc3339_ms(SystemTime::now() + endpoint.ttl);
    let mut answer = match &endpoint.keys {
        Some((id, secret)) => json!({"AccessKeyId": id, "SecretAccessKey": secret}),
        None => json!({
            "AccessKeyId": format!("ASIA{}", random_hex(8).to_uppercase()),
            "SecretAccessKey": random_hex(20),
            "Token": random_hex(64),
        }),
    };
    answer["Expiration"] = json!(expiration);
    (StatusCode::OK, axum::Json(answer)).into_response()
}

fn json_body(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

async fn register(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(name) = header(&headers, EXTENSION_NAME_HEADER).filter(|n| !n.is_empty()) else {
        return error(
            StatusCode::FORBIDDEN,
            "Extension.MissingHeader",
            "missing Lambda-Extension-Name header",
        );
    };
    let events: Vec<String> = match serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("events").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
    {
        Some(ev) => ev,
        None => {
            return error(
                StatusCode::FORBIDDEN,
                "InvalidRequestFormat",
                "body must be {\"events\":[...]}",
            );
        }
    };
    if let Some(bad) = events
        .iter()
        .find(|e| !matches!(e.as_str(), "INVOKE" | "SHUTDOWN"))
    {
        return error(
            StatusCode::FORBIDDEN,
            "Extension.InvalidEventType",
            format!("invalid event type {bad}"),
        );
    }
    // As on Lambda Managed Instances, where invocations overlap and no extension takes part
    // in one: the event is refused, which fails init.
    if s.lock().managed_instances && events.iter().any(|e| e == "INVOKE") {
        return error(
            StatusCode::FORBIDDEN,
            "Extension.InvalidEventType",
            "INVOKE: extensions may register for SHUTDOWN only on Lambda Managed Instances",
        );
    }
    let id = uuid_v4();
    let result = s.update(|inner| {
        if inner.phase != Phase::Init {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Extension.RegistrationClosed",
                "registration is only allowed during init",
            ));
        }
        if inner.extensions.iter().any(|e| e.reg.name == name) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Extension.InvalidExtensionName",
                format!("extension {name} is already registered"),
            ));
        }
        inner.extensions.push(Extension::new(Registration {
            name: name.to_string(),
            events,
            id: id.clone(),
        }));
        Ok(())
    });
    if let Err(r) = result {
        return r.into_response();
    }
    let mut body = json!({
        "functionName": s.function_name,
        "functionVersion": "$LATEST",
        "handler": "bootstrap",
    });
    if header(&headers, "lambda-extension-accept-feature") == Some("accountId") {
        body["accountId"] = json!(ACCOUNT_ID);
    }
    let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(EXTENSION_ID_HEADER, v);
    }
    resp
}

/// Clears the `waiting` mark if the caller goes away while blocked (process killed).
struct WaitingGuard<'a> {
    shared: &'a Shared,
    id: String,
    armed: bool,
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let id = &self.id;
            self.shared.update(|inner| {
                if let Some(e) = inner.extensions.iter_mut().find(|e| e.reg.id == *id) {
                    e.waiting = false;
                }
            });
        }
    }
}

async fn event_next(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let (idx, id) = {
        let mut inner = s.lock();
        let idx = match extension_index(&inner, &headers) {
            Ok(i) => i,
            Err(r) => return r.into_response(),
        };
        let phase = inner.phase;
        let ext = &mut inner.extensions[idx];
        ext.waiting = true;
        ext.last_next_at = Some(Instant::now());
        let announce = !ext.ready_announced && phase == Phase::Init;
        ext.ready_announced = true;
        let (name, events, id) = (
            ext.reg.name.clone(),
            ext.reg.events.clone(),
            ext.reg.id.clone(),
        );
        drop(inner);
        s.bump();
        if announce {
            s.hub.emit(
                "platform.extension",
                json!({"name": name, "state": "Ready", "events": events}),
            );
        }
        (idx, id)
    };
    let mut guard = WaitingGuard {
        shared: &s,
        id,
        armed: true,
    };
    let event = s
        .take_next(|inner| {
            let ext = inner.extensions.get_mut(idx)?;
            let ev = ext.queue.pop_front()?;
            ext.waiting = false;
            Some(ev)
        })
        .await;
    guard.armed = false;
    drop(guard);
    match event {
        Some(ev) => {
            let mut resp = (StatusCode::OK, axum::Json(ev)).into_response();
            if let Ok(v) = HeaderValue::from_str(&uuid_v4()) {
                resp.headers_mut()
                    .insert("lambda-extension-event-identifier", v);
            }
            resp
        }
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sandbox.Closed",
            "the environment is shutting down",
        ),
    }
}

fn extension_error(
    s: &Shared,
    headers: &HeaderMap,
    body: &Bytes,
    record: impl FnOnce(&mut Inner, String, String, Value),
) -> Response {
    let error_type = header(headers, EXTENSION_ERROR_HEADER)
        .unwrap_or_default()
        .to_string();
    let body = json_body(body);
    let mut inner = s.lock();
    let idx = match extension_index(&inner, headers) {
        Ok(i) => i,
        Err(r) => return r.into_response(),
    };
    let name = inner.extensions[idx].reg.name.clone();
    record(&mut inner, name, error_type, body);
    drop(inner);
    s.bump();
    accepted()
}

async fn extension_init_error(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    extension_error(&s, &headers, &body, |inner, name, error_type, body| {
        inner.init_error.get_or_insert((name, error_type, body));
    })
}

async fn extension_exit_error(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    extension_error(&s, &headers, &body, |inner, extension, error_type, body| {
        inner.exit_errors.push(ExtensionError {
            extension,
            error_type,
            body,
        });
    })
}

async fn subscribe(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (id, name, managed_instances) = {
        let inner = s.lock();
        let idx = match extension_index(&inner, &headers) {
            Ok(i) => i,
            Err(r) => return r.into_response(),
        };
        if inner.phase != Phase::Init {
            return error(
                StatusCode::FORBIDDEN,
                "Telemetry.SubscriptionClosed",
                "subscriptions are only accepted during init",
            );
        }
        if inner.refuse_telemetry {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Telemetry.ServiceException",
                "the Telemetry API is unavailable",
            );
        }
        let reg = &inner.extensions[idx].reg;
        (reg.id.clone(), reg.name.clone(), inner.managed_instances)
    };
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            "body is not JSON",
        );
    };
    let sub = match telemetry::validate(&request) {
        Ok(sub) => sub,
        Err(e) => return error(StatusCode::BAD_REQUEST, "ValidationError", e.0),
    };
    if managed_instances && sub.schema_version != telemetry::MANAGED_INSTANCES_SCHEMA {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            format!(
                "Lambda Managed Instances require schemaVersion {}",
                telemetry::MANAGED_INSTANCES_SCHEMA
            ),
        );
    }
    let types = sub.types.clone();
    s.hub.subscribe(&id, &name, sub);
    s.update(|inner| inner.subscriptions.push(request));
    s.hub.emit(
        "platform.telemetrySubscription",
        json!({"name": name, "state": "Subscribed", "types": types}),
    );
    (StatusCode::OK, "OK").into_response()
}

async fn invocation_next(State(s): State<Arc<Shared>>) -> Response {
    s.update(|inner| inner.runtime_waiting = true);
    let inv = s
        .take_next(|inner| {
            let inv = inner.runtime_queue.pop_front()?;
            inner.runtime_waiting = false;
            Some(inv)
        })
        .await;
    s.update(|inner| inner.runtime_waiting = false);
    let Some(inv) = inv else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sandbox.Closed",
            "the environment is shutting down",
        );
    };
    let mut resp = (StatusCode::OK, axum::Json(inv.payload)).into_response();
    let h = resp.headers_mut();
    for (name, value) in [
        ("lambda-runtime-aws-request-id", inv.request_id),
        ("lambda-runtime-deadline-ms", inv.deadline_ms.to_string()),
        ("lambda-runtime-invoked-function-arn", inv.arn),
        ("lambda-runtime-trace-id", inv.xray_value),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    resp
}

fn finish_invocation(s: &Shared, id: &str, outcome: Outcome) -> Response {
    let ok = s.update(|inner| {
        let active =
            inner.active_request.as_deref() == Some(id) || inner.active_requests.contains(id);
        if !active || inner.outcomes.contains_key(id) {
            return false;
        }
        inner.outcomes.insert(id.to_string(), outcome);
        true
    });
    if ok {
        accepted()
    } else {
        error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            format!("request {id} is not awaiting a response"),
        )
    }
}

async fn invocation_response(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let outcome = Outcome {
        at: Instant::now(),
        status: InvokeStatus::Success,
        produced_bytes: body.len(),
        error_type: None,
    };
    finish_invocation(&s, &id, outcome)
}

async fn invocation_error(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let error_type = header(&headers, RUNTIME_ERROR_HEADER)
        .map(str::to_string)
        .or_else(|| {
            json_body(&body)
                .get("errorType")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let outcome = Outcome {
        at: Instant::now(),
        status: InvokeStatus::Error,
        produced_bytes: body.len(),
        error_type,
    };
    finish_invocation(&s, &id, outcome)
}

async fn runtime_init_error(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let error_type = header(&headers, RUNTIME_ERROR_HEADER)
        .unwrap_or("Runtime.Unknown")
        .to_string();
    let body = json_body(&body);
    s.update(|inner| {
        inner.runtime_init_error.get_or_insert((error_type, body));
    });
    accepted()
}
