//! CloudWatch EMF end to end: the real binary in lambda-env with `SIDECAR_EMF=on`. Every
//! line it prints on stdout that has `_aws` must be a document CloudWatch accepts (checked
//! against the specification's structure and limits here), its values must add up to what
//! the run did, and every `LambdaSidecar` widget of the CloudWatch dashboard must query a
//! metric and dimension set these lines really produce.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{random_secret, sidecar_bin, stderr_of};
use lambda_env::{EnvConfig, InvokeStatus, Report, Sink, free_port};
use lambda_sidecar::export::emf::CLOUDWATCH_UNITS;
use serde_json::Value;

const FUNCTION: &str = "emf-orders";
/// The default namespace, the one the dashboard queries.
const NAMESPACE: &str = "LambdaSidecar";
const MEMORY_MB: u32 = 256;
const MIB: f64 = 1024.0 * 1024.0;

/// A metric and one dimension set with its values (sorted by key).
type Series = (String, Vec<(String, String)>);

/// What CloudWatch would store: per (metric, dimension set with its values), the sum of the
/// values and their number (an array contributes each element).
#[derive(Debug, Default)]
struct Extracted {
    series: BTreeMap<Series, (f64, usize)>,
    /// Each metric's CloudWatch unit.
    units: BTreeMap<String, String>,
    /// Every value of each metric under `[FunctionName]`.
    values: BTreeMap<String, Vec<f64>>,
}

impl Extracted {
    fn sum(&self, metric: &str, dims: &[(&str, &str)]) -> f64 {
        self.get(metric, dims).0
    }

    fn count(&self, metric: &str, dims: &[(&str, &str)]) -> usize {
        self.get(metric, dims).1
    }

    fn get(&self, metric: &str, dims: &[(&str, &str)]) -> (f64, usize) {
        let mut dims: Vec<(String, String)> = dims
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        dims.push(("FunctionName".into(), FUNCTION.into()));
        dims.sort();
        self.series
            .get(&(metric.to_string(), dims))
            .copied()
            .unwrap_or_default()
    }
}

/// Checks one document against the EMF specification and adds its values to `out`.
fn check_and_extract(line: &str, run: (u64, u64), out: &mut Extracted) {
    let doc: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let root = doc.as_object().expect("the root is an object");
    let aws = root["_aws"].as_object().expect("_aws is an object");
    let timestamp = aws["Timestamp"].as_u64().expect("Timestamp: epoch ms");
    assert!(
        (run.0..=run.1).contains(&timestamp),
        "Timestamp {timestamp} not in epoch ms of the run {run:?}"
    );
    let directives = aws["CloudWatchMetrics"].as_array().unwrap();
    assert!(!directives.is_empty(), "{line}");
    for directive in directives {
        let directive = directive.as_object().unwrap();
        assert_eq!(directive["Namespace"], NAMESPACE);
        let metrics = directive["Metrics"].as_array().unwrap();
        assert!(
            !metrics.is_empty() && metrics.len() <= 100,
            "{} metrics",
            metrics.len()
        );
        let sets = directive["Dimensions"].as_array().unwrap();
        assert!(!sets.is_empty());
        for metric in metrics {
            let name = metric["Name"].as_str().unwrap();
            assert!(!name.is_empty() && name.len() <= 1024);
            let unit = metric["Unit"].as_str().unwrap();
            assert!(CLOUDWATCH_UNITS.contains(&unit), "{name}: unit {unit}");
            assert_ne!(unit, "None", "{name}: every metric has a real unit");
            let known = out
                .units
                .entry(name.to_string())
                .or_insert(unit.to_string());
            assert_eq!(known, unit, "{name}: one unit everywhere");
            // The target member: a number, or an array of at most 100 numbers.
            let values: Vec<f64> = match &root[name] {
                Value::Number(n) => vec![n.as_f64().unwrap()],
                Value::Array(values) => {
                    assert!(values.len() <= 100, "{name}: {} values", values.len());
                    values.iter().map(|v| v.as_f64().unwrap()).collect()
                }
                other => panic!("{name}: target member {other:?}"),
            };
            for set in sets {
                let keys: Vec<&str> = set
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap())
                    .collect();
                assert!(!keys.is_empty() && keys.len() <= 30, "{keys:?}");
                assert!(keys.contains(&"FunctionName"), "{keys:?}");
                let mut dims: Vec<(String, String)> = keys
                    .iter()
                    .map(|k| {
                        let value = root[*k].as_str().unwrap_or_else(|| panic!("member {k}"));
                        assert!(!value.is_empty() && value.len() <= 1024);
                        (k.to_string(), value.to_string())
                    })
                    .collect();
                dims.sort();
                let series = out.series.entry((name.to_string(), dims)).or_default();
                series.0 += values.iter().sum::<f64>();
                series.1 += values.len();
                if keys == ["FunctionName"] {
                    out.values
                        .entry(name.to_string())
                        .or_default()
                        .extend(&values);
                }
            }
        }
    }
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

const INVOKES: usize = 4;
const TOKENS: usize = 3;
/// The invoke the function fails (0-based).
const FAILING: usize = 1;

async fn run(emf: Option<&str>) -> (Report, Vec<String>) {
    let sink = Sink::start().await.unwrap();
    let port = free_port().unwrap();
    let mut env = vec![
        ("JWT_SECRET".to_string(), random_secret()),
        ("SIDECAR_PORT".to_string(), port.to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), sink.endpoint()),
    ];
    if let Some(emf) = emf {
        env.push(("SIDECAR_EMF".to_string(), emf.to_string()));
    }
    let config = EnvConfig {
        extension: Some(sidecar_bin()),
        env,
        function_name: FUNCTION.to_string(),
        memory_mb: MEMORY_MB,
        invokes: INVOKES,
        tokens_per_invoke: TOKENS,
        token_url: format!("http://127.0.0.1:{port}/token"),
        function_ms: 20,
        fail_invokes: vec![FAILING],
        ..EnvConfig::default()
    };
    let report = lambda_env::run(config).await.unwrap();
    let log = stderr_of(&report);
    assert!(
        report.init.error.is_none(),
        "{:?}\n{log}",
        report.init.error
    );
    assert_eq!(report.shutdown.exit_code, Some(0), "{log}");
    for (i, invoke) in report.invokes.iter().enumerate() {
        assert_eq!(
            matches!(invoke.status, InvokeStatus::Success),
            i != FAILING,
            "{invoke:?}"
        );
        assert_eq!(invoke.tokens.len(), TOKENS);
        assert!(invoke.tokens.iter().all(|t| t.http_status == Some(200)));
    }
    let stdout = std::fs::read_to_string(report.stdout_path.as_ref().unwrap()).unwrap();
    let lines = stdout.lines().map(str::to_string).collect();
    (report, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_emf_line_obeys_the_spec_and_adds_up_to_the_run() {
    let started = epoch_ms();
    let (report, lines) = run(Some("on")).await;
    let finished = epoch_ms();
    let log = stderr_of(&report);
    let documents: Vec<&String> = lines.iter().filter(|l| l.contains("_aws")).collect();
    assert!(!documents.is_empty(), "no EMF line on stdout\n{log}");
    let mut out = Extracted::default();
    for line in &documents {
        check_and_extract(line, (started, finished), &mut out);
    }

    let (n, k) = (INVOKES as f64, (INVOKES * TOKENS) as f64);
    // Successful invocations (the FaaS conventions' faas.invocations); the failed one is
    // an error, counted beside them.
    assert_eq!(out.sum("faas.invocations", &[]), n - 1.0, "{out:#?}");
    assert_eq!(out.sum("faas.errors", &[]), 1.0);
    assert_eq!(out.sum("faas.timeouts", &[]), 0.0);
    assert_eq!(out.sum("faas.coldstarts", &[]), 1.0);
    assert_eq!(out.count("faas.init_duration", &[]), 1);
    // One platform.report figure per invocation.
    for metric in [
        "faas.invoke_duration",
        "aws.lambda.billed_duration",
        "faas.mem_usage",
    ] {
        assert_eq!(out.count(metric, &[]), INVOKES, "{metric}");
    }
    let memory = &out.values["aws.lambda.memory_size"];
    assert!(!memory.is_empty());
    assert!(memory.iter().all(|m| *m == f64::from(MEMORY_MB) * MIB));
    // Seconds, not milliseconds: the function ran about 20 ms.
    assert!(
        out.values["faas.invoke_duration"]
            .iter()
            .all(|s| *s > 0.0 && *s < 5.0)
    );
    // Every token the run fetched, issued, with one latency each.
    assert_eq!(out.sum("sidecar.token.requests", &[]), k);
    assert_eq!(
        out.sum("sidecar.token.requests", &[("outcome", "issued")]),
        k
    );
    assert_eq!(
        out.sum("sidecar.token.requests", &[])
            - out.sum("sidecar.token.requests", &[("outcome", "issued")]),
        0.0
    );
    assert_eq!(
        out.sum("sidecar.token.requests", &[("algorithm", "HS256")]),
        k
    );
    assert_eq!(out.count("sidecar.token.duration", &[]), INVOKES * TOKENS);
    assert_eq!(
        out.count("sidecar.token.duration", &[("algorithm", "HS256")]),
        INVOKES * TOKENS
    );
    // A hold per invocation, and the telemetry events that told of them.
    assert_eq!(out.count("sidecar.hold", &[]), INVOKES);
    // At least platform.start, runtimeDone and report of each; summed over `type`, which
    // is no dimension.
    assert!(out.sum("sidecar.telemetry.events", &[]) >= 3.0 * n);
    assert!(
        out.series
            .keys()
            .all(|(_, dims)| dims.iter().all(|(k, _)| k != "type"))
    );
    assert_eq!(out.sum("sidecar.export.failures", &[]), 0.0);

    // The CloudWatch dashboard queries only what these lines produce.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("dashboards/cloudwatch-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut queried = 0;
    for widget in dashboard["widgets"].as_array().unwrap() {
        let Some(metrics) = widget["properties"]["metrics"].as_array() else {
            continue;
        };
        for row in metrics {
            let row = row.as_array().unwrap();
            // A search expression: `SEARCH('{Namespace,Dim,...} MetricName="..." ...')` must
            // name a metric the output has under exactly that dimension set.
            if let Some(expression) = row[0]["expression"].as_str() {
                let schema = expression
                    .split_once('{')
                    .and_then(|(_, rest)| rest.split_once('}'))
                    .map(|(schema, _)| schema.split(',').collect::<Vec<_>>())
                    .unwrap();
                let name = expression
                    .split_once("MetricName=\"")
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(name, _)| name)
                    .unwrap();
                assert_eq!(schema[0], NAMESPACE, "{expression}");
                let mut keys: Vec<&str> = schema[1..].to_vec();
                keys.sort_unstable();
                assert!(
                    out.series.keys().any(|(n, dims)| n == name
                        && dims.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>() == keys),
                    "{expression}: no {name} under {keys:?} in the EMF output"
                );
                queried += 1;
                continue;
            }
            // [namespace, name, key, value, ..., {options}]; "." repeats the row above,
            // which this dashboard does not use.
            if row[0] != "LambdaSidecar" {
                continue;
            }
            let name = row[1].as_str().unwrap();
            let strings: Vec<&str> = row[2..].iter().filter_map(Value::as_str).collect();
            let mut dims: Vec<(String, String)> = strings
                .chunks(2)
                .map(|kv| {
                    (
                        kv[0].to_string(),
                        kv[1].replace("${ExampleFunction}", FUNCTION),
                    )
                })
                .collect();
            dims.sort();
            let title = widget["properties"]["title"].as_str().unwrap();
            assert!(
                out.series.contains_key(&(name.to_string(), dims.clone())),
                "widget {title:?} queries {name} {dims:?}, which the EMF output never has"
            );
            // The title names the unit CloudWatch stores: no "ms" for seconds, no "MB"
            // for bytes.
            let unit = match out.units[name].as_str() {
                "Seconds" => "(s)",
                "Bytes" => "(bytes)",
                _ => "",
            };
            assert!(title.contains(unit), "{title:?} shows {name} in {unit}");
            let words: Vec<&str> = title.split(|c: char| !c.is_alphanumeric()).collect();
            assert!(
                !words.contains(&"ms") && !words.contains(&"MB"),
                "{title:?}"
            );
            queried += 1;
        }
    }
    assert!(queried >= 15, "{queried} LambdaSidecar series");
    // "Tokens issued" counts issued tokens only.
    let issued = dashboard["widgets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["properties"]["metrics"].as_array().into_iter().flatten())
        .filter(|row| row[1] == "sidecar.token.requests")
        .collect::<Vec<_>>();
    assert!(!issued.is_empty());
    for row in issued {
        let strings: Vec<&str> = row
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            strings.windows(2).any(|kv| kv == ["outcome", "issued"]),
            "{row}"
        );
    }
}

/// Off by default: nothing on stdout has `_aws`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_emf_unless_turned_on() {
    let (_, lines) = run(None).await;
    assert!(lines.iter().all(|l| !l.contains("_aws")), "{lines:?}");
}

/// Each invocation's figures carry its own time, not the time of the flush that wrote them:
/// with `SIDECAR_FLUSH_STRATEGY=invoke` and invocations 1.5 s apart, every flush comes more
/// than a second after the invocation it writes (its platform.report, at the next INVOKE or
/// SHUTDOWN), yet each `faas.invocations` document is stamped with its invocation's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emf_timestamps_are_the_invocations() {
    let port = free_port().unwrap();
    let env = [
        ("JWT_SECRET", random_secret()),
        ("SIDECAR_PORT", port.to_string()),
        ("SIDECAR_EMF", "on".to_string()),
        ("SIDECAR_FLUSH_STRATEGY", "invoke".to_string()),
    ];
    let config = EnvConfig {
        extension: Some(sidecar_bin()),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        function_name: FUNCTION.to_string(),
        invokes: 3,
        gap_ms: 1_500,
        ..EnvConfig::default()
    };
    let report = lambda_env::run(config).await.unwrap();
    let log = stderr_of(&report);
    assert_eq!(report.shutdown.exit_code, Some(0), "{log}");
    let stdout = std::fs::read_to_string(report.stdout_path.as_ref().unwrap()).unwrap();
    let mut stamps: Vec<u64> = stdout
        .lines()
        .filter(|l| l.contains("_aws"))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        // An invocation's own document: faas.invocations counted, not the flush's zero.
        .filter(|doc| doc["faas.invocations"].as_f64().is_some_and(|n| n > 0.0))
        .map(|doc| doc["_aws"]["Timestamp"].as_u64().unwrap())
        .collect();
    stamps.sort_unstable();
    assert_eq!(stamps.len(), report.invokes.len(), "{stdout}");
    for (stamp, invoke) in stamps.iter().zip(&report.invokes) {
        // platform.start's time has millisecond precision: the stamp is its start, give or
        // take that millisecond, and well before its end.
        let (start, end) = (invoke.started_unix_ms, invoke.responded_unix_ms);
        assert!(
            (start - 2.0..=end).contains(&(*stamp as f64)),
            "stamped {stamp}, invocation ran {start:.0} to {end:.0}\n{stdout}"
        );
    }
}
