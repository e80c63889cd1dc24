//! The derived items that derivation hands to export, and the bounds both sides share.
//!
//! Derivation (`derive`) turns records into spans and log records; export ships them. Both
//! bound what they hold by the same figures, so the figures live here, below both, and
//! neither has to import the other.

use opentelemetry_sdk::logs::SdkLogRecord;

/// Most spans kept for a later flush when the collector can't take them. A busy function
/// makes a handful per invoke; this is minutes of a dead collector, a few MiB at most.
/// The deriver holds as many finished spans until the next drain.
pub const SPAN_BUFFER_CAP: usize = 4096;

/// Most log bytes kept for a later flush: the memory each record holds (a text line's text,
/// a JSON line's body as built, which derivation measures) plus [`RECORD_OVERHEAD_BYTES`]
/// per record. Logs are the one signal whose size the function decides, so the bound is in
/// bytes, not records: 4 MiB is 3% of the smallest Lambda's 128 MB, and holds ~10,000
/// typical text lines (a few hundred bytes each, so minutes of a dead collector for a
/// function logging a few lines per invoke), ~3,000 typical JSON lines (a map of a few
/// fields takes ~1 KiB), or 128 lines at the 32 KiB line bound. The deriver holds as much
/// again until the next drain. Counting a JSON line's text instead of its parsed body let
/// lines that parse into 20 times their size hold 360 MB.
pub const LOG_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// What a record weighs in the log buffers' byte bound beyond its text: the record itself,
/// its ids and attributes (an `SdkLogRecord` is ~200 bytes before its body).
pub const RECORD_OVERHEAD_BYTES: usize = 256;

/// A log record ready for export, and its weight in the byte bounds: the memory it holds.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub record: SdkLogRecord,
    pub bytes: usize,
}

/// Invocations whose trace context is remembered for joining the function's own spans.
/// Lambda runs one invocation at a time per environment (a few dozen on Managed Instances);
/// a span exported this many invocations late is forwarded unjoined.
pub const TRACES_KEPT: usize = 256;

/// The trace context of one invocation traced by X-Ray: what the OTLP receiver's spans are
/// joined to (docs/signals.md, "The function's own telemetry").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvocationTrace {
    pub trace_id: [u8; 16],
    /// The sidecar's invocation span.
    pub span_id: [u8; 8],
    /// The caller's X-Ray segment, the invocation span's remote parent.
    pub parent: Option<[u8; 8]>,
    /// The invocation's sampling decision: an unsampled one exports no span, the function's
    /// included.
    pub sampled: bool,
}

/// The latest invocations' trace contexts, at most [`TRACES_KEPT`]: written by derivation
/// as it learns them, read by export when it forwards what the function sent. Shared
/// through a lock held for a lookup or an insert only.
#[derive(Debug, Clone, Default)]
pub struct InvocationTraces(
    std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<InvocationTrace>>>,
);

impl InvocationTraces {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<InvocationTrace>> {
        // Every update is one push or one store: a panic leaves nothing half-written.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers `trace`, replacing what was known of its trace id; the oldest beyond
    /// [`TRACES_KEPT`] is forgotten.
    pub fn note(&self, trace: InvocationTrace) {
        let mut traces = self.lock();
        if let Some(known) = traces.iter_mut().find(|t| t.trace_id == trace.trace_id) {
            *known = trace;
            return;
        }
        if traces.len() >= TRACES_KEPT {
            traces.pop_front();
        }
        traces.push_back(trace);
    }

    /// Every invocation remembered, by trace id: one lock for a whole batch of lookups.
    pub fn by_trace_id(&self) -> std::collections::HashMap<[u8; 16], InvocationTrace> {
        self.lock().iter().map(|t| (t.trace_id, *t)).collect()
    }
}
