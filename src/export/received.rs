//! The function's own telemetry, taken by the OTLP receiver, on its way out: an [`Inbox`]
//! the receiver offers decoded requests to (answering at once, never waiting on a flush),
//! and one queue per signal that every flush empties it into, joins (`joining.rs`) and
//! forwards as OTLP/HTTP protobuf through the exporters' own HTTP client, to the endpoint,
//! headers and compression opentelemetry-otlp resolves for the sidecar's own exporters.
//!
//! Each signal's queue follows the rule of every queue (`queue.rs`): what a failed request
//! carried stays for a later flush, within bounds. The bound is in encoded bytes, per signal
//! ([`RECEIVED_BUFFER_BYTES`]), and it is the receiver that keeps it: a request that would
//! take a signal past it is refused with 429 (the OTLP answer for "retry later"), so the
//! SDK, not the sidecar, decides what to drop, and nothing accepted is dropped.

use std::io::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

use flate2::Compression as GzipLevel;
use flate2::write::GzEncoder;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderName, HeaderValue};
use opentelemetry_http::{Bytes, HttpClient as _};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, metric};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message;

use super::answers::{Answers, NotingClient, Outgoing};
use super::joining;
use super::queue::{Batches, Budget, Failure, Flushed, MAX_BATCH, Queue, flush_in_order};
use crate::config::{Compression, ConfigError, ForwardTarget};
use crate::items::InvocationTraces;
use crate::metrics::{Metrics, Received, Signal};

/// Most encoded bytes of one signal the receiver holds for export, accepted and not yet
/// delivered: 4 MiB, as the log buffer ([`crate::items::LOG_BUFFER_BYTES`]), tens of
/// thousands of typical spans; decoded, they take a small multiple of it.
pub const RECEIVED_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Most bytes forwarded in one request, under collectors' body limits.
const MAX_FORWARD_BYTES: usize = 1024 * 1024;

/// One of the three OTLP signals' top-level groups: what one request of the function
/// carries per resource, and what the receiver queues.
pub trait Payload: Message + Default + Clone + Send + Sync + 'static {
    const SIGNAL: Signal;
    /// The items it holds: spans, metric data points, log records.
    fn items(&self) -> usize;
    fn resource(&mut self) -> &mut Option<ProtoResource>;
    fn resource_ref(&self) -> Option<&ProtoResource>;
    /// The distinct trace ids of its spans (none for metrics and logs): what decides, at the
    /// flush, whether it must be joined to an invocation.
    fn trace_ids(&self) -> Vec<[u8; 16]> {
        Vec::new()
    }
    /// Joins it to `invocations` (spans only: `joining::join_spans`); how many items that
    /// dropped.
    fn join(&mut self, _invocations: &Invocations) -> usize {
        0
    }
    /// This signal's part of the inbox.
    fn part(inbox: &mut InboxState) -> &mut Part<Self>;
}

impl Payload for ResourceSpans {
    fn join(&mut self, invocations: &Invocations) -> usize {
        joining::join_spans(self, invocations)
    }
    fn trace_ids(&self) -> Vec<[u8; 16]> {
        let mut ids: Vec<[u8; 16]> = Vec::new();
        for span in self.scope_spans.iter().flat_map(|s| &s.spans) {
            if let Ok(id) = <[u8; 16]>::try_from(span.trace_id.as_slice())
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        ids
    }
    fn resource_ref(&self) -> Option<&ProtoResource> {
        self.resource.as_ref()
    }
    const SIGNAL: Signal = Signal::Traces;
    fn items(&self) -> usize {
        self.scope_spans.iter().map(|s| s.spans.len()).sum()
    }
    fn resource(&mut self) -> &mut Option<ProtoResource> {
        &mut self.resource
    }
    fn part(inbox: &mut InboxState) -> &mut Part<Self> {
        &mut inbox.traces
    }
}

impl Payload for ResourceMetrics {
    fn resource_ref(&self) -> Option<&ProtoResource> {
        self.resource.as_ref()
    }
    const SIGNAL: Signal = Signal::Metrics;
    fn items(&self) -> usize {
        let points = |data: &metric::Data| match data {
            metric::Data::Gauge(g) => g.data_points.len(),
            metric::Data::Sum(s) => s.data_points.len(),
            metric::Data::Histogram(h) => h.data_points.len(),
            metric::Data::ExponentialHistogram(h) => h.data_points.len(),
            metric::Data::Summary(s) => s.data_points.len(),
        };
        self.scope_metrics
            .iter()
            .flat_map(|s| &s.metrics)
            .filter_map(|m| m.data.as_ref())
            .map(points)
            .sum()
    }
    fn resource(&mut self) -> &mut Option<ProtoResource> {
        &mut self.resource
    }
    fn part(inbox: &mut InboxState) -> &mut Part<Self> {
        &mut inbox.metrics
    }
}

impl Payload for ResourceLogs {
    fn resource_ref(&self) -> Option<&ProtoResource> {
        self.resource.as_ref()
    }
    const SIGNAL: Signal = Signal::Logs;
    fn items(&self) -> usize {
        self.scope_logs.iter().map(|s| s.log_records.len()).sum()
    }
    fn resource(&mut self) -> &mut Option<ProtoResource> {
        &mut self.resource
    }
    fn part(inbox: &mut InboxState) -> &mut Part<Self> {
        &mut inbox.logs
    }
}

/// A payload as queued: its protobuf encoding (the request's own bytes when it came as
/// protobuf: forwarding copies them rather than encoding the payload again), its item count,
/// what the flush needs to decide on it without decoding it, and what the flush appends.
#[derive(Debug, Clone)]
pub struct Held<P> {
    /// The payload's encoding, without its field tag and length.
    raw: Bytes,
    /// Appended to `raw` when forwarded: a second `resource` field (field 1 of every
    /// signal's payload) with the sidecar's attributes the SDK's resource lacks. Protobuf
    /// merges the two occurrences of the field, concatenating their attributes.
    tail: Bytes,
    items: usize,
    /// [`Payload::trace_ids`].
    traces: Vec<[u8; 16]>,
    /// The keys of its resource that the sidecar might otherwise add.
    present: Vec<String>,
    _payload: std::marker::PhantomData<fn(P)>,
}

impl<P: Payload> Held<P> {
    /// `payload`, whose encoding is `raw` when the caller has it (the bytes it was decoded
    /// from), else encoded here.
    pub fn new(payload: &P, raw: Option<Bytes>) -> Held<P> {
        Held {
            raw: raw.unwrap_or_else(|| Bytes::from(payload.encode_to_vec())),
            tail: Bytes::new(),
            items: payload.items(),
            traces: payload.trace_ids(),
            present: joining::present_keys(payload.resource_ref()),
            _payload: std::marker::PhantomData,
        }
    }

    /// The items it holds.
    pub fn items(&self) -> usize {
        self.items
    }

    /// The bytes it weighs in the bound, and in a request.
    fn bytes(&self) -> usize {
        self.raw.len() + self.tail.len()
    }
}

/// One signal's side of the inbox: what arrived since the last flush, and the bytes its
/// export queue still holds.
#[derive(Debug)]
pub struct Part<P> {
    /// The signal has an exporter to forward it through.
    exported: bool,
    arrived: Vec<Held<P>>,
    arrived_bytes: usize,
    queued_bytes: usize,
}

impl<P> Part<P> {
    fn new(exported: bool) -> Part<P> {
        Part {
            exported,
            arrived: Vec::new(),
            arrived_bytes: 0,
            queued_bytes: 0,
        }
    }
}

/// The three signals' parts of the inbox.
#[derive(Debug)]
pub struct InboxState {
    traces: Part<ResourceSpans>,
    metrics: Part<ResourceMetrics>,
    logs: Part<ResourceLogs>,
}

/// What became of an offer to the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for the next flush.
    Accepted,
    /// It would take the signal past [`RECEIVED_BUFFER_BYTES`]: refused whole.
    Full,
    /// The signal is not exported: taken and dropped, as `OTEL_*_EXPORTER=none` asks.
    NotExported,
}

/// Where the receiver hands what it decoded, for the next flush to forward. Cloned by the
/// receiver; a lock held only to append or to take.
#[derive(Debug, Clone)]
pub struct Inbox(Arc<Mutex<InboxState>>);

impl Inbox {
    fn new(traces: bool, metrics: bool, logs: bool) -> Inbox {
        Inbox(Arc::new(Mutex::new(InboxState {
            traces: Part::new(traces),
            metrics: Part::new(metrics),
            logs: Part::new(logs),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, InboxState> {
        // Every update leaves the state consistent: a panic while holding it loses nothing.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers one request's payloads, whole: accepted if they fit within the signal's bound.
    pub fn offer<P: Payload>(&self, payloads: Vec<Held<P>>) -> Offer {
        let bytes: usize = payloads.iter().map(Held::bytes).sum();
        let mut state = self.lock();
        let part = P::part(&mut state);
        if !part.exported {
            return Offer::NotExported;
        }
        if part.arrived_bytes + part.queued_bytes + bytes > RECEIVED_BUFFER_BYTES {
            return Offer::Full;
        }
        part.arrived_bytes += bytes;
        part.arrived.extend(payloads);
        Offer::Accepted
    }

    /// The signal's queue cannot take `bytes` more now: checked before a request is decoded,
    /// so that a flood the queue refuses costs no decoding.
    pub fn is_full<P: Payload>(&self, bytes: usize) -> bool {
        let mut state = self.lock();
        let part = P::part(&mut state);
        part.exported && part.arrived_bytes + part.queued_bytes + bytes > RECEIVED_BUFFER_BYTES
    }

    /// Takes what arrived, now held by the export queue.
    fn take<P: Payload>(&self) -> Vec<Held<P>> {
        let mut state = self.lock();
        let part = P::part(&mut state);
        part.queued_bytes += part.arrived_bytes;
        part.arrived_bytes = 0;
        std::mem::take(&mut part.arrived)
    }

    /// The export queue holds `bytes` now.
    fn queued<P: Payload>(&self, bytes: usize) {
        P::part(&mut self.lock()).queued_bytes = bytes;
    }

    /// Nothing arrived since the last flush.
    fn is_empty(&self) -> bool {
        let state = self.lock();
        state.traces.arrived.is_empty()
            && state.metrics.arrived.is_empty()
            && state.logs.arrived.is_empty()
    }
}

/// The forwarders of the signals exported over OTLP/HTTP, built with the exporters.
#[derive(Debug, Default)]
pub struct Forwarders {
    pub(super) traces: Option<Forwarder<ResourceSpans>>,
    pub(super) metrics: Option<Forwarder<ResourceMetrics>>,
    pub(super) logs: Option<Forwarder<ResourceLogs>>,
    /// The sidecar's resource attributes the function's resources get where missing.
    pub(super) resource: Vec<KeyValue>,
}

/// Sends one signal's payloads, encoded as the signal's export request, to its target.
#[derive(Debug)]
pub(super) struct Forwarder<P> {
    client: NotingClient,
    answers: Answers,
    endpoint: http::Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    gzip: bool,
    _payload: std::marker::PhantomData<fn(P)>,
}

impl<P: Payload> Forwarder<P> {
    /// A forwarder to `target`, through `http` (the exporters' client), its requests dressed
    /// as the sidecar's own of the signal are (`outgoing`: secret headers, SigV4).
    pub(super) fn new(
        target: &ForwardTarget,
        http: &reqwest::Client,
        outgoing: Outgoing,
        var: &'static str,
    ) -> Result<Forwarder<P>, ConfigError> {
        let invalid = |expected: &str| ConfigError::Invalid {
            var,
            value: target.endpoint.clone(),
            expected: expected.to_string(),
        };
        let endpoint = target
            .endpoint
            .parse::<http::Uri>()
            .map_err(|_| invalid("an http or https URL"))?;
        let headers = target
            .headers
            .iter()
            .filter_map(|(name, value)| {
                Some((
                    HeaderName::from_bytes(name.as_bytes()).ok()?,
                    HeaderValue::from_str(value).ok()?,
                ))
            })
            .collect();
        let answers = Answers::default();
        Ok(Forwarder {
            client: NotingClient::new(http.clone(), answers.clone(), outgoing, target.timeout),
            answers,
            endpoint,
            headers,
            gzip: target.compression == Compression::Gzip,
            _payload: std::marker::PhantomData,
        })
    }

    /// The export request of `batch` (every signal's request holds its payloads in field
    /// 1), compressed as configured.
    fn body(&self, batch: &[Held<P>]) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::with_capacity(batch.iter().map(|h| h.bytes() + 8).sum());
        for held in batch {
            prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut body);
            prost::encoding::encode_varint(held.bytes() as u64, &mut body);
            body.extend_from_slice(&held.raw);
            body.extend_from_slice(&held.tail);
        }
        if !self.gzip {
            return Ok(body);
        }
        let mut gzip = GzEncoder::new(Vec::with_capacity(body.len() / 4), GzipLevel::fast());
        gzip.write_all(&body)?;
        gzip.finish()
    }
}

impl<P: Payload> Batches for Forwarder<P> {
    type Item = Held<P>;
    const SIGNAL: Signal = P::SIGNAL;

    /// Up to [`MAX_BATCH`] payloads and [`MAX_FORWARD_BYTES`]; a larger one goes alone.
    fn batch_len(&self, queued: &[Held<P>]) -> usize {
        let mut bytes = 0;
        queued
            .iter()
            .take(MAX_BATCH)
            .take_while(|held| {
                bytes += held.bytes();
                bytes <= MAX_FORWARD_BYTES
            })
            .count()
            .max(1)
    }

    async fn send(&self, batch: &[Held<P>]) -> Result<(), Failure> {
        let fail = |e: String| Failure::new(super::queue::Outcome::Rejected, e);
        let body = self.body(batch).map_err(|e| fail(e.to_string()))?;
        let mut request = http::Request::builder()
            .method(http::Method::POST)
            .uri(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/x-protobuf");
        if self.gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Bytes::from(body))
            .map_err(|e| fail(e.to_string()))?;
        match self.client.send_bytes(request).await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(self
                .answers
                .failure_of(&format!("HTTP export failed: {}", response.status()))),
            Err(e) => Err(self.answers.failure_of(&e.to_string())),
        }
    }
}

/// One signal's queue of received payloads, and its forwarder.
pub(super) struct ReceivedQueue<P> {
    sender: Option<Forwarder<P>>,
    queued: Queue<Held<P>>,
}

impl<P: Payload> ReceivedQueue<P> {
    fn new(sender: Option<Forwarder<P>>) -> ReceivedQueue<P> {
        ReceivedQueue {
            sender,
            queued: Queue::default(),
        }
    }

    /// Takes what arrived in `inbox`, joins what `joins` (a payload in an invocation's
    /// trace: decoded, joined by `join`, which returns how many spans it dropped, completed
    /// and encoded again) and completes the others' resource with a `tail`; then sends what
    /// is queued within `budget`, and tells the inbox what is left.
    async fn flush(
        &mut self,
        inbox: &Inbox,
        resource: &[KeyValue],
        invocations: &Invocations,
        budget: Budget,
        metrics: &Metrics,
    ) -> Flushed {
        let mut unsampled = 0;
        for mut held in inbox.take::<P>() {
            if held.traces.iter().any(|id| invocations.contains_key(id)) {
                let Ok(mut payload) = P::decode(held.raw.clone()) else {
                    continue; // the receiver decoded these very bytes: not reached
                };
                unsampled += payload.join(invocations);
                if payload.items() == 0 {
                    continue;
                }
                joining::add_resource(payload.resource(), resource);
                held = Held::new(&payload, None);
            } else {
                held.tail = joining::resource_tail(resource, &held.present);
            }
            self.queued.push([held]);
        }
        metrics.received(P::SIGNAL, Received::Unsampled, unsampled as u64);
        let flushed = flush_in_order(self.sender.as_ref(), &mut self.queued, budget, metrics).await;
        inbox.queued::<P>(self.queued.iter().map(Held::bytes).sum());
        flushed
    }
}

/// The invocations known at a flush, by trace id.
pub type Invocations = std::collections::HashMap<[u8; 16], crate::items::InvocationTrace>;

/// The three signals' queues of what the function sent, and what they share.
pub(super) struct ReceivedQueues {
    inbox: Inbox,
    traces: ReceivedQueue<ResourceSpans>,
    metrics: ReceivedQueue<ResourceMetrics>,
    logs: ReceivedQueue<ResourceLogs>,
    resource: Vec<KeyValue>,
    /// The invocations' trace contexts the function's spans join.
    invocations: InvocationTraces,
}

impl ReceivedQueues {
    pub(super) fn new(forwarders: Forwarders) -> ReceivedQueues {
        let inbox = Inbox::new(
            forwarders.traces.is_some(),
            forwarders.metrics.is_some(),
            forwarders.logs.is_some(),
        );
        ReceivedQueues {
            inbox,
            traces: ReceivedQueue::new(forwarders.traces),
            metrics: ReceivedQueue::new(forwarders.metrics),
            logs: ReceivedQueue::new(forwarders.logs),
            resource: forwarders.resource,
            invocations: InvocationTraces::default(),
        }
    }

    pub(super) fn inbox(&self) -> Inbox {
        self.inbox.clone()
    }

    pub(super) fn invocations(&self) -> InvocationTraces {
        self.invocations.clone()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.inbox.is_empty()
            && self.traces.queued.is_empty()
            && self.metrics.queued.is_empty()
            && self.logs.queued.is_empty()
    }

    /// Forwards what arrived and what waits, the three signals side by side within `budget`.
    pub(super) async fn flush(&mut self, budget: Budget, metrics: &Metrics) -> [Flushed; 3] {
        let invocations = self.invocations.by_trace_id();
        let (traces, metric_points, logs) = tokio::join!(
            self.traces
                .flush(&self.inbox, &self.resource, &invocations, budget, metrics),
            self.metrics
                .flush(&self.inbox, &self.resource, &invocations, budget, metrics),
            self.logs
                .flush(&self.inbox, &self.resource, &invocations, budget, metrics),
        );
        [traces, metric_points, logs]
    }
}
