//! A local stand-in for the AWS Lambda execution environment, for tests and demos.
//!
//! No available emulator sends Telemetry API events, so this crate implements the parts of
//! the sandbox an extension talks to (Extensions, Telemetry and Runtime APIs), drives a
//! realistic lifecycle (init, invokes with freezes, shutdown) around a built-in function,
//! and provides an OTLP/HTTP receiver ([`sink`]) to see what the extension exports.

mod api;
mod clock;
pub mod env;
mod function;
pub mod ids;
pub mod report;
pub mod sink;
pub mod telemetry;

pub use env::{EnvConfig, EnvError, Environment, free_port, run};
pub use function::{TokenMode, Traceparent};
pub use report::*;
pub use sink::{MetricPoint, RequestCounts, Sink, SinkMode, SinkStore, SinkView, SpanRecord};
