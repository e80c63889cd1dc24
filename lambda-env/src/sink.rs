//! An OTLP/HTTP receiver for tests: decodes protobuf traces, metrics and logs with the official
//! generated types and keeps them in memory (optionally appending JSON lines to a file).
//!
//! Its answer is switchable at run time (healthy, failing, slow) and it can be stopped and
//! restarted on the same port, so a test can play a dead or flaky collector.

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, metric, number_data_point};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Exporters batch; allow more than axum's 2 MiB default.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// How the sink answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkMode {
    /// Decode, keep, answer 200.
    Ok,
    /// Answer this status (e.g. 503) without keeping anything.
    Fail(u16),
    /// Wait this long, then behave like `Ok`: a request its sender gives up on before then
    /// is lost.
    Slow(Duration),
    /// Decode and keep at once, then answer 200 after this long: a collector that takes the
    /// data and answers late, so a request its sender gives up on was still received.
    Late(Duration),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP SpanKind number (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Map<String, Value>,
    /// OTLP StatusCode number (0 unset, 1 ok, 2 error).
    pub status_code: i32,
    pub status_message: String,
    pub resource: Map<String, Value>,
    pub scope: String,
    /// When the sink received the request that carried it (Unix ns): how fresh the data
    /// was on arrival, against the invocation's `frozen_unix_ms` or `responded_unix_ms`.
    #[serde(default)]
    pub received_unix_nanos: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub name: String,
    pub unit: String,
    /// `sum`, `gauge`, `histogram`, `exponential_histogram` or `summary`.
    pub kind: String,
    /// Sum/gauge value.
    pub value: Option<f64>,
    /// Histogram/summary count and sum.
    pub count: Option<u64>,
    pub sum: Option<f64>,
    pub time_unix_nanos: u64,
    /// The start of the point's window (0 when the sender left it out).
    #[serde(default)]
    pub start_unix_nanos: u64,
    /// `cumulative` or `delta` for sums and histograms, empty for the kinds without one.
    #[serde(default)]
    pub temporality: String,
    pub attributes: Map<String, Value>,
    pub resource: Map<String, Value>,
}

/// One log record as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecordView {
    pub time_unix_nanos: u64,
    pub observed_unix_nanos: u64,
    /// OTLP SeverityNumber (0 unspecified, 9 INFO, 13 WARN, 17 ERROR, ...).
    pub severity_number: i32,
    pub severity_text: String,
    /// A string body as a JSON string, a map body as a JSON object.
    pub body: Value,
    pub attributes: Map<String, Value>,
    /// Empty when the record has none.
    pub trace_id: String,
    pub span_id: String,
    pub flags: u32,
    pub resource: Map<String, Value>,
    pub scope: String,
}

/// Requests received, by how they were answered and by signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub ok: u64,
    pub failed: u64,
    pub slow: u64,
    /// Bodies that did not decode (answered 400/415).
    pub rejected: u64,
    pub traces: u64,
    pub metrics: u64,
    #[serde(default)]
    pub logs: u64,
}

#[derive(Default)]
struct Data {
    spans: Vec<SpanRecord>,
    metrics: Vec<MetricPoint>,
    logs: Vec<LogRecordView>,
    counts: RequestCounts,
}

struct StoreInner {
    data: Mutex<Data>,
    mode: Mutex<SinkMode>,
    /// Refusals queued by [`SinkStore::refuse_next`]: by path, the status and how many
    /// requests are left to refuse.
    refusals: Mutex<Vec<(&'static str, u16, u32)>>,
    out: Mutex<Option<std::fs::File>>,
    tick: watch::Sender<()>,
}

/// What the sink has received; cheap to clone, shared with the server.
#[derive(Clone)]
pub struct SinkStore(Arc<StoreInner>);

/// A read-only view for [`SinkStore::wait_for`] predicates.
pub struct SinkView<'a> {
    pub spans: &'a [SpanRecord],
    pub metrics: &'a [MetricPoint],
    pub logs: &'a [LogRecordView],
    pub counts: RequestCounts,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panicking test thread; the data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Appends `lines` to `out`, one JSON record a line, in a single `write`: the demo polls the
/// file while the sink appends, and `writeln!` on a `File` is one `write` per formatted
/// piece, so a reader could see half a record. (Readers still skip an unterminated last
/// line: see scripts/jsonl.py.)
fn append_lines(
    out: &mut impl std::io::Write,
    lines: impl Iterator<Item = serde_json::Value>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    for line in lines {
        serde_json::to_writer(&mut buf, &line)?;
        buf.push(b'\n');
    }
    if buf.is_empty() {
        return Ok(());
    }
    out.write_all(&buf)
}

impl SinkStore {
    /// A store that also appends one JSON line per span/point to `out`.
    pub fn new(out: Option<&Path>) -> std::io::Result<SinkStore> {
        let out = match out {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => None,
        };
        Ok(SinkStore(Arc::new(StoreInner {
            data: Mutex::new(Data::default()),
            mode: Mutex::new(SinkMode::Ok),
            refusals: Mutex::new(Vec::new()),
            out: Mutex::new(out),
            tick: watch::Sender::new(()),
        })))
    }

    pub fn spans(&self) -> Vec<SpanRecord> {
        lock(&self.0.data).spans.clone()
    }

    pub fn metrics(&self) -> Vec<MetricPoint> {
        lock(&self.0.data).metrics.clone()
    }

    pub fn logs(&self) -> Vec<LogRecordView> {
        lock(&self.0.data).logs.clone()
    }

    pub fn counts(&self) -> RequestCounts {
        lock(&self.0.data).counts
    }

    pub fn mode(&self) -> SinkMode {
        *lock(&self.0.mode)
    }

    pub fn set_mode(&self, mode: SinkMode) {
        *lock(&self.0.mode) = mode;
    }

    /// Answers the next `requests` requests for `signal` (`traces`, `metrics` or `logs`)
    /// with `status` and a `google.rpc.Status` body (protobuf, as OTLP/HTTP asks) whose
    /// message is [`REFUSAL_MESSAGE`], keeping nothing (counted in `failed`); before the
    /// mode applies. A collector that refuses a batch, as it would a malformed one.
    pub fn refuse_next(&self, signal: &'static str, status: u16, requests: u32) {
        lock(&self.0.refusals).push((signal, status, requests));
    }

    /// A refusal queued for `signal`, taken.
    fn refusal(&self, signal: &str) -> Option<Response> {
        let mut refusals = lock(&self.0.refusals);
        let queued = refusals
            .iter_mut()
            .find(|(s, _, n)| *s == signal && *n > 0)?;
        queued.2 -= 1;
        let status = StatusCode::from_u16(queued.1).unwrap_or(StatusCode::BAD_REQUEST);
        drop(refusals);
        self.count(|c| c.failed += 1);
        // google.rpc.Status { code: 3 (INVALID_ARGUMENT), message }.
        let mut body = Vec::new();
        prost::encoding::int32::encode(1, &3, &mut body);
        prost::encoding::string::encode(2, &REFUSAL_MESSAGE.to_owned(), &mut body);
        Some(
            (
                status,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                body,
            )
                .into_response(),
        )
    }

    /// Forgets everything received so far (counts too).
    pub fn clear(&self) {
        *lock(&self.0.data) = Data::default();
    }

    /// Waits until `pred` holds (true) or `timeout` passes (false).
    pub async fn wait_for(&self, pred: impl Fn(&SinkView<'_>) -> bool, timeout: Duration) -> bool {
        let mut rx = self.0.tick.subscribe();
        let check = |rx: &mut watch::Receiver<()>| {
            rx.borrow_and_update();
            let d = lock(&self.0.data);
            pred(&SinkView {
                spans: &d.spans,
                metrics: &d.metrics,
                logs: &d.logs,
                counts: d.counts,
            })
        };
        let wait = async {
            loop {
                if check(&mut rx) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(v) => v,
            Err(_) => check(&mut self.0.tick.subscribe()),
        }
    }

    fn count(&self, f: impl FnOnce(&mut RequestCounts)) {
        f(&mut lock(&self.0.data).counts);
        self.0.tick.send_replace(());
    }

    fn keep(&self, spans: Vec<SpanRecord>, metrics: Vec<MetricPoint>) {
        if let Some(file) = lock(&self.0.out).as_mut() {
            let lines = spans
                .iter()
                .map(|s| serde_json::json!({"span": s}))
                .chain(metrics.iter().map(|m| serde_json::json!({"metric": m})));
            // The file is a convenience copy; memory stays the source of truth.
            let _ = append_lines(file, lines);
        }
        let mut d = lock(&self.0.data);
        d.spans.extend(spans);
        d.metrics.extend(metrics);
        drop(d);
        self.0.tick.send_replace(());
    }

    fn keep_logs(&self, logs: Vec<LogRecordView>) {
        if let Some(file) = lock(&self.0.out).as_mut() {
            let _ = append_lines(file, logs.iter().map(|l| serde_json::json!({"log": l})));
        }
        lock(&self.0.data).logs.extend(logs);
        self.0.tick.send_replace(());
    }
}

/// The message of the sink's refusals ([`SinkStore::refuse_next`]).
pub const REFUSAL_MESSAGE: &str = "the sink refuses this batch on purpose";

/// Serves OTLP/HTTP on `listener` until `shutdown` resolves (then finishes open requests).
pub async fn run(
    listener: TcpListener,
    store: SinkStore,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .route("/v1/logs", post(logs))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(store);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Answers per the current mode; Some(response) when the request is not to be processed.
async fn gate(store: &SinkStore) -> Option<Response> {
    match store.mode() {
        SinkMode::Ok => {
            store.count(|c| c.ok += 1);
            None
        }
        SinkMode::Fail(status) => {
            store.count(|c| c.failed += 1);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            Some((status, "sink is failing on purpose").into_response())
        }
        SinkMode::Slow(d) => {
            store.count(|c| c.slow += 1);
            tokio::time::sleep(d).await;
            None
        }
        SinkMode::Late(_) => {
            store.count(|c| c.slow += 1);
            None
        }
    }
}

/// A request was kept: answers `response`, after the delay of [`SinkMode::Late`].
async fn answer(store: &SinkStore, response: Response) -> Response {
    if let SinkMode::Late(d) = store.mode() {
        tokio::time::sleep(d).await;
    }
    response
}

/// A request the sink refuses to decode.
struct Reject(StatusCode, String);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

/// Checks the content type and undoes gzip.
fn body_bytes(headers: &HeaderMap, body: &Bytes) -> Result<Vec<u8>, Reject> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !ctype.starts_with("application/x-protobuf") {
        return Err(Reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only application/x-protobuf is accepted".into(),
        ));
    }
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut out)
        .map_err(|e| Reject(StatusCode::BAD_REQUEST, format!("bad gzip body: {e}")))?;
    Ok(out)
}

fn protobuf_ok(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        body,
    )
        .into_response()
}

async fn traces(State(store): State<SinkStore>, headers: HeaderMap, body: Bytes) -> Response {
    store.count(|c| c.traces += 1);
    if let Some(r) = store.refusal("traces") {
        return r;
    }
    if let Some(r) = gate(&store).await {
        return r;
    }
    let decoded = body_bytes(&headers, &body).and_then(|raw| {
        ExportTraceServiceRequest::decode(raw.as_slice())
            .map_err(|e| Reject(StatusCode::BAD_REQUEST, format!("bad protobuf: {e}")))
    });
    match decoded {
        Ok(req) => {
            store.keep(spans_of(req), Vec::new());
            // An empty ExportTraceServiceResponse encodes to zero bytes.
            answer(&store, protobuf_ok(Vec::new())).await
        }
        Err(r) => {
            store.count(|c| c.rejected += 1);
            r.into_response()
        }
    }
}

async fn metrics(State(store): State<SinkStore>, headers: HeaderMap, body: Bytes) -> Response {
    store.count(|c| c.metrics += 1);
    if let Some(r) = store.refusal("metrics") {
        return r;
    }
    if let Some(r) = gate(&store).await {
        return r;
    }
    let decoded = body_bytes(&headers, &body).and_then(|raw| {
        ExportMetricsServiceRequest::decode(raw.as_slice())
            .map_err(|e| Reject(StatusCode::BAD_REQUEST, format!("bad protobuf: {e}")))
    });
    match decoded {
        Ok(req) => {
            store.keep(Vec::new(), points_of(req));
            answer(&store, protobuf_ok(Vec::new())).await
        }
        Err(r) => {
            store.count(|c| c.rejected += 1);
            r.into_response()
        }
    }
}

async fn logs(State(store): State<SinkStore>, headers: HeaderMap, body: Bytes) -> Response {
    store.count(|c| c.logs += 1);
    if let Some(r) = store.refusal("logs") {
        return r;
    }
    if let Some(r) = gate(&store).await {
        return r;
    }
    let decoded = body_bytes(&headers, &body).and_then(|raw| {
        ExportLogsServiceRequest::decode(raw.as_slice())
            .map_err(|e| Reject(StatusCode::BAD_REQUEST, format!("bad protobuf: {e}")))
    });
    match decoded {
        Ok(req) => {
            store.keep_logs(logs_of(req));
            answer(&store, protobuf_ok(Vec::new())).await
        }
        Err(r) => {
            store.count(|c| c.rejected += 1);
            r.into_response()
        }
    }
}

fn logs_of(req: ExportLogsServiceRequest) -> Vec<LogRecordView> {
    let mut out = Vec::new();
    for rl in req.resource_logs {
        let resource = rl
            .resource
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for sl in rl.scope_logs {
            let scope = sl.scope.map(|s| s.name).unwrap_or_default();
            for l in sl.log_records {
                out.push(LogRecordView {
                    time_unix_nanos: l.time_unix_nano,
                    observed_unix_nanos: l.observed_time_unix_nano,
                    severity_number: l.severity_number,
                    severity_text: l.severity_text,
                    body: l.body.as_ref().map(any_to_json).unwrap_or(Value::Null),
                    attributes: attrs(&l.attributes),
                    trace_id: hex(&l.trace_id),
                    span_id: hex(&l.span_id),
                    flags: l.flags,
                    resource: resource.clone(),
                    scope: scope.clone(),
                });
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn any_to_json(v: &AnyValue) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(any_to_json).collect())
        }
        Some(any_value::Value::KvlistValue(kv)) => Value::Object(attrs(&kv.values)),
        Some(any_value::Value::BytesValue(b)) => Value::String(hex(b)),
        Some(any_value::Value::StringValueStrindex(i)) => Value::from(*i),
        None => Value::Null,
    }
}

fn attrs(kvs: &[KeyValue]) -> Map<String, Value> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(any_to_json).unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn spans_of(req: ExportTraceServiceRequest) -> Vec<SpanRecord> {
    let received = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let resource = rs
            .resource
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            let scope = ss.scope.map(|s| s.name).unwrap_or_default();
            for s in ss.spans {
                let (status_code, status_message) =
                    s.status.map(|st| (st.code, st.message)).unwrap_or_default();
                out.push(SpanRecord {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name,
                    kind: s.kind,
                    start_unix_nanos: s.start_time_unix_nano,
                    end_unix_nanos: s.end_time_unix_nano,
                    attributes: attrs(&s.attributes),
                    status_code,
                    status_message,
                    resource: resource.clone(),
                    scope: scope.clone(),
                    received_unix_nanos: received,
                });
            }
        }
    }
    out
}

fn points_of(req: ExportMetricsServiceRequest) -> Vec<MetricPoint> {
    let mut out = Vec::new();
    for rm in req.resource_metrics {
        let resource = rm
            .resource
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for sm in rm.scope_metrics {
            for m in sm.metrics {
                let temporality = match &m.data {
                    Some(metric::Data::Sum(s)) => s.aggregation_temporality,
                    Some(metric::Data::Histogram(h)) => h.aggregation_temporality,
                    Some(metric::Data::ExponentialHistogram(h)) => h.aggregation_temporality,
                    _ => 0,
                };
                let temporality = match AggregationTemporality::try_from(temporality) {
                    Ok(AggregationTemporality::Cumulative) => "cumulative",
                    Ok(AggregationTemporality::Delta) => "delta",
                    _ => "",
                };
                let point =
                    |kind: &str, value, count, sum, (start, time), a: &[KeyValue]| MetricPoint {
                        name: m.name.clone(),
                        unit: m.unit.clone(),
                        kind: kind.to_string(),
                        value,
                        count,
                        sum,
                        time_unix_nanos: time,
                        start_unix_nanos: start,
                        temporality: temporality.to_string(),
                        attributes: attrs(a),
                        resource: resource.clone(),
                    };
                let number = |v: &Option<number_data_point::Value>| match v {
                    Some(number_data_point::Value::AsDouble(d)) => Some(*d),
                    Some(number_data_point::Value::AsInt(i)) => Some(*i as f64),
                    None => None,
                };
                match &m.data {
                    Some(metric::Data::Sum(s)) => out.extend(s.data_points.iter().map(|p| {
                        point(
                            "sum",
                            number(&p.value),
                            None,
                            None,
                            (p.start_time_unix_nano, p.time_unix_nano),
                            &p.attributes,
                        )
                    })),
                    Some(metric::Data::Gauge(g)) => out.extend(g.data_points.iter().map(|p| {
                        point(
                            "gauge",
                            number(&p.value),
                            None,
                            None,
                            (p.start_time_unix_nano, p.time_unix_nano),
                            &p.attributes,
                        )
                    })),
                    Some(metric::Data::Histogram(h)) => out.extend(h.data_points.iter().map(|p| {
                        point(
                            "histogram",
                            None,
                            Some(p.count),
                            p.sum,
                            (p.start_time_unix_nano, p.time_unix_nano),
                            &p.attributes,
                        )
                    })),
                    Some(metric::Data::ExponentialHistogram(h)) => {
                        out.extend(h.data_points.iter().map(|p| {
                            point(
                                "exponential_histogram",
                                None,
                                Some(p.count),
                                p.sum,
                                (p.start_time_unix_nano, p.time_unix_nano),
                                &p.attributes,
                            )
                        }))
                    }
                    Some(metric::Data::Summary(s)) => out.extend(s.data_points.iter().map(|p| {
                        point(
                            "summary",
                            None,
                            Some(p.count),
                            Some(p.sum),
                            (p.start_time_unix_nano, p.time_unix_nano),
                            &p.attributes,
                        )
                    })),
                    None => {}
                }
            }
        }
    }
    out
}

/// A sink server owned by a test: start, query, switch modes, stop and restart.
pub struct Sink {
    store: SinkStore,
    addr: SocketAddr,
    running: Option<(oneshot::Sender<()>, JoinHandle<std::io::Result<()>>)>,
}

impl Sink {
    /// Starts on 127.0.0.1 with an OS-picked port.
    pub async fn start() -> std::io::Result<Sink> {
        Sink::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), None).await
    }

    /// Starts on `addr`, appending JSON lines to `out` when given.
    pub async fn start_on(addr: SocketAddr, out: Option<PathBuf>) -> std::io::Result<Sink> {
        let store = SinkStore::new(out.as_deref())?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let mut sink = Sink {
            store,
            addr,
            running: None,
        };
        sink.serve(listener);
        Ok(sink)
    }

    fn serve(&mut self, listener: TcpListener) {
        let (tx, rx) = oneshot::channel::<()>();
        let store = self.store.clone();
        let task = tokio::spawn(run(listener, store, async {
            let _ = rx.await;
        }));
        self.running = Some((tx, task));
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the value for OTEL_EXPORTER_OTLP_ENDPOINT.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn store(&self) -> &SinkStore {
        &self.store
    }

    pub fn spans(&self) -> Vec<SpanRecord> {
        self.store.spans()
    }

    pub fn metrics(&self) -> Vec<MetricPoint> {
        self.store.metrics()
    }

    pub fn logs(&self) -> Vec<LogRecordView> {
        self.store.logs()
    }

    pub fn counts(&self) -> RequestCounts {
        self.store.counts()
    }

    pub fn set_mode(&self, mode: SinkMode) {
        self.store.set_mode(mode);
    }

    /// [`SinkStore::refuse_next`].
    pub fn refuse_next(&self, signal: &'static str, status: u16, requests: u32) {
        self.store.refuse_next(signal, status, requests);
    }

    pub async fn wait_for(&self, pred: impl Fn(&SinkView<'_>) -> bool, timeout: Duration) -> bool {
        self.store.wait_for(pred, timeout).await
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Closes the port: a dead collector. Open requests finish (bounded by 2 s).
    pub async fn stop(&mut self) {
        if let Some((tx, task)) = self.running.take() {
            let _ = tx.send(());
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// Binds the same port again after [`Sink::stop`]; keeps what was received.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some((tx, task)) = self.running.take() {
            let _ = tx.send(());
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each `write` call it gets.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl std::io::Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_are_appended_in_one_write_of_complete_lines() {
        let mut out = Writes::default();
        let records = [
            serde_json::json!({"span": {"name": "a \"quoted\" name"}}),
            serde_json::json!({"metric": {"name": "faas.invocations", "value": 1.0}}),
        ];
        append_lines(&mut out, records.clone().into_iter()).unwrap();
        assert_eq!(
            out.0.len(),
            1,
            "one write call per batch: {:?}",
            out.0.len()
        );
        let text = String::from_utf8(out.0.concat()).unwrap();
        assert!(text.ends_with('\n'));
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(parsed, records);
        append_lines(&mut out, std::iter::empty()).unwrap();
        assert_eq!(out.0.len(), 1, "nothing written for an empty batch");
    }
}
