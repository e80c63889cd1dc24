//! The CloudWatch Logs stream OTLP logs go to, when they go to a group of the user's
//! (`SIDECAR_OTLP_LOG_GROUP`): the logs endpoint writes to existing streams only, so the
//! sidecar creates the execution environment's stream there at start (`CreateLogStream`; one
//! that exists already is fine). In the function's own group Lambda has created it.
//!
//! A failure stops init, as a key source's does (`LogStream.NotFound` for a group that does
//! not exist, `LogStream.AccessDenied` without `logs:CreateLogStream`, …): otherwise every
//! logs export would be refused, and the logs lost.

use std::time::Duration;

use serde_json::json;

use crate::aws::{AwsClient, AwsError, SourceErrorKind};
use crate::config::LogDestination;

/// The longest the call may take (as a key source's).
const TIMEOUT: Duration = Duration::from_secs(3);

/// The stream could not be created.
#[derive(Debug, thiserror::Error)]
#[error("SIDECAR_OTLP_LOG_GROUP={group}: creating the log stream failed: {detail}")]
pub struct LogStreamError {
    pub kind: SourceErrorKind,
    pub group: String,
    pub detail: String,
}

impl LogStreamError {
    pub fn error_type(&self) -> &'static str {
        match self.kind {
            SourceErrorKind::NotFound => "LogStream.NotFound",
            SourceErrorKind::AccessDenied => "LogStream.AccessDenied",
            SourceErrorKind::Unreachable => "LogStream.Unreachable",
            SourceErrorKind::NoCredentials => "LogStream.NoCredentials",
            SourceErrorKind::WrongKeyType
            | SourceErrorKind::KeyDisabled
            | SourceErrorKind::ServiceError => "LogStream.ServiceError",
        }
    }
}

/// Creates `destination`'s stream when it is in a group of the user's; nothing otherwise.
pub async fn create_log_stream(destination: &LogDestination) -> Result<(), LogStreamError> {
    let Some(settings) = &destination.create_in else {
        return Ok(());
    };
    let failed = |e: AwsError| LogStreamError {
        kind: SourceErrorKind::of(&e),
        group: destination.group.clone(),
        detail: e.to_string(),
    };
    let client = AwsClient::new(settings.clone()).map_err(failed)?;
    let body = json!({
        "logGroupName": destination.group,
        "logStreamName": destination.stream,
    });
    match client.call("CreateLogStream", &body, TIMEOUT).await {
        Ok(_) => Ok(()),
        Err(AwsError::Service { code, .. }) if code == "ResourceAlreadyExistsException" => Ok(()),
        Err(e) => Err(failed(e)),
    }
}
