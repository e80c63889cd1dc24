//! The sidecar's own log lines: `SIDECAR_LOG` and `SIDECAR_LOG_FORMAT`.

use super::{ConfigError, Env};

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// An `EnvFilter` directive string (`SIDECAR_LOG`, RUST_LOG syntax).
    pub filter: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line: what CloudWatch Logs Insights queries best.
    Json,
    /// Human-readable lines for local development.
    Text,
}

pub(super) fn log_config(env: &Env<'_>) -> Result<LogConfig, ConfigError> {
    let filter = match env.get("SIDECAR_LOG") {
        None => "info".to_string(),
        Some(filter) => match tracing_subscriber::EnvFilter::try_new(&filter) {
            Ok(_) => filter,
            Err(e) => {
                return Err(ConfigError::Invalid {
                    var: "SIDECAR_LOG",
                    value: filter,
                    expected: format!(
                        "a RUST_LOG-style filter such as info or lambda_sidecar=debug ({e})"
                    ),
                });
            }
        },
    };
    let format = env.choice(
        "SIDECAR_LOG_FORMAT",
        &[("json", LogFormat::Json), ("text", LogFormat::Text)],
        // JSON inside Lambda (CloudWatch), text on a developer's terminal.
        if env.get("AWS_LAMBDA_FUNCTION_NAME").is_some() {
            LogFormat::Json
        } else {
            LogFormat::Text
        },
    )?;
    Ok(LogConfig { filter, format })
}
