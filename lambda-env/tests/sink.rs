//! The OTLP sink decodes real protobuf requests built with the opentelemetry-proto types.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::Duration;

use lambda_env::{Sink, SinkMode};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prost::Message;

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv(
            "service.name",
            any_value::Value::StringValue("svc".into()),
        )],
        ..Default::default()
    })
}

fn trace_request() -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "test-scope".into(),
                    ..Default::default()
                }),
                spans: vec![Span {
                    trace_id: (1..=16).collect(),
                    span_id: vec![0xab; 8],
                    parent_span_id: vec![0x01; 8],
                    name: "token".into(),
                    kind: span::SpanKind::Server as i32,
                    start_time_unix_nano: 1_000,
                    end_time_unix_nano: 2_000,
                    attributes: vec![
                        kv("http.response.status_code", any_value::Value::IntValue(200)),
                        kv("faas.coldstart", any_value::Value::BoolValue(true)),
                    ],
                    status: Some(Status {
                        code: 2,
                        message: "boom".into(),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn metrics_request() -> ExportMetricsServiceRequest {
    let attrs = vec![kv("route", any_value::Value::StringValue("/token".into()))];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: "tokens_issued".into(),
                        unit: "{token}".into(),
                        data: Some(metric::Data::Sum(Sum {
                            data_points: vec![NumberDataPoint {
                                attributes: attrs.clone(),
                                time_unix_nano: 5,
                                value: Some(number_data_point::Value::AsInt(3)),
                                ..Default::default()
                            }],
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "latency".into(),
                        unit: "ms".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points: vec![HistogramDataPoint {
                                attributes: attrs,
                                count: 4,
                                sum: Some(10.5),
                                ..Default::default()
                            }],
                            aggregation_temporality: AggregationTemporality::Delta as i32,
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

async fn post(
    client: &reqwest::Client,
    url: String,
    body: Vec<u8>,
    gzipped: bool,
) -> reqwest::Result<u16> {
    let mut req = client
        .post(url)
        .header("content-type", "application/x-protobuf")
        .body(body);
    if gzipped {
        req = req.header("content-encoding", "gzip");
    }
    Ok(req.send().await?.status().as_u16())
}

#[tokio::test]
async fn decodes_gzipped_traces_and_plain_metrics() {
    let out = std::env::temp_dir().join(format!("lambda-env-sink-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let sink = Sink::start_on("127.0.0.1:0".parse().unwrap(), Some(out.clone()))
        .await
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let traces = gzip(&trace_request().encode_to_vec());
    assert_eq!(
        post(
            &client,
            format!("{}/v1/traces", sink.endpoint()),
            traces,
            true
        )
        .await
        .unwrap(),
        200
    );
    let metrics = metrics_request().encode_to_vec();
    assert_eq!(
        post(
            &client,
            format!("{}/v1/metrics", sink.endpoint()),
            metrics,
            false
        )
        .await
        .unwrap(),
        200
    );

    let spans = sink.spans();
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.trace_id, "0102030405060708090a0b0c0d0e0f10");
    assert_eq!(s.span_id, "abababababababab");
    assert_eq!(s.parent_span_id, "0101010101010101");
    assert_eq!(s.name, "token");
    assert_eq!(s.kind, 2);
    assert_eq!((s.start_unix_nanos, s.end_unix_nanos), (1_000, 2_000));
    assert_eq!(s.attributes["http.response.status_code"], 200);
    assert_eq!(s.attributes["faas.coldstart"], true);
    assert_eq!((s.status_code, s.status_message.as_str()), (2, "boom"));
    assert_eq!(s.resource["service.name"], "svc");
    assert_eq!(s.scope, "test-scope");

    let points = sink.metrics();
    assert_eq!(points.len(), 2);
    assert_eq!(
        (
            points[0].name.as_str(),
            points[0].kind.as_str(),
            points[0].value
        ),
        ("tokens_issued", "sum", Some(3.0))
    );
    assert_eq!(points[0].attributes["route"], "/token");
    assert_eq!(
        (points[1].kind.as_str(), points[1].count, points[1].sum),
        ("histogram", Some(4), Some(10.5))
    );

    let lines = std::fs::read_to_string(&out).unwrap();
    assert_eq!(lines.lines().count(), 3);
    std::fs::remove_file(out).ok();

    // Garbage is refused and counted, not kept.
    let bad = post(
        &client,
        format!("{}/v1/traces", sink.endpoint()),
        vec![0xff, 0xff, 0xff],
        false,
    )
    .await
    .unwrap();
    assert_eq!(bad, 400);
    assert_eq!(sink.counts().rejected, 1);
    assert_eq!(sink.spans().len(), 1);
}

#[tokio::test]
async fn modes_and_restart_simulate_a_bad_collector() {
    let mut sink = Sink::start().await.unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/v1/traces", sink.endpoint());
    let body = trace_request().encode_to_vec();

    // A refusal queued for traces: the next traces request only, with a Status body.
    sink.refuse_next("traces", 400, 1);
    let refused = client
        .post(url.clone())
        .header("content-type", "application/x-protobuf")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    let status = refused.bytes().await.unwrap();
    let message = lambda_env::sink::REFUSAL_MESSAGE.as_bytes();
    assert!(
        status.windows(message.len()).any(|w| w == message),
        "{status:?}"
    );
    assert!(sink.spans().is_empty());
    assert_eq!(sink.counts().failed, 1);
    assert_eq!(
        post(&client, url.clone(), body.clone(), false)
            .await
            .unwrap(),
        200
    );
    assert_eq!(sink.spans().len(), 1);

    sink.set_mode(SinkMode::Fail(503));
    assert_eq!(
        post(&client, url.clone(), body.clone(), false)
            .await
            .unwrap(),
        503
    );
    assert_eq!(sink.spans().len(), 1);
    assert_eq!(sink.counts().failed, 2);

    sink.set_mode(SinkMode::Slow(Duration::from_millis(50)));
    assert_eq!(
        post(&client, url.clone(), body.clone(), false)
            .await
            .unwrap(),
        200
    );
    assert_eq!(sink.counts().slow, 1);

    // Late: kept at once, even by a sender that gives up before the answer.
    sink.set_mode(SinkMode::Late(Duration::from_secs(2)));
    let cut = tokio::time::timeout(
        Duration::from_millis(200),
        post(&client, url.clone(), body.clone(), false),
    )
    .await;
    assert!(cut.is_err(), "answered before the delay");
    assert_eq!(sink.spans().len(), 3, "the late request was not kept");
    assert_eq!(sink.counts().slow, 2);

    sink.stop().await;
    assert!(
        post(&client, url.clone(), body.clone(), false)
            .await
            .is_err(),
        "port must be closed"
    );

    sink.restart().await.unwrap();
    sink.set_mode(SinkMode::Ok);
    let poster = {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        tokio::spawn(async move { post(&client, url, body, false).await.unwrap() })
    };
    assert!(
        sink.wait_for(|v| v.spans.len() == 4, Duration::from_secs(5))
            .await
    );
    assert_eq!(poster.await.unwrap(), 200);
    assert_eq!(sink.counts().ok, 2);
}
