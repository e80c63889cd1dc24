//! The environment around a real extension process (small bash + curl scripts), for what
//! only a process shows: env vars, output capture, freezing, exit codes and kills.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lambda_env::{EnvConfig, Environment, InvokeStatus};

const PRELUDE: &str = r#"#!/bin/bash
set -u
API="http://${AWS_LAMBDA_RUNTIME_API}/2020-01-01/extension"
register() {
  local headers
  headers=$(mktemp)
  curl -sS -D "$headers" -o /dev/null -X POST "$API/register" \
    -H "Lambda-Extension-Name: $(basename "$0")" -d "{\"events\":$1}"
  ID=$(grep -i '^lambda-extension-identifier:' "$headers" | cut -d' ' -f2 | tr -d '\r')
  rm -f "$headers"
}
next() { curl -sS "$API/event/next" -H "Lambda-Extension-Identifier: $ID"; }
"#;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{PRELUDE}{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lambda-env-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One-letter process state from /proc (R, S, T, Z…), None once the process is gone.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
}

#[tokio::test]
async fn a_process_extension_runs_is_frozen_and_exits_on_shutdown() {
    let dir = temp_dir("ok");
    let ext = script(
        &dir,
        "good-ext",
        r#"register '["INVOKE","SHUTDOWN"]'
echo "registered fn=$AWS_LAMBDA_FUNCTION_NAME version=$AWS_LAMBDA_FUNCTION_VERSION mem=$AWS_LAMBDA_FUNCTION_MEMORY_SIZE region=$AWS_REGION custom=$CUSTOM_VAR"
echo "credentials key=$AWS_ACCESS_KEY_ID secret=${#AWS_SECRET_ACCESS_KEY} session=${#AWS_SESSION_TOKEN}"
echo "to stderr" >&2
while true; do
  ev=$(next)
  echo "event $ev"
  case "$ev" in *SHUTDOWN*) exit 3;; esac
done
"#,
    );
    let env = Environment::start(EnvConfig {
        extension: Some(ext),
        env: vec![("CUSTOM_VAR".into(), "hello".into())],
        invokes: 2,
        gap_ms: 150,
        work_dir: Some(dir.clone()),
        ..EnvConfig::default()
    })
    .await
    .unwrap();
    let pid = env.extension_pid().unwrap();
    // Watch the process state while the environment runs: it must be stopped (T) in a gap.
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(s) = state(pid) {
            if seen.last() != Some(&s) {
                seen.push(s);
            }
            if s == 'Z' {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    });
    let report = env.run().await.unwrap();
    let states = watcher.await.unwrap();

    assert!(report.init.error.is_none(), "{:?}", report.init.error);
    assert_eq!(report.registrations[0].name, "good-ext");
    assert!(
        report
            .invokes
            .iter()
            .all(|i| i.status == InvokeStatus::Success && i.extensions_returned)
    );
    assert!(states.contains(&'T'), "never frozen: {states:?}");
    assert_eq!(report.shutdown.exit_code, Some(3));
    assert!(!report.shutdown.killed);
    let stdout = std::fs::read_to_string(report.stdout_path.as_ref().unwrap()).unwrap();
    assert!(
        stdout.contains("registered fn=lambda-env-function version=$LATEST mem=128 region=us-east-1 custom=hello"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("\"eventType\":\"INVOKE\"").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("\"eventType\":\"SHUTDOWN\""));
    // Like Lambda, the extension gets the role's credentials, made up per environment.
    let credentials = stdout
        .lines()
        .find(|l| l.starts_with("credentials "))
        .unwrap_or_default();
    assert!(
        credentials.starts_with("credentials key=ASIA")
            && credentials.ends_with("secret=40 session=64"),
        "{stdout}"
    );
    let stderr = std::fs::read_to_string(report.stderr_path.as_ref().unwrap()).unwrap();
    assert!(stderr.contains("to stderr"));
    std::fs::remove_dir_all(dir).ok();
}

/// With SnapStart the extension gets no access-key variables and no `AWS_SESSION_TOKEN`,
/// but a loopback container credentials endpoint and its token, as Lambda gives them there:
/// the endpoint answers the token with credentials that expire soon, and anything else 401.
#[tokio::test]
async fn snapstart_gives_a_container_credentials_endpoint_instead_of_keys() {
    let dir = temp_dir("snapstart");
    let ext = script(
        &dir,
        "snap-ext",
        r#"register '["INVOKE","SHUTDOWN"]'
echo "keys id=${AWS_ACCESS_KEY_ID-unset} secret=${AWS_SECRET_ACCESS_KEY-unset} session=${AWS_SESSION_TOKEN-unset} type=$AWS_LAMBDA_INITIALIZATION_TYPE"
echo "uri=$AWS_CONTAINER_CREDENTIALS_FULL_URI token=${#AWS_CONTAINER_AUTHORIZATION_TOKEN}"
echo "answer $(curl -sS -H "Authorization: $AWS_CONTAINER_AUTHORIZATION_TOKEN" "$AWS_CONTAINER_CREDENTIALS_FULL_URI")"
echo "wrong $(curl -sS -o /dev/null -w '%{http_code}' -H 'Authorization: guess' "$AWS_CONTAINER_CREDENTIALS_FULL_URI")"
echo "none $(curl -sS -o /dev/null -w '%{http_code}' "$AWS_CONTAINER_CREDENTIALS_FULL_URI")"
while true; do
  ev=$(next)
  case "$ev" in *SHUTDOWN*) exit 0;; esac
done
"#,
    );
    let report = lambda_env::run(EnvConfig {
        extension: Some(ext),
        invokes: 1,
        snapstart: true,
        credentials_ttl: Duration::from_secs(60),
        work_dir: Some(dir.clone()),
        ..EnvConfig::default()
    })
    .await
    .unwrap();
    assert!(report.init.error.is_none(), "{:?}", report.init.error);
    let stdout = std::fs::read_to_string(report.stdout_path.as_ref().unwrap()).unwrap();
    let line = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {stdout}"))
            .to_string()
    };
    assert_eq!(
        line("keys "),
        "id=unset secret=unset session=unset type=snap-start"
    );
    let uri = line("uri=");
    assert!(
        uri.starts_with("http://127.0.0.1:") && uri.ends_with("/credentials token=64"),
        "{uri}"
    );
    let answer: serde_json::Value = serde_json::from_str(&line("answer ")).unwrap();
    assert!(
        answer["AccessKeyId"].as_str().unwrap().starts_with("ASIA"),
        "{answer}"
    );
    assert_eq!(answer["SecretAccessKey"].as_str().unwrap().len(), 40);
    assert_eq!(answer["Token"].as_str().unwrap().len(), 128);
    // RFC 3339, about a minute from now.
    let expiration = answer["Expiration"].as_str().unwrap();
    assert!(
        expiration.len() == 24 && expiration.ends_with('Z') && &expiration[10..11] == "T",
        "{expiration}"
    );
    assert_eq!(line("wrong "), "401");
    assert_eq!(line("none "), "401");
    assert_eq!(
        report.credentials,
        lambda_env::CredentialsReport {
            served: 1,
            refused: 2
        }
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn init_error_is_reported_with_type_body_and_exit_code() {
    let dir = temp_dir("initerr");
    let ext = script(
        &dir,
        "bad-config",
        r#"register '["INVOKE","SHUTDOWN"]'
curl -sS -o /dev/null -X POST "$API/init/error" -H "Lambda-Extension-Identifier: $ID" \
  -H "Lambda-Extension-Function-Error-Type: Config.InvalidSecret" \
  -d '{"errorMessage":"JWT_SECRET too short","errorType":"Config.InvalidSecret","stackTrace":[]}'
exit 1
"#,
    );
    let report = lambda_env::run(EnvConfig {
        extension: Some(ext),
        work_dir: Some(dir.clone()),
        ..EnvConfig::default()
    })
    .await
    .unwrap();
    let err = report.init.error.expect("init must fail");
    assert_eq!(err.error_type, "Config.InvalidSecret");
    assert_eq!(err.body["errorMessage"], "JWT_SECRET too short");
    assert_eq!(err.exit_code, Some(1));
    assert!(report.invokes.is_empty());
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_crash_during_init_is_reported() {
    let dir = temp_dir("crash");
    let ext = script(&dir, "crasher", "exit 7\n");
    let report = lambda_env::run(EnvConfig {
        extension: Some(ext),
        work_dir: Some(dir.clone()),
        ..EnvConfig::default()
    })
    .await
    .unwrap();
    let err = report.init.error.expect("init must fail");
    assert_eq!(err.error_type, "Extension.Crash");
    assert_eq!(err.exit_code, Some(7));
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn an_extension_ignoring_shutdown_is_killed_at_the_deadline() {
    let dir = temp_dir("stubborn");
    let ext = script(
        &dir,
        "stubborn",
        r#"register '["SHUTDOWN"]'
next > /dev/null
sleep 30
"#,
    );
    let report = lambda_env::run(EnvConfig {
        extension: Some(ext),
        invokes: 1,
        shutdown_ms: 300,
        work_dir: Some(dir.clone()),
        ..EnvConfig::default()
    })
    .await
    .unwrap();
    assert!(report.init.error.is_none());
    assert!(report.shutdown.killed);
    assert_eq!(report.shutdown.exit_code, None);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn dropping_the_environment_kills_the_process() {
    let dir = temp_dir("drop");
    let ext = script(&dir, "sleeper", "sleep 30\n");
    let env = Environment::start(EnvConfig {
        extension: Some(ext),
        work_dir: Some(dir.clone()),
        ..EnvConfig::default()
    })
    .await
    .unwrap();
    let pid = env.extension_pid().unwrap();
    assert!(matches!(state(pid), Some(s) if s != 'Z'));
    drop(env);
    let mut gone = false;
    for _ in 0..200 {
        if matches!(state(pid), None | Some('Z')) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "process {pid} still alive: {:?}", state(pid));
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn the_cli_runs_an_extension_and_writes_the_report() {
    let dir = temp_dir("cli");
    let ext = script(
        &dir,
        "cli-ext",
        r#"register '["INVOKE","SHUTDOWN"]'
while true; do
  case "$(next)" in *SHUTDOWN*) exit 0;; esac
done
"#,
    );
    let report_path = dir.join("report.json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lambda-env"))
        .args(["run", "--extension"])
        .arg(&ext)
        .args([
            "--invokes",
            "2",
            "--tokens-per-invoke",
            "0",
            "--gap-ms",
            "10",
            "--fail-invoke",
            "1",
        ])
        .args(["--env", "A=B", "--work-dir"])
        .arg(&dir)
        .arg("--report")
        .arg(&report_path)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: lambda_env::Report =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let statuses: Vec<InvokeStatus> = report.invokes.iter().map(|i| i.status).collect();
    assert_eq!(statuses, [InvokeStatus::Success, InvokeStatus::Error]);
    assert_eq!(report.shutdown.exit_code, Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("invoke 1:"));

    let bad = tokio::process::Command::new(env!("CARGO_BIN_EXE_lambda-env"))
        .args(["run", "--invokes", "x"])
        .output()
        .await
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    std::fs::remove_dir_all(dir).ok();
}
