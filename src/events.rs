//! The Telemetry API event model (schema `2022-12-13`, and `2025-01-29`, which Lambda
//! Managed Instances require) and a tolerant batch parser.
//!
//! Schema `2025-01-29` is backward compatible: the same event types and records. What
//! changes on Managed Instances is the stream: invocations overlap, so the `platform.start`,
//! `platform.runtimeDone` and `platform.report` of several request ids interleave in one
//! batch (each record names its own `requestId`, which is all the parser relies on), the
//! init is of type `lambda-managed-instances`, and a report may come without the billing and
//! memory figures of a per-invocation environment ([`ReportMetrics`]).
//!
//! Lambda POSTs a JSON array of `{"time", "type", "record"}` objects and resends the
//! whole array when the answer is not a 2xx. A batch is therefore never rejected
//! because of one element: an element of an unknown `type` is counted in
//! [`Batch::unknown`], one whose `time` or `record` does not match the documented shape
//! is counted in [`Batch::malformed`], and both are skipped (an element or a record
//! written as a JSON array, which serde would read as a struct, is malformed too). Only
//! a body that is not a JSON array at all is an error ([`NotAnArray`]); the listener
//! answers 400 to it.
//!
//! Parsing is two-staged for speed: the array is split into envelopes whose `record`
//! stays a borrowed [`RawValue`] (validated but not decoded), then only the records of
//! known types are decoded into their typed structs. Unknown record fields are ignored.
//!
//! Every value kept is bounded, because a batch waits in the pipeline queue and request
//! ids live in the deriver's state (1 MiB request ids once kept 61 MiB resident):
//! - a request id is an identifier the deriver keys its state on: over
//!   [`MAX_REQUEST_ID_BYTES`] the element is malformed (a cut one would merge or split
//!   invocations);
//! - an X-Ray `tracing` value over [`MAX_TRACE_HEADER_BYTES`] is treated as absent (a cut
//!   header could name a wrong parent or sampling decision);
//! - free text (error types, names, versions, states) is cut to [`MAX_TEXT_BYTES`] at a
//!   character boundary: losing the invocation for a long error type would be worse;
//! - lists: at most [`MAX_CHILD_SPANS`] child spans per event (the rest counted in
//!   [`ChildSpans::skipped`]) and [`MAX_LIST_ITEMS`] names in a subscription or extension
//!   record (the rest ignored);
//! - `function` and `extension` log lines are kept up to [`MAX_LOG_LINE_BYTES`], cut beyond
//!   it and marked; a JSON object is validated and kept as its text, never as a parsed
//!   tree (see [`LogLine`]).
//!
//! Architecture invariant: this module does no I/O and knows nothing about spans or
//! metrics; it only turns bytes into [`TelemetryEvent`]s.

use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

/// Longest request id kept. Lambda's are 36-byte UUIDs; 128 leaves room for other
/// emulators' formats. A longer one makes its element malformed.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Longest X-Ray `tracing` value kept (`Root=…;Parent=…;Sampled=…;Lineage=…` is ~100
/// bytes). A longer one is ignored: the invocation is then derived as untraced.
pub const MAX_TRACE_HEADER_BYTES: usize = 512;

/// Longest free-text value kept (error types, span and extension names, versions, ARNs
/// — a runtime version ARN is ~130 bytes). Longer values are cut.
pub const MAX_TEXT_BYTES: usize = 256;

/// Child spans kept per event. Lambda sends 2–3 (`responseLatency`, `responseDuration`,
/// `runtimeOverhead`); one event with 30,000 once added 19 MB.
pub const MAX_CHILD_SPANS: usize = 16;

/// Names kept in a list of an unused housekeeping record (an extension's events, a
/// subscription's types: a handful on Lambda).
pub const MAX_LIST_ITEMS: usize = 16;

/// One parsed Telemetry API POST.
#[derive(Debug, Default)]
pub struct Batch {
    /// The events of known types, in the order Lambda sent them.
    pub events: Vec<TelemetryEvent>,
    /// Elements with a `type` this schema does not define (skipped, counted).
    pub unknown: usize,
    /// Elements of a known `type` whose `time` or `record` did not parse (skipped, counted).
    pub malformed: usize,
}

/// The body was not a JSON array, so there is nothing to salvage: the listener answers 400.
#[derive(Debug, thiserror::Error)]
#[error("telemetry batch is not a JSON array: {0}")]
pub struct NotAnArray(#[from] serde_json::Error);

/// One telemetry event: when Lambda emitted it and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryEvent {
    /// The event's `time` (RFC 3339, millisecond precision on Lambda).
    pub time: SystemTime,
    /// The typed `record`, tagged by the event's `type`.
    pub kind: EventKind,
}

/// How an element looks before its record is decoded. `type` is borrowed: event type
/// names never contain escapes, and an escaped one falls through as malformed JSON.
#[derive(Deserialize)]
struct Envelope<'a> {
    time: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    record: &'a RawValue,
}

/// Parses one Telemetry API POST body.
///
/// # Errors
/// [`NotAnArray`] when the body is not a JSON array (of anything). Bad elements inside
/// a valid array are counted in the returned [`Batch`], never an error.
pub fn parse_batch(body: &[u8]) -> Result<Batch, NotAnArray> {
    let elements: Vec<&RawValue> = serde_json::from_slice(body)?;
    let mut batch = Batch {
        events: Vec::with_capacity(elements.len()),
        ..Batch::default()
    };
    for element in elements {
        match parse_element(element) {
            Element::Event(event) => batch.events.push(event),
            Element::Unknown => batch.unknown += 1,
            Element::Malformed => batch.malformed += 1,
        }
    }
    Ok(batch)
}

/// What one array element turned out to be.
enum Element {
    Event(TelemetryEvent),
    Unknown,
    Malformed,
}

fn parse_element(element: &RawValue) -> Element {
    // Only an object is an envelope: a derived struct would also read `[time, type,
    // record]` (see [`record`]). A RawValue has no leading whitespace.
    if !element.get().starts_with('{') {
        return Element::Malformed;
    }
    let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(element.get()) else {
        return Element::Malformed;
    };
    let Some(decode) = decoder(envelope.kind) else {
        return Element::Unknown;
    };
    match (parse_rfc3339(envelope.time), decode(envelope.record)) {
        (Some(time), Some(kind)) => Element::Event(TelemetryEvent { time, kind }),
        _ => Element::Malformed,
    }
}

/// Decodes a record into its typed struct, `None` when it does not match the shape.
/// An array is refused up front: serde's derived `Deserialize` would otherwise read a
/// struct from its fields in declaration order (`["r1",null,null]` as a platform.start),
/// a shape Lambda never sends. Records are objects (log lines also strings).
fn record<T: DeserializeOwned>(raw: &RawValue) -> Option<T> {
    if raw.get().starts_with('[') {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

/// Declares every event type once: its wire name, its [`EventKind`] variant and the
/// record type, so the parser and [`EventKind::type_name`] cannot drift apart.
macro_rules! event_types {
    ($($(#[$doc:meta])* $wire:literal => $variant:ident($record:ty),)+) => {
        /// The typed record of each event type of schema `2022-12-13`.
        #[derive(Debug, Clone, PartialEq)]
        pub enum EventKind {
            $($(#[$doc])* $variant($record),)+
        }

        impl EventKind {
            /// The event's wire `type`, e.g. `platform.runtimeDone` (used as a metric label).
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(EventKind::$variant(_) => $wire,)+
                }
            }
        }

        /// The record decoder of a wire `type`, `None` for types this schema lacks.
        fn decoder(kind: &str) -> Option<fn(&RawValue) -> Option<EventKind>> {
            match kind {
                $($wire => Some(|raw| record::<$record>(raw).map(EventKind::$variant)),)+
                _ => None,
            }
        }
    };
}

event_types! {
    /// The init phase started (on-demand, provisioned concurrency or SnapStart).
    "platform.initStart" => InitStart(InitStart),
    /// The runtime and extensions finished init.
    "platform.initRuntimeDone" => InitRuntimeDone(InitRuntimeDone),
    /// The init phase's report, with its duration.
    "platform.initReport" => InitReport(InitReport),
    /// An invocation started.
    "platform.start" => Start(Start),
    /// The runtime responded (or failed): the end of the function's own work.
    "platform.runtimeDone" => RuntimeDone(RuntimeDone),
    /// The invocation is complete, extensions included; billing figures.
    "platform.report" => Report(Report),
    /// An extension registered (or failed to).
    "platform.extension" => Extension(ExtensionState),
    /// An extension subscribed to the Telemetry API.
    "platform.telemetrySubscription" => TelemetrySubscription(TelemetrySubscription),
    /// Lambda dropped records because a subscriber could not keep up.
    "platform.logsDropped" => LogsDropped(LogsDropped),
    /// SnapStart: restoring from a snapshot started.
    "platform.restoreStart" => RestoreStart(RestoreStart),
    /// SnapStart: the runtime's restore hooks finished.
    "platform.restoreRuntimeDone" => RestoreRuntimeDone(RestoreRuntimeDone),
    /// SnapStart: the restore phase's report.
    "platform.restoreReport" => RestoreReport(RestoreReport),
    /// A log line written by the function.
    "function" => Function(LogLine),
    /// A log line written by an extension.
    "extension" => ExtensionLog(LogLine),
}

/// Outcome of a phase or an invocation as Lambda reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Success,
    Error,
    Failure,
    Timeout,
    /// A status value newer than this schema: kept so the invocation is not lost.
    #[serde(other)]
    Unknown,
}

impl Status {
    /// The wire spelling, the invocation span's `error.type` when Lambda gives none.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Error => "error",
            Status::Failure => "failure",
            Status::Timeout => "timeout",
            Status::Unknown => "unknown",
        }
    }
}

/// The X-Ray context Lambda attaches to invocation events.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The `X-Amzn-Trace-Id` header value, e.g. `Root=1-…;Parent=…;Sampled=1`, at most
    /// [`MAX_TRACE_HEADER_BYTES`].
    pub value: String,
}

/// A phase of an invocation that Lambda measured (`responseLatency`, `responseDuration`,
/// `runtimeOverhead`); becomes a child span.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlatformSpan {
    #[serde(deserialize_with = "text")]
    pub name: String,
    #[serde(deserialize_with = "rfc3339")]
    pub start: SystemTime,
    pub duration_ms: f64,
}

/// A phase's duration; `platform.initReport` and `platform.restoreReport` carry only this.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseMetrics {
    pub duration_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitStart {
    /// `on-demand`, `provisioned-concurrency`, `snap-start`, `lambda-managed-instances`.
    #[serde(deserialize_with = "text")]
    pub initialization_type: String,
    /// `init`, or `invoke` when init is re-run inside an invocation after a failure.
    #[serde(deserialize_with = "text")]
    pub phase: String,
    #[serde(default, deserialize_with = "optional_text")]
    pub runtime_version: Option<String>,
    #[serde(default, deserialize_with = "optional_text")]
    pub runtime_version_arn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRuntimeDone {
    #[serde(deserialize_with = "text")]
    pub initialization_type: String,
    #[serde(deserialize_with = "text")]
    pub phase: String,
    pub status: Status,
    #[serde(default, deserialize_with = "optional_text")]
    pub error_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitReport {
    #[serde(deserialize_with = "text")]
    pub initialization_type: String,
    #[serde(deserialize_with = "text")]
    pub phase: String,
    pub status: Option<Status>,
    #[serde(default, deserialize_with = "optional_text")]
    pub error_type: Option<String>,
    pub metrics: PhaseMetrics,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Start {
    #[serde(deserialize_with = "request_id")]
    pub request_id: String,
    #[serde(default, deserialize_with = "optional_text")]
    pub version: Option<String>,
    #[serde(default, deserialize_with = "tracing")]
    pub tracing: Option<Tracing>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeDone {
    #[serde(deserialize_with = "request_id")]
    pub request_id: String,
    pub status: Status,
    #[serde(default, deserialize_with = "optional_text")]
    pub error_type: Option<String>,
    /// Absent on some failures (e.g. the runtime crashed before responding).
    pub metrics: Option<RuntimeDoneMetrics>,
    #[serde(default)]
    pub spans: ChildSpans,
    #[serde(default, deserialize_with = "tracing")]
    pub tracing: Option<Tracing>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeDoneMetrics {
    pub duration_ms: f64,
    /// Bytes of the response payload (absent for some runtimes and failures).
    pub produced_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    #[serde(deserialize_with = "request_id")]
    pub request_id: String,
    pub status: Status,
    #[serde(default, deserialize_with = "optional_text")]
    pub error_type: Option<String>,
    pub metrics: ReportMetrics,
    #[serde(default, deserialize_with = "tracing")]
    pub tracing: Option<Tracing>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportMetrics {
    /// Whole invocation, extensions' post-runtime work included.
    pub duration_ms: f64,
    /// The billing and memory figures are optional: on Lambda Managed Instances an
    /// invocation is not billed by its duration, and memory is the environment's, shared by
    /// the invocations that overlap; a report without them keeps its invocation.
    pub billed_duration_ms: Option<f64>,
    #[serde(rename = "memorySizeMB")]
    pub memory_size_mb: Option<u64>,
    #[serde(rename = "maxMemoryUsedMB")]
    pub max_memory_used_mb: Option<u64>,
    /// Present on the first invocation after an on-demand init.
    pub init_duration_ms: Option<f64>,
    /// Present on the first invocation after a SnapStart restore.
    pub restore_duration_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ExtensionState {
    #[serde(deserialize_with = "text")]
    pub name: String,
    #[serde(deserialize_with = "text")]
    pub state: String,
    #[serde(default, deserialize_with = "text_list")]
    pub events: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TelemetrySubscription {
    #[serde(deserialize_with = "text")]
    pub name: String,
    #[serde(deserialize_with = "text")]
    pub state: String,
    #[serde(default, deserialize_with = "text_list")]
    pub types: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsDropped {
    #[serde(deserialize_with = "text")]
    pub reason: String,
    pub dropped_records: u64,
    pub dropped_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStart {
    #[serde(default, deserialize_with = "optional_text")]
    pub runtime_version: Option<String>,
    #[serde(default, deserialize_with = "optional_text")]
    pub runtime_version_arn: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreRuntimeDone {
    pub status: Status,
    #[serde(default, deserialize_with = "optional_text")]
    pub error_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreReport {
    pub status: Status,
    #[serde(default, deserialize_with = "optional_text")]
    pub error_type: Option<String>,
    pub metrics: Option<PhaseMetrics>,
}

/// A `function` or `extension` record: the runtime emits a plain line for text logs and
/// a JSON object when the function's log format is JSON.
///
/// A line is kept up to [`MAX_LOG_LINE_BYTES`]: Lambda allows 256 KiB, and a batch waits in
/// the pipeline queue and its lines in the log buffer. A longer text line is cut at a
/// character boundary; a longer JSON object is kept as its JSON text, cut likewise (a cut
/// object is no longer an object). Either is marked `truncated`.
///
/// A JSON object is validated here but kept as its text, never as a parsed tree: parsed, it
/// weighs several times its size (`{"a":[[],[],…]}` of 32 KB is ~10,000 lists, 20× the
/// text as `serde_json::Value`s), and a parsed batch waits in the pipeline queue, which is
/// bounded by the text's size. Derivation builds the log record's body from the text under
/// a memory budget (`derive::logs`).
#[derive(Debug, Clone, PartialEq)]
pub enum LogLine {
    Text {
        text: String,
        truncated: bool,
    },
    Json {
        /// The object's JSON text, as received.
        json: String,
        /// Its top-level members derivation reads before it builds the body, when they are
        /// strings: `requestId` (at most [`MAX_REQUEST_ID_BYTES`]), `level` and `extension`
        /// (at most [`MAX_TEXT_BYTES`]); otherwise `None`. The last one wins when a member
        /// is repeated, as in a parsed object.
        request_id: Option<String>,
        level: Option<String>,
        extension: Option<String>,
    },
}

impl LogLine {
    /// The line's size in bytes: its text, or its JSON text as received.
    pub fn bytes(&self) -> usize {
        match self {
            LogLine::Text { text, .. } => text.len(),
            LogLine::Json { json, .. } => json.len(),
        }
    }
}

/// Longest log line kept (its text, or its JSON encoding). 32 KiB holds a long stack
/// trace; longer lines are cut and marked (see [`LogLine`]).
pub const MAX_LOG_LINE_BYTES: usize = 32 * 1024;

impl<'de> Deserialize<'de> for LogLine {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        // Raw first, so an oversized object is never built into a map.
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let json = raw.get();
        let cut = |text: &str| {
            let mut end = MAX_LOG_LINE_BYTES.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            LogLine::Text {
                text: text[..end].to_owned(),
                truncated: end < text.len(),
            }
        };
        match json.as_bytes().first() {
            Some(b'"') => {
                let text: std::borrow::Cow<'_, str> =
                    serde_json::from_str(json).map_err(D::Error::custom)?;
                Ok(cut(&text))
            }
            Some(b'{') if json.len() <= MAX_LOG_LINE_BYTES => serde_json::from_str(json)
                .map(|members: Members| LogLine::Json {
                    json: json.to_owned(),
                    request_id: members.request_id,
                    level: members.level,
                    extension: members.extension,
                })
                .map_err(D::Error::custom),
            Some(b'{') => Ok(cut(json)),
            _ => Err(D::Error::custom("a log line as a string or a JSON object")),
        }
    }
}

/// The members of a JSON log line that [`LogLine::Json`] keeps beside its text, read in one
/// pass that validates the whole object and builds nothing else.
#[derive(Default)]
struct Members {
    request_id: Option<String>,
    level: Option<String>,
    extension: Option<String>,
}

/// A member's name, as far as [`Members`] cares.
enum Member {
    RequestId,
    Level,
    Extension,
    Other,
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Member;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Member, E> {
                Ok(match name {
                    "requestId" => Member::RequestId,
                    "level" => Member::Level,
                    "extension" => Member::Extension,
                    _ => Member::Other,
                })
            }
        }
        deserializer.deserialize_identifier(Name)
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Members::default();
                while let Some(member) = map.next_key::<Member>()? {
                    let (slot, max) = match member {
                        Member::RequestId => (&mut members.request_id, MAX_REQUEST_ID_BYTES),
                        Member::Level => (&mut members.level, MAX_TEXT_BYTES),
                        Member::Extension => (&mut members.extension, MAX_TEXT_BYTES),
                        Member::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = map.next_value_seed(ShortString(max))?;
                }
                Ok(members)
            }
        }
        deserializer.deserialize_map(Object)
    }
}

/// A value kept when it is a string of at most this many bytes; any other is skipped.
struct ShortString(usize);

impl<'de> serde::de::DeserializeSeed<'de> for ShortString {
    type Value = Option<String>;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        let raw = <&RawValue>::deserialize(deserializer)?;
        Ok(serde_json::from_str::<std::borrow::Cow<'_, str>>(raw.get())
            .ok()
            .filter(|text| text.len() <= self.0)
            .map(std::borrow::Cow::into_owned))
    }
}

/// The child spans of a `platform.runtimeDone`: the first [`MAX_CHILD_SPANS`], and how
/// many more there were (skipped without being built; the deriver counts them as
/// dropped spans).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChildSpans {
    pub kept: Vec<PlatformSpan>,
    pub skipped: usize,
}

impl<'de> Deserialize<'de> for ChildSpans {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpansVisitor;
        impl<'de> serde::de::Visitor<'de> for SpansVisitor {
            type Value = ChildSpans;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of spans")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ChildSpans, A::Error> {
                let mut spans = ChildSpans::default();
                while spans.kept.len() < MAX_CHILD_SPANS {
                    match seq.next_element()? {
                        Some(span) => spans.kept.push(span),
                        None => return Ok(spans),
                    }
                }
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    spans.skipped += 1;
                }
                Ok(spans)
            }
        }
        deserializer.deserialize_seq(SpansVisitor)
    }
}

/// A string of at most `max` bytes: longer ones are cut at a character boundary
/// (`cut: true`) or refused (`cut: false`). Only the kept part is copied.
struct Bounded {
    max: usize,
    cut: bool,
}

impl serde::de::Visitor<'_> for Bounded {
    type Value = String;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a string of at most {} bytes", self.max)
    }
    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<String, E> {
        if text.len() <= self.max {
            return Ok(text.to_owned());
        }
        if !self.cut {
            return Err(E::invalid_length(text.len(), &self));
        }
        let mut end = self.max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Ok(text[..end].to_owned())
    }
}

/// A request id: refused over [`MAX_REQUEST_ID_BYTES`], which makes its element malformed.
fn request_id<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    deserializer.deserialize_str(Bounded {
        max: MAX_REQUEST_ID_BYTES,
        cut: false,
    })
}

/// Free text, cut to [`MAX_TEXT_BYTES`].
fn text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    deserializer.deserialize_str(Bounded {
        max: MAX_TEXT_BYTES,
        cut: true,
    })
}

/// Optional free text, cut to [`MAX_TEXT_BYTES`]; `null` is absent.
fn optional_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Text(#[serde(deserialize_with = "text")] String);
    Ok(Option::<Text>::deserialize(deserializer)?.map(|Text(text)| text))
}

/// A list of names: the first [`MAX_LIST_ITEMS`], each cut to [`MAX_TEXT_BYTES`]; the
/// rest is skipped without being built.
fn text_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct ListVisitor;
    impl<'de> serde::de::Visitor<'de> for ListVisitor {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of strings")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            #[derive(Deserialize)]
            struct Text(#[serde(deserialize_with = "text")] String);
            let mut items = Vec::new();
            while items.len() < MAX_LIST_ITEMS {
                match seq.next_element::<Text>()? {
                    Some(Text(item)) => items.push(item),
                    None => return Ok(items),
                }
            }
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(items)
        }
    }
    deserializer.deserialize_seq(ListVisitor)
}

/// The X-Ray context; absent when its value is over [`MAX_TRACE_HEADER_BYTES`] (the
/// invocation is then derived as untraced rather than lost).
fn tracing<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Tracing>, D::Error> {
    #[derive(Deserialize)]
    struct Wire<'a> {
        #[serde(borrow)]
        value: std::borrow::Cow<'a, str>,
    }
    Ok(Option::<Wire<'_>>::deserialize(deserializer)?
        .filter(|wire| wire.value.len() <= MAX_TRACE_HEADER_BYTES)
        .map(|wire| Tracing {
            value: wire.value.into_owned(),
        }))
}

fn rfc3339<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
    let text = <&str>::deserialize(deserializer)?;
    parse_rfc3339(text).ok_or_else(|| serde::de::Error::custom("not an RFC 3339 timestamp"))
}

/// Parses an RFC 3339 timestamp (`2022-10-12T00:03:50.000Z`, any fraction length up to
/// nanoseconds, `Z` or a `±HH:MM` offset).
///
/// Hand-written rather than a date crate: Lambda's format is fixed and this is ~40
/// lines, whereas `chrono`/`time`/`jiff` would add a dependency (and, for `jiff`, a
/// time-zone database) to a binary that must start fast; `httpdate` only knows RFC 7231.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<u64> {
        let part = bytes.get(from..from + len)?;
        part.iter().try_fold(0u64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators
        .iter()
        .any(|&(at, sep)| bytes.get(at) != Some(&sep))
        || !matches!(bytes.get(10), Some(b'T' | b't' | b' '))
    {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    // Leap seconds (:60) are accepted and fold into the next second, like most parsers.
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0u64;
    if bytes.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while bytes.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 9 {
                nanos = nanos * 10 + u64::from(bytes[at] - b'0');
            }
            at += 1;
        }
        let len = at - start;
        if len == 0 {
            return None;
        }
        nanos *= 10u64.pow(9u32.saturating_sub(u32::try_from(len).ok()?));
    }
    let offset_seconds: i64 = match bytes.get(at)? {
        b'Z' | b'z' if at + 1 == bytes.len() => 0,
        sign @ (b'+' | b'-') if at + 6 == bytes.len() && bytes[at + 3] == b':' => {
            let (oh, om) = (digits(at + 1, 2)?, digits(at + 4, 2)?);
            let magnitude = i64::try_from(oh * 3600 + om * 60).ok()?;
            if *sign == b'+' { magnitude } else { -magnitude }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::try_from(year).ok()?, month, day);
    let seconds =
        days * 86_400 + i64::try_from(hour * 3600 + minute * 60 + second).ok()? - offset_seconds;
    let whole = Duration::from_secs(seconds.unsigned_abs());
    let base = if seconds >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(whole)?
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(whole)?
    };
    base.checked_add(Duration::from_nanos(nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u64, day: u64) -> i64 {
    let (month, day) = (month as i64, day as i64);
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders a batch as one line per event (`+ms type record`) plus the skip counts,
    /// with times relative to `2022-10-12T00:00:00Z` so expectations stay readable.
    fn render(batch: &Batch) -> String {
        let base = parse_rfc3339("2022-10-12T00:00:00Z").unwrap();
        let mut out = String::new();
        for event in &batch.events {
            let ms = event.time.duration_since(base).unwrap().as_millis();
            out += &format!("+{ms} {} {:?}\n", event.kind.type_name(), event.kind);
        }
        out + &format!("unknown={} malformed={}\n", batch.unknown, batch.malformed)
    }

    fn check(body: &str, expected: &str) {
        let batch = parse_batch(body.as_bytes()).unwrap();
        assert_eq!(render(&batch), expected, "body: {body}");
    }

    #[test]
    fn platform_init_events() {
        check(
            r#"[
              {"time":"2022-10-12T00:00:15.064Z","type":"platform.initStart","record":{"initializationType":"on-demand","phase":"init","runtimeVersion":"nodejs-14.v3","runtimeVersionArn":"arn","functionName":"f","functionVersion":"$LATEST"}},
              {"time":"2022-10-12T00:00:15.100Z","type":"platform.initRuntimeDone","record":{"initializationType":"on-demand","phase":"init","status":"success","spans":[]}},
              {"time":"2022-10-12T00:00:15.101Z","type":"platform.initReport","record":{"initializationType":"on-demand","phase":"init","metrics":{"durationMs":125.33}}}
            ]"#,
            r#"+15064 platform.initStart InitStart(InitStart { initialization_type: "on-demand", phase: "init", runtime_version: Some("nodejs-14.v3"), runtime_version_arn: Some("arn") })
+15100 platform.initRuntimeDone InitRuntimeDone(InitRuntimeDone { initialization_type: "on-demand", phase: "init", status: Success, error_type: None })
+15101 platform.initReport InitReport(InitReport { initialization_type: "on-demand", phase: "init", status: None, error_type: None, metrics: PhaseMetrics { duration_ms: 125.33 } })
unknown=0 malformed=0
"#,
        );
    }

    #[test]
    fn platform_invoke_events() {
        check(
            r#"[
              {"time":"2022-10-12T00:01:00.000Z","type":"platform.start","record":{"requestId":"r1","version":"$LATEST","tracing":{"spanId":"a","type":"X-Amzn-Trace-Id","value":"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"}}},
              {"time":"2022-10-12T00:01:00.250Z","type":"platform.runtimeDone","record":{"requestId":"r1","status":"timeout","errorType":"Sandbox.Timedout","metrics":{"durationMs":250.5,"producedBytes":42},"spans":[{"name":"responseLatency","start":"2022-10-12T00:01:00.001Z","durationMs":23.0}]}},
              {"time":"2022-10-12T00:01:00.260Z","type":"platform.report","record":{"requestId":"r1","status":"success","metrics":{"durationMs":260.1,"billedDurationMs":261,"memorySizeMB":128,"maxMemoryUsedMB":70,"initDurationMs":125.3}}}
            ]"#,
            r#"+60000 platform.start Start(Start { request_id: "r1", version: Some("$LATEST"), tracing: Some(Tracing { value: "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1" }) })
+60250 platform.runtimeDone RuntimeDone(RuntimeDone { request_id: "r1", status: Timeout, error_type: Some("Sandbox.Timedout"), metrics: Some(RuntimeDoneMetrics { duration_ms: 250.5, produced_bytes: Some(42) }), spans: ChildSpans { kept: [PlatformSpan { name: "responseLatency", start: SystemTime { tv_sec: 1665532860, tv_nsec: 1000000 }, duration_ms: 23.0 }], skipped: 0 }, tracing: None })
+60260 platform.report Report(Report { request_id: "r1", status: Success, error_type: None, metrics: ReportMetrics { duration_ms: 260.1, billed_duration_ms: Some(261.0), memory_size_mb: Some(128), max_memory_used_mb: Some(70), init_duration_ms: Some(125.3), restore_duration_ms: None }, tracing: None })
unknown=0 malformed=0
"#,
        );
    }

    /// Managed Instances: three overlapping invocations in one batch, events interleaved as
    /// they happen, one report without the billing and memory figures.
    #[test]
    fn interleaved_invocations_of_managed_instances() {
        check(
            r#"[
              {"time":"2022-10-12T00:00:00.000Z","type":"platform.initStart","record":{"initializationType":"lambda-managed-instances","phase":"init"}},
              {"time":"2022-10-12T00:00:01.000Z","type":"platform.start","record":{"requestId":"r1"}},
              {"time":"2022-10-12T00:00:01.001Z","type":"platform.start","record":{"requestId":"r2"}},
              {"time":"2022-10-12T00:00:01.002Z","type":"function","record":"r2 working"},
              {"time":"2022-10-12T00:00:01.010Z","type":"platform.runtimeDone","record":{"requestId":"r2","status":"success","metrics":{"durationMs":9.0}}},
              {"time":"2022-10-12T00:00:01.011Z","type":"platform.start","record":{"requestId":"r3"}},
              {"time":"2022-10-12T00:00:01.012Z","type":"platform.report","record":{"requestId":"r2","status":"success","metrics":{"durationMs":11.0}}},
              {"time":"2022-10-12T00:00:01.020Z","type":"platform.runtimeDone","record":{"requestId":"r1","status":"error","errorType":"E","metrics":{"durationMs":20.0}}},
              {"time":"2022-10-12T00:00:01.021Z","type":"platform.runtimeDone","record":{"requestId":"r3","status":"success","metrics":{"durationMs":10.0}}},
              {"time":"2022-10-12T00:00:01.022Z","type":"platform.report","record":{"requestId":"r3","status":"success","metrics":{"durationMs":11.0,"billedDurationMs":11,"memorySizeMB":2048,"maxMemoryUsedMB":90}}},
              {"time":"2022-10-12T00:00:01.023Z","type":"platform.report","record":{"requestId":"r1","status":"error","errorType":"E","metrics":{"durationMs":23.0}}}
            ]"#,
            r#"+0 platform.initStart InitStart(InitStart { initialization_type: "lambda-managed-instances", phase: "init", runtime_version: None, runtime_version_arn: None })
+1000 platform.start Start(Start { request_id: "r1", version: None, tracing: None })
+1001 platform.start Start(Start { request_id: "r2", version: None, tracing: None })
+1002 function Function(Text { text: "r2 working", truncated: false })
+1010 platform.runtimeDone RuntimeDone(RuntimeDone { request_id: "r2", status: Success, error_type: None, metrics: Some(RuntimeDoneMetrics { duration_ms: 9.0, produced_bytes: None }), spans: ChildSpans { kept: [], skipped: 0 }, tracing: None })
+1011 platform.start Start(Start { request_id: "r3", version: None, tracing: None })
+1012 platform.report Report(Report { request_id: "r2", status: Success, error_type: None, metrics: ReportMetrics { duration_ms: 11.0, billed_duration_ms: None, memory_size_mb: None, max_memory_used_mb: None, init_duration_ms: None, restore_duration_ms: None }, tracing: None })
+1020 platform.runtimeDone RuntimeDone(RuntimeDone { request_id: "r1", status: Error, error_type: Some("E"), metrics: Some(RuntimeDoneMetrics { duration_ms: 20.0, produced_bytes: None }), spans: ChildSpans { kept: [], skipped: 0 }, tracing: None })
+1021 platform.runtimeDone RuntimeDone(RuntimeDone { request_id: "r3", status: Success, error_type: None, metrics: Some(RuntimeDoneMetrics { duration_ms: 10.0, produced_bytes: None }), spans: ChildSpans { kept: [], skipped: 0 }, tracing: None })
+1022 platform.report Report(Report { request_id: "r3", status: Success, error_type: None, metrics: ReportMetrics { duration_ms: 11.0, billed_duration_ms: Some(11.0), memory_size_mb: Some(2048), max_memory_used_mb: Some(90), init_duration_ms: None, restore_duration_ms: None }, tracing: None })
+1023 platform.report Report(Report { request_id: "r1", status: Error, error_type: Some("E"), metrics: ReportMetrics { duration_ms: 23.0, billed_duration_ms: None, memory_size_mb: None, max_memory_used_mb: None, init_duration_ms: None, restore_duration_ms: None }, tracing: None })
unknown=0 malformed=0
"#,
        );
    }

    #[test]
    fn restore_and_housekeeping_events() {
        check(
            r#"[
              {"time":"2022-10-12T00:00:01.000Z","type":"platform.restoreStart","record":{}},
              {"time":"2022-10-12T00:00:01.200Z","type":"platform.restoreRuntimeDone","record":{"status":"failure","errorType":"Runtime.Crash"}},
              {"time":"2022-10-12T00:00:01.201Z","type":"platform.restoreReport","record":{"status":"success","metrics":{"durationMs":200.0}}},
              {"time":"2022-10-12T00:00:01.300Z","type":"platform.extension","record":{"name":"lambda-sidecar","state":"Ready","events":["INVOKE","SHUTDOWN"]}},
              {"time":"2022-10-12T00:00:01.301Z","type":"platform.telemetrySubscription","record":{"name":"lambda-sidecar","state":"Subscribed","types":["platform","function"]}},
              {"time":"2022-10-12T00:00:01.302Z","type":"platform.logsDropped","record":{"reason":"Consumer seems to have fallen behind","droppedRecords":3,"droppedBytes":1024}}
            ]"#,
            r#"+1000 platform.restoreStart RestoreStart(RestoreStart { runtime_version: None, runtime_version_arn: None })
+1200 platform.restoreRuntimeDone RestoreRuntimeDone(RestoreRuntimeDone { status: Failure, error_type: Some("Runtime.Crash") })
+1201 platform.restoreReport RestoreReport(RestoreReport { status: Success, error_type: None, metrics: Some(PhaseMetrics { duration_ms: 200.0 }) })
+1300 platform.extension Extension(ExtensionState { name: "lambda-sidecar", state: "Ready", events: ["INVOKE", "SHUTDOWN"] })
+1301 platform.telemetrySubscription TelemetrySubscription(TelemetrySubscription { name: "lambda-sidecar", state: "Subscribed", types: ["platform", "function"] })
+1302 platform.logsDropped LogsDropped(LogsDropped { reason: "Consumer seems to have fallen behind", dropped_records: 3, dropped_bytes: 1024 })
unknown=0 malformed=0
"#,
        );
    }

    #[test]
    fn log_lines_as_text_and_json() {
        check(
            r#"[
              {"time":"2022-10-12T00:00:02.000Z","type":"function","record":"START hello\n"},
              {"time":"2022-10-12T00:00:02.001Z","type":"function","record":{"level":"INFO","message":"hi","requestId":"r1"}},
              {"time":"2022-10-12T00:00:02.002Z","type":"extension","record":"ext says \"hi\""},
              {"time":"2022-10-12T00:00:02.003Z","type":"function","record":42}
            ]"#,
            r#"+2000 function Function(Text { text: "START hello\n", truncated: false })
+2001 function Function(Json { json: "{\"level\":\"INFO\",\"message\":\"hi\",\"requestId\":\"r1\"}", request_id: Some("r1"), level: Some("INFO"), extension: None })
+2002 extension ExtensionLog(Text { text: "ext says \"hi\"", truncated: false })
unknown=0 malformed=1
"#,
        );
    }

    /// A JSON line is kept as its text; the members derivation reads first are picked out
    /// when they are strings within their bounds, the last one when repeated; a line that is
    /// not valid JSON is malformed.
    #[test]
    fn a_json_line_keeps_its_text_and_the_members_read_first() {
        let long_id = "r".repeat(MAX_REQUEST_ID_BYTES + 1);
        let cases = [
            (
                r#"{"requestId":"r1","level":"WARN","extension":"x","a":[[],{}]}"#,
                (Some("r1"), Some("WARN"), Some("x")),
            ),
            (
                r#"{"level":"INFO","nested":{"level":"ERROR"},"level":"DEBUG"}"#,
                (None, Some("DEBUG"), None),
            ),
            (
                r#"{"requestId":42,"level":["INFO"],"extension":null}"#,
                (None, None, None),
            ),
            (
                r#"{"requestId":"r\u0031","lev\u0065l":"INFO"}"#,
                (Some("r1"), Some("INFO"), None),
            ),
            (
                &format!(r#"{{"requestId":"{long_id}"}}"#),
                (None, None, None),
            ),
        ];
        for (json, (request_id, level, extension)) in cases {
            let line: LogLine = serde_json::from_str(json).unwrap();
            assert_eq!(
                line,
                LogLine::Json {
                    json: json.to_string(),
                    request_id: request_id.map(String::from),
                    level: level.map(String::from),
                    extension: extension.map(String::from),
                },
                "{json}"
            );
        }
        for broken in [r#"{"a":}"#, r#"{"a":1"#, r#"{"a":[1,]}"#] {
            assert!(serde_json::from_str::<LogLine>(broken).is_err(), "{broken}");
        }
    }

    #[test]
    fn long_log_lines_are_cut_and_marked() {
        // The `é` straddles the bound: the cut falls before it.
        let text = format!("{}é", "a".repeat(MAX_LOG_LINE_BYTES - 1));
        let object = format!(r#"{{"message":"{}"}}"#, "m".repeat(MAX_LOG_LINE_BYTES));
        let fits = "f".repeat(MAX_LOG_LINE_BYTES);
        let body = format!(
            r#"[{{"time":"2022-10-12T00:00:02.000Z","type":"function","record":"{text}"}},
                {{"time":"2022-10-12T00:00:02.000Z","type":"extension","record":{object}}},
                {{"time":"2022-10-12T00:00:02.000Z","type":"function","record":"{fits}"}}]"#
        );
        let batch = parse_batch(body.as_bytes()).unwrap();
        let lines: Vec<_> = batch.events.iter().map(|e| &e.kind).collect();
        let [
            EventKind::Function(LogLine::Text {
                text: cut_text,
                truncated: true,
            }),
            EventKind::ExtensionLog(LogLine::Text {
                text: cut_object,
                truncated: true,
            }),
            EventKind::Function(LogLine::Text {
                text: kept,
                truncated: false,
            }),
        ] = lines[..]
        else {
            panic!("{lines:?}");
        };
        assert_eq!(cut_text, &text[..MAX_LOG_LINE_BYTES - 1]);
        assert_eq!(cut_object, &object[..MAX_LOG_LINE_BYTES]);
        assert_eq!(kept, &fits);
    }

    #[test]
    fn unknown_and_malformed_elements_are_counted_not_fatal() {
        check(
            r#"[
              {"time":"2022-10-12T00:00:03.000Z","type":"platform.somethingNew","record":{"x":1}},
              {"time":"2022-10-12T00:00:03.000Z","type":"platform.start","record":{"version":"1"}},
              {"time":"yesterday","type":"platform.start","record":{"requestId":"r2"}},
              {"type":"platform.start","record":{"requestId":"r3"}},
              17,
              {"time":"2022-10-11T22:00:03.500-02:00","type":"platform.start","record":{"requestId":"r4","newField":[1,2]},"extra":true},
              {"time":"2022-10-12T00:00:03.000Z","type":"platform.runtimeDone","record":{"requestId":"r4","status":"paused"}}
            ]"#,
            r#"+3500 platform.start Start(Start { request_id: "r4", version: None, tracing: None })
+3000 platform.runtimeDone RuntimeDone(RuntimeDone { request_id: "r4", status: Unknown, error_type: None, metrics: None, spans: ChildSpans { kept: [], skipped: 0 }, tracing: None })
unknown=1 malformed=4
"#,
        );
    }

    #[test]
    fn elements_and_records_written_as_arrays_are_malformed() {
        // serde's derived Deserialize also reads a struct from a sequence of its fields
        // in order: none of these may become an event.
        check(
            r#"[
              ["2022-10-12T00:00:00Z","platform.start",{"requestId":"r1"}],
              {"time":"2022-10-12T00:00:00Z","type":"platform.start","record":["r2",null,null]},
              {"time":"2022-10-12T00:00:00Z","type":"platform.report","record":["r3","success",null,[1.0,2.0,128,64,null,null],null]},
              {"time":"2022-10-12T00:00:00Z","type":"function","record":["a log line"]},
              {"time":"2022-10-12T00:00:00Z","type":"platform.restoreStart","record":[]}
            ]"#,
            "unknown=0 malformed=5\n",
        );
    }

    #[test]
    fn only_a_non_array_body_is_an_error() {
        for body in ["", "{}", "[1,", "null", "\"[]\""] {
            assert!(parse_batch(body.as_bytes()).is_err(), "{body:?}");
        }
        check("[]", "unknown=0 malformed=0\n");
    }

    #[test]
    fn rfc3339_timestamps() {
        let epoch_ns = |text: &str| {
            parse_rfc3339(text)
                .map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos())
        };
        assert_eq!(epoch_ns("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            epoch_ns("2022-10-12T00:00:15.064Z"),
            Some(1_665_532_815_064_000_000)
        );
        assert_eq!(
            epoch_ns("2024-02-29T23:59:59.123456789Z"),
            Some(1_709_251_199_123_456_789)
        );
        assert_eq!(
            epoch_ns("2024-02-29T23:59:59.1234567891Z"),
            Some(1_709_251_199_123_456_789)
        );
        assert_eq!(
            epoch_ns("2022-10-12T02:00:00+02:00"),
            Some(1_665_532_800_000_000_000)
        );
        assert_eq!(
            epoch_ns("2022-10-11T22:00:00-02:00"),
            Some(1_665_532_800_000_000_000)
        );
        for bad in [
            "2022-10-12",
            "2022-10-12T00:00:00",
            "2022-13-12T00:00:00Z",
            "2022-10-12T24:00:00Z",
            "2022-10-12T00:00:00.Z",
            "2022-10-12T00:00:00Zjunk",
            "2022-10-12T00:00:00+0200",
            "2022/10/12T00:00:00Z",
        ] {
            assert_eq!(epoch_ns(bad), None, "{bad}");
        }
    }

    #[test]
    fn request_ids_are_bounded() {
        // 128 bytes is kept; one byte more (or 1 MiB) makes the element malformed.
        let event = |id: &str| {
            format!(
                r#"{{"time":"2022-10-12T00:00:04.000Z","type":"platform.start","record":{{"requestId":"{id}"}}}}"#
            )
        };
        let kept = "k".repeat(128);
        let body = format!(
            "[{},{},{},{}]",
            event(&kept),
            event(&"x".repeat(129)),
            event(&"y".repeat(1 << 20)),
            r#"{"time":"2022-10-12T00:00:04.000Z","type":"platform.report","record":{"requestId":"éééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé1","status":"success","metrics":{"durationMs":1.0,"billedDurationMs":1,"memorySizeMB":128,"maxMemoryUsedMB":1}}}"#,
        );
        check(
            &body,
            &format!(
                "+4000 platform.start Start(Start {{ request_id: \"{kept}\", version: None, tracing: None }})\nunknown=0 malformed=3\n"
            ),
        );
    }

    #[test]
    fn free_text_is_cut_and_long_trace_headers_ignored() {
        let long_error = format!("Function.{}é", "E".repeat(246));
        let header = format!(
            "Root=1-5759e988-bd862e3fe1be46a994272793;Lineage={}",
            "a".repeat(600)
        );
        let body = format!(
            r#"[{{"time":"2022-10-12T00:00:05.000Z","type":"platform.runtimeDone","record":{{"requestId":"r1","status":"error","errorType":"{long_error}","tracing":{{"type":"X-Amzn-Trace-Id","value":"{header}"}},"spans":[{{"name":"{name}","start":"2022-10-12T00:00:05.000Z","durationMs":1.0}}]}}}},
                {{"time":"2022-10-12T00:00:05.001Z","type":"platform.initStart","record":{{"initializationType":"{init}","phase":"init","runtimeVersion":"{init}"}}}}]"#,
            name = "n".repeat(10_000),
            init = "i".repeat(100_000),
        );
        let batch = parse_batch(body.as_bytes()).unwrap();
        assert_eq!(batch.malformed, 0);
        let EventKind::RuntimeDone(done) = &batch.events[0].kind else {
            panic!("{:?}", batch.events[0]);
        };
        // Cut at 256 bytes, on a character boundary (the `é` straddles byte 256).
        assert_eq!(
            done.error_type.as_deref(),
            Some(&long_error[..long_error.len() - 2])
        );
        assert!(done.error_type.as_ref().unwrap().len() <= 256);
        assert_eq!(done.tracing, None);
        assert_eq!(done.spans.kept[0].name, "n".repeat(256));
        let EventKind::InitStart(start) = &batch.events[1].kind else {
            panic!("{:?}", batch.events[1]);
        };
        assert_eq!(start.initialization_type.len(), 256);
        assert_eq!(start.runtime_version.as_ref().map(String::len), Some(256));
    }

    #[test]
    fn lists_are_bounded() {
        let span =
            r#"{"name":"responseLatency","start":"2022-10-12T00:00:06.000Z","durationMs":1.0}"#;
        let names = vec!["\"INVOKE\""; 1000].join(",");
        let body = format!(
            r#"[{{"time":"2022-10-12T00:00:06.000Z","type":"platform.runtimeDone","record":{{"requestId":"r1","status":"success","spans":[{}]}}}},
                {{"time":"2022-10-12T00:00:06.000Z","type":"platform.extension","record":{{"name":"x","state":"Ready","events":[{names}]}}}},
                {{"time":"2022-10-12T00:00:06.000Z","type":"platform.telemetrySubscription","record":{{"name":"x","state":"Subscribed","types":[{names}]}}}}]"#,
            vec![span; 30_000].join(","),
        );
        let batch = parse_batch(body.as_bytes()).unwrap();
        let kinds: Vec<_> = batch.events.iter().map(|e| &e.kind).collect();
        let [
            EventKind::RuntimeDone(done),
            EventKind::Extension(extension),
            EventKind::TelemetrySubscription(subscription),
        ] = kinds[..]
        else {
            panic!("{kinds:?}");
        };
        assert_eq!((done.spans.kept.len(), done.spans.skipped), (16, 29_984));
        assert_eq!(extension.events.len(), 16);
        assert_eq!(subscription.types.len(), 16);
    }
}
