//! Logs: `function` and `extension` records become OpenTelemetry log records.
//!
//! Each record carries the line's time, its severity (a JSON line's `level`; a text line has
//! none, `Unspecified` in OTLP), its body (the text, or the JSON object as a map: see
//! [`json_body`] for the memory budget that keeps its JSON text instead),
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
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::invocations::Invocations;
use super::spans::flags;
use crate::events::{LogLine, MAX_LOG_LINE_BYTES, MAX_REQUEST_ID_BYTES};
use crate::items::{LOG_BUFFER_BYTES, LogEntry, RECORD_OVERHEAD_BYTES};
use crate::metrics::{Metrics, Signal};

/// Log records held until the next drain, in bytes of memory (a text line's text, a JSON
/// line's body as [`json_body`] measures it, plus [`RECORD_OVERHEAD_BYTES`] each). The
/// exporter's buffer has the same bound and drops the oldest beyond it, so holding more here
/// would only cost memory. Past it new lines are dropped and counted
/// (`sidecar.export.dropped_items{signal="logs"}`).
pub const MAX_PENDING_LOG_BYTES: usize = LOG_BUFFER_BYTES;

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

    /// A `function` or `extension` line: a log record, unless it is the sidecar's own line
    /// or there is no room for it (then it is counted as dropped).
    pub(super) fn log(
        &mut self,
        time: SystemTime,
        source: Source,
        line: LogLine,
        invocations: &Invocations,
        metrics: &Metrics,
    ) {
        if matches!(source, Source::Extension) && is_own(&line) {
            return;
        }
        let request_id = request_id(&line);
        // What a record weighs is the memory it holds, known once its body is built.
        let body = Body::of(line);
        let bytes = RECORD_OVERHEAD_BYTES + body.size;
        if self.pending_bytes + bytes > MAX_PENDING_LOG_BYTES {
            metrics.dropped(Signal::Logs, 1);
            return;
        }
        let record = self.record(time, source, request_id, body, invocations);
        self.pending_bytes += bytes;
        self.pending.push(LogEntry { record, bytes });
    }

    /// The record of a line with `body`, joined to the invocation its `request_id` names,
    /// else to the one running at its time.
    fn record(
        &self,
        time: SystemTime,
        source: Source,
        request_id: Option<String>,
        body: Body,
        invocations: &Invocations,
    ) -> SdkLogRecord {
        let invocation = match &request_id {
            Some(id) => invocations.get(id),
            // A line after `platform.runtimeDone` (an extension's post-runtime work) still
            // belongs to the invocation until the next one starts; on Managed Instances,
            // where invocations overlap, only a request id tells.
            None => invocations.running_at(time),
        };
        let mut record = self.logger.create_log_record();
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
        body.set(&mut record);
        record
    }

    /// The log records derived since the last call, oldest first.
    pub(super) fn take(&mut self) -> Vec<LogEntry> {
        self.pending_bytes = 0;
        std::mem::take(&mut self.pending)
    }
}

/// The request id a JSON line names (Lambda writes `requestId` into every line in its JSON
/// log format), if it is one a request id can be.
fn request_id(line: &LogLine) -> Option<String> {
    match line {
        LogLine::Json { request_id, .. } => request_id
            .as_deref()
            .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_BYTES)
            .map(str::to_owned),
        LogLine::Text { .. } => None,
    }
}

/// A line as a record's body: its text, or its JSON object as a map ([`json_body`], else
/// its JSON text) with its `level` as the severity; and the memory the body holds.
struct Body {
    severity: Option<(Severity, &'static str)>,
    value: AnyValue,
    /// A text line cut at the line bound.
    truncated: bool,
    size: usize,
}

impl Body {
    fn of(line: LogLine) -> Body {
        match line {
            LogLine::Text { text, truncated } => Body {
                severity: None,
                size: text.len(),
                value: AnyValue::String(text.into()),
                truncated,
            },
            LogLine::Json { json, level, .. } => {
                let (value, size) = json_body(&json).unwrap_or_else(|| {
                    let size = json.len();
                    (AnyValue::String(json.into()), size)
                });
                Body {
                    severity: level.as_deref().and_then(severity),
                    value,
                    truncated: false,
                    size,
                }
            }
        }
    }

    /// Sets the record's body, its severity, and says whether the line was truncated.
    fn set(self, record: &mut SdkLogRecord) {
        if let Some((number, text)) = self.severity {
            record.set_severity_number(number);
            record.set_severity_text(text);
        }
        record.set_body(self.value);
        if self.truncated {
            record.add_attribute("sidecar.log.truncated", true);
        }
    }
}

/// Lambda's log levels (its JSON log format and `AWS_LAMBDA_LOG_LEVEL`) as OTel severities,
/// per the data model's mapping: TRACE 1, DEBUG 5, INFO 9, WARN 13, ERROR 17, FATAL 21.
/// Case-insensitive, with the spellings runtimes also use (`WARNING`, Python's `CRITICAL`).
/// Anything else is left unspecified; the line's `level` stays in the body.
///
/// The severity text is the level as the source wrote it, as the log data model asks
/// ("the original string representation of the severity as it is known at the source"):
/// `CRITICAL` stays `CRITICAL` beside the number of FATAL. The SDK takes a `&'static str`,
/// so the text comes from [`LEVELS`], which holds each spelling in upper, lower and
/// capitalised case; a level in any other casing (`wArN`) is known, and its text upper case.
fn severity(level: &str) -> Option<(Severity, &'static str)> {
    let level = level.trim();
    LEVELS
        .iter()
        .find(|(spelling, _)| *spelling == level)
        .or_else(|| {
            LEVELS
                .iter()
                .find(|(spelling, _)| spelling.eq_ignore_ascii_case(level))
        })
        .map(|(spelling, severity)| (*severity, *spelling))
}

/// Every level spelling [`severity`] knows, in the three casings runtimes write, upper case
/// first (the text of a level in another casing).
const LEVELS: &[(&str, Severity)] = &[
    ("TRACE", Severity::Trace),
    ("trace", Severity::Trace),
    ("Trace", Severity::Trace),
    ("DEBUG", Severity::Debug),
    ("debug", Severity::Debug),
    ("Debug", Severity::Debug),
    ("INFO", Severity::Info),
    ("info", Severity::Info),
    ("Info", Severity::Info),
    ("WARN", Severity::Warn),
    ("warn", Severity::Warn),
    ("Warn", Severity::Warn),
    ("WARNING", Severity::Warn),
    ("warning", Severity::Warn),
    ("Warning", Severity::Warn),
    ("ERROR", Severity::Error),
    ("error", Severity::Error),
    ("Error", Severity::Error),
    ("FATAL", Severity::Fatal),
    ("fatal", Severity::Fatal),
    ("Fatal", Severity::Fatal),
    ("CRITICAL", Severity::Fatal),
    ("critical", Severity::Fatal),
    ("Critical", Severity::Fatal),
];

/// Most memory one JSON line's structured body may take, as [`heap`] estimates it: four
/// times the longest line. Parsed, a JSON object weighs several times its text (a typical
/// line of a few fields about 8×; `{"a":[[],[],…]}` about 25×, each 3-byte `[],` a list
/// of its own); a line whose body would cost more keeps its JSON text as a string body.
pub const MAX_JSON_BODY_BYTES: usize = 4 * MAX_LOG_LINE_BYTES;

/// A JSON log line's object as an OTel map, and the memory it takes, built within
/// [`MAX_JSON_BODY_BYTES`]; `None` past it (the build stops there) or when the text is not
/// an object. `null` has no counterpart in the SDK's `AnyValue`: such members (and list
/// items) are left out. Depth is bounded by serde_json's recursion limit (128).
fn json_body(json: &str) -> Option<(AnyValue, usize)> {
    let mut left = MAX_JSON_BODY_BYTES;
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let body = Budgeted { left: &mut left }
        .deserialize(&mut deserializer)
        .ok()??;
    deserializer.end().ok()?;
    matches!(body, AnyValue::Map(_)).then_some((body, MAX_JSON_BODY_BYTES - left))
}

/// What the allocator takes for a block of `n` bytes, an upper bound for glibc's and musl's
/// malloc on 64-bit: a header, and the rounding up to a size class (at most a quarter).
const fn heap(n: usize) -> usize {
    if n == 0 { 0 } else { n + n / 4 + 32 }
}

/// The memory of a map of `n` members beyond its slot: the boxed `HashMap`, and its table
/// (hashbrown: a power of two of buckets, at most 7/8 full, each an entry and a control
/// byte, plus a group of control bytes).
fn map_bytes(n: usize) -> usize {
    let buckets = match n {
        0 => return heap(size_of::<HashMap<Key, AnyValue>>()),
        1..4 => 4,
        4..8 => 8,
        _ => (n * 8 / 7).next_power_of_two(),
    };
    heap(size_of::<HashMap<Key, AnyValue>>())
        + heap(buckets * (size_of::<(Key, AnyValue)>() + 1) + 16)
}

/// Builds an `AnyValue` while counting its memory down from `left`; fails (stopping the
/// parse) when that would go below zero. A value's own slot is counted by its container.
struct Budgeted<'a> {
    left: &'a mut usize,
}

impl Budgeted<'_> {
    fn charge<E: serde::de::Error>(&mut self, bytes: usize) -> Result<(), E> {
        *self.left = self
            .left
            .checked_sub(bytes)
            .ok_or_else(|| E::custom("over the memory budget of a log body"))?;
        Ok(())
    }

    fn string<E: serde::de::Error>(mut self, text: String) -> Result<Option<AnyValue>, E> {
        self.charge(heap(text.len()))?;
        Ok(Some(AnyValue::String(text.into())))
    }
}

impl<'de> DeserializeSeed<'de> for Budgeted<'_> {
    type Value = Option<AnyValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budgeted<'_> {
    type Value = Option<AnyValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(AnyValue::Boolean(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(AnyValue::Int(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(
            i64::try_from(v).map_or(AnyValue::Double(v as f64), AnyValue::Int),
        ))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(AnyValue::Double(v)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.string(v.to_owned())
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        self.string(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Self::Value, A::Error> {
        self.charge(heap(size_of::<Vec<AnyValue>>()))?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Budgeted {
            left: &mut *self.left,
        })? {
            if let Some(item) = item {
                // The slot, twice while the vector grows by doubling; settled below.
                self.charge(2 * size_of::<AnyValue>())?;
                items.push(item);
            }
        }
        items.shrink_to_fit();
        *self.left += 2 * size_of::<AnyValue>() * items.len();
        self.charge(heap(size_of::<AnyValue>() * items.len()))?;
        Ok(Some(AnyValue::ListAny(Box::new(items))))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            self.charge(heap(key.len()))?;
            let value = map.next_value_seed(Budgeted {
                left: &mut *self.left,
            })?;
            if let Some(value) = value {
                // The member waits in a vector (twice its size while it grows), then moves
                // into the map's table; settled below.
                self.charge(2 * size_of::<(Key, AnyValue)>())?;
                members.push((Key::from(key), value));
            }
        }
        *self.left += 2 * size_of::<(Key, AnyValue)>() * members.len();
        self.charge(map_bytes(members.len()))?;
        let fields: HashMap<Key, AnyValue> = members.into_iter().collect();
        Ok(Some(AnyValue::Map(Box::new(fields))))
    }
}

/// A line the sidecar wrote itself: every line it logs, its dependencies' included, starts
/// with its mark (`logging.rs`): a JSON field `"extension":"lambda-sidecar"`, or a text
/// prefix. Lambda does not say which extension wrote an `extension` record, so this is the
/// only way to tell. Forwarding these would turn what a flush logs (an HTTP client's
/// `connecting to …` at debug level, a failed export's warning) into records for the next
/// flush, and those into more lines.
fn is_own(line: &LogLine) -> bool {
    match line {
        LogLine::Json { extension, .. } => extension.as_deref() == Some(crate::logging::MARK_NAME),
        LogLine::Text { text, .. } => {
            text.starts_with(crate::logging::MARK_JSON)
                || text.starts_with(crate::logging::MARK_TEXT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::derive::Deriver;
    use crate::events::parse_batch;
    use crate::function::FunctionInfo;
    use crate::metrics::testing;
    use crate::records::Record;
    use opentelemetry::logs::AnyValue;
    use opentelemetry::trace::TraceId;
    use serde_json::{Value, json};
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
        let line = "x".repeat(crate::events::MAX_LOG_LINE_BYTES - 100);
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
            (" info ", 9, "info"),
            ("WARN", 13, "WARN"),
            ("Warning", 13, "Warning"),
            ("wArNiNg", 13, "WARNING"),
            ("ERROR", 17, "ERROR"),
            ("FATAL", 21, "FATAL"),
            // The original text is kept beside the number (log data model, SeverityText).
            ("CRITICAL", 21, "CRITICAL"),
            ("critical", 21, "critical"),
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
        let json = json!({
            "message": "done",
            "count": 3,
            "ratio": 0.5,
            "big": u64::MAX,
            "ok": true,
            "gone": null,
            "tags": ["a", 1, null],
            "nested": {"k": "v"},
        })
        .to_string();
        let Some((AnyValue::Map(map), size)) = json_body(&json) else {
            panic!("no map from {json}")
        };
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
        assert!(size > json.len() && size < 20 * json.len(), "{size}");
    }

    /// Lines of at most 32 KiB, by the shape of their JSON: what their body costs, or `None`
    /// when it would cost more than [`MAX_JSON_BODY_BYTES`] (the line keeps its text).
    #[test]
    fn a_json_body_is_built_within_its_memory_budget() {
        let repeat = |item: &str, n: usize| vec![item; n].join(",");
        let keys = |n: usize| (0..n).map(|k| format!(r#""k{k}":0"#)).collect::<Vec<_>>();
        let nested =
            |depth: usize| format!(r#"{{"a":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth));
        let typical = json!({"timestamp": "2026-12-04T17:00:00.000Z", "level": "INFO",
            "requestId": "8f5e6c1a-8d4e-4f7b-9c3a-2b1d0e9f8a7c", "message": "charged order 1234"})
        .to_string();
        /// The memory a body may take: at least, at most.
        type Range = Option<(usize, usize)>;
        let cases: Vec<(&str, String, Range)> = vec![
            (
                "typical",
                typical.clone(),
                Some((typical.len(), 15 * typical.len())),
            ),
            (
                "one long message",
                format!(r#"{{"message":"{}"}}"#, "m".repeat(32_000)),
                Some((32_000, 42_000)),
            ),
            ("an empty object", "{}".into(), Some((1, 200))),
            (
                "nested 120 deep",
                nested(120),
                Some((120 * 32, MAX_JSON_BODY_BYTES)),
            ),
            (
                "1,000 empty lists (3 KB)",
                format!(r#"{{"a":[{}]}}"#, repeat("[]", 1_000)),
                Some((1_000 * 64, MAX_JSON_BODY_BYTES)),
            ),
            // The audit's line: 32,000 bytes of empty lists, 20x its text once parsed.
            (
                "10,664 empty lists (32 KB)",
                format!(r#"{{"a":[{}]}}"#, repeat("[]", 10_664)),
                None,
            ),
            (
                "10,664 empty maps",
                format!(r#"{{"a":[{}]}}"#, repeat("{}", 10_664)),
                None,
            ),
            ("3,000 keys", format!("{{{}}}", keys(3_000).join(",")), None),
            (
                "8,000 one-byte strings",
                format!(r#"{{"a":[{}]}}"#, repeat(r#""x""#, 8_000)),
                None,
            ),
            (
                "4,000 lists of a null",
                format!(r#"{{"a":[{}]}}"#, repeat("[null]", 4_000)),
                None,
            ),
            ("not an object", "[1,2]".into(), None),
        ];
        for (name, json, expected) in cases {
            assert!(json.len() <= MAX_LOG_LINE_BYTES, "{name}: {}", json.len());
            let built = json_body(&json);
            match (expected, &built) {
                (Some((low, high)), Some((AnyValue::Map(_), size))) => {
                    assert!(
                        (low..=high).contains(size),
                        "{name}: {size} not in {low}..={high}"
                    )
                }
                (None, None) => {}
                _ => panic!("{name}: {:?}", built.map(|(_, size)| size)),
            }
        }
    }

    /// The audit's worst case (issue 18, item 1): JSON lines of 32,000 bytes that parse into
    /// ~20x their size. Each becomes a record with its text as body, weighing its text, so the
    /// records held between drains stay within the same 4 MiB as text lines, and the rest are
    /// dropped and counted.
    #[test]
    fn costly_json_lines_weigh_what_they_keep() {
        let (source, metrics) = testing::source();
        let mut deriver =
            Deriver::new(FunctionInfo::from_vars(|_| None), Arc::new(metrics)).with_logs();
        let line = format!(r#"{{"a":[{}]}}"#, vec!["[]"; 10_664].join(","));
        assert!(line.len() <= crate::events::MAX_LOG_LINE_BYTES);
        let event =
            format!(r#"{{"time":"2022-10-12T00:00:00.000Z","type":"function","record":{line}}}"#);
        let body = format!("[{}]", vec![event; 40].join(","));
        for _ in 0..5 {
            deriver.ingest(Record::Telemetry(parse_batch(body.as_bytes()).unwrap()));
        }
        let logs = deriver.take_logs();
        let fits = MAX_PENDING_LOG_BYTES / (line.len() + RECORD_OVERHEAD_BYTES);
        assert_eq!(logs.len(), fits);
        for entry in &logs {
            assert_eq!(entry.bytes, line.len() + RECORD_OVERHEAD_BYTES);
            assert_eq!(
                entry.record.body(),
                Some(&AnyValue::String(line.clone().into()))
            );
        }
        assert!(
            testing::render(&source).contains(&format!(
                "sidecar.export.dropped_items{{signal=logs}} = {}",
                200 - fits
            )),
            "{}",
            testing::render(&source)
        );
    }

    #[test]
    fn the_sidecars_own_lines_are_recognised() {
        let text = |t: &str| LogLine::Text {
            text: t.to_string(),
            truncated: false,
        };
        let json_line = |v: Value| serde_json::from_str::<LogLine>(&v.to_string()).unwrap();
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
