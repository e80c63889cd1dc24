//! lambda-sidecar: an AWS Lambda extension that issues JWTs to the function beside it and
//! ships the function's telemetry over OTLP.
//!
//! Data flows one way: Lambda events → records → pipeline → derived signals → outputs.
//!
//! From the bottom layer up (ARCHITECTURE.md has the layers, and `tests/architecture.rs`
//! holds the code to them):
//!
//! - Vocabulary: [`events`] (the Telemetry API's event model), [`function`] (the function
//!   being observed), [`items`] (what derivation hands to export, and the bounds both share),
//!   [`sampling`] (the `OTEL_TRACES_SAMPLER` decision), [`selftrace`] (the sidecar's own
//!   work as spans, `SIDECAR_SELF_TRACES`), [`records`] (what the lifecycle,
//!   intake and token service observed, as plain data), [`config`] (every environment
//!   variable, read there alone, handed out as typed values), [`metrics`] (every metric,
//!   defined once, and the instruments that feed OTLP, Prometheus and EMF from it),
//!   [`logging`] (JSON or text logs, each line marked as the sidecar's; never a secret).
//! - Derivation: [`derive`] (records → spans, log records and metric updates; pure),
//!   [`server`] (serving a router on a listener with a connection cap and timeouts),
//!   [`aws`] (the AWS client, credentials, secrets and the one SigV4 signer, shared by the
//!   edges),
//!   [`pipeline`] (the task that feeds records, in order, to the derivation).
//! - Edges: [`export`] (OTLP and CloudWatch EMF under one time budget), [`intake`] (the
//!   Telemetry API listener), [`token`] (the localhost token service, its guard and keys).
//! - Composition: [`lifecycle`] (the extension: register, start-up, the event loop and the
//!   flush decision), [`standalone`] (the token service without Lambda); `src/main.rs`
//!   picks the mode.
//!
//! ARCHITECTURE.md at the repository root has the invariants.

#![forbid(unsafe_code)]

pub mod aws;
pub mod config;
pub mod derive;
pub mod events;
pub mod export;
pub mod function;
pub mod intake;
pub mod items;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod records;
pub mod sampling;
pub mod selftrace;
pub mod server;
pub mod standalone;
pub mod token;
