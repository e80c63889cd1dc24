//! lambda-sidecar: an AWS Lambda extension that issues JWTs to the function beside it and
//! ships the function's telemetry over OTLP.
//!
//! Data flows one way: Lambda events → records → signals → exporters.
//!
//! - [`main`](../lambda_sidecar/index.html) (src/main.rs) picks the mode and calls
//!   [`lifecycle::run`] (extension), [`standalone::run`] (`serve`), or prints a document of
//!   [`token::discovery`] (`jwks`, `openid-configuration`).
//! - [`config`]: every environment variable, parsed once into a typed `Config`.
//! - [`lifecycle`]: the Extensions API — register, event/next, init/error — and what happens
//!   at INVOKE (record, flush within the cap) and SHUTDOWN (final flush, exit).
//! - [`token`]: the localhost token service (`/token`, JWKS, OIDC discovery, `/health`,
//!   `/metrics`), its boundary guard, its keys, and the documents a deploy step publishes.
//! - [`intake`]: the Telemetry API listener and the event model of schema 2022-12-13.
//! - [`records`]: what the lifecycle, intake and token service observed, as plain data.
//! - [`pipeline`]: the task that feeds records, in order, to the derivation.
//! - [`derive`]: records → spans, log records and metric updates (pure, no I/O).
//! - [`signals`]: every metric, defined once (name, unit, description, labels), and the
//!   instruments that feed OTLP, Prometheus and EMF from that one definition.
//! - [`export`]: OTLP export of spans, metrics and logs, and CloudWatch EMF, under a time
//!   budget.
//! - [`server`]: serving a router on a listener with a connection cap and timeouts.
//! - [`standalone`]: the token service without Lambda.
//! - [`logging`]: JSON or text logs, each line marked as the sidecar's; never a secret.
//!
//! ARCHITECTURE.md at the repository root has the invariants.

pub mod config;
pub mod derive;
pub mod export;
pub mod intake;
pub mod lifecycle;
pub mod logging;
pub mod pipeline;
pub mod records;
pub mod sampling;
pub mod server;
pub mod signals;
pub mod standalone;
pub mod token;
