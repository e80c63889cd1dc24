//! `lambda-env`: run an extension in a local Lambda environment, or run the OTLP sink.
//!
//! Hand-rolled argument parsing: two subcommands and a dozen flags do not justify a parser
//! dependency in a dev tool.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use lambda_env::{EnvConfig, Report, Sink, SinkMode};

const USAGE: &str = "usage:
  lambda-env run --extension PATH [--function-name NAME] [--invokes N] [--tokens-per-invoke K] [--function-ms MS]
                 [--function-timeout-ms MS] [--gap-ms MS] [--no-freeze] [--shutdown-ms MS]
                 [--snapstart] [--credentials-ttl-s S] [--inject-unknown] [--logs-dropped] [--fail-invoke I]...
                 [--timeout-invoke I]... [--unsampled-invoke I]... [--token-url URL] [--work-dir DIR] [--report FILE]
                 [--managed-instances [--workers N] [--shutdown-in-flight]] [--runtime CMD]
                 [--env KEY=VAL]...
  lambda-env sink --listen 127.0.0.1:PORT [--out FILE] [--mode ok|fail:STATUS|slow:MS]";

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error(transparent)]
    Env(#[from] lambda_env::EnvError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cannot encode the report: {0}")]
    Json(#[from] serde_json::Error),
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// Pops the value of `flag` from the argument stream.
fn value(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, CliError> {
    args.next()
        .ok_or_else(|| usage(format!("{flag} needs a value")))
}

fn number<T: std::str::FromStr>(
    args: &mut impl Iterator<Item = String>,
    flag: &str,
) -> Result<T, CliError> {
    let v = value(args, flag)?;
    v.parse()
        .map_err(|_| usage(format!("{flag}: not a number: {v}")))
}

struct RunArgs {
    cfg: EnvConfig,
    report: Option<PathBuf>,
}

fn parse_run(mut args: impl Iterator<Item = String>) -> Result<RunArgs, CliError> {
    let mut cfg = EnvConfig {
        tokens_per_invoke: 2,
        ..EnvConfig::default()
    };
    let mut report = None;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--extension" => cfg.extension = Some(value(&mut args, &flag)?.into()),
            "--invokes" => cfg.invokes = number(&mut args, &flag)?,
            "--function-name" => cfg.function_name = value(&mut args, &flag)?,
            "--tokens-per-invoke" => cfg.tokens_per_invoke = number(&mut args, &flag)?,
            "--function-ms" => cfg.function_ms = number(&mut args, &flag)?,
            "--function-timeout-ms" => cfg.function_timeout_ms = number(&mut args, &flag)?,
            "--gap-ms" => cfg.gap_ms = number(&mut args, &flag)?,
            "--no-freeze" => cfg.freeze = false,
            "--shutdown-ms" => cfg.shutdown_ms = number(&mut args, &flag)?,
            "--snapstart" => cfg.snapstart = true,
            "--credentials-ttl-s" => {
                cfg.credentials_ttl = Duration::from_secs(number(&mut args, &flag)?);
            }
            "--managed-instances" => cfg.managed_instances = true,
            "--workers" => cfg.workers = number(&mut args, &flag)?,
            "--shutdown-in-flight" => cfg.shutdown_in_flight = true,
            "--inject-unknown" => cfg.inject_unknown = true,
            "--logs-dropped" => cfg.logs_dropped = true,
            "--fail-invoke" => cfg.fail_invokes.push(number(&mut args, &flag)?),
            "--timeout-invoke" => cfg.timeout_invokes.push(number(&mut args, &flag)?),
            "--unsampled-invoke" => cfg.unsampled_invokes.push(number(&mut args, &flag)?),
            "--token-url" => cfg.token_url = value(&mut args, &flag)?,
            "--work-dir" => cfg.work_dir = Some(value(&mut args, &flag)?.into()),
            "--runtime" => {
                let command = value(&mut args, &flag)?;
                cfg.runtime = Some(command.split_whitespace().map(str::to_owned).collect());
            }
            "--report" => report = Some(PathBuf::from(value(&mut args, &flag)?)),
            "--env" => {
                let kv = value(&mut args, &flag)?;
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| usage(format!("--env wants KEY=VAL, got {kv}")))?;
                cfg.env.push((k.to_string(), v.to_string()));
            }
            other => return Err(usage(format!("unknown flag {other}"))),
        }
    }
    if cfg.extension.is_none() {
        return Err(usage("--extension is required"));
    }
    Ok(RunArgs { cfg, report })
}

fn summary(r: &Report) -> String {
    let mut s = String::new();
    let regs: Vec<String> = r
        .registrations
        .iter()
        .map(|x| format!("{} {:?}", x.name, x.events))
        .collect();
    s += &format!(
        "init: {} in {:.1} ms; registered: {}; subscriptions: {}\n",
        r.init.initialization_type,
        r.init.duration_ms,
        regs.join(", "),
        r.subscriptions.len()
    );
    if let Some(e) = &r.init.error {
        s += &format!(
            "init FAILED: {} {} (exit code {:?})\n",
            e.error_type, e.body, e.exit_code
        );
    }
    for (i, inv) in r.invokes.iter().enumerate() {
        let statuses: Vec<String> = inv
            .tokens
            .iter()
            .map(|t| t.http_status.map_or("ERR".to_string(), |c| c.to_string()))
            .collect();
        s += &format!(
            "invoke {i}: {} {:?} function {:.1} ms, hold {:.2} ms, tokens [{}]\n",
            inv.request_id,
            inv.status,
            inv.function_ms,
            inv.hold_ms,
            statuses.join(" ")
        );
    }
    let t = &r.telemetry;
    s += &format!(
        "telemetry: {} posts, {} events sent, {} retries, {} dropped, {} undelivered\n",
        t.posts, t.events_sent, t.retries, t.dropped, t.undelivered
    );
    s += &format!(
        "shutdown: exit code {:?}, killed {}, {:?} ms before the deadline\n",
        r.shutdown.exit_code, r.shutdown.killed, r.shutdown.exited_before_deadline_ms
    );
    if let (Some(o), Some(e)) = (&r.stdout_path, &r.stderr_path) {
        s += &format!("extension output: {} {}\n", o.display(), e.display());
    }
    s
}

async fn run_cmd(args: impl Iterator<Item = String>) -> Result<ExitCode, CliError> {
    let RunArgs { cfg, report } = parse_run(args)?;
    let r = lambda_env::run(cfg).await?;
    print!("{}", summary(&r));
    if let Some(path) = report {
        std::fs::write(&path, serde_json::to_vec_pretty(&r)?)?;
        println!("report: {}", path.display());
    }
    let ok = r.init.error.is_none() && !r.shutdown.killed;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn sink_cmd(mut args: impl Iterator<Item = String>) -> Result<ExitCode, CliError> {
    let mut listen = None;
    let mut out = None;
    let mut mode = SinkMode::Ok;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--listen" => listen = Some(value(&mut args, &flag)?),
            "--mode" => mode = sink_mode(&value(&mut args, &flag)?)?,
            "--out" => out = Some(PathBuf::from(value(&mut args, &flag)?)),
            other => return Err(usage(format!("unknown flag {other}"))),
        }
    }
    let listen = listen.ok_or_else(|| usage("--listen is required"))?;
    let addr = listen
        .parse()
        .map_err(|_| usage(format!("--listen wants IP:PORT, got {listen}")))?;
    let mut sink = Sink::start_on(addr, out).await?;
    sink.set_mode(mode);
    println!("OTLP sink on {} ({mode:?})", sink.endpoint());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    sink.stop().await;
    let c = sink.counts();
    println!(
        "sink: {} spans, {} metric points, {} log records; requests ok {} failed {} slow {} rejected {}",
        sink.spans().len(),
        sink.metrics().len(),
        sink.logs().len(),
        c.ok,
        c.failed,
        c.slow,
        c.rejected
    );
    Ok(ExitCode::SUCCESS)
}

/// `ok`, `fail:503` (answer that status), `slow:2000` (answer 200 after that many ms, keeping
/// nothing its sender gave up on) or `late:2000` (keep at once, answer 200 that much later).
fn sink_mode(text: &str) -> Result<SinkMode, CliError> {
    let bad = || {
        usage(format!(
            "--mode wants ok, fail:STATUS, slow:MS or late:MS, got {text}"
        ))
    };
    match text.split_once(':') {
        None if text == "ok" => Ok(SinkMode::Ok),
        Some(("fail", code)) => code.parse().map(SinkMode::Fail).map_err(|_| bad()),
        Some(("slow", ms)) => ms
            .parse()
            .map(|ms| SinkMode::Slow(std::time::Duration::from_millis(ms)))
            .map_err(|_| bad()),
        Some(("late", ms)) => ms
            .parse()
            .map(|ms| SinkMode::Late(std::time::Duration::from_millis(ms)))
            .map_err(|_| bad()),
        _ => Err(bad()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let result = match args.next().as_deref() {
        Some("run") => run_cmd(args).await,
        Some("sink") => sink_cmd(args).await,
        _ => Err(usage("expected a subcommand")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lambda-env: {e}");
            ExitCode::from(2)
        }
    }
}
