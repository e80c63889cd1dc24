//! A local stand-in for the AWS Lambda execution environment, for tests and demos.
//!
//! No available emulator sends Telemetry API events, so this crate implements the parts of
//! the sandbox an extension talks to (Extensions, Telemetry and Runtime APIs), drives a
//! realistic lifecycle (init, invokes with freezes, shutdown) around a built-in function,
//! and provides an OTLP/HTTP receiver ([`sink`]) to see what the extension exports.

//! The modules use each other in layers, each only the ones below it (no import circle;
//! `tests/layering.rs` checks), bottom to top:
//!
//! 1. `clock`, `ids`, `aws` (account and region), `report` (the result types), `sink`
//!    (apart from the rest: the OTLP receiver);
//! 2. `telemetry`: the Telemetry API's subscribers and their delivery;
//! 3. `state`: what the API, the function and the orchestrator share;
//! 4. `api`: the HTTP handlers of the Runtime, Extensions and Telemetry APIs;
//! 5. `function`: the built-in function, a client of the Runtime API;
//! 6. `env` (with its child `env::managed`): the orchestrator, which drives them all.

mod api;
mod aws;
mod clock;
pub mod env;
mod function;
pub mod ids;
pub mod report;
pub mod sink;
mod state;
pub mod telemetry;

pub use env::{
    EnvConfig, EnvError, Environment, FUNCTION_USER_AGENT, MIXED_LOG_LEVELS, MIXED_TEXT_LINES,
    free_port, run,
};
pub use function::{TokenMode, Traceparent};
pub use report::*;
pub use sink::{
    LogRecordView, MetricPoint, RequestCounts, Sink, SinkMode, SinkStore, SinkView, SpanRecord,
};
