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
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};
use crate::selftrace::{self, SelfTraces};

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
/// machine-readable output (CloudWatch EMF lines). With `self_traces`, the spans of
/// [`selftrace::TARGET`] also become OpenTelemetry spans (never log lines); without, that
/// target is off like the silenced ones, so its call sites cost nothing.
pub fn init(config: &LogConfig, self_traces: Option<&SelfTraces>) {
    // Validated by `Config::parse`; the fallback only serves the default configuration.
    let mut filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    for target in SILENCED.iter().chain([&selftrace::TARGET]) {
        if let Ok(directive) = format!("{target}=off").parse() {
            filter = filter.add_directive(directive);
        }
    }
    if let Some(self_traces) = self_traces {
        init_layered(config, filter, self_traces);
        return;
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

/// [`init`] with self-traces on: the log lines as without, each layer with its own filter.
fn init_layered(config: &LogConfig, filter: EnvFilter, self_traces: &SelfTraces) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match config.format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .map_event_format(|inner| Marked { inner, json: true })
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => fmt
            .map_event_format(|inner| Marked { inner, json: false })
            .with_filter(filter)
            .boxed(),
    };
    let result = tracing_subscriber::registry()
        .with(fmt)
        .with(self_traces.layer())
        .try_init();
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
