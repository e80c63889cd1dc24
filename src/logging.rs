//! Logs: JSON lines inside Lambda (what CloudWatch Logs Insights queries), text on a terminal.
//!
//! Invariant: no module logs a token, a secret or a claim value. Handlers log outcomes and
//! sizes; key and config errors describe the problem without quoting the value.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Logs go to stderr so that stdout stays free for
/// machine-readable output (CloudWatch EMF lines).
pub fn init(config: &LogConfig) {
    // Validated by `Config::parse`; the fallback only serves the default configuration.
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Every line names its module (`lambda_sidecar::…`): Lambda hands the sidecar's own
        // lines back as `extension` log records, and this is how it recognises and skips
        // them instead of forwarding them (derive/logs.rs).
        .with_target(true)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("lambda-sidecar: logging could not be initialised: {e}");
    }
}
