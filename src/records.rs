//! What flows into derivation ([`crate::derive::Deriver`]), in arrival order, from the
//! three places that observe the function: the Extensions API loop (INVOKE, and the
//! moment the sidecar hands control back), the Telemetry API listener, and the /token
//! handler. Also the two trace-context formats those sources carry: X-Ray's
//! `X-Amzn-Trace-Id` and W3C `traceparent`.
//!
//! Architecture invariant: records carry no token, secret or claim value; a
//! [`TokenRecord`] knows only how a request ended, never what was issued.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanId, TraceId};

use crate::events::Batch;

/// One observation, sent by the lifecycle, the telemetry listener or the token handler.
#[derive(Debug)]
pub enum Record {
    /// An INVOKE event from the Extensions API: usually the first sight of a request id.
    Invoke(InvokeRecord),
    /// One parsed Telemetry API POST.
    Telemetry(Batch),
    /// One finished /token request.
    Token(TokenRecord),
    /// The lifecycle is about to call `event/next` again after handling the INVOKE of
    /// `request_id`: from then on the sidecar no longer holds the invocation open, so the
    /// post-runtime hold is `at - runtimeDone.time`, floored at zero.
    Resumed { request_id: String, at: SystemTime },
}

/// The INVOKE event as the lifecycle received it.
#[derive(Debug, Clone)]
pub struct InvokeRecord {
    pub request_id: String,
    /// Absolute deadline, epoch milliseconds (as Lambda sends it).
    pub deadline_ms: u64,
    pub invoked_arn: String,
    /// The `tracing.value` X-Ray header, `Root=1-…;Parent=…;Sampled=…`, when present.
    pub xray: Option<String>,
    /// When the sidecar received the event: the span start if `platform.start` never comes.
    pub received: SystemTime,
}

/// One /token request as the handler saw it.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub start: SystemTime,
    pub duration: Duration,
    /// The configured signing algorithm, e.g. `"ES256"` (a metric label: low cardinality).
    pub algorithm: &'static str,
    /// The request's method: with the status, what the HTTP server span is named and
    /// described by.
    pub method: HttpMethod,
    pub outcome: TokenOutcome,
    /// The caller's W3C trace context, which makes the token span its child.
    pub traceparent: Option<TraceParent>,
    /// The invocation the caller named ([`REQUEST_ID_HEADER`]), validated by
    /// [`parse_request_id`]: it decides which invocation the token span belongs to.
    pub request_id: Option<String>,
    /// The request's connection, for the HTTP server span's recommended attributes.
    pub connection: HttpConnection,
}

/// What the HTTP server span's recommended attributes say of a `/token` request (semantic
/// conventions, HTTP server span): `server.address`/`server.port` (from `Host`, which the
/// token service has already checked names its own listener), `client.address` (the peer),
/// `network.protocol.version` and `user_agent.original`. Each `None` when unknown. Kept
/// small (static names, a boxed agent): every token request carries one through the
/// pipeline's queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpConnection {
    pub server: Option<(&'static str, u16)>,
    pub client: Option<std::net::IpAddr>,
    pub version: Option<http::Version>,
    /// At most [`MAX_USER_AGENT_LEN`] bytes (cut at a character boundary).
    pub user_agent: Option<Box<str>>,
}

/// Longest `User-Agent` kept for a span: longer ones are cut, so that a caller cannot make
/// the span buffer hold much per span.
pub const MAX_USER_AGENT_LEN: usize = 256;

/// The names the token listener answers to (on 127.0.0.1): `server.address` is one of them.
const SERVER_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

impl HttpConnection {
    /// From a request's head: its `Host` (`name:port`, as the token service requires), HTTP
    /// version, `User-Agent`, and the peer the listener accepted.
    pub fn from_head(
        host: Option<&str>,
        version: http::Version,
        user_agent: Option<&str>,
        peer: Option<std::net::SocketAddr>,
    ) -> HttpConnection {
        let server = host.and_then(|host| {
            let (name, port) = host.rsplit_once(':')?;
            let name = SERVER_NAMES
                .into_iter()
                .find(|known| known.eq_ignore_ascii_case(name))?;
            Some((name, port.parse().ok()?))
        });
        let user_agent = user_agent.map(|agent| {
            let mut end = agent.len().min(MAX_USER_AGENT_LEN);
            while !agent.is_char_boundary(end) {
                end -= 1;
            }
            agent[..end].into()
        });
        HttpConnection {
            server,
            client: peer.map(|peer| peer.ip()),
            version: Some(version),
            user_agent,
        }
    }

    /// `network.protocol.version`: `1.0` or `1.1` (the token service speaks HTTP/1 only).
    pub fn protocol_version(&self) -> Option<&'static str> {
        match self.version? {
            http::Version::HTTP_10 => Some("1.0"),
            http::Version::HTTP_11 => Some("1.1"),
            _ => None,
        }
    }
}

/// The header a `/token` caller names its invocation with: the Runtime API's own name for
/// the request id, which the function already has (its context's `awsRequestId`).
pub const REQUEST_ID_HEADER: &str = "Lambda-Runtime-Aws-Request-Id";

/// Longest request id taken from a caller. Lambda's are 36-character UUIDs; the bound
/// leaves room for other shapes while keeping what a caller can make the sidecar hold small.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// A request id from [`REQUEST_ID_HEADER`]: 1 to [`MAX_REQUEST_ID_LEN`] printable ASCII
/// characters (no space or control character), surrounding blanks trimmed. Anything else
/// is ignored, as if the header were absent: the span is then placed by time.
pub fn parse_request_id(header: &str) -> Option<String> {
    let id = header.trim();
    (!id.is_empty() && id.len() <= MAX_REQUEST_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| id.to_owned())
}

/// The path of the token endpoint, which is also its route (`http.route`): the only path
/// whose requests are recorded.
pub const TOKEN_ROUTE: &str = "/token";

/// A request method as the HTTP semantic conventions record it (`http.request.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    /// One of the methods the conventions call known: RFC 9110's and PATCH (RFC 5789).
    Known(&'static str),
    /// Any other method: recorded as `_OTHER`. The caller's spelling is not kept (the
    /// conventions' `http.request.method_original` is left out): it is text a caller
    /// chose, and the method's only use here is to tell the function's requests apart.
    Other,
}

impl HttpMethod {
    /// The known methods, case-sensitive as the conventions require.
    const KNOWN: [&'static str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];

    pub fn parse(method: &str) -> HttpMethod {
        match Self::KNOWN.into_iter().find(|known| *known == method) {
            Some(known) => HttpMethod::Known(known),
            None => HttpMethod::Other,
        }
    }
}

/// How a /token request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOutcome {
    Issued,
    /// Answered with this HTTP error status (bad request, disallowed claim, ...).
    Rejected {
        status: u16,
    },
}

impl TokenOutcome {
    /// The `outcome` metric label: `issued`, or why the request was refused, from the small
    /// closed set of statuses the token service answers with, so that an SRE can tell an
    /// attack on the boundary (`unauthorized`, `bad_request`) from a misconfigured caller.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenOutcome::Issued => "issued",
            TokenOutcome::Rejected { status } => match status {
                400 => "bad_request",
                401 => "unauthorized",
                405 => "method_not_allowed",
                413 => "too_large",
                415 => "unsupported_media_type",
                500..=599 => "error",
                _ => "rejected",
            },
        }
    }

    /// The HTTP status the handler answered with.
    pub fn http_status(self) -> u16 {
        match self {
            TokenOutcome::Issued => 200,
            TokenOutcome::Rejected { status } => status,
        }
    }
}

/// A parent span in another process: what a `traceparent` header or an X-Ray
/// header contributes to a span we derive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteParent {
    pub trace_id: TraceId,
    /// `None` for an X-Ray header with a Root but no Parent: the span becomes a root of
    /// that trace.
    pub span_id: Option<SpanId>,
    /// The caller's sampling decision, which a parent-based sampler follows: X-Ray's
    /// `Sampled=1`/`Sampled=0`, or `traceparent`'s sampled flag. `None` when the caller
    /// left it open (`Sampled=?`, or no `Sampled` field).
    pub sampled: Option<bool>,
}

/// A W3C Trace Context `traceparent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent(pub RemoteParent);

impl TraceParent {
    /// Parses `{2 hex version}-{32 hex trace id}-{16 hex parent id}-{2 hex flags}`.
    ///
    /// Strict per the spec: lowercase hex only, exact length, all-zero ids refused
    /// (they mean "invalid"), version `ff` refused. Version `00` has exactly these four
    /// fields. A higher version is parsed as the spec asks of a version it does not know
    /// (W3C Trace Context, "Versioning of traceparent"): the same four fields first, and
    /// whatever follows must begin with `-` (the fields a future version adds, ignored),
    /// so that a caller that upgrades keeps its traces joined. Of the flags, only
    /// `sampled` (bit 0) is read; it is the parent decision for the token span.
    pub fn parse(header: &str) -> Option<TraceParent> {
        let header = header.trim();
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        let version = header.get(..2)?;
        if !hex_of_len(version, 2, lower_hex) || version == "ff" {
            return None;
        }
        // 55 characters: the four fields of version 00 and their three dashes.
        let (known, rest) = (header.get(..55)?, &header[55..]);
        if !(rest.is_empty() || (version != "00" && rest.starts_with('-'))) {
            return None;
        }
        let mut parts = known.split('-');
        let (_, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !hex_of_len(flags, 2, lower_hex) {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceParent(RemoteParent {
            trace_id: trace_id(trace, lower_hex)?,
            span_id: Some(span_id(parent, lower_hex)?),
            sampled: Some(flags & 1 == 1),
        }))
    }
}

/// Parses an X-Ray `X-Amzn-Trace-Id` value such as
/// `Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1`.
///
/// The Root `1-{8 hex epoch}-{24 hex}` becomes the W3C trace id by joining its two hex
/// parts, which is how ADOT and X-Ray's OTLP endpoint map them, so derived spans join
/// the same trace. `None` without a valid Root; an invalid or all-zero Parent is
/// dropped rather than failing the whole header. `Sampled=1`/`0` is kept as the parent
/// decision; `Sampled=?` (X-Ray deferring the decision downstream) and any other value
/// leave it open.
pub fn parse_xray(header: &str) -> Option<RemoteParent> {
    let mut root = None;
    let mut parent = None;
    let mut sampled = None;
    for field in header.split(';') {
        match field.trim().split_once('=') {
            Some(("Root", value)) => root = Some(value),
            Some(("Parent", value)) => parent = Some(value),
            Some(("Sampled", value)) => {
                sampled = match value.trim() {
                    "1" => Some(true),
                    "0" => Some(false),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    let (version, rest) = root?.split_once('-')?;
    let (epoch, unique) = rest.split_once('-')?;
    if version != "1" || epoch.len() != 8 || unique.len() != 24 {
        return None;
    }
    let any_hex = |b: u8| b.is_ascii_hexdigit();
    Some(RemoteParent {
        trace_id: trace_id(&format!("{epoch}{unique}"), any_hex)?,
        span_id: parent.and_then(|p| span_id(p, any_hex)),
        sampled,
    })
}

/// True when `text` is exactly `len` characters, each accepted by `digit`.
/// (`TraceId::from_hex` alone would also take `+` prefixes and short strings.)
fn hex_of_len(text: &str, len: usize, digit: impl Fn(u8) -> bool) -> bool {
    text.len() == len && text.bytes().all(digit)
}

fn trace_id(text: &str, digit: impl Fn(u8) -> bool) -> Option<TraceId> {
    let id = hex_of_len(text, 32, digit).then(|| TraceId::from_hex(text).ok())??;
    (id != TraceId::INVALID).then_some(id)
}

fn span_id(text: &str, digit: impl Fn(u8) -> bool) -> Option<SpanId> {
    let id = hex_of_len(text, 16, digit).then(|| SpanId::from_hex(text).ok())??;
    (id != SpanId::INVALID).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `trace span sampled`, with `-` for no span id and `?` for an open decision.
    fn render(parent: Option<RemoteParent>) -> String {
        let Some(RemoteParent {
            trace_id,
            span_id,
            sampled,
        }) = parent
        else {
            return "none".to_owned();
        };
        let span = span_id.map_or("-".to_owned(), |s| s.to_string());
        let sampled = match sampled {
            Some(true) => "1",
            Some(false) => "0",
            None => "?",
        };
        format!("{trace_id} {span} {sampled}")
    }

    fn check_traceparent(header: &str, expected: &str) {
        assert_eq!(
            render(TraceParent::parse(header).map(|t| t.0)),
            expected,
            "{header}"
        );
    }

    fn check_xray(header: &str, expected: &str) {
        assert_eq!(render(parse_xray(header)), expected, "{header}");
    }

    #[test]
    fn traceparent() {
        check_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 1",
        );
        check_traceparent(
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00 ",
            "4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 0",
        );
        // Only bit 0 is the sampled flag (bit 1 is level 2's "random").
        check_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02",
            "4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 0",
        );
        check_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
            "4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 1",
        );
        // W3C, "Versioning of traceparent": a higher version is parsed as far as version
        // 00 goes, whatever fields it adds after a dash.
        check_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 1",
        );
        check_traceparent(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-brings",
            "4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 1",
        );
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // A future version's extra fields follow a dash; the known ones stay strict.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            check_traceparent(bad, "none");
        }
    }

    #[test]
    fn connection_from_a_request_head() {
        let peer = "127.0.0.1:51234".parse().ok();
        let long = "é".repeat(200);
        let connection = HttpConnection::from_head(
            Some("LOCALHOST:3003"),
            http::Version::HTTP_10,
            Some(&long),
            peer,
        );
        assert_eq!(connection.server, Some(("localhost", 3003)));
        assert_eq!(connection.client, Some([127, 0, 0, 1].into()));
        assert_eq!(connection.protocol_version(), Some("1.0"));
        let agent = connection.user_agent.unwrap();
        assert_eq!(
            agent.len(),
            MAX_USER_AGENT_LEN,
            "cut at a character boundary"
        );
        let none =
            HttpConnection::from_head(Some("evil.example:80"), http::Version::HTTP_2, None, None);
        assert_eq!((none.server, none.protocol_version()), (None, None));
    }

    #[test]
    fn xray() {
        check_xray(
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
            "5759e988bd862e3fe1be46a994272793 53995c3f42cd8ad8 1",
        );
        check_xray(
            "Sampled=0; Parent=53995c3f42cd8ad8 ;Root=1-5759e988-bd862e3fe1be46a994272793;Lineage=a:1",
            "5759e988bd862e3fe1be46a994272793 53995c3f42cd8ad8 0",
        );
        check_xray(
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=?",
            "5759e988bd862e3fe1be46a994272793 53995c3f42cd8ad8 ?",
        );
        check_xray(
            "Root=1-5759e988-bd862e3fe1be46a994272793",
            "5759e988bd862e3fe1be46a994272793 - ?",
        );
        check_xray(
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=0000000000000000;Sampled=1",
            "5759e988bd862e3fe1be46a994272793 - 1",
        );
        for bad in [
            "",
            "Parent=53995c3f42cd8ad8",
            "Root=2-5759e988-bd862e3fe1be46a994272793",
            "Root=1-5759e98-bd862e3fe1be46a9942727930",
            "Root=1-5759e988-bd862e3fe1be46a99427279g",
            "Root=1-00000000-000000000000000000000000",
        ] {
            check_xray(bad, "none");
        }
    }

    #[test]
    fn request_id() {
        let uuid = "8476a536-e9f4-11e8-9739-2dfe598c3fcd";
        assert_eq!(parse_request_id(uuid).as_deref(), Some(uuid));
        assert_eq!(
            parse_request_id(&format!(" {uuid}\t")).as_deref(),
            Some(uuid)
        );
        let longest = "r".repeat(MAX_REQUEST_ID_LEN);
        assert_eq!(parse_request_id(&longest), Some(longest));
        for bad in [
            "",
            "   ",
            "two words",
            "bell\u{7}",
            "caf\u{e9}",
            &"r".repeat(MAX_REQUEST_ID_LEN + 1),
        ] {
            assert_eq!(parse_request_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn token_outcome_labels_and_status() {
        assert_eq!(
            (
                TokenOutcome::Issued.as_str(),
                TokenOutcome::Issued.http_status()
            ),
            ("issued", 200)
        );
        for (status, label) in [
            (400, "bad_request"),
            (401, "unauthorized"),
            (405, "method_not_allowed"),
            (413, "too_large"),
            (415, "unsupported_media_type"),
            (500, "error"),
            (404, "rejected"),
        ] {
            let rejected = TokenOutcome::Rejected { status };
            assert_eq!((rejected.as_str(), rejected.http_status()), (label, status));
        }
    }
}
