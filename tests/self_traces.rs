//! `SIDECAR_SELF_TRACES`: the sidecar's own work as spans, end to end. The real binary in
//! lambda-env signs with a KMS key held by moto (server mode), so that loading the key and
//! signing each token are AWS calls, and exports through rotel to lambda-env's OTLP receiver.
//! On: register, subscribe, the key load with each of its AWS calls as a child, a flush span
//! with what it sent, and a KMS signature per token with its `Sign` call as a child. Off (the
//! default): not one of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Moto, random_hex, rotel, stderr_of};
use lambda_env::{Sink, SpanRecord};

const FUNCTION: &str = "self-traced";
const INVOKES: usize = 3;

/// Runs the function with a KMS key and `SIDECAR_SELF_TRACES=value`; every span received.
async fn run(value: &str) -> Vec<SpanRecord> {
    let moto = Moto::start(&[]);
    moto.python(
        "a = kms.create_key(KeyUsage='SIGN_VERIFY', KeySpec='ECC_NIST_P256')['KeyMetadata']['KeyId']\n\
         kms.create_alias(AliasName='alias/jwt', TargetKeyId=a)",
    );
    let sink = Sink::start().await.unwrap();
    let rotel = rotel(&sink).await;
    let mut env = moto.sidecar_env();
    env.extend([
        ("AWS_SESSION_TOKEN", random_hex(16)),
        ("JWT_KEY_SOURCE", "kms:alias/jwt".to_string()),
        ("JWT_ALGORITHM", "ES256".to_string()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", rotel.http),
        ),
        ("SIDECAR_SELF_TRACES", value.to_string()),
    ]);
    let mut config = common::environment(FUNCTION, INVOKES, 1, &env);
    config.env.retain(|(k, _)| k != "JWT_SECRET");
    let report = lambda_env::run(config).await.unwrap();
    common::assert_clean_exit(&report);
    let log = stderr_of(&report);
    for invoke in &report.invokes {
        assert_eq!(invoke.tokens[0].http_status, Some(200), "{invoke:?}\n{log}");
    }
    let arrived = sink
        .wait_for(
            |v| {
                v.spans.iter().filter(|s| s.name == FUNCTION).count() == INVOKES
                    && v.spans
                        .iter()
                        .filter(|s| s.name.ends_with(" /token"))
                        .count()
                        == INVOKES
            },
            Duration::from_secs(10),
        )
        .await;
    assert!(arrived, "{:#?}\n{log}", sink.spans());
    // What else might come, once the function's spans are in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(rotel);
    sink.spans()
}

fn named<'a>(spans: &'a [SpanRecord], name: &str) -> Vec<&'a SpanRecord> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// The AWS calls, named `{rpc.service}/{rpc.method}` as the semantic conventions say.
fn aws_calls(spans: &[SpanRecord]) -> Vec<&SpanRecord> {
    spans
        .iter()
        .filter(|s| s.attributes.get("rpc.system").and_then(|v| v.as_str()) == Some("aws-api"))
        .collect()
}

fn children<'a>(spans: &'a [&'a SpanRecord], parent: &SpanRecord) -> Vec<&'a SpanRecord> {
    spans
        .iter()
        .copied()
        .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecars_own_spans_arrive_with_their_parents_when_on() {
    let spans = run("on").await;
    let all = || {
        spans
            .iter()
            .map(|s| format!("{} {} <- {}", s.name, s.span_id, s.parent_span_id))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for name in ["sidecar.register", "sidecar.subscribe", "sidecar.key_load"] {
        let found = named(&spans, name);
        assert_eq!(found.len(), 1, "{name}:\n{}", all());
        assert!(found[0].parent_span_id.is_empty(), "{name} is a root");
        assert_eq!(found[0].resource["service.name"], FUNCTION, "{name}");
        assert_eq!(found[0].scope, "lambda-sidecar", "{name}");
    }
    let calls = aws_calls(&spans);
    // The key load: KMS GetPublicKey (and whatever else it asks), each call its child.
    let key_load = named(&spans, "sidecar.key_load")[0];
    let loads = children(&calls, key_load);
    assert!(
        loads.iter().any(|c| c.name == "KMS/GetPublicKey"),
        "the key load's AWS calls:\n{}",
        all()
    );
    for call in &loads {
        assert_eq!(call.kind, 3, "client kind");
        assert_eq!(call.attributes["rpc.service"], "KMS");
    }
    // One KMS signature per token, its Sign call the only child.
    let signs = named(&spans, "sidecar.kms_sign");
    assert_eq!(signs.len(), INVOKES, "{}", all());
    for sign in &signs {
        let called: Vec<&str> = children(&calls, sign)
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(called, ["KMS/Sign"], "{}", all());
        assert_eq!(sign.status_code, 0, "a signature that worked");
    }
    // Every AWS call has one of them as its parent.
    assert_eq!(calls.len(), loads.len() + signs.len(), "{}", all());
    // The flushes: each one's span goes with the next, so all but SHUTDOWN's arrive.
    let flushes = named(&spans, "sidecar.flush");
    assert!(flushes.len() >= INVOKES, "{}", all());
    for flush in &flushes {
        let attributes = &flush.attributes;
        for key in [
            "trigger",
            "items",
            "bytes",
            "outcome",
            "duration_ms",
            "metrics_sent",
        ] {
            assert!(attributes.contains_key(key), "{key}: {attributes:?}");
        }
        assert!(
            ["invoke", "end", "tick"].contains(&attributes["trigger"].as_str().unwrap()),
            "{attributes:?}"
        );
    }
    // A flush that sent something counted its items and the bytes of its requests.
    assert!(
        flushes
            .iter()
            .any(|f| f.attributes["items"].as_i64() > Some(0)
                && f.attributes["bytes"].as_i64() > Some(0)
                && f.attributes["outcome"] == "sent"),
        "{:#?}",
        flushes.iter().map(|f| &f.attributes).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_of_them_when_off() {
    let spans = run("off").await;
    let own: Vec<&str> = spans
        .iter()
        .filter(|s| s.name.starts_with("sidecar.") || s.attributes.contains_key("rpc.system"))
        .map(|s| s.name.as_str())
        .collect();
    assert!(own.is_empty(), "{own:?}");
}
