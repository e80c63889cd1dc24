//! The OTLP receiver: the function's own telemetry (its OpenTelemetry SDK's spans, metrics
//! and logs), taken over OTLP/HTTP on loopback (`SIDECAR_OTLP_RECEIVER_ADDR`, default
//! 127.0.0.1:4318, where the SDKs send by default) and handed to the exporter's inbox, which
//! every flush forwards with the sidecar's own items (`export/received.rs`).
//!
//! Owns: the listener, decoding (`decode.rs`: protobuf or JSON, gzip or not) and the answers
//! the OTLP/HTTP specification defines: 200, with `partial_success` when invalid items were
//! refused; 400 for a body that does not decode; 413 over [`decode::MAX_BODY_BYTES`]; 415
//! for a content type or encoding OTLP does not define; 429 with `Retry-After` when the
//! signal's queue is full; 400 for a `Host` other than its own loopback address (a page
//! rebound to 127.0.0.1 by DNS, in a headless browser the function runs). It answers as soon as the request is decoded and queued: the
//! function's SDK waits on this answer, so nothing here waits on a flush or the collector.
//! It is served under the token listener's connection cap and timeouts (`server.rs`).
//!
//! Never: joins, samples or sends anything (the flush does, `export`).

pub mod decode;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio::net::TcpListener;

use crate::export::{Held, Inbox, Offer, Payload};
use crate::metrics::{Listener, Metrics, Received, RequestRefusal};
use crate::server::Limits;
use decode::{Encoding, MAX_BODY_BYTES, Refused, Request};

/// The seconds a function's SDK is asked to wait after a 429: the queue empties at the
/// next flush, which comes within a second or at the next invocation.
const RETRY_AFTER_SECONDS: &str = "1";

/// What the handlers share.
#[derive(Clone)]
struct Receiver {
    inbox: Inbox,
    metrics: Arc<Metrics>,
    /// The `Host` values a request addressed to this listener carries: its address and
    /// port, and `localhost` with the port.
    hosts: Arc<[String]>,
}

/// Serves the receiver on an already-bound listener until `shutdown`, under the token
/// listener's limits ([`Limits::TOKEN`]), handing what it takes to `inbox`.
pub async fn serve(
    listener: TcpListener,
    inbox: Inbox,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let app = router(Receiver {
        inbox,
        metrics: metrics.clone(),
        hosts: [addr.to_string(), format!("localhost:{}", addr.port())].into(),
    });
    crate::server::serve(
        listener,
        app,
        Limits::TOKEN,
        Listener::Receiver,
        Some(metrics),
        shutdown,
    )
    .await
}

fn router(receiver: Receiver) -> Router {
    Router::new()
        .route(
            ExportTraceServiceRequest::PATH,
            post(receive::<ExportTraceServiceRequest>),
        )
        .route(
            ExportMetricsServiceRequest::PATH,
            post(receive::<ExportMetricsServiceRequest>),
        )
        .route(
            ExportLogsServiceRequest::PATH,
            post(receive::<ExportLogsServiceRequest>),
        )
        // One byte over the bound, so that a body of exactly the bound is taken.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES + 1))
        .with_state(receiver)
}

async fn receive<R: Request>(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let signal = R::Payload::SIGNAL;
    if !crate::server::host_is_one_of(&headers, &receiver.hosts) {
        receiver
            .metrics
            .receiver_refused(signal, RequestRefusal::ForeignHost);
        return StatusCode::BAD_REQUEST.into_response();
    }
    let Some(encoding) = Encoding::of(header(CONTENT_TYPE)) else {
        receiver
            .metrics
            .receiver_refused(signal, RequestRefusal::UnsupportedMediaType);
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    };
    // A protobuf body decodes to about its own size: one the queue cannot take is refused
    // before it is decoded. (Compressed or JSON, the decoded size is known only after.)
    let plain = encoding == Encoding::Protobuf && header(CONTENT_ENCODING).is_none();
    let estimate = match (&body, plain) {
        (Ok(body), true) => Some(body.len()),
        (Ok(_), false) => Some(0),
        (Err(_), _) => None,
    };
    // Over the size bound, the answer is 413, whether or not there is room.
    if let Some(estimate) = estimate.filter(|e| *e <= MAX_BODY_BYTES)
        && receiver.inbox.is_full::<R::Payload>(estimate)
    {
        return receiver.queue_full(signal, encoding);
    }
    let body = body
        .map_err(|rejection| match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Refused::TooLarge,
            _ => Refused::Undecodable(rejection.body_text()),
        })
        .and_then(|body| decode::body(&body, header(CONTENT_ENCODING)));
    let decoded = body
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|body| decode::decode::<R>(body, encoding));
    let (request, body) = match (decoded, body) {
        (Ok(request), Ok(body)) => (request, body),
        (Err(refused), _) | (_, Err(refused)) => return receiver.refuse(signal, refused, encoding),
    };
    let mut payloads = request.payloads();
    let invalid = R::refuse_invalid(&mut payloads);
    // The request's own bytes of each payload, to forward without encoding it again; when
    // items were taken out, or it came as JSON, each is encoded.
    let ranges = match (encoding, invalid) {
        (Encoding::Protobuf, 0) => {
            decode::payload_ranges(&body).filter(|ranges| ranges.len() == payloads.len())
        }
        _ => None,
    };
    let held: Vec<Held<R::Payload>> = match ranges {
        Some(ranges) => payloads
            .iter()
            .zip(ranges)
            .map(|(payload, range)| Held::new(payload, Some(body.slice(range))))
            .collect(),
        None => payloads.iter().map(|p| Held::new(p, None)).collect(),
    };
    let items: usize = held.iter().map(|h| h.items()).sum();
    let metrics = &receiver.metrics;
    metrics.received(signal, Received::Invalid, invalid as u64);
    match receiver.inbox.offer(held) {
        Offer::Full => receiver.queue_full(signal, encoding),
        offer => {
            let outcome = match offer {
                Offer::NotExported => Received::NotExported,
                _ => Received::Accepted,
            };
            metrics.received(signal, outcome, items as u64);
            let message = match invalid {
                0 => String::new(),
                n => format!("{n} items with invalid trace or span ids were refused"),
            };
            let response = R::response(invalid, message);
            (
                StatusCode::OK,
                [(CONTENT_TYPE, encoding.content_type())],
                decode::encode(&response, encoding),
            )
                .into_response()
        }
    }
}

impl Receiver {
    /// 429 with `Retry-After`: the signal's queue has no room for the request.
    fn queue_full(&self, signal: crate::metrics::Signal, encoding: Encoding) -> Response {
        self.metrics
            .receiver_refused(signal, RequestRefusal::QueueFull);
        let body = decode::status("the sidecar's queue for this signal is full", encoding);
        (
            StatusCode::TOO_MANY_REQUESTS,
            [
                (CONTENT_TYPE, encoding.content_type()),
                (RETRY_AFTER, RETRY_AFTER_SECONDS),
            ],
            body,
        )
            .into_response()
    }

    /// The answer to a request refused whole, counted.
    fn refuse(
        &self,
        signal: crate::metrics::Signal,
        refused: Refused,
        encoding: Encoding,
    ) -> Response {
        let (status, reason, message) = match refused {
            Refused::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                RequestRefusal::TooLarge,
                format!("the body is over {MAX_BODY_BYTES} bytes, as sent or decompressed"),
            ),
            Refused::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                RequestRefusal::UnsupportedMediaType,
                "content encodings: gzip or none".to_string(),
            ),
            Refused::Undecodable(why) => (
                StatusCode::BAD_REQUEST,
                RequestRefusal::Undecodable,
                format!("not an OTLP export request: {why}"),
            ),
        };
        self.metrics.receiver_refused(signal, reason);
        tracing::debug!(%status, %message, "OTLP request refused");
        (
            status,
            [(CONTENT_TYPE, encoding.content_type())],
            decode::status(&message, encoding),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::export::{ExportClients, Exporter, MetricsSource};
    use crate::items::InvocationTrace;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use opentelemetry_sdk::Resource;
    use prost::Message as _;

    const TRACE: [u8; 16] = [0x11; 16];
    const INVOCATION_SPAN: [u8; 8] = [0x22; 8];

    /// A receiver on a free port, forwarding to a sink at every flush of the exporter.
    struct Setup {
        addr: SocketAddr,
        sink: lambda_env::Sink,
        exporter: Exporter,
        source: Arc<MetricsSource>,
        client: reqwest::Client,
    }

    async fn setup() -> Setup {
        let sink = lambda_env::Sink::start().await.unwrap();
        let resource = Resource::builder_empty()
            .with_attributes([
                opentelemetry::KeyValue::new("faas.name", "orders"),
                opentelemetry::KeyValue::new("cloud.provider", "aws"),
            ])
            .build();
        let clients: ExportClients =
            crate::export::otlp::forwarding_to(&sink.endpoint(), &resource, true);
        let (source, metrics) = crate::metrics::testing::source();
        let (source, metrics) = (Arc::new(source), Arc::new(metrics));
        let exporter = Exporter::new(clients, source.clone(), metrics.clone());
        exporter.invocation_traces().note(InvocationTrace {
            trace_id: TRACE,
            span_id: INVOCATION_SPAN,
            parent: None,
            sampled: true,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            exporter.inbox(),
            metrics,
            std::future::pending(),
        ));
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        Setup {
            addr,
            sink,
            exporter,
            source,
            client,
        }
    }

    impl Setup {
        async fn post(
            &self,
            path: &str,
            content_type: &str,
            gzip: bool,
            body: Vec<u8>,
        ) -> reqwest::Response {
            let mut request = self
                .client
                .post(format!("http://{}{path}", self.addr))
                .header("content-type", content_type);
            if gzip {
                request = request.header("content-encoding", "gzip");
            }
            request.body(body).send().await.unwrap()
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn traces(spans: Vec<Span>, padding: usize) -> ExportTraceServiceRequest {
        let attribute = |key: &str, value: String| KeyValue {
            key: key.to_string(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value)),
            }),
            ..Default::default()
        };
        let mut resource_attributes = vec![attribute("service.name", "checkout".to_string())];
        if padding > 0 {
            resource_attributes.push(attribute("padding", "x".repeat(padding)));
        }
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                    attributes: resource_attributes,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn span(name: &str, id: &[u8], parent: &[u8]) -> Span {
        Span {
            trace_id: TRACE.to_vec(),
            span_id: id.to_vec(),
            parent_span_id: parent.to_vec(),
            name: name.to_string(),
            kind: 2,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            ..Default::default()
        }
    }

    /// Protobuf, gzip and OTLP/JSON all decode; what was taken is forwarded by the next
    /// flush, once, with the SDK's resource completed by the sidecar's and its root span
    /// under the invocation span; a span with a malformed id is refused in
    /// `partial_success`.
    #[tokio::test]
    async fn every_encoding_is_taken_and_forwarded_by_the_flush() {
        let mut setup = setup().await;
        let proto = traces(vec![span("handler", &[1; 8], &[])], 0).encode_to_vec();
        let response = setup
            .post("/v1/traces", "application/x-protobuf", false, proto.clone())
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-protobuf");
        let answer = ExportTraceServiceResponse::decode(response.bytes().await.unwrap()).unwrap();
        assert_eq!(answer.partial_success, None);

        // In a trace of no invocation: forwarded as received, the sidecar's resource
        // attributes appended as a second `resource` field.
        let mut other_trace = span("db", &[2; 8], &[1; 8]);
        other_trace.trace_id = vec![0x33; 16];
        let gzipped = traces(vec![other_trace], 0).encode_to_vec();
        let response = setup
            .post("/v1/traces", "application/x-protobuf", true, gzip(&gzipped))
            .await;
        assert_eq!(response.status(), 200);

        // The OTLP/JSON mapping: hex ids, lowerCamelCase, enums and nanos as numbers or
        // strings, as the JS SDK writes them.
        let json = r#"{"resourceSpans":[{"resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"checkout"}},
            {"key":"cloud.provider","value":{"stringValue":"sdk-says"}}]},
          "scopeSpans":[{"scope":{"name":"manual"},"spans":[
            {"traceId":"11111111111111111111111111111111","spanId":"0303030303030303",
             "parentSpanId":"0101010101010101","name":"json","kind":3,
             "startTimeUnixNano":"1700000000000000000","endTimeUnixNano":1700000000000000001,
             "attributes":[{"key":"n","value":{"intValue":"7"}}],"status":{"code":1}},
            {"traceId":"11111111111111111111111111111111","spanId":"0404","name":"bad"}]}]}]}"#;
        let response = setup
            .post("/v1/traces", "application/json", false, json.into())
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            answer["partialSuccess"]["rejectedSpans"].as_i64(),
            Some(1),
            "{answer}"
        );

        let report = setup
            .exporter
            .flush(Vec::new(), Duration::from_secs(5))
            .await;
        assert_eq!(
            (report.received_sent, report.received_pending),
            (3, 0),
            "{report:?}"
        );
        let again = setup
            .exporter
            .flush(Vec::new(), Duration::from_secs(5))
            .await;
        assert_eq!(again.received_sent, 0, "sent once");
        let mut spans = setup.sink.spans();
        spans.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["db", "handler", "json"]);
        let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            spans[1].parent_span_id,
            hex(&INVOCATION_SPAN),
            "root joined"
        );
        assert_eq!(spans[0].parent_span_id, hex(&[1; 8]), "child kept");
        assert_eq!(spans[2].kind, 3);
        assert_eq!(spans[2].attributes["n"], 7);
        for span in &spans {
            assert_eq!(span.resource["service.name"], "checkout", "the SDK's kept");
            assert_eq!(span.resource["faas.name"], "orders", "the sidecar's added");
        }
        assert_eq!(spans[2].resource["cloud.provider"], "sdk-says");
        assert_eq!(setup.sink.counts().traces, 1, "one forwarded request");
        let rendered = crate::metrics::testing::render(&setup.source);
        assert!(
            rendered.contains("sidecar.receiver.items{outcome=accepted,signal=traces} = 3")
                && rendered.contains("sidecar.receiver.items{outcome=invalid,signal=traces} = 1"),
            "{rendered}"
        );
    }

    /// The OTLP/HTTP answers to what cannot be taken: 400 for a body that does not decode
    /// (in the request's encoding), 413 over the bound as sent or once gunzipped, 415 for a
    /// content type OTLP does not define, and 429 with `Retry-After` once the signal's
    /// queue is full; the flush then sends what was taken and the receiver takes again.
    #[tokio::test]
    async fn refusals_follow_the_otlp_specification() {
        let mut setup = setup().await;
        let response = setup
            .post(
                "/v1/traces",
                "application/x-protobuf",
                false,
                vec![0xff; 16],
            )
            .await;
        assert_eq!(response.status(), 400);
        let response = setup
            .post(
                "/v1/logs",
                "application/json",
                false,
                b"{\"resourceLogs\":7}".to_vec(),
            )
            .await;
        assert_eq!(response.status(), 400);
        let status: serde_json::Value = response.json().await.unwrap();
        assert_eq!(status["code"], 3, "{status}");
        assert!(status["message"].as_str().unwrap().contains("not an OTLP"));
        let response = setup
            .post("/v1/metrics", "text/plain", false, b"x".to_vec())
            .await;
        assert_eq!(response.status(), 415);
        let rebound = setup
            .client
            .post(format!("http://{}/v1/traces", setup.addr))
            .header("host", format!("attacker.example:{}", setup.addr.port()))
            .header("content-type", "application/x-protobuf")
            .body(traces(vec![span("forged", &[6; 8], &[])], 0).encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(rebound.status(), 400, "a DNS-rebound page is refused");
        let over = vec![0u8; MAX_BODY_BYTES + 1];
        let response = setup
            .post("/v1/traces", "application/x-protobuf", false, over.clone())
            .await;
        assert_eq!(response.status(), 413);
        let response = setup
            .post("/v1/traces", "application/x-protobuf", true, gzip(&over))
            .await;
        assert_eq!(response.status(), 413, "a gzip bomb is refused");

        // 3 MiB fit; 2 more would take the signal past 4 MiB.
        let big = |mib: usize| traces(vec![span("big", &[5; 8], &[])], mib << 20);
        let response = setup
            .post(
                "/v1/traces",
                "application/x-protobuf",
                false,
                big(3).encode_to_vec(),
            )
            .await;
        assert_eq!(response.status(), 200);
        let response = setup
            .post(
                "/v1/traces",
                "application/x-protobuf",
                false,
                big(2).encode_to_vec(),
            )
            .await;
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], RETRY_AFTER_SECONDS);
        let report = setup
            .exporter
            .flush(Vec::new(), Duration::from_secs(5))
            .await;
        assert_eq!(report.received_sent, 1, "{report:?}");
        let response = setup
            .post(
                "/v1/traces",
                "application/x-protobuf",
                false,
                big(2).encode_to_vec(),
            )
            .await;
        assert_eq!(
            response.status(),
            200,
            "delivered, the queue has room again"
        );
        let rendered = crate::metrics::testing::render(&setup.source);
        for line in [
            "sidecar.receiver.refused_requests{reason=undecodable,signal=traces} = 1",
            "sidecar.receiver.refused_requests{reason=undecodable,signal=logs} = 1",
            "sidecar.receiver.refused_requests{reason=unsupported_media_type,signal=metrics} = 1",
            "sidecar.receiver.refused_requests{reason=too_large,signal=traces} = 2",
            "sidecar.receiver.refused_requests{reason=foreign_host,signal=traces} = 1",
            "sidecar.receiver.refused_requests{reason=queue_full,signal=traces} = 1",
        ] {
            assert!(rendered.contains(line), "{line} in {rendered}");
        }
    }
}
