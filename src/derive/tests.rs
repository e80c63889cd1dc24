//! Derivation driven record by record, rendered as text and compared whole.

use std::collections::HashMap;

use opentelemetry::trace::{SpanId, Status as SpanStatus};

use super::*;
use crate::events::{parse_batch, parse_rfc3339};
use crate::metrics::testing;
use crate::records::{HttpMethod, InvokeRecord, TokenOutcome, TokenRecord, TraceParent};

const XRAY: &str = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// Ids that come from the inputs above and are printed as they are; random ones get
/// stable aliases (`t1`, `s1`, ...) in order of appearance.
const LITERAL_IDS: &[&str] = &[
    "5759e988bd862e3fe1be46a994272793",
    "53995c3f42cd8ad8",
    "4bf92f3577b34da6a3ce929d0e0e4736",
    "00f067aa0ba902b7",
];

fn base() -> SystemTime {
    parse_rfc3339("2022-10-12T00:00:00Z").unwrap()
}

fn at(ms: u64) -> SystemTime {
    base() + Duration::from_millis(ms)
}

fn telemetry(json: &str) -> Record {
    Record::Telemetry(parse_batch(json.as_bytes()).unwrap())
}

fn invoke(request_id: &str, ms: u64, xray: Option<&str>) -> Record {
    Record::Invoke(InvokeRecord {
        request_id: request_id.to_owned(),
        deadline_ms: 0,
        invoked_arn: format!("arn:aws:lambda:eu-west-1:123456789012:function:orders:{request_id}"),
        xray: xray.map(str::to_owned),
        received: at(ms),
    })
}

fn token(ms: u64, duration_ms: u64, outcome: TokenOutcome, traceparent: Option<&str>) -> Record {
    token_with("GET", ms, duration_ms, outcome, traceparent)
}

fn token_with(
    method: &str,
    ms: u64,
    duration_ms: u64,
    outcome: TokenOutcome,
    traceparent: Option<&str>,
) -> Record {
    Record::Token(TokenRecord {
        start: at(ms),
        duration: Duration::from_millis(duration_ms),
        algorithm: "ES256",
        method: HttpMethod::parse(method),
        outcome,
        traceparent: traceparent.and_then(TraceParent::parse),
        request_id: None,
        connection: Default::default(),
    })
}

fn resumed(request_id: &str, ms: u64) -> Record {
    Record::Resumed {
        request_id: request_id.to_owned(),
        at: at(ms),
    }
}

fn function() -> FunctionInfo {
    let vars: HashMap<&str, &str> = [
        ("AWS_LAMBDA_FUNCTION_NAME", "orders"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "2022/10/12/[$LATEST]abc"),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/orders"),
    ]
    .into();
    FunctionInfo::from_vars(|key| vars.get(key).map(|v| (*v).to_owned()))
}

/// Renders spans one per line (plus an indented attribute line), with times in ms
/// from [`base`] and random ids aliased.
fn render_spans(spans: &[SpanData]) -> String {
    let mut aliases: HashMap<String, String> = HashMap::new();
    let mut alias = |id: String, prefix: &str| -> String {
        if LITERAL_IDS.contains(&id.as_str()) {
            return id;
        }
        let next = aliases.values().filter(|a| a.starts_with(prefix)).count() + 1;
        aliases
            .entry(id)
            .or_insert_with(|| format!("{prefix}{next}"))
            .clone()
    };
    let ms = |t: SystemTime| (t.duration_since(base()).unwrap().as_secs_f64() * 1e6).round() / 1e3;
    let common: Vec<String> = function()
        .attributes()
        .iter()
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect();
    let mut out = String::new();
    for span in spans {
        let trace = alias(span.span_context.trace_id().to_string(), "t");
        let id = alias(span.span_context.span_id().to_string(), "s");
        let parent = match span.parent_span_id {
            SpanId::INVALID => "-".to_owned(),
            parent => {
                alias(parent.to_string(), "s")
                    + if span.parent_span_is_remote {
                        " (remote)"
                    } else {
                        ""
                    }
            }
        };
        let status = match &span.status {
            SpanStatus::Unset => String::new(),
            other => format!(" {other:?}"),
        };
        let mut attributes: Vec<String> = span
            .attributes
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        // The function's own attributes are shown as one word, only when all are there.
        if common.iter().all(|c| attributes.contains(c)) {
            attributes.retain(|a| !common.contains(a));
            attributes.push("+function".to_owned());
        }
        attributes.sort();
        out += &format!(
            "{} {:?} trace={trace} span={id} parent={parent} {}..{}{status}\n  [{}]\n",
            span.name,
            span.span_kind,
            ms(span.start_time),
            ms(span.end_time),
            attributes.join(" ")
        );
        assert!(span.span_context.is_sampled());
    }
    out
}

/// Feeds `records` to a fresh deriver (then `finish_pending` at `shutdown_ms` when
/// given) and compares every span emitted and every metric value.
fn check(records: Vec<Record>, shutdown_ms: Option<u64>, spans: &str, metrics: &str) {
    let (source, recorder) = testing::source();
    let mut deriver = Deriver::new(function(), Arc::new(recorder));
    let mut emitted = Vec::new();
    for record in records {
        deriver.ingest(record);
        emitted.extend(deriver.take_spans());
    }
    if let Some(ms) = shutdown_ms {
        deriver.finish_pending(at(ms));
        emitted.extend(deriver.take_spans());
    }
    assert_eq!(render_spans(&emitted), spans);
    assert_eq!(testing::render(&source), metrics);
}

#[test]
fn cold_start_then_warm_invocation_with_tokens() {
    // A token span without traceparent is derived once its invocation's runtimeDone shows
    // that its window holds it; one with another caller's traceparent, once telemetry has
    // passed it (no invocation has that X-Ray parent).
    check(
        vec![
            telemetry(
                r#"[
                {"time":"2022-10-12T00:00:00.000Z","type":"platform.initStart","record":{"initializationType":"on-demand","phase":"init"}},
                {"time":"2022-10-12T00:00:00.120Z","type":"platform.initRuntimeDone","record":{"initializationType":"on-demand","phase":"init","status":"success"}},
                {"time":"2022-10-12T00:00:00.121Z","type":"platform.initReport","record":{"initializationType":"on-demand","phase":"init","metrics":{"durationMs":125.5}}},
                {"time":"2022-10-12T00:00:00.122Z","type":"platform.extension","record":{"name":"lambda-sidecar","state":"Ready","events":["INVOKE","SHUTDOWN"]}}
            ]"#,
            ),
            invoke("r1", 200, Some(XRAY)),
            resumed("r1", 205),
            token(210, 2, TokenOutcome::Issued, None),
            token(215, 1, TokenOutcome::Issued, Some(TRACEPARENT)),
            telemetry(
                r#"[
                {"time":"2022-10-12T00:00:00.200Z","type":"platform.start","record":{"requestId":"r1","version":"$LATEST","tracing":{"type":"X-Amzn-Trace-Id","value":"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0"}}},
                {"time":"2022-10-12T00:00:00.250Z","type":"function","record":"hello from orders"},
                {"time":"2022-10-12T00:00:00.300Z","type":"platform.runtimeDone","record":{"requestId":"r1","status":"success","metrics":{"durationMs":99.5,"producedBytes":12},"spans":[{"name":"responseLatency","start":"2022-10-12T00:00:00.201Z","durationMs":98.0},{"name":"responseDuration","start":"2022-10-12T00:00:00.299Z","durationMs":0.5}]}}
            ]"#,
            ),
            invoke("r2", 1000, None),
            token(1010, 3, TokenOutcome::Rejected { status: 400 }, None),
            telemetry(
                r#"[
                {"time":"2022-10-12T00:00:00.301Z","type":"platform.report","record":{"requestId":"r1","status":"success","metrics":{"durationMs":101.0,"billedDurationMs":102,"memorySizeMB":128,"maxMemoryUsedMB":64,"initDurationMs":125.5}}},
                {"time":"2022-10-12T00:00:01.000Z","type":"platform.start","record":{"requestId":"r2"}}
            ]"#,
            ),
            resumed("r2", 1320),
            telemetry(
                r#"[
                {"time":"2022-10-12T00:00:01.300Z","type":"platform.runtimeDone","record":{"requestId":"r2","status":"error","errorType":"Runtime.Unhandled","metrics":{"durationMs":299.0}}},
                {"time":"2022-10-12T00:00:01.301Z","type":"platform.report","record":{"requestId":"r2","status":"error","errorType":"Runtime.Unhandled","metrics":{"durationMs":300.0,"billedDurationMs":300,"memorySizeMB":128,"maxMemoryUsedMB":96}}},
                {"time":"2022-10-12T00:00:01.302Z","type":"platform.logsDropped","record":{"reason":"Consumer seems to have fallen behind","droppedRecords":3,"droppedBytes":512}},
                {"time":"2022-10-12T00:00:01.303Z","type":"platform.fromTheFuture","record":{}},
                {"time":"2022-10-12T00:00:00.300Z","type":"platform.runtimeDone","record":{"requestId":"r1","status":"success","metrics":{"durationMs":99.5}}},
                {"time":"2022-10-12T00:00:00.301Z","type":"platform.report","record":{"requestId":"r1","status":"success","metrics":{"durationMs":101.0,"billedDurationMs":102,"memorySizeMB":128,"maxMemoryUsedMB":64}}},
                {"time":"2022-10-12T00:00:00.121Z","type":"platform.initReport","record":{"initializationType":"on-demand","phase":"init","metrics":{"durationMs":125.5}}}
            ]"#,
            ),
        ],
        Some(5000),
        "\
init Internal trace=t1 span=s1 parent=- 0..125.5
  [+function aws.lambda.initialization_type=on-demand]
orders Server trace=5759e988bd862e3fe1be46a994272793 span=s2 parent=53995c3f42cd8ad8 (remote) 200..300
  [+function aws.lambda.invoked_arn=arn:aws:lambda:eu-west-1:123456789012:function:orders:r1 cloud.account.id=123456789012 cloud.resource_id=arn:aws:lambda:eu-west-1:123456789012:function:orders:$LATEST faas.coldstart=true faas.invocation_id=r1 faas.trigger=other]
responseLatency Internal trace=5759e988bd862e3fe1be46a994272793 span=s3 parent=s2 201..299
  []
responseDuration Internal trace=5759e988bd862e3fe1be46a994272793 span=s4 parent=s2 299..299.5
  []
GET /token Server trace=5759e988bd862e3fe1be46a994272793 span=s5 parent=s2 210..212
  [http.request.method=GET http.response.status_code=200 http.route=/token sidecar.token.algorithm=ES256 sidecar.token.outcome=issued url.path=/token url.scheme=http]
GET /token Server trace=4bf92f3577b34da6a3ce929d0e0e4736 span=s6 parent=00f067aa0ba902b7 (remote) 215..216
  [http.request.method=GET http.response.status_code=200 http.route=/token sidecar.token.algorithm=ES256 sidecar.token.outcome=issued url.path=/token url.scheme=http]
orders Server trace=t2 span=s7 parent=- 1000..1300 Error { description: \"error: Runtime.Unhandled\" }
  [+function aws.lambda.invoked_arn=arn:aws:lambda:eu-west-1:123456789012:function:orders:r2 cloud.account.id=123456789012 cloud.resource_id=arn:aws:lambda:eu-west-1:123456789012:function:orders:$LATEST error.type=Runtime.Unhandled faas.coldstart=false faas.invocation_id=r2 faas.trigger=other]
GET /token Server trace=t2 span=s8 parent=s7 1010..1013
  [http.request.method=GET http.response.status_code=400 http.route=/token sidecar.token.algorithm=ES256 sidecar.token.outcome=bad_request url.path=/token url.scheme=http]
",
        // Re-delivered r1 events are counted as received but not derived twice; the
        // report's initDurationMs does not count a second cold start.
        "\
aws.lambda.billed_duration count=2 sum=0.402
aws.lambda.memory_size = 134217728
aws.lambda.produced_bytes = 12
faas.coldstarts = 1
faas.errors = 1
faas.init_duration count=1 sum=0.1255
faas.invocations = 1
faas.invoke_duration count=2 sum=0.3985
faas.mem_usage count=2 sum=167772160
sidecar.hold count=2 sum=0.02
sidecar.telemetry.events{type=function} = 1
sidecar.telemetry.events{type=platform.extension} = 1
sidecar.telemetry.events{type=platform.initReport} = 2
sidecar.telemetry.events{type=platform.initRuntimeDone} = 1
sidecar.telemetry.events{type=platform.initStart} = 1
sidecar.telemetry.events{type=platform.logsDropped} = 1
sidecar.telemetry.events{type=platform.report} = 3
sidecar.telemetry.events{type=platform.runtimeDone} = 3
sidecar.telemetry.events{type=platform.start} = 2
sidecar.telemetry.logs_dropped = 3
sidecar.telemetry.unknown_events{reason=unknown_type} = 1
sidecar.token.duration{algorithm=ES256} count=3 sum=0.006
sidecar.token.requests{algorithm=ES256,outcome=bad_request} = 1
sidecar.token.requests{algorithm=ES256,outcome=issued} = 2",
    );
}

#[test]
fn shutdown_closes_what_never_completed() {
    // A cold start whose init never reported and an invocation still running at
    // SHUTDOWN; a token fetched after the first invocation finished is its own trace
    // (decided at SHUTDOWN, when r2's start is still unknown, and counted).
    check(
        vec![
            telemetry(
                r#"[{"time":"2022-10-12T00:00:00.000Z","type":"platform.initStart","record":{"initializationType":"provisioned-concurrency","phase":"init"}},
                    {"time":"2022-10-12T00:00:00.040Z","type":"platform.initRuntimeDone","record":{"initializationType":"provisioned-concurrency","phase":"init","status":"error","errorType":"Runtime.ExitError"}}]"#,
            ),
            invoke("r1", 100, Some(XRAY)),
            telemetry(
                r#"[{"time":"2022-10-12T00:00:00.100Z","type":"platform.start","record":{"requestId":"r1"}},
                    {"time":"2022-10-12T00:00:00.150Z","type":"platform.runtimeDone","record":{"requestId":"r1","status":"timeout"}}]"#,
            ),
            token(160, 1, TokenOutcome::Rejected { status: 503 }, None),
            invoke("r2", 200, None),
            resumed("r2", 201),
        ],
        Some(900),
        "\
orders Server trace=5759e988bd862e3fe1be46a994272793 span=s1 parent=53995c3f42cd8ad8 (remote) 100..150 Error { description: \"timeout\" }
  [+function aws.lambda.invoked_arn=arn:aws:lambda:eu-west-1:123456789012:function:orders:r1 cloud.account.id=123456789012 cloud.resource_id=arn:aws:lambda:eu-west-1:123456789012:function:orders:$LATEST error.type=timeout faas.coldstart=true faas.invocation_id=r1 faas.trigger=other]
GET /token Server trace=t1 span=s2 parent=- 160..161 Error { description: \"\" }
  [error.type=503 http.request.method=GET http.response.status_code=503 http.route=/token sidecar.token.algorithm=ES256 sidecar.token.outcome=error url.path=/token url.scheme=http]
orders Server trace=t2 span=s3 parent=- 200..900
  [+function aws.lambda.invoked_arn=arn:aws:lambda:eu-west-1:123456789012:function:orders:r2 cloud.account.id=123456789012 cloud.resource_id=arn:aws:lambda:eu-west-1:123456789012:function:orders:$LATEST faas.coldstart=false faas.invocation_id=r2 faas.trigger=other sidecar.incomplete=true]
init Internal trace=t3 span=s4 parent=- 0..40 Error { description: \"error: Runtime.ExitError\" }
  [+function aws.lambda.initialization_type=provisioned-concurrency error.type=Runtime.ExitError sidecar.incomplete=true]
",
        "\
faas.timeouts = 1
sidecar.telemetry.events{type=platform.initRuntimeDone} = 1
sidecar.telemetry.events{type=platform.initStart} = 1
sidecar.telemetry.events{type=platform.runtimeDone} = 1
sidecar.telemetry.events{type=platform.start} = 1
sidecar.token.duration{algorithm=ES256} count=1 sum=0.001
sidecar.token.requests{algorithm=ES256,outcome=error} = 1
sidecar.token.unattributed{reason=no_invocation} = 1",
    );
}

#[test]
fn snapstart_restore_and_late_xray() {
    // After a restore, the first invocation is the cold one; its trace id arrives only
    // with platform.start (INVOKE had none) and is adopted since nothing used the old one.
    // Without platform.runtimeDone, the report ends the span by its own duration.
    check(
        vec![
            telemetry(
                r#"[{"time":"2022-10-12T00:00:00.000Z","type":"platform.restoreStart","record":{"runtimeVersion":"java:21.v1"}},
                    {"time":"2022-10-12T00:00:00.300Z","type":"platform.restoreRuntimeDone","record":{"status":"success"}},
                    {"time":"2022-10-12T00:00:00.301Z","type":"platform.restoreReport","record":{"status":"success","metrics":{"durationMs":280.0}}}]"#,
            ),
            invoke("r1", 400, None),
            telemetry(
                r#"[{"time":"2022-10-12T00:00:00.401Z","type":"platform.start","record":{"requestId":"r1","tracing":{"type":"X-Amzn-Trace-Id","value":"Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"}}},
                    {"time":"2022-10-12T00:00:00.420Z","type":"platform.report","record":{"requestId":"r1","status":"failure","metrics":{"durationMs":19.0,"billedDurationMs":20,"memorySizeMB":512,"maxMemoryUsedMB":200,"restoreDurationMs":280.0}}},
                    "not an event"]"#,
            ),
        ],
        None,
        "\
restore Internal trace=t1 span=s1 parent=- 0..280
  [+function]
orders Server trace=5759e988bd862e3fe1be46a994272793 span=s2 parent=- 401..420 Error { description: \"failure\" }
  [+function aws.lambda.invoked_arn=arn:aws:lambda:eu-west-1:123456789012:function:orders:r1 cloud.account.id=123456789012 cloud.resource_id=arn:aws:lambda:eu-west-1:123456789012:function:orders:$LATEST error.type=failure faas.coldstart=true faas.invocation_id=r1 faas.trigger=other]
",
        "\
aws.lambda.billed_duration count=1 sum=0.02
aws.lambda.memory_size = 536870912
aws.lambda.restore_duration count=1 sum=0.28
faas.coldstarts = 1
faas.mem_usage count=1 sum=209715200
sidecar.telemetry.events{type=platform.report} = 1
sidecar.telemetry.events{type=platform.restoreReport} = 1
sidecar.telemetry.events{type=platform.restoreRuntimeDone} = 1
sidecar.telemetry.events{type=platform.restoreStart} = 1
sidecar.telemetry.events{type=platform.start} = 1
sidecar.telemetry.unknown_events{reason=malformed} = 1",
    );
}

#[test]
fn state_is_bounded() {
    let (source, recorder) = testing::source();
    let mut deriver = Deriver::new(function(), Arc::new(recorder));
    for n in 0..=MAX_PENDING as u64 {
        deriver.ingest(invoke(&format!("r{n}"), n, None));
    }
    deriver.finish_pending(at(5_000_000));
    let spans = deriver.take_spans();
    assert_eq!(spans.len(), MAX_PENDING);
    assert!(
        spans
            .iter()
            .all(|s| s.attributes.iter().all(|kv| kv.value.as_str() != "r0"))
    );
    assert_eq!(testing::render(&source), "sidecar.telemetry.evicted = 1");
}

#[test]
fn function_info_from_vars() {
    assert_eq!(
        function(),
        FunctionInfo {
            name: "orders".to_owned(),
            version: Some("$LATEST".to_owned()),
            region: Some("eu-west-1".to_owned()),
            memory_mb: Some(128),
            log_stream: Some("2022/10/12/[$LATEST]abc".to_owned()),
            log_group: Some("/aws/lambda/orders".to_owned()),
            initialization_type: None,
        }
    );
    let sparse: HashMap<&str, &str> = [
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_REGION", ""),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "lots"),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "provisioned-concurrency"),
        ("AWS_LAMBDA_LOG_GROUP_NAME", ""),
    ]
    .into();
    let info = FunctionInfo::from_vars(|key| sparse.get(key).map(|v| (*v).to_owned()));
    assert_eq!(
        info,
        FunctionInfo {
            name: "unknown_function".to_owned(),
            version: None,
            region: Some("us-east-1".to_owned()),
            memory_mb: None,
            log_stream: None,
            log_group: None,
            initialization_type: Some("provisioned-concurrency".to_owned()),
        }
    );
    assert_eq!(info.max_memory_bytes(), None);
}

/// A runtimeDone for `request_id` at `ms` with `children` child spans.
fn runtime_done(request_id: &str, ms: u64, children: usize) -> Record {
    let span = r#"{"name":"responseLatency","start":"2022-10-12T00:00:00.001Z","durationMs":1.0}"#;
    let spans = vec![span; children].join(",");
    assert!(ms < 1000);
    telemetry(&format!(
        r#"[{{"time":"2022-10-12T00:00:00.{ms:03}Z","type":"platform.runtimeDone","record":{{"requestId":"{request_id}","status":"success","spans":[{spans}]}}}}]"#,
    ))
}

/// `sidecar.export.dropped_items{signal=traces}`, if recorded.
fn dropped_spans(source: &crate::export::MetricsSource) -> Option<u64> {
    testing::render(source).lines().find_map(|line| {
        line.strip_prefix("sidecar.export.dropped_items{signal=traces} = ")?
            .parse()
            .ok()
    })
}

#[test]
fn spans_awaiting_a_drain_are_bounded_and_the_invocation_span_kept() {
    // 30,000 tokens in one invocation (no drain: no INVOKE in between), then its end.
    let (source, recorder) = testing::source();
    let mut deriver = Deriver::new(function(), Arc::new(recorder));
    deriver.ingest(invoke("r1", 0, None));
    for n in 0..30_000 {
        deriver.ingest(token(1 + n / 100, 0, TokenOutcome::Issued, None));
    }
    deriver.ingest(runtime_done("r1", 400, 2));
    let spans = deriver.take_spans();
    // 4096 = items::SPAN_BUFFER_CAP, of which 256 are kept for invocation spans.
    assert_eq!(spans.len(), 4096 - 256 + 1);
    assert!(
        spans.iter().any(|s| s.name == "orders"),
        "invocation span lost"
    );
    let dropped = 30_000 - (4096 - 256) + 2;
    assert_eq!(dropped_spans(&source), Some(dropped));
    // A drain makes room again (for a token span after r1, placed at SHUTDOWN).
    deriver.ingest(token(500, 0, TokenOutcome::Issued, None));
    deriver.finish_pending(at(600));
    assert_eq!(deriver.take_spans().len(), 1);
}

#[test]
fn child_spans_per_event_are_bounded() {
    let (source, recorder) = testing::source();
    let mut deriver = Deriver::new(function(), Arc::new(recorder));
    deriver.ingest(invoke("r1", 0, None));
    deriver.ingest(runtime_done("r1", 100, 30_000));
    let spans = deriver.take_spans();
    // The invocation span and 16 children.
    assert_eq!(spans.len(), 17);
    assert_eq!(dropped_spans(&source), Some(30_000 - 16));
}

/// Runs `records` through a deriver with `sampler` (as `OTEL_TRACES_SAMPLER` names it):
/// the names of the spans kept, and every metric value.
fn sampled_run(sampler: &str, records: Vec<Record>) -> (Vec<String>, String) {
    let sampler =
        Sampler::parse(|k| (k == "OTEL_TRACES_SAMPLER").then(|| sampler.to_owned())).unwrap();
    let (source, recorder) = testing::source();
    let mut deriver = Deriver::new(function(), Arc::new(recorder)).with_sampler(sampler);
    let mut names = Vec::new();
    let mut keep = |spans: Vec<SpanData>| {
        for span in spans {
            assert!(span.span_context.is_sampled(), "{}", span.name);
            names.push(span.name.into_owned());
        }
    };
    for record in records {
        deriver.ingest(record);
        keep(deriver.take_spans());
    }
    // Held token spans are decided at the latest at SHUTDOWN.
    deriver.finish_pending(at(5_000));
    keep(deriver.take_spans());
    (names, testing::render(&source))
}

/// One invocation whose INVOKE carries `sampled` as X-Ray's flag: a token fetched
/// during it, two Lambda child spans, and its report.
fn traced_invocation(sampled: &str) -> Vec<Record> {
    let xray = format!(
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled={sampled}"
    );
    vec![
        invoke("r1", 0, Some(&xray)),
        token(10, 1, TokenOutcome::Issued, None),
        runtime_done("r1", 100, 2),
        telemetry(
            r#"[{"time":"2022-10-12T00:00:00.101Z","type":"platform.report","record":{"requestId":"r1","status":"success","metrics":{"durationMs":100.0,"billedDurationMs":100,"memorySizeMB":128,"maxMemoryUsedMB":64}}}]"#,
        ),
    ]
}

#[test]
fn xray_sampled_flag_decides_for_the_invocation_and_its_children() {
    let (kept, metrics) = sampled_run("parentbased_always_on", traced_invocation("1"));
    assert_eq!(
        kept,
        ["orders", "responseLatency", "responseLatency", "GET /token"]
    );
    for (sampler, flag) in [
        ("parentbased_always_on", "0"),
        ("parentbased_always_off", "?"),
        ("parentbased_always_off", "0"),
        ("always_off", "1"),
    ] {
        let (spans, unsampled_metrics) = sampled_run(sampler, traced_invocation(flag));
        assert_eq!(spans, Vec::<String>::new(), "{sampler} Sampled={flag}");
        assert_eq!(unsampled_metrics, metrics, "{sampler} Sampled={flag}");
        assert!(metrics.contains("faas.invocations = 1"));
    }
    for (sampler, flag) in [
        ("parentbased_always_on", "?"),
        ("parentbased_always_off", "1"),
        ("always_on", "0"),
    ] {
        let (spans, _) = sampled_run(sampler, traced_invocation(flag));
        assert_eq!(spans.len(), 4, "{sampler} Sampled={flag}");
    }
    // Ratio 0 refuses every root; the parent-based form still follows Sampled=1.
    let zero = |name: &str| {
        Sampler::parse(|k| match k {
            "OTEL_TRACES_SAMPLER" => Some(name.to_owned()),
            _ => Some("0".to_owned()),
        })
    };
    for (name, expected) in [("traceidratio", 0), ("parentbased_traceidratio", 4)] {
        let (source, recorder) = testing::source();
        let mut deriver =
            Deriver::new(function(), Arc::new(recorder)).with_sampler(zero(name).unwrap());
        traced_invocation("1")
            .into_iter()
            .for_each(|r| deriver.ingest(r));
        assert_eq!(deriver.take_spans().len(), expected, "{name}");
        assert_eq!(testing::render(&source), metrics, "{name}");
    }
}

/// Decided at first sight: a later event's X-Ray flag does not revive an unsampled
/// invocation, and `platform.start` decides when it comes before the INVOKE.
#[test]
fn the_decision_is_made_at_first_sight() {
    let start = |sampled: &str| {
        telemetry(&format!(
            r#"[{{"time":"2022-10-12T00:00:00.000Z","type":"platform.start","record":{{"requestId":"r1","tracing":{{"type":"X-Amzn-Trace-Id","value":"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled={sampled}"}}}}}}]"#
        ))
    };
    let mut records = traced_invocation("0");
    records.insert(1, start("1"));
    assert_eq!(
        sampled_run("parentbased_always_on", records).0,
        Vec::<String>::new()
    );
    let mut records = traced_invocation("1");
    records.insert(0, start("0"));
    assert_eq!(
        sampled_run("parentbased_always_on", records).0,
        Vec::<String>::new()
    );
}

#[test]
fn traceparent_flags_decide_for_a_token_span_without_an_invocation() {
    let call = |flags: &str| {
        vec![token(
            10,
            1,
            TokenOutcome::Issued,
            Some(&format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"
            )),
        )]
    };
    let (kept, metrics) = sampled_run("parentbased_always_on", call("01"));
    assert_eq!(kept, ["GET /token"]);
    let (none, unsampled_metrics) = sampled_run("parentbased_always_on", call("00"));
    assert_eq!(none, Vec::<String>::new());
    assert_eq!(unsampled_metrics, metrics);
    assert!(metrics.contains("sidecar.token.requests{algorithm=ES256,outcome=issued} = 1"));
    // always_on ignores the caller's decision.
    assert_eq!(sampled_run("always_on", call("00")).0, ["GET /token"]);
}

/// `faas.coldstarts` and `faas.coldstart` per `AWS_LAMBDA_INITIALIZATION_TYPE`: an
/// on-demand init and a SnapStart restore are cold starts; a provisioned-concurrency,
/// Managed Instances or snapshot (`snap-start`) init is not, and then no invocation is
/// marked cold either.
#[test]
fn cold_starts_per_initialization_type() {
    let init = |kind: &str| {
        telemetry(&format!(
            r#"[{{"time":"2022-10-12T00:00:00.000Z","type":"platform.initStart","record":{{"initializationType":"{kind}","phase":"init"}}}},
                {{"time":"2022-10-12T00:00:00.050Z","type":"platform.initReport","record":{{"initializationType":"{kind}","phase":"init","metrics":{{"durationMs":50.0}}}}}}]"#
        ))
    };
    let restore = || {
        telemetry(
            r#"[{"time":"2022-10-12T00:00:00.060Z","type":"platform.restoreStart","record":{}},
                {"time":"2022-10-12T00:00:00.080Z","type":"platform.restoreReport","record":{"status":"success","metrics":{"durationMs":20.0}}}]"#,
        )
    };
    // Without an initReport, the first platform.report's initDurationMs stands for it.
    let report_with_init = || {
        telemetry(
            r#"[{"time":"2022-10-12T00:00:00.301Z","type":"platform.report","record":{"requestId":"r1","status":"success","metrics":{"durationMs":1.0,"billedDurationMs":1,"memorySizeMB":128,"maxMemoryUsedMB":64,"initDurationMs":50.0}}}]"#,
        )
    };
    for (kind, with_init_report, cold) in [
        ("on-demand", true, true),
        ("on-demand", false, true),
        ("provisioned-concurrency", true, false),
        ("provisioned-concurrency", false, false),
        ("lambda-managed-instances", true, false),
        ("snap-start", true, true),
    ] {
        let vars: HashMap<&str, &str> = [
            ("AWS_LAMBDA_FUNCTION_NAME", "orders"),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", kind),
        ]
        .into();
        let function = FunctionInfo::from_vars(|key| vars.get(key).map(|v| (*v).to_owned()));
        let (source, recorder) = testing::source();
        let mut deriver = Deriver::new(function, Arc::new(recorder));
        let mut records = Vec::new();
        if with_init_report {
            records.push(init(kind));
        }
        if kind == "snap-start" {
            records.push(restore());
        }
        records.extend([
            invoke("r1", 200, None),
            runtime_done("r1", 300, 0),
            report_with_init(),
            invoke("r2", 400, None),
            runtime_done("r2", 500, 0),
        ]);
        for record in records {
            deriver.ingest(record);
        }
        let coldstart: Vec<String> = deriver
            .take_spans()
            .iter()
            .filter(|span| span.name == "orders")
            .flat_map(|span| &span.attributes)
            .filter(|kv| kv.key.as_str() == "faas.coldstart")
            .map(|kv| kv.value.to_string())
            .collect();
        let case = format!("{kind}, initReport: {with_init_report}");
        assert_eq!(coldstart, [cold.to_string(), "false".into()], "{case}");
        let metrics = testing::render(&source);
        let counted = metrics.contains("faas.coldstarts = 1");
        assert_eq!(counted, cold, "{case}\n{metrics}");
        // The init duration is recorded whatever the kind of init.
        assert!(
            metrics.contains("faas.init_duration count=1"),
            "{case}\n{metrics}"
        );
    }
}

/// `cloud.account.id` and `cloud.resource_id` from the invoked ARN: an alias is replaced
/// by the version the environment runs, as the conventions require.
#[test]
fn cloud_ids_from_the_invoked_arn() {
    let base = "arn:aws:lambda:eu-west-1:123456789012:function:orders";
    let render = |version: Option<&str>, arn: &str| {
        let function = FunctionInfo {
            version: version.map(str::to_owned),
            ..function()
        };
        function
            .arn_attributes(arn)
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let both =
        |resource: &str| format!("cloud.account.id=123456789012 cloud.resource_id={resource}");
    for (version, arn, expected) in [
        (Some("7"), format!("{base}:live"), both(&format!("{base}:7"))),
        (Some("7"), format!("{base}:7"), both(&format!("{base}:7"))),
        (Some("7"), base.to_owned(), both(&format!("{base}:7"))),
        (Some("$LATEST"), base.to_owned(), both(&format!("{base}:$LATEST"))),
        (None, format!("{base}:12"), both(&format!("{base}:12"))),
        (None, format!("{base}:$LATEST"), both(&format!("{base}:$LATEST"))),
        (None, base.to_owned(), both(base)),
        // An alias with no known version cannot be resolved: no resource id.
        (None, format!("{base}:live"), "cloud.account.id=123456789012".to_owned()),
        (
            Some("3"),
            "arn:aws-cn:lambda:cn-north-1:210987654321:function:f:prod".to_owned(),
            "cloud.account.id=210987654321 cloud.resource_id=arn:aws-cn:lambda:cn-north-1:210987654321:function:f:3".to_owned(),
        ),
    ] {
        assert_eq!(render(version, &arn), expected, "{version:?} {arn}");
    }
    for malformed in [
        "",
        "orders",
        "arn:aws:lambda:eu-west-1:123456789012:function",
        "arn:aws:lambda:eu-west-1::function:orders",
        "arn:aws:lambda:eu-west-1:123456789012:function:orders:",
        "arn:aws:lambda:eu-west-1:123456789012:function:orders:live:extra",
        "arn:aws:lambda:eu-west-1:123456789012:layer:orders:1",
        "arn:aws:s3:eu-west-1:123456789012:function:orders",
    ] {
        assert_eq!(render(Some("7"), malformed), "", "{malformed}");
    }
}

/// `faas.trigger` is `other` unless configured; `aws.log.group.names` is a string array
/// on every span (and the resource) from `AWS_LAMBDA_LOG_GROUP_NAME`.
#[test]
fn faas_trigger_and_log_group() {
    let group = KeyValue::new(
        "aws.log.group.names",
        opentelemetry::Value::Array(opentelemetry::Array::String(vec![
            "/aws/lambda/orders".into(),
        ])),
    );
    assert!(function().attributes().contains(&group));
    for (trigger, expected) in [
        (None, "other"),
        (Some("http"), "http"),
        (Some("timer"), "timer"),
    ] {
        let (_, recorder) = testing::source();
        let mut deriver = Deriver::new(function(), Arc::new(recorder));
        if let Some(trigger) = trigger {
            deriver = deriver.with_trigger(trigger);
        }
        deriver.ingest(invoke("r1", 0, None));
        deriver.ingest(token(10, 1, TokenOutcome::Issued, None));
        deriver.ingest(runtime_done("r1", 100, 0));
        let spans = deriver.take_spans();
        let invocation = spans.iter().find(|s| s.name == "orders").unwrap();
        assert!(
            invocation
                .attributes
                .contains(&KeyValue::new("faas.trigger", expected))
        );
        assert!(invocation.attributes.contains(&group));
        // faas.trigger belongs to the invocation (FaaS server) span only.
        let token = spans.iter().find(|s| s.name == "GET /token").unwrap();
        assert!(
            token
                .attributes
                .iter()
                .all(|kv| kv.key.as_str() != "faas.trigger")
        );
    }
}

/// Token spans are HTTP server spans: `{method} /token`, `HTTP /token` for a method the
/// conventions do not know (`_OTHER`, and the caller's spelling not kept); 4xx leaves the
/// status unset (server side), 5xx is an error with the code as error.type and no
/// description.
#[test]
fn token_spans_follow_the_http_server_conventions() {
    let long = "X".repeat(100);
    check(
        vec![
            token_with("GET", 10, 1, TokenOutcome::Issued, None),
            token_with("POST", 20, 1, TokenOutcome::Rejected { status: 400 }, None),
            token_with("POST", 30, 1, TokenOutcome::Rejected { status: 500 }, None),
            token_with("BREW", 40, 1, TokenOutcome::Rejected { status: 405 }, None),
            token_with("get", 50, 1, TokenOutcome::Rejected { status: 405 }, None),
            token_with(&long, 60, 1, TokenOutcome::Rejected { status: 405 }, None),
        ],
        Some(100),
        "\
GET /token Server trace=t1 span=s1 parent=- 10..11
  [http.request.method=GET http.response.status_code=200 http.route=/token sidecar.token.algorithm=ES256 sidecar.token.outcome=issued url.path=/token url.scheme=http]
POST /token Server trace=t2 span=s2 parent=- 20..21
  [http.request.method=POST http.response.status_code=400 http.route=/token sidecar.token.algorithm=ES256 sidecar.token.outcome=bad_request url.path=/token url.scheme=http]
POST /token Server trace=t3 span=s3 parent=- 30..31 Error { description: \"\" }
  [error.type=500 http.request.method=POST http.response.status_code=500 http.route=/token sidecar.token.algorithm=ES256 sidecar.token.outcome=error url.path=/token url.scheme=http]
HTTP /token Server trace=t4 span=s4 parent=- 40..41
  [http.request.method=_OTHER http.response.status_code=405 http.route=/token sidecar.token.algorithm=ES256 sidecar.token.outcome=method_not_allowed url.path=/token url.scheme=http]
HTTP /token Server trace=t5 span=s5 parent=- 50..51
  [http.request.method=_OTHER http.response.status_code=405 http.route=/token sidecar.token.algorithm=ES256 sidecar.token.outcome=method_not_allowed url.path=/token url.scheme=http]
HTTP /token Server trace=t6 span=s6 parent=- 60..61
  [http.request.method=_OTHER http.response.status_code=405 http.route=/token sidecar.token.algorithm=ES256 sidecar.token.outcome=method_not_allowed url.path=/token url.scheme=http]
",
        "\
sidecar.token.duration{algorithm=ES256} count=6 sum=0.006
sidecar.token.requests{algorithm=ES256,outcome=bad_request} = 1
sidecar.token.requests{algorithm=ES256,outcome=error} = 1
sidecar.token.requests{algorithm=ES256,outcome=issued} = 1
sidecar.token.requests{algorithm=ES256,outcome=method_not_allowed} = 3
sidecar.token.unattributed{reason=no_invocation} = 6",
    );
}

/// Managed Instances: no INVOKE, three overlapping invocations whose events interleave in
/// one batch; each becomes its own span, ended by its own runtimeDone, and a report without
/// the billing and memory figures still closes its invocation and counts nothing false.
#[test]
fn overlapping_invocations_interleaved_in_one_batch() {
    let (source, recorder) = testing::source();
    let mut deriver = Deriver::new(function(), Arc::new(recorder));
    deriver.ingest(telemetry(
        r#"[
          {"time":"2022-10-12T00:00:01.000Z","type":"platform.start","record":{"requestId":"r1"}},
          {"time":"2022-10-12T00:00:01.001Z","type":"platform.start","record":{"requestId":"r2"}},
          {"time":"2022-10-12T00:00:01.010Z","type":"platform.runtimeDone","record":{"requestId":"r2","status":"success","metrics":{"durationMs":9.0}}},
          {"time":"2022-10-12T00:00:01.011Z","type":"platform.start","record":{"requestId":"r3"}},
          {"time":"2022-10-12T00:00:01.012Z","type":"platform.report","record":{"requestId":"r2","status":"success","metrics":{"durationMs":11.0}}},
          {"time":"2022-10-12T00:00:01.020Z","type":"platform.runtimeDone","record":{"requestId":"r1","status":"error","errorType":"E","metrics":{"durationMs":20.0}}},
          {"time":"2022-10-12T00:00:01.021Z","type":"platform.runtimeDone","record":{"requestId":"r3","status":"success","metrics":{"durationMs":10.0}}},
          {"time":"2022-10-12T00:00:01.022Z","type":"platform.report","record":{"requestId":"r3","status":"success","metrics":{"durationMs":11.0,"billedDurationMs":11,"memorySizeMB":2048,"maxMemoryUsedMB":90}}}
        ]"#,
    ));
    // r1 has not reported yet: it is still in flight, and SHUTDOWN waits for it.
    assert_eq!(deriver.in_flight(), 1);
    deriver.ingest(telemetry(
        r#"[{"time":"2022-10-12T00:00:01.023Z","type":"platform.report","record":{"requestId":"r1","status":"error","errorType":"E","metrics":{"durationMs":23.0}}}]"#,
    ));
    assert_eq!(deriver.in_flight(), 0);
    assert_eq!(
        render_spans(&deriver.take_spans()),
        "\
orders Server trace=t1 span=s1 parent=- 1001..1010
  [+function faas.coldstart=false faas.invocation_id=r2 faas.trigger=other]
orders Server trace=t2 span=s2 parent=- 1000..1020 Error { description: \"error: E\" }
  [+function error.type=E faas.coldstart=true faas.invocation_id=r1 faas.trigger=other]
orders Server trace=t3 span=s3 parent=- 1011..1021
  [+function faas.coldstart=false faas.invocation_id=r3 faas.trigger=other]
"
    );
    // Billing and memory come from r3's report only, not as zeros from the others.
    assert_eq!(
        testing::render(&source),
        "\
aws.lambda.billed_duration count=1 sum=0.011
aws.lambda.memory_size = 2147483648
faas.errors = 1
faas.invocations = 2
faas.invoke_duration count=3 sum=0.039
faas.mem_usage count=1 sum=94371840
sidecar.telemetry.events{type=platform.report} = 3
sidecar.telemetry.events{type=platform.runtimeDone} = 3
sidecar.telemetry.events{type=platform.start} = 3"
    );
}

/// The `traceparent` the example function sends: X-Ray's Root and Parent as W3C ids.
const XRAY_TRACEPARENT: &str = "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01";

/// Telemetry events given as `(type, request id, ms)`, in one batch.
fn platform(events: &[(&str, &str, u64)]) -> Record {
    let items: Vec<String> = events
        .iter()
        .map(|(kind, request_id, ms)| {
            assert!(*ms < 1000);
            let metrics = match *kind {
                "report" => {
                    r#","metrics":{"durationMs":1.0,"billedDurationMs":1,"memorySizeMB":128,"maxMemoryUsedMB":64}"#
                }
                _ => "",
            };
            format!(
                r#"{{"time":"2022-10-12T00:00:00.{ms:03}Z","type":"platform.{kind}","record":{{"requestId":"{request_id}","status":"success"{metrics}}}}}"#
            )
        })
        .collect();
    telemetry(&format!("[{}]", items.join(",")))
}

/// Each token span (by start time in ms) and what it hangs from: the `faas.invocation_id`
/// of the invocation span that is its parent in the same trace, `caller` for a remote
/// parent, `root` for none.
fn token_parents(spans: &[SpanData]) -> Vec<(u64, String)> {
    let invocations: HashMap<SpanId, (TraceId, String)> = spans
        .iter()
        .filter_map(|s| {
            let id = s
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == "faas.invocation_id")?;
            Some((
                s.span_context.span_id(),
                (s.span_context.trace_id(), id.value.to_string()),
            ))
        })
        .collect();
    let mut parents: Vec<(u64, String)> = spans
        .iter()
        .filter(|s| s.name.contains("token"))
        .map(|s| {
            let ms = s.start_time.duration_since(base()).unwrap().as_millis() as u64;
            let parent = match invocations.get(&s.parent_span_id) {
                Some((trace, id)) if *trace == s.span_context.trace_id() => id.clone(),
                Some(_) => "another trace".to_owned(),
                None if s.parent_span_is_remote => "caller".to_owned(),
                None if s.parent_span_id == SpanId::INVALID => "root".to_owned(),
                None => "unknown".to_owned(),
            };
            (ms, parent)
        })
        .collect();
    parents.sort();
    parents
}

/// Every span `records` derive, up to a SHUTDOWN at `shutdown_ms`, and the metrics.
fn run(deriver: Deriver, records: Vec<Record>, shutdown_ms: u64) -> Vec<SpanData> {
    let mut deriver = deriver;
    let mut spans = Vec::new();
    for record in records {
        deriver.ingest(record);
        spans.extend(deriver.take_spans());
    }
    deriver.finish_pending(at(shutdown_ms));
    spans.extend(deriver.take_spans());
    spans
}

fn owned(parents: &[(u64, &str)]) -> Vec<(u64, String)> {
    parents
        .iter()
        .map(|(ms, p)| (*ms, (*p).to_owned()))
        .collect()
}

#[test]
fn a_token_span_whose_parent_is_the_xray_parent_nests_under_the_invocation() {
    // The example function's traceparent, once before the sidecar has the INVOKE (Lambda
    // hands it to the runtime first) and once after.
    let (_, recorder) = testing::source();
    let spans = run(
        Deriver::new(function(), Arc::new(recorder)),
        vec![
            token(5, 1, TokenOutcome::Issued, Some(XRAY_TRACEPARENT)),
            invoke("r1", 8, Some(XRAY)),
            token(20, 1, TokenOutcome::Issued, Some(XRAY_TRACEPARENT)),
            // Another caller's context stays the parent.
            token(30, 1, TokenOutcome::Issued, Some(TRACEPARENT)),
            platform(&[("start", "r1", 0), ("runtimeDone", "r1", 100)]),
        ],
        900,
    );
    assert_eq!(
        token_parents(&spans),
        owned(&[(5, "r1"), (20, "r1"), (30, "caller")])
    );
    let nested = spans
        .iter()
        .filter(|s| s.name.contains("token"))
        .filter(|s| s.span_context.trace_id().to_string() == LITERAL_IDS[0]);
    assert_eq!(nested.count(), 2);
}

#[test]
fn a_token_span_without_traceparent_belongs_to_the_invocation_whose_window_holds_it() {
    // The race of issue 11: the function asks for tokens at the very start of r2, before
    // the sidecar has r2's INVOKE, while r1's runtimeDone has not arrived either. Time
    // decides, once platform.start and platform.runtimeDone are known.
    let (source, recorder) = testing::source();
    let spans = run(
        Deriver::new(function(), Arc::new(recorder)),
        vec![
            invoke("r1", 2, None),
            token(50, 1, TokenOutcome::Issued, None),
            token(150, 1, TokenOutcome::Issued, None),
            token(151, 1, TokenOutcome::Issued, None),
            invoke("r2", 160, None),
            platform(&[
                ("start", "r1", 0),
                ("runtimeDone", "r1", 100),
                ("start", "r2", 140),
            ]),
            token(250, 1, TokenOutcome::Issued, None),
            platform(&[("runtimeDone", "r2", 300)]),
            // After r2, before r3 started: no window holds it (known once r3's start is).
            token(310, 1, TokenOutcome::Issued, None),
            // r3's, with r2's end known and r3 not seen at all yet.
            token(410, 1, TokenOutcome::Issued, None),
            invoke("r3", 420, None),
            platform(&[("start", "r3", 400), ("runtimeDone", "r3", 500)]),
            // After r3, before any other invocation: decided at SHUTDOWN.
            token(600, 1, TokenOutcome::Issued, None),
        ],
        900,
    );
    assert_eq!(
        token_parents(&spans),
        owned(&[
            (50, "r1"),
            (150, "r2"),
            (151, "r2"),
            (250, "r2"),
            (310, "root"),
            (410, "r3"),
            (600, "root")
        ])
    );
    assert!(
        testing::render(&source).contains("sidecar.token.unattributed"),
        "{}",
        testing::render(&source)
    );
}

/// A token request at `ms` naming its invocation with the request-id header.
fn token_for(ms: u64, request_id: &str, traceparent: Option<&str>) -> Record {
    let Record::Token(mut record) = token(ms, 1, TokenOutcome::Issued, traceparent) else {
        unreachable!()
    };
    record.request_id = crate::records::parse_request_id(request_id);
    Record::Token(record)
}

#[test]
fn the_request_id_header_decides() {
    let (source, recorder) = testing::source();
    let spans = run(
        Deriver::new(function(), Arc::new(recorder)),
        vec![
            invoke("r1", 0, None),
            // Named before the sidecar has seen r2 at all: held until it has.
            token_for(50, "r2", None),
            // Time says r1, the header says r2: the header wins.
            token_for(60, "r2", None),
            // The example's traceparent names r1's X-Ray parent; the header still decides.
            token_for(70, "r2", Some(XRAY_TRACEPARENT)),
            invoke("r2", 80, None),
            // A request id that never comes.
            token_for(90, "r9", None),
            platform(&[
                ("start", "r1", 0),
                ("runtimeDone", "r1", 100),
                ("start", "r2", 110),
                ("runtimeDone", "r2", 200),
                ("report", "r2", 201),
            ]),
            // After r2's report: its state is gone, the span is placed alone.
            token_for(300, "r2", None),
        ],
        900,
    );
    assert_eq!(
        token_parents(&spans),
        owned(&[
            (50, "r2"),
            (60, "r2"),
            (70, "r2"),
            (90, "root"),
            (300, "root")
        ])
    );
    assert!(
        testing::render(&source).contains("sidecar.token.unattributed{reason=no_invocation} = 2"),
        "{}",
        testing::render(&source)
    );
}

#[test]
fn on_managed_instances_time_does_not_decide() {
    // r1 and r2 overlap: a token request with neither a request id nor a traceparent could
    // be either's, so it is left alone and counted, not guessed.
    let (source, recorder) = testing::source();
    let deriver = Deriver::new(function(), Arc::new(recorder)).with_overlapping_invocations(true);
    let spans = run(
        deriver,
        vec![
            token(20, 1, TokenOutcome::Issued, None),
            token_for(21, "r2", None),
            token(22, 1, TokenOutcome::Issued, Some(XRAY_TRACEPARENT)),
            token(23, 1, TokenOutcome::Issued, Some(TRACEPARENT)),
            invoke("r1", 0, Some(XRAY)),
            platform(&[
                ("start", "r1", 0),
                ("start", "r2", 10),
                ("runtimeDone", "r1", 100),
                ("runtimeDone", "r2", 110),
            ]),
        ],
        900,
    );
    assert_eq!(
        token_parents(&spans),
        owned(&[(20, "root"), (21, "r2"), (22, "r1"), (23, "caller")])
    );
    let metrics = testing::render(&source);
    assert!(
        metrics.contains("sidecar.token.unattributed{reason=concurrent} = 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("no_invocation"), "{metrics}");
}

#[test]
fn held_token_spans_are_bounded_and_the_overflow_counted() {
    // Token spans wait for their invocation's runtimeDone; past MAX_HELD the oldest is let
    // go without an invocation.
    let (source, recorder) = testing::source();
    let mut deriver = Deriver::new(function(), Arc::new(recorder));
    deriver.ingest(invoke("r1", 0, None));
    let over = 5;
    for n in 0..(MAX_HELD + over) as u64 {
        deriver.ingest(token(1 + n / 10, 0, TokenOutcome::Issued, None));
    }
    assert_eq!(deriver.tokens.held.len(), MAX_HELD);
    let early = deriver.take_spans();
    assert_eq!(token_parents(&early), owned(&[(1, "root"); 5]));
    deriver.ingest(runtime_done("r1", 999, 0));
    let spans = deriver.take_spans();
    assert!(deriver.tokens.held.is_empty());
    // They now share the bound of spans awaiting a drain, which the invocation span (derived
    // first) also counts against: one token span more than fits is dropped there, counted.
    assert_eq!(spans.len(), MAX_HELD);
    assert_eq!(dropped_spans(&source), Some(1));
    assert!(
        token_parents(&spans)
            .iter()
            .all(|(_, parent)| parent == "r1")
    );
    let metrics = testing::render(&source);
    assert!(
        metrics.contains(&format!(
            "sidecar.token.unattributed{{reason=overflow}} = {over}"
        )),
        "{metrics}"
    );
}

#[test]
fn invocation_at_answers_which_invocation_holds_a_time() {
    let (_, recorder) = testing::source();
    let mut deriver = Deriver::new(function(), Arc::new(recorder));
    deriver.ingest(invoke("r1", 2, None));
    deriver.ingest(platform(&[
        ("start", "r1", 0),
        ("runtimeDone", "r1", 100),
        ("start", "r2", 140),
    ]));
    let holder = |ms| deriver.invocation_at(at(ms)).map(str::to_owned);
    assert_eq!(
        [holder(50), holder(120), holder(150)],
        [Some("r1".to_owned()), None, Some("r2".to_owned())]
    );
    let (_, recorder) = testing::source();
    let mut overlapping =
        Deriver::new(function(), Arc::new(recorder)).with_overlapping_invocations(true);
    overlapping.ingest(platform(&[("start", "r1", 0)]));
    assert_eq!(overlapping.invocation_at(at(50)), None);
}

#[test]
fn without_runtime_done_the_report_closes_the_window_before_the_invocation_is_forgotten() {
    let (source, recorder) = testing::source();
    let spans = run(
        Deriver::new(function(), Arc::new(recorder)),
        vec![
            invoke("r1", 0, None),
            token(40, 1, TokenOutcome::Issued, None),
            token(150, 1, TokenOutcome::Issued, None),
            invoke("r2", 200, None),
            // r1's runtimeDone is lost; its report says it lasted 1 ms from its start (40).
            platform(&[
                ("start", "r1", 40),
                ("report", "r1", 120),
                ("start", "r2", 200),
            ]),
        ],
        900,
    );
    assert_eq!(token_parents(&spans), owned(&[(40, "r1"), (150, "root")]));
    assert!(
        testing::render(&source).contains("sidecar.token.unattributed{reason=no_invocation} = 1")
    );
}

/// `OTEL_PROPAGATORS`: without `xray` the invocation starts a trace of its own instead of
/// joining X-Ray's; without `tracecontext` a token caller's `traceparent` is not believed,
/// and the token span goes to the invocation that holds it.
#[test]
fn propagators_decide_which_trace_contexts_are_read() {
    let run = |propagators: Propagators| {
        let (_source, recorder) = testing::source();
        let mut deriver =
            Deriver::new(function(), Arc::new(recorder)).with_propagators(propagators);
        for record in [
            invoke("r1", 0, Some(XRAY)),
            token(10, 1, TokenOutcome::Issued, Some(TRACEPARENT)),
            runtime_done("r1", 100, 0),
        ] {
            deriver.ingest(record);
        }
        deriver.finish_pending(at(5_000));
        let spans = deriver.take_spans();
        let trace_of = |name: &str| {
            spans
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.span_context.trace_id().to_string())
                .unwrap_or_else(|| panic!("no {name} span"))
        };
        (trace_of("orders"), trace_of("GET /token"))
    };
    let (xray_trace, caller_trace) = (LITERAL_IDS[0], LITERAL_IDS[2]);
    let both = run(Propagators::default());
    assert_eq!(both, (xray_trace.to_owned(), caller_trace.to_owned()));
    let (invocation, token) = run(Propagators {
        tracecontext: true,
        xray: false,
    });
    assert_ne!(invocation, xray_trace);
    assert_eq!(token, caller_trace);
    let (invocation, token) = run(Propagators {
        tracecontext: false,
        xray: true,
    });
    assert_eq!(
        (invocation.as_str(), token.as_str()),
        (xray_trace, xray_trace)
    );
}
