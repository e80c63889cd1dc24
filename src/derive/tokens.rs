//! Token placement: a span per `/token` request, in the trace of the invocation that made
//! it.
//!
//! Which invocation a token span belongs to is decided by the caller's request id
//! ([`crate::records::REQUEST_ID_HEADER`]), else by its `traceparent` (nested under the
//! invocation span when its parent is the invocation's X-Ray parent), else by time: the
//! invocation whose `platform.start` … `platform.runtimeDone` window holds the request.
//! Lambda hands the INVOKE to the runtime and to the extensions in no guaranteed order, and
//! telemetry comes later still, so a token span waits in a bounded hold ([`MAX_HELD`])
//! until the events that decide have arrived: it is exported at the next flush anyway. On
//! Managed Instances invocations overlap and time cannot decide.

use std::collections::VecDeque;
use std::time::SystemTime;

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind};

use super::Shared;
use super::invocations::Invocations;
use super::spans::{MAX_FINISHED, NewSpan, Outcome, RESERVED_FOR_INVOCATIONS};
use crate::events::Status;
use crate::metrics::Unattributed;
use crate::records::{HttpMethod, RemoteParent, TOKEN_ROUTE, TokenRecord};

/// Token requests held until the telemetry that decides their invocation has arrived. A
/// held span is on its way to the spans awaiting a drain, where at most this many token and
/// child spans fit ([`MAX_FINISHED`] less [`RESERVED_FOR_INVOCATIONS`]): holding more could
/// only move the drop later. One invocation's tokens are normally held until its
/// `platform.runtimeDone` arrives, so this is also the most tokens per invocation whose spans
/// can all be placed. Past it the oldest is let go without an invocation and counted
/// (`sidecar.token.unattributed{reason="overflow"}`). About 150 bytes each: under 1 MB.
pub const MAX_HELD: usize = MAX_FINISHED - RESERVED_FOR_INVOCATIONS;

/// Where a token span goes.
enum Placement {
    /// Not yet known: held until more telemetry arrives.
    Wait,
    /// In this invocation (by request id).
    Invocation(String),
    /// In the caller's trace, under the caller's span.
    Caller(RemoteParent),
    /// A root span in a trace of its own, counted.
    Alone(Unattributed),
}

/// The token requests awaiting placement, and how far telemetry has come.
#[derive(Default)]
pub(super) struct Tokens {
    /// Token requests whose invocation is not known yet, oldest first (at most [`MAX_HELD`]).
    pub(super) held: VecDeque<TokenRecord>,
    /// The latest `platform.start`/`runtimeDone`/`report` time seen. A subscriber's
    /// telemetry comes from one buffer, batch after batch, in the order it happened (an
    /// assumption: a batch Lambda gives up on breaks it, and the spans it would have placed
    /// are then placed with what is known): every `platform.start` up to it has arrived, so
    /// an invocation that a token request before it could name or nest under is known.
    watermark: Option<SystemTime>,
}

impl Tokens {
    /// Telemetry has come as far as `time` (a `platform.start`, `runtimeDone` or `report`).
    pub(super) fn saw(&mut self, time: SystemTime) {
        self.watermark = self.watermark.max(Some(time));
    }

    /// A span per /token request. It is placed at once when it can be, else held until
    /// the telemetry that decides arrives ([`Tokens::settle`]).
    pub(super) fn token(
        &mut self,
        token: TokenRecord,
        invocations: &mut Invocations,
        shared: &mut Shared,
    ) {
        shared.metrics.token(&token);
        match self.place(&token, invocations, false) {
            Placement::Wait => {
                if self.held.len() >= MAX_HELD
                    && let Some(oldest) = self.held.pop_front()
                {
                    let overflow = Placement::Alone(Unattributed::Overflow);
                    token_span(oldest, overflow, invocations, shared);
                }
                self.held.push_back(token);
            }
            placement => token_span(token, placement, invocations, shared),
        }
    }

    /// Places the held token spans that can now be placed; with `last_word` (SHUTDOWN),
    /// every one, with what is known.
    pub(super) fn settle(
        &mut self,
        last_word: bool,
        invocations: &mut Invocations,
        shared: &mut Shared,
    ) {
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        for token in held {
            match self.place(&token, invocations, last_word) {
                Placement::Wait => self.held.push_back(token),
                placement => token_span(token, placement, invocations, shared),
            }
        }
    }

    /// Where `token`'s span goes: the invocation its request id names, else the invocation
    /// whose X-Ray parent its traceparent names, else its caller's trace, else (without a
    /// traceparent, and not on Managed Instances) the invocation whose window holds it.
    /// `Wait` while the events that decide may still come; never with `last_word`.
    fn place(&self, token: &TokenRecord, invocations: &Invocations, last_word: bool) -> Placement {
        // Every invocation that started by the end of the request is known.
        let passed = last_word || self.watermark.is_some_and(|mark| mark >= end(token));
        if let Some(request_id) = &token.request_id {
            if invocations.get(request_id).is_some() {
                return Placement::Invocation(request_id.clone());
            }
            let gone = invocations.finished(request_id);
            if !(gone || passed) {
                return Placement::Wait;
            }
        }
        if let Some(caller) = token.traceparent {
            let nested = invocations
                .iter()
                .find(|(_, invocation)| invocation.is_xray_parent(caller.0));
            return match nested {
                Some((request_id, _)) => Placement::Invocation(request_id.clone()),
                None if passed => Placement::Caller(caller.0),
                None => Placement::Wait,
            };
        }
        if token.request_id.is_some() {
            return Placement::Alone(Unattributed::NoInvocation);
        }
        if invocations.overlapping {
            return Placement::Alone(Unattributed::Concurrent);
        }
        place_by_time(invocations, token.start, last_word || passed)
    }
}

/// The request id of the invocation that holds time `at`, as far as is known now: the
/// one that started last by `at`, unless it ended before. `None` on Managed Instances,
/// where invocations overlap and only a request id tells.
pub(super) fn invocation_at(invocations: &Invocations, at: SystemTime) -> Option<&str> {
    match place_by_time(invocations, at, true) {
        Placement::Invocation(request_id) => {
            invocations.get(&request_id).map(|(id, _)| id.as_str())
        }
        _ => None,
    }
}

/// The invocation whose window holds `at`, when the events that decide have arrived.
/// Invocations take turns here (not on Managed Instances): the candidate is the one
/// that started last by `at`; it holds `at` unless it ended before. With `known_up_to`
/// (every `platform.start` up to `at` has arrived, or SHUTDOWN), decides with what is
/// known.
fn place_by_time(invocations: &Invocations, at: SystemTime, known_up_to: bool) -> Placement {
    let candidate = invocations.running_at(at);
    // Seen only by its INVOKE, after `at`: it may have started before.
    let unsure = invocations
        .iter()
        .any(|(_, invocation)| invocation.started.is_none() && !invocation.started_by(at));
    // No invocation started between the candidate's end (or the beginning) and `at`:
    // every start up to `at` has arrived, or one after it has and no other is in doubt.
    let gap = || {
        known_up_to
            || (!unsure
                && invocations
                    .iter()
                    .any(|(_, invocation)| invocation.started.is_some_and(|start| start > at)))
    };
    match candidate {
        Some((request_id, invocation)) if !invocation.ended_before(at) => {
            if invocation.ended.is_some() || known_up_to {
                Placement::Invocation(request_id.clone())
            } else {
                // Still running, or ended unseen: its runtimeDone (or report) will tell.
                Placement::Wait
            }
        }
        // Ended before `at`, or nothing started by `at` (a gap, e.g. init).
        _ if gap() => Placement::Alone(Unattributed::NoInvocation),
        _ => Placement::Wait,
    }
}

/// Derives the token span where `placement` says. An HTTP server span (HTTP semantic
/// conventions): named `{method} {http.route}`, `HTTP {http.route}` for a method they do
/// not know; only 5xx is an error on a server, with the status code as error.type and no
/// description.
fn token_span(
    token: TokenRecord,
    placement: Placement,
    invocations: &mut Invocations,
    shared: &mut Shared,
) {
    let (context, parent) = token_trace(&token, placement, invocations, shared);
    let status = token.outcome.http_status();
    let status_code = status.to_string();
    let outcome = Outcome {
        status: if status >= 500 {
            Status::Error
        } else {
            Status::Success
        },
        error_type: Some(&status_code),
        incomplete: false,
        described: false,
    };
    let (start, end) = (token.start, end(&token));
    let (name, attributes) = http_attributes(token, status);
    shared.push_span(NewSpan {
        context,
        parent,
        kind: SpanKind::Server,
        name: name.into(),
        start,
        end,
        attributes,
        outcome: &outcome,
        essential: false,
    });
}

/// The token span's context and parent, in that trace and under its sampling decision:
/// the invocation's (a caller's traceparent inside the invocation's trace stays the parent,
/// unless it is the X-Ray parent), the caller's flags, or a new root.
fn token_trace(
    token: &TokenRecord,
    placement: Placement,
    invocations: &mut Invocations,
    shared: &Shared,
) -> (SpanContext, Option<(SpanId, bool)>) {
    let invocation = match &placement {
        Placement::Invocation(request_id) => invocations.get_mut(request_id),
        _ => None,
    };
    match (invocation, placement) {
        (Some(invocation), _) => {
            invocation.has_children = true;
            let parent = match token.traceparent {
                Some(caller)
                    if caller.0.trace_id == invocation.trace_id
                        && !invocation.is_xray_parent(caller.0) =>
                {
                    caller_parent(caller.0)
                }
                _ => Some((invocation.span_id, false)),
            };
            (
                shared.context(invocation.trace_id, invocation.sampled),
                parent,
            )
        }
        (None, Placement::Caller(caller)) => {
            let sampled = shared.sampler.decide(caller.sampled, caller.trace_id);
            (
                shared.context(caller.trace_id, sampled),
                caller_parent(caller),
            )
        }
        (None, placement) => {
            if let Placement::Alone(reason) = placement {
                shared.metrics.token_unattributed(reason);
            }
            (shared.root_context(), None)
        }
    }
}

/// The span's name and attributes: the HTTP server ones (required, and the recommended
/// ones the request's connection tells), and the token's algorithm and outcome (never a
/// claim or the token itself).
fn http_attributes(token: TokenRecord, status: u16) -> (String, Vec<KeyValue>) {
    let (method, name) = match token.method {
        HttpMethod::Known(method) => (method, format!("{method} {TOKEN_ROUTE}")),
        HttpMethod::Other => ("_OTHER", format!("HTTP {TOKEN_ROUTE}")),
    };
    let mut attributes = vec![
        KeyValue::new("http.request.method", method),
        KeyValue::new("http.route", TOKEN_ROUTE),
        KeyValue::new("url.path", TOKEN_ROUTE),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new("http.response.status_code", i64::from(status)),
        KeyValue::new("sidecar.token.algorithm", token.algorithm),
        KeyValue::new("sidecar.token.outcome", token.outcome.as_str()),
    ];
    let connection = token.connection;
    if let Some((address, port)) = connection.server {
        attributes.push(KeyValue::new("server.address", address));
        attributes.push(KeyValue::new("server.port", i64::from(port)));
    }
    if let Some(client) = connection.client {
        attributes.push(KeyValue::new("client.address", client.to_string()));
    }
    if let Some(version) = connection.protocol_version() {
        attributes.push(KeyValue::new("network.protocol.version", version));
    }
    if let Some(agent) = connection.user_agent {
        attributes.push(KeyValue::new("user_agent.original", String::from(agent)));
    }
    (name, attributes)
}

/// When the request ended (its start, should the sum overflow).
fn end(token: &TokenRecord) -> SystemTime {
    token
        .start
        .checked_add(token.duration)
        .unwrap_or(token.start)
}

/// The remote parent of a span whose caller sent trace context.
fn caller_parent(caller: RemoteParent) -> Option<(SpanId, bool)> {
    caller.span_id.map(|span_id| (span_id, true))
}
