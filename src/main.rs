//! The `lambda-sidecar` binary: picks the mode, sets up logging, hands over to the library.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;

use lambda_sidecar::config::{Config, ConfigError, ExportConfig, Lambda, LogConfig, LogFormat};
use lambda_sidecar::selftrace::SelfTraces;
use lambda_sidecar::token::discovery;
use lambda_sidecar::token::source::LoadError;
use lambda_sidecar::{lifecycle, logging, standalone};

const USAGE: &str = "\
lambda-sidecar: an AWS Lambda extension that issues JWTs on 127.0.0.1 and ships telemetry over OTLP.

Usage:
  lambda-sidecar          run as a Lambda extension (needs AWS_LAMBDA_RUNTIME_API, set by Lambda)
  lambda-sidecar serve    run the token service alone, for local development, until Ctrl-C
  lambda-sidecar jwks     print the JWKS of the configured key, for a deploy step to publish
  lambda-sidecar openid-configuration
                          print the OIDC discovery document (needs JWT_ISSUER and JWT_JWKS_URI,
                          both https URLs), for a deploy step to publish
  lambda-sidecar --version

Configuration is read from environment variables; see docs/configuration.md.";

fn main() -> ExitCode {
    let process_start = lifecycle::mark_process_start();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serve = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => false,
        ["serve"] => true,
        ["jwks"] => return publish(Document::Jwks),
        ["openid-configuration"] => return publish(Document::OpenidConfiguration),
        ["--version" | "-V"] => {
            println!("lambda-sidecar {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        ["--help" | "-h"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !serve && Lambda::from_env().runtime_api.is_none() {
        eprintln!(
            "lambda-sidecar: AWS_LAMBDA_RUNTIME_API is not set, so this is not a Lambda \
             execution environment.\nTo run the token service on its own, use: lambda-sidecar serve"
        );
        return ExitCode::from(2);
    }
    let config = Config::from_env();
    let config_parsed = process_start.elapsed();
    // Before (or without) a valid configuration: JSON at info, as inside Lambda, where a
    // configuration error will be read in CloudWatch.
    let fallback = LogConfig {
        filter: "info".to_string(),
        format: LogFormat::Json,
    };
    // The sidecar's own spans go out with the extension's exports: `serve` has none.
    let self_traces = config
        .as_ref()
        .is_ok_and(|c| !serve && c.telemetry.self_traces)
        .then(SelfTraces::new);
    logging::init(
        config.as_ref().map_or(&fallback, |c| &c.log),
        self_traces.as_ref(),
    );
    for warning in config.iter().flat_map(|c| &c.warnings) {
        tracing::warn!("{warning}");
    }
    lifecycle::phase_at("config parsed", config_parsed);
    lifecycle::phase("logging set up");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lambda-sidecar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    lifecycle::phase("async runtime started");
    if serve {
        // Every configuration error at once, the OTEL_* ones too (checked, then ignored).
        return match ConfigError::both(config, ExportConfig::from_env()) {
            Ok((config, export)) => match runtime.block_on(standalone::run(config, export)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(standalone::StandaloneError::Startup(lifecycle::StartupError::Config(e))) => {
                    eprintln!(
                        "lambda-sidecar: configuration error ({}): {e}",
                        e.error_type()
                    );
                    ExitCode::from(2)
                }
                Err(e) => {
                    tracing::error!(error = %e, "standalone server failed");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!(
                    "lambda-sidecar: configuration error ({}): {e}",
                    e.error_type()
                );
                ExitCode::from(2)
            }
        };
    }
    if let Err(e) = lifecycle::check_runtime_api() {
        eprintln!("lambda-sidecar: {e}");
        return ExitCode::from(2);
    }
    match runtime.block_on(lifecycle::run(config, self_traces)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "extension stopped");
            ExitCode::FAILURE
        }
    }
}

/// What `publish` prints.
enum Document {
    Jwks,
    OpenidConfiguration,
}

/// `jwks` and `openid-configuration`: the document on stdout and exit 0, or the configuration
/// or key-source error on stderr and exit 1, so that a deploy step stops before publishing
/// anything. No logging: nothing is served. The JWKS is built by loading the key as the
/// extension does, which for an AWS key source is a network call, hence the runtime.
fn publish(document: Document) -> ExitCode {
    let config = match Config::from_env_to_publish() {
        Ok(config) => config,
        Err(e) => return publish_failed(&LoadError::from(e)),
    };
    let printed = match document {
        Document::Jwks => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(discovery::published_jwks(&config.token)),
            Err(e) => {
                eprintln!("lambda-sidecar: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        },
        Document::OpenidConfiguration => {
            discovery::published_openid_configuration(&config.token).map_err(LoadError::from)
        }
    };
    match printed {
        // Not println!, which panics when stdout is closed.
        Ok(text) => match writeln!(std::io::stdout().lock(), "{text}") {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lambda-sidecar: cannot write the document to stdout: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => publish_failed(&e),
    }
}

fn publish_failed(e: &LoadError) -> ExitCode {
    eprintln!(
        "lambda-sidecar: configuration error ({}): {e}",
        e.error_type()
    );
    ExitCode::FAILURE
}
