//! Logs: `function` and `extension` records become OpenTelemetry log records.
//!
//! Each record carries the line's time, its severity (a JSON line's `level`; a text line has
//! none, `Unspecified` in OTLP), its body (the text, or the JSON object as a map),
//! `faas.invocation_id`, and the invocation's trace id and span id, so a backend shows the
//! logs of an invocation beside its trace. The trace flags are the invocation's sampling
//! decision: an unsampled invocation's logs still carry its ids (they group the logs of one
//! invocation, and match X-Ray's id), with the sampled flag off, which tells a backend not to
//! expect the trace.
//!
//! Which invocation a line belongs to: a JSON line's `requestId` (Lambda writes it into every
//! line in its JSON log format), else the invocation that was running at the line's time, the
//! one with the latest start at or before it. Time, not "the latest INVOKE": telemetry for an
//! invocation often arrives during the next one, after its INVOKE.
//!
//! The sidecar's own lines come back from Lambda as `extension` records; they are not
//! forwarded ([`is_own`]), so nothing a flush logs becomes a record of the next flush.
//! (Its EMF lines on stdout, with `SIDECAR_EMF=on`, are not marked: a fixed number per
//! flush, forwarded like any extension's.)

use std::collections::HashMap;
use std::time::SystemTime;

use opentelemetry::Key;
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{SdkLogRecord, SdkLogger, SdkLoggerProvider};
use serde_json::{Map, Value};

use super::{Deriver, flags, started_last_by};
use crate::intake::events::{LogLine, MAX_REQUEST_ID_BYTES};
use crate::signals::Signal;

/// What a record weighs in the log buffers' byte bound beyond its text: the record itself,
/// its ids and attributes (an `SdkLogRecord` is ~200 bytes before its body).
pub const RECORD_OVERHEAD_BYTES: usize = 256;

/// Log records held until the next drain, in bytes (text plus [`RECORD_OVERHEAD_BYTES`]
/// each). The exporter's buffer has the same bound and drops the oldest beyond it, so
/// holding more here would only cost memory. Past it new lines are dropped and counted
/// (`sidecar.export.dropped_items{signal="logs"}`).
pub const MAX_PENDING_LOG_BYTES: usize = crate::export::LOG_BUFFER_BYTES;

/// A log record ready for export, and its weight in the byte bounds.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub record: SdkLogRecord,
    pub bytes: usize,
}

/// Which Telemetry API stream a line came from (the `sidecar.log.source` attribute).
#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    Function,
    Extension,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Function => "function",
            Source::Extension => "extension",
        }
    }
}

/// The log side of the deriver, present only when logs are exported.
pub(super) struct Logs {
    /// The SDK's record factory: a provider with no processor, since records are exported
    /// by the exporter at a flush, not by an SDK thread (the exporter also names the scope).
    logger: SdkLogger,
    pending: Vec<LogEntry>,
    pending_bytes: usize,
}

impl Logs {
    pub(super) fn new() -> Logs {
        let provider = SdkLoggerProvider::builder()
            .with_resource(Resource::builder_empty().build())
            .build();
        Logs {
            logger: provider.logger("lambda-sidecar"),
            pending: Vec::new(),
            pending_bytes: 0,
        }
    }
}

impl Deriver {
    /// A `function` or `extension` line: a log record, unless logs are off or it is the
    /// sidecar's own line.
    pub(super) fn log(&mut self, time: SystemTime, source: Source, line: LogLine) {
        let Some(logs) = self.logs.as_mut() else {
            return;
        };
        if matches!(source, Source::Extension) && is_own(&line) {
            return;
        }
        let request_id = match &line {
            LogLine::Json { fields, .. } => fields
                .get("requestId")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_BYTES)
                .map(str::to_owned),
            LogLine::Text { .. } => None,
        };
        let invocation = match &request_id {
            Some(id) => self.invocations.get_key_value(id.as_str()),
            // A line after `platform.runtimeDone` (an extension's post-runtime work) still
            // belongs to the invocation until the next one starts; on Managed Instances,
            // where invocations overlap, only a request id tells.
            None if self.overlapping => None,
            None => started_last_by(&self.invocations, time),
        };
        let mut record = logs.logger.create_log_record();
        record.set_timestamp(time);
        // Lambda observed the line when it stamped it. Required: opentelemetry-proto's
        // encoder unwraps it (the SDK's `emit`, which is not used here, would set it).
        record.set_observed_timestamp(time);
        if let Some((_, invocation)) = invocation {
            record.set_trace_context(
                invocation.trace_id,
                invocation.span_id,
                Some(flags(invocation.sampled)),
            );
        }
        if let Some(id) = request_id.or_else(|| invocation.map(|(id, _)| id.clone())) {
            record.add_attribute("faas.invocation_id", id);
        }
        record.add_attribute("sidecar.log.source", source.as_str());
        let bytes = RECORD_OVERHEAD_BYTES + line.bytes();
        let (severity, body, truncated) = match line {
            LogLine::Text { text, truncated } => (None, AnyValue::String(text.into()), truncated),
            LogLine::Json { fields, .. } => (
                fields
                    .get("level")
                    .and_then(Value::as_str)
                    .and_then(severity),
                AnyValue::Map(Box::new(map_value(fields))),
                false,
            ),
        };
        if let Some((number, text)) = severity {
            record.set_severity_number(number);
            record.set_severity_text(text);
        }
        record.set_body(body);
        if truncated {
            record.add_attribute("sidecar.log.truncated", true);
        }
        if logs.pending_bytes + bytes > MAX_PENDING_LOG_BYTES {
            self.metrics.dropped(Signal::Logs, 1);
            return;
        }
        logs.pending_bytes += bytes;
        logs.pending.push(LogEntry { record, bytes });
    }

    /// The log records derived since the last call, oldest first.
    pub fn take_logs(&mut self) -> Vec<LogEntry> {
        match self.logs.as_mut() {
            Some(logs) => {
                logs.pending_bytes = 0;
                std::mem::take(&mut logs.pending)
            }
            None => Vec::new(),
        }
    }
}

/// Lambda's log levels (its JSON log format and `AWS_LAMBDA_LOG_LEVEL`) as OTel severities,
/// per the data model's mapping: TRACE 1, DEBUG 5, INFO 9, WARN 13, ERROR 17, FATAL 21.
/// Case-insensitive, with the spellings runtimes also use (`WARNING`, Python's `CRITICAL`).
/// Anything else is left unspecified; the line's `level` stays in the body.
fn severity(level: &str) -> Option<(Severity, &'static str)> {
    let severity = match level.trim().to_ascii_uppercase().as_str() {
        "TRACE" => Severity::Trace,
        "DEBUG" => Severity::Debug,
        "INFO" => Severity::Info,
        "WARN" | "WARNING" => Severity::Warn,
        "ERROR" => Severity::Error,
        "FATAL" | "CRITICAL" => Severity::Fatal,
        _ => return None,
    };
    Some((severity, severity.name()))
}

/// A JSON object as an OTel map. `null` has no counterpart in the SDK's `AnyValue`: such
/// fields (and list items) are left out. Depth is bounded by serde_json's recursion limit.
fn map_value(fields: Map<String, Value>) -> HashMap<Key, AnyValue> {
    fields
        .into_iter()
        .filter_map(|(key, value)| Some((Key::from(key), any_value(value)?)))
        .collect()
}

fn any_value(value: Value) -> Option<AnyValue> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => AnyValue::Boolean(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AnyValue::Int(i),
            None => AnyValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => AnyValue::String(s.into()),
        Value::Array(items) => {
            AnyValue::ListAny(Box::new(items.into_iter().filter_map(any_value).collect()))
        }
        Value::Object(fields) => AnyValue::Map(Box::new(map_value(fields))),
    })
}

/// A line the sidecar wrote itself: every line it logs, its dependencies' included, starts
/// with its mark (`logging.rs`): a JSON field `"extension":"lambda-sidecar"`, or a text
/// prefix. Lambda does not say which extension wrote an `extension` record, so this is the
/// only way to tell. Forwarding these would turn what a flush logs (an HTTP client's
/// `connecting to …` at debug level, a failed export's warning) into records for the next
/// flush, and those into more lines.
fn is_own(line: &LogLine) -> bool {
    match line {
        LogLine::Json { fields, .. } => {
            fields.get("extension").and_then(Value::as_str) == Some(crate::logging::MARK_NAME)
        }
        LogLine::Text { text, .. } => {
            text.starts_with(crate::logging::MARK_JSON)
                || text.starts_with(crate::logging::MARK_TEXT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derive::FunctionInfo;
    use crate::intake::events::parse_batch;
    use crate::records::Record;
    use crate::signals::testing;
    use opentelemetry::logs::AnyValue;
    use opentelemetry::trace::TraceId;
    use serde_json::json;
    use std::sync::Arc;

    /// One batch as Lambda orders it: r1 (X-Ray sampled) runs and ends, an extension logs
    /// after its runtimeDone, r2 (`Sampled=0`) starts, a late JSON line names r1.
    #[test]
    fn records_carry_their_invocation_its_ids_and_sampling() {
        let (source, metrics) = testing::source();
        let mut deriver =
            Deriver::new(FunctionInfo::from_vars(|_| None), Arc::new(metrics)).with_logs();
        let x1 = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let x2 = "Root=1-6759e988-bd862e3fe1be46a994272793;Parent=63995c3f42cd8ad8;Sampled=0";
        let event = |ms: u32, kind: &str, record: Value| json!({"time": format!("2022-10-12T00:00:00.{ms:03}Z"), "type": kind, "record": record});
        let batch = json!([
            event(0, "function", json!("init line")),
            event(
                10,
                "platform.start",
                json!({"requestId": "r1", "tracing": {"type": "X-Amzn-Trace-Id", "value": x1}})
            ),
            event(11, "function", json!("r1 text")),
            event(
                15,
                "platform.runtimeDone",
                json!({"requestId": "r1", "status": "success"})
            ),
            event(
                16,
                "extension",
                json!("another extension, after runtimeDone")
            ),
            event(
                17,
                "extension",
                json!("[lambda-sidecar] 2022-10-12T00:00:00.017Z  INFO received INVOKE")
            ),
            event(
                20,
                "platform.start",
                json!({"requestId": "r2", "tracing": {"type": "X-Amzn-Trace-Id", "value": x2}})
            ),
            event(
                21,
                "function",
                json!({"level": "WARN", "requestId": "r1", "message": "late"})
            ),
            event(
                22,
                "function",
                json!({"level": "bogus", "message": "r2 json"})
            ),
        ]);
        deriver.ingest(Record::Telemetry(
            parse_batch(batch.to_string().as_bytes()).unwrap(),
        ));
        let logs = deriver.take_logs();
        let spans = deriver.take_spans();
        // r1's invocation span (r2 is unsampled and still running: no span).
        let r1_span = spans
            .iter()
            .find(|s| s.span_kind == opentelemetry::trace::SpanKind::Server)
            .expect("r1's span");
        let attribute = |entry: &LogEntry, key: &str| {
            entry
                .record
                .attributes_iter()
                .find(|(k, _)| k.as_str() == key)
                .map(|(_, v)| match v {
                    AnyValue::String(s) => s.as_str().to_owned(),
                    other => format!("{other:?}"),
                })
        };
        let context = |entry: &LogEntry| {
            entry.record.trace_context().map(|c| {
                (
                    c.trace_id,
                    c.span_id,
                    c.trace_flags.is_some_and(|f| f.is_sampled()),
                )
            })
        };
        let t1 = TraceId::from_hex("5759e988bd862e3fe1be46a994272793").unwrap();
        let t2 = TraceId::from_hex("6759e988bd862e3fe1be46a994272793").unwrap();
        let r1 = Some((t1, r1_span.span_context.span_id(), true));

        // The sidecar's own line is not among them.
        assert_eq!(logs.len(), 5, "{logs:#?}");
        let [init, r1_text, after, late, r2_json] = &logs[..] else {
            unreachable!()
        };
        assert_eq!(context(init), None);
        assert_eq!(attribute(init, "faas.invocation_id"), None);
        assert_eq!(
            init.record.body(),
            Some(&AnyValue::String("init line".into()))
        );
        assert_eq!(init.record.severity_number(), None);

        assert_eq!(context(r1_text), r1);
        assert_eq!(
            attribute(r1_text, "faas.invocation_id").as_deref(),
            Some("r1")
        );
        assert_eq!(
            attribute(r1_text, "sidecar.log.source").as_deref(),
            Some("function")
        );

        assert_eq!(context(after), r1, "post-runtime lines stay with r1");
        assert_eq!(
            attribute(after, "sidecar.log.source").as_deref(),
            Some("extension")
        );

        assert_eq!(context(late), r1, "the requestId decides, not the time");
        assert_eq!(attribute(late, "faas.invocation_id").as_deref(), Some("r1"));
        assert_eq!(late.record.severity_number(), Some(Severity::Warn));
        assert_eq!(late.record.severity_text(), Some("WARN"));
        let Some(AnyValue::Map(body)) = late.record.body() else {
            panic!("{late:?}")
        };
        assert_eq!(
            body.get(&Key::from("message")),
            Some(&AnyValue::String("late".into()))
        );

        let (trace_id, span_id, sampled) = context(r2_json).expect("r2's context");
        assert_eq!(
            (trace_id, sampled),
            (t2, false),
            "unsampled: ids kept, flag off"
        );
        assert_ne!(span_id, r1_span.span_context.span_id());
        assert_eq!(
            attribute(r2_json, "faas.invocation_id").as_deref(),
            Some("r2")
        );
        assert_eq!(r2_json.record.severity_number(), None, "an unknown level");
        assert!(
            logs.iter().all(|e| e.bytes > RECORD_OVERHEAD_BYTES),
            "every record weighs its text"
        );
        assert!(!testing::render(&source).contains("signal=logs"));
    }

    /// Past [`MAX_PENDING_LOG_BYTES`] between two drains, new lines are dropped and counted.
    #[test]
    fn pending_records_are_bounded_in_bytes() {
        let (source, metrics) = testing::source();
        let mut deriver =
            Deriver::new(FunctionInfo::from_vars(|_| None), Arc::new(metrics)).with_logs();
        let line = "x".repeat(crate::intake::events::MAX_LOG_LINE_BYTES - 100);
        let per_batch = 50;
        let event =
            format!(r#"{{"time":"2022-10-12T00:00:00.000Z","type":"function","record":"{line}"}}"#);
        let body = format!("[{}]", vec![event; per_batch].join(","));
        let fits = MAX_PENDING_LOG_BYTES / (line.len() + RECORD_OVERHEAD_BYTES);
        for _ in 0..(fits / per_batch + 2) {
            deriver.ingest(Record::Telemetry(parse_batch(body.as_bytes()).unwrap()));
        }
        let sent = (fits / per_batch + 2) * per_batch;
        assert_eq!(deriver.take_logs().len(), fits);
        assert!(
            testing::render(&source).contains(&format!(
                "sidecar.export.dropped_items{{signal=logs}} = {}",
                sent - fits
            )),
            "{}",
            testing::render(&source)
        );
        // A drain makes room again.
        deriver.ingest(Record::Telemetry(parse_batch(body.as_bytes()).unwrap()));
        assert_eq!(deriver.take_logs().len(), per_batch);
    }

    #[test]
    fn lambda_levels_map_to_otel_severities() {
        for (level, number, text) in [
            ("TRACE", 1, "TRACE"),
            ("DEBUG", 5, "DEBUG"),
            ("INFO", 9, "INFO"),
            ("info", 9, "INFO"),
            ("WARN", 13, "WARN"),
            ("Warning", 13, "WARN"),
            ("ERROR", 17, "ERROR"),
            ("FATAL", 21, "FATAL"),
            ("CRITICAL", 21, "FATAL"),
        ] {
            let (severity, name) = severity(level).unwrap_or_else(|| panic!("{level}"));
            assert_eq!((severity as i32, name), (number, text), "{level}");
        }
        for level in ["", "NOTICE", "5", "INFOO"] {
            assert_eq!(severity(level), None, "{level:?}");
        }
    }

    #[test]
    fn a_json_object_becomes_a_structured_body() {
        let Value::Object(fields) = json!({
            "message": "done",
            "count": 3,
            "ratio": 0.5,
            "big": u64::MAX,
            "ok": true,
            "gone": null,
            "tags": ["a", 1, null],
            "nested": {"k": "v"},
        }) else {
            unreachable!()
        };
        let map = map_value(fields);
        let get = |key: &str| map.get(&Key::from(key.to_string())).cloned();
        assert_eq!(get("message"), Some(AnyValue::String("done".into())));
        assert_eq!(get("count"), Some(AnyValue::Int(3)));
        assert_eq!(get("ratio"), Some(AnyValue::Double(0.5)));
        assert_eq!(get("big"), Some(AnyValue::Double(u64::MAX as f64)));
        assert_eq!(get("ok"), Some(AnyValue::Boolean(true)));
        assert_eq!(get("gone"), None);
        assert_eq!(
            get("tags"),
            Some(AnyValue::ListAny(Box::new(vec![
                AnyValue::String("a".into()),
                AnyValue::Int(1)
            ])))
        );
        assert_eq!(
            get("nested"),
            Some(AnyValue::Map(Box::new(HashMap::from([(
                Key::from("k"),
                AnyValue::String("v".into())
            )]))))
        );
    }

    #[test]
    fn the_sidecars_own_lines_are_recognised() {
        let text = |t: &str| LogLine::Text {
            text: t.to_string(),
            truncated: false,
        };
        let json_line = |v: Value| match v {
            Value::Object(fields) => LogLine::Json { fields, bytes: 0 },
            _ => unreachable!(),
        };
        for own in [
            text(
                r#"{"extension":"lambda-sidecar","timestamp":"2026-11-28T11:00:00.000Z","level":"DEBUG","message":"connecting to 127.0.0.1:4318","target":"hyper_util::client"}"#,
            ),
            text("[lambda-sidecar] 2026-11-28T11:00:00.000Z  INFO received INVOKE"),
            json_line(json!({"extension": "lambda-sidecar", "level": "INFO"})),
        ] {
            assert!(is_own(&own), "{own:?}");
        }
        for other in [
            text("[datadog] flushing 3 metrics"),
            text("lambda-sidecar is great"),
            text(r#"{"level":"INFO","extension":"lambda-sidecar"}"#),
            json_line(json!({"level": "INFO", "extension": "datadog"})),
            json_line(json!({"level": "INFO", "message": "lambda-sidecar"})),
        ] {
            assert!(!is_own(&other), "{other:?}");
        }
    }
}
