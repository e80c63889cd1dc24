//! Logs: JSON lines inside Lambda (what CloudWatch Logs Insights queries), text on a terminal.
//!
//! Every line is marked as the sidecar's ([`MARK_JSON`], [`MARK_TEXT`]), its dependencies'
//! lines (an HTTP client's `connecting to …` at debug level) included. Lambda hands an
//! extension's stderr back to subscribers as `extension` records without saying which
//! extension wrote it; the mark is how log forwarding (derive/logs.rs) skips the sidecar's own
//! lines, so that nothing a flush logs becomes a record of the next flush.
//!
//! Invariant: no module logs a token, a secret or a claim value. Handlers log outcomes and
//! sizes; key and config errors describe the problem without quoting the value.

use std::fmt;
use std::io::IsTerminal as _;

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogConfig, LogFormat};

/// The name in the mark.
pub const MARK_NAME: &str = "lambda-sidecar";
/// How a JSON line starts: its first field, `extension`, is [`MARK_NAME`].
pub const MARK_JSON: &str = r#"{"extension":"lambda-sidecar","#;
/// How a text line starts.
pub const MARK_TEXT: &str = "[lambda-sidecar] ";

/// Targets never logged, whatever `SIDECAR_LOG` says: `aws_sigv4` traces the canonical
/// request it signs, which carries `x-amz-security-token` (the `AWS_SESSION_TOKEN`, also the
/// `X-Sidecar-Token` value).
const SILENCED: &[&str] = &["aws_sigv4"];

/// Installs the global subscriber. Logs go to stderr so that stdout stays free for
/// machine-readable output (CloudWatch EMF lines).
pub fn init(config: &LogConfig) {
    // Validated by `Config::parse`; the fallback only serves the default configuration.
    let mut filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    for target in SILENCED {
        if let Ok(directive) = format!("{target}=off").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .map_event_format(|inner| Marked { inner, json: true })
            .try_init(),
        LogFormat::Text => builder
            .map_event_format(|inner| Marked { inner, json: false })
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("lambda-sidecar: logging could not be initialised: {e}");
    }
}

/// An event format that starts every line with the sidecar's mark.
struct Marked<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for Marked<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if !self.json {
            writer.write_str(MARK_TEXT)?;
            return self.inner.format_event(ctx, writer, event);
        }
        // The mark goes inside the object, as its first field.
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => {
                writer.write_str(MARK_JSON)?;
                writer.write_str(rest)
            }
            None => writer.write_str(&line),
        }
    }
}
