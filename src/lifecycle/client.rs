//! The Extensions and Telemetry APIs: register, `init/error`, the Telemetry API
//! subscription, and the check of `AWS_LAMBDA_RUNTIME_API` before any of them. Everything
//! that talks to Lambda's APIs is here; what the sidecar does with their answers is not.

use std::future::Future;
use std::time::Duration;

use http_body_util::BodyExt as _;
use lambda_extension::requests::{ErrorRequest, init_error};
use lambda_extension::{Extension, LambdaEvent, NextEvent, service_fn};
use lambda_runtime_api_client::Client;
use tokio::sync::{mpsc, oneshot};

use super::StartupError;
use crate::config::Lambda;

/// Must equal the file name under /opt/extensions (the layer ships `extensions/lambda-sidecar`).
const EXTENSION_NAME: &str = "lambda-sidecar";

/// The longest `init/error` may take before the process exits anyway.
const INIT_ERROR_WAIT: Duration = Duration::from_secs(2);

/// Checks `AWS_LAMBDA_RUNTIME_API` before the `lambda-extension` crate reads it (the crate
/// panics on a missing or unparsable value). Accepts `host:port` (Lambda) and
/// `http://host:port/prefix` (emulators).
pub fn check_runtime_api() -> Result<(), String> {
    Lambda::from_env().check_runtime_api()
}

/// An event handed over by the crate's event/next loop, and the way to let the loop go on.
pub type Handoff = (NextEvent, oneshot::Sender<()>);

/// The extension as Lambda registered it.
pub struct Registered<L> {
    /// The registered extension's calls to the Extensions and Telemetry APIs.
    pub api: ExtensionsApi,
    /// The function the sidecar runs beside.
    pub function_name: String,
    /// Its account, which Lambda gives an extension that asks (the crate does):
    /// `cloud.account.id` on the resource.
    pub account_id: Option<String>,
    /// The crate's event/next loop: it hands each event over `handoffs` and ends only on an
    /// error.
    pub next_events: L,
    pub handoffs: mpsc::Receiver<Handoff>,
}

/// Registers for INVOKE and SHUTDOWN (SHUTDOWN alone on Managed Instances, where registering
/// for INVOKE fails init). The `lambda-extension` crate drives event/next, but calls it again
/// only once the event handed over is answered: nothing the sidecar does at an event is cut
/// short by the freeze that follows event/next.
pub async fn register(
    managed_instances: bool,
) -> Result<
    Registered<impl Future<Output = Result<(), lambda_extension::Error>>>,
    lambda_extension::Error,
> {
    let events: &[&str] = if managed_instances {
        &["SHUTDOWN"]
    } else {
        &["INVOKE", "SHUTDOWN"]
    };
    let (handoff_tx, handoffs) = mpsc::channel::<Handoff>(1);
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
    let registered = Extension::new()
        .with_extension_name(EXTENSION_NAME)
        .with_events(events)
        .with_events_processor(processor)
        .register()
        .await?;
    let api = ExtensionsApi {
        client: Client::builder().build()?,
        extension_id: registered.extension_id.clone(),
    };
    Ok(Registered {
        api,
        function_name: registered.function_name.clone(),
        account_id: registered.account_id.clone(),
        next_events: registered.run(),
        handoffs,
    })
}

/// The calls a registered extension makes besides event/next, which the crate drives. The
/// crate's client is reused, rather than a second HTTP client.
pub struct ExtensionsApi {
    client: Client,
    extension_id: String,
}

impl ExtensionsApi {
    /// `PUT /2022-07-01/telemetry`: schema 2022-12-13 (2025-01-29 on Managed Instances), our
    /// listener as `destination` (it holds the secret path: never log it). The
    /// lambda-extension crate's own subscription hard-codes the older schema and its own
    /// listener, so it is not used.
    pub async fn subscribe(
        &self,
        types: &[&str],
        destination: &str,
        buffer_ms: u32,
        managed_instances: bool,
    ) -> Result<(), StartupError> {
        let body = serde_json::json!({
            "schemaVersion": if managed_instances { "2025-01-29" } else { "2022-12-13" },
            "destination": {"protocol": "HTTP", "URI": destination},
            "types": types,
            "buffering": {"maxItems": 1000, "maxBytes": 262_144, "timeoutMs": buffer_ms},
        });
        let request = lambda_runtime_api_client::build_request()
            .method("PUT")
            .uri("/2022-07-01/telemetry")
            .header("Lambda-Extension-Identifier", &self.extension_id)
            .header("Content-Type", "application/json")
            .body(body.to_string().into())
            .map_err(|e| StartupError::Subscribe(e.to_string()))?;
        let response = self
            .client
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

    /// `POST /extension/init/error`. Best effort: the process exits non-zero either way.
    pub async fn report_init_error(&self, error: &StartupError) {
        let message = error.to_string();
        let request = init_error(
            &self.extension_id,
            error.error_type(),
            Some(ErrorRequest {
                error_message: &message,
                error_type: error.error_type(),
                stack_trace: Vec::new(),
            }),
        );
        let result = match request {
            // Lambda answers at once; the bound is for an emulator (or a broken API) that
            // never does, so that a failed start always ends in an exit.
            Ok(request) => tokio::time::timeout(INIT_ERROR_WAIT, self.client.call(request))
                .await
                .map_err(|_| format!("no answer within {INIT_ERROR_WAIT:?}"))
                .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string())),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "init/error could not be reported");
        }
    }
}

/// The Telemetry API types to subscribe to: those configured (`SIDECAR_TELEMETRY_TYPES`)
/// that something uses. `platform` feeds spans and metrics; `function` and `extension` only
/// log records, so without a logs exporter they are left out: Lambda would otherwise POST
/// every line the function writes to a listener that throws it away.
pub fn subscribed_types(configured: &[String], logs: bool) -> Vec<&str> {
    configured
        .iter()
        .map(String::as_str)
        .filter(|t| logs || *t == "platform")
        .collect()
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
}
