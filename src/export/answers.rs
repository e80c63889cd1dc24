//! What the collector answered a failed export, read as the OTLP specification says: may
//! the batch be sent again, and what does the log say of it.
//!
//! opentelemetry-otlp's error says little: `HTTP export failed with status code: 400`
//! without the collector's message (it logs the body at debug level, and only with its
//! internal logs on), `HTTP export failed: network error` for a refused connection and a
//! connection lost mid-request alike, and over gRPC `… export failed with gRPC code:
//! InvalidArgument`. So the OTLP/HTTP exporters send through a [`NotingClient`], which notes
//! in [`Answers`] what the collector answered a request that failed (its status and
//! message), or whether a connection was made at all, for the queue to read back.
//!
//! The same client is where a request gets what the sidecar adds to it ([`Outgoing`]): the
//! headers of a secret (`SIDECAR_OTLP_HEADERS_SOURCE`), the CloudWatch Logs headers, and
//! last, over the request exactly as it will be sent, the SigV4 signature
//! ([`super::sigv4`]). A request that cannot get them is not sent at all.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderMap};
use http::{HeaderName, HeaderValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::error::OTelSdkError;

use super::headers::SecretHeaders;
use super::queue::{Failure, Outcome};
use super::sigv4::Signer;

/// Longest collector message kept for the log, in bytes.
const MAX_MESSAGE: usize = 256;

/// What the collector answered the last failed request of one exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Answer {
    /// No connection could be made: nothing was sent.
    Unreachable,
    /// The connection failed once made: the collector may have the request.
    Broken,
    /// The collector answered this status (not a success), with this message (bounded,
    /// with the request's header values taken out).
    Status { code: u16, message: String },
    /// The request was not sent: it could not get what it must carry (a signature, the
    /// headers of the secret), and must not go without.
    NotSent(String),
}

/// One exporter's note of [`Answer`], written by its [`NotingClient`], read by its queue;
/// and the request bytes it sent, which the flush reports (`sidecar.flush` self-trace spans).
#[derive(Debug, Clone, Default)]
pub(super) struct Answers(Arc<Mutex<Option<Answer>>>, Arc<AtomicU64>);

impl Answers {
    fn slot(&self) -> MutexGuard<'_, Option<Answer>> {
        // A panic while noting leaves nothing half-written: the slot is still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bytes of every request body sent so far (compressed, as sent).
    pub(super) fn sent_bytes(&self) -> u64 {
        self.1.load(Ordering::Relaxed)
    }

    /// The answer to the last request, if it failed; taken, so it is read once.
    pub(super) fn take(&self) -> Option<Answer> {
        self.slot().take()
    }

    /// A failed export of this exporter, `error`, classified with what the collector said.
    pub(super) fn failure(&self, error: OTelSdkError) -> Failure {
        self.failure_of(&error.to_string())
    }

    /// A failed request of this exporter, `error` the client's text of it, classified with
    /// what the collector said.
    pub(super) fn failure_of(&self, error: &str) -> Failure {
        failure(error, self.take())
    }
}

/// The OTLP/HTTP exporters' client: the shared reqwest client, noting what each request
/// that failed was answered. One per exporter (each with its own [`Answers`] and
/// [`Outgoing`]); the reqwest client, and its connection pool, are shared.
#[derive(Debug, Clone)]
pub(super) struct NotingClient {
    http: reqwest::Client,
    answers: Answers,
    outgoing: Outgoing,
    /// The most one request may take (`OTEL_EXPORTER_OTLP_*TIMEOUT`): opentelemetry-otlp
    /// applies its timeout only to a client it builds itself. The flush's budget may end a
    /// request sooner.
    timeout: Duration,
}

/// What one exporter's client adds to every request, in this order.
#[derive(Debug, Clone, Default)]
pub(super) struct Outgoing {
    /// The headers of `SIDECAR_OTLP_HEADERS_SOURCE` (every signal).
    pub(super) secret: Option<Arc<SecretHeaders>>,
    /// Headers fixed at start: `x-aws-log-group` and `x-aws-log-stream` (logs to CloudWatch
    /// Logs).
    pub(super) fixed: Vec<(HeaderName, HeaderValue)>,
    /// The SigV4 signer, for a signal whose requests are signed: last, over the rest.
    pub(super) signer: Option<Arc<Signer>>,
}

impl Outgoing {
    /// `request` with everything added, or why it must not be sent.
    async fn dress(&self, mut request: Request<Bytes>) -> Result<Request<Bytes>, String> {
        if let Some(secret) = &self.secret {
            let headers = secret.current(Instant::now()).await.ok_or_else(|| {
                "the headers of SIDECAR_OTLP_HEADERS_SOURCE are not loaded".to_string()
            })?;
            for (name, value) in headers.iter() {
                request.headers_mut().insert(name.clone(), value.clone());
            }
        }
        for (name, value) in &self.fixed {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        if let Some(signer) = &self.signer {
            signer.sign(&mut request, SystemTime::now()).await?;
        }
        Ok(request)
    }
}

impl NotingClient {
    /// `outgoing` is what this exporter's requests must carry: every OTLP/HTTP request goes
    /// through a `NotingClient`, so that none can skip its signature or its headers.
    /// `timeout` bounds each request.
    pub(super) fn new(
        http: reqwest::Client,
        answers: Answers,
        outgoing: Outgoing,
        timeout: Duration,
    ) -> NotingClient {
        NotingClient {
            http,
            answers,
            outgoing,
            timeout,
        }
    }
}

/// A request [`Outgoing`] refused to let go: the export fails without a connection made.
#[derive(Debug, thiserror::Error)]
#[error("not sent: {0}")]
struct NotSent(String);

type Sending<'a> = Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'a>>;

/// `HttpClient` is an `async_trait`: this is the signature it expands to.
impl HttpClient for NotingClient {
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> Sending<'async_trait>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            *self.answers.slot() = None;
            let request = match self.outgoing.dress(request).await {
                Ok(request) => request,
                Err(why) => {
                    tracing::warn!(reason = %why, "an OTLP request was not sent");
                    *self.answers.slot() = Some(Answer::NotSent(why.clone()));
                    return Err(Box::new(NotSent(why)) as HttpError);
                }
            };
            let bytes = request.body().len() as u64;
            self.answers.1.fetch_add(bytes, Ordering::Relaxed);
            let secrets = secrets(request.headers());
            let sent = match tokio::time::timeout(self.timeout, self.http.send_bytes(request)).await
            {
                Ok(sent) => sent,
                Err(_) => Err(format!("no answer within {:?}", self.timeout).into()),
            };
            let answer = match &sent {
                Ok(response) if response.status().is_success() => return sent,
                Ok(response) => Answer::Status {
                    code: response.status().as_u16(),
                    message: message(response.headers(), response.body(), &secrets),
                },
                Err(e) => match e.downcast_ref::<reqwest::Error>() {
                    Some(e) if e.is_connect() => Answer::Unreachable,
                    _ => Answer::Broken,
                },
            };
            *self.answers.slot() = Some(answer);
            sent
        })
    }
}

/// What the OTLP/HTTP specification says of a status: retry only 429, 502, 503 and 504 (and
/// 408, a timeout the server chose); every other 4xx and 5xx is not to be sent again. A
/// redirect, which the client does not follow, would not be taken on a second try either.
pub(super) fn http_outcome(code: u16) -> Outcome {
    match code {
        200..=299 => Outcome::Delivered,
        408 | 429 | 502 | 503 | 504 => Outcome::NotTaken,
        _ => Outcome::Rejected,
    }
}

/// What the OTLP/gRPC specification says of a status code (tonic's name for it): refused for
/// good for the codes it does not list as retryable, except `Unknown` and `Internal`, which
/// tonic also gives a transport failure on this side, so they are tried again (within the
/// bound of attempts).
pub(super) fn grpc_outcome(code: &str) -> Outcome {
    match code {
        "Ok" => Outcome::Delivered,
        "InvalidArgument" | "NotFound" | "AlreadyExists" | "PermissionDenied"
        | "Unauthenticated" | "FailedPrecondition" | "Unimplemented" => Outcome::Rejected,
        _ => Outcome::NotTaken,
    }
}

/// How an export that failed with `error` (the exporter's text) ended, with `answer`, what
/// the noting client saw of it (HTTP only).
pub(super) fn outcome(error: &str, answer: Option<&Answer>) -> Outcome {
    match answer {
        Some(Answer::Status { code, .. }) => http_outcome(*code),
        Some(Answer::Unreachable | Answer::NotSent(_)) => Outcome::NotTaken,
        Some(Answer::Broken) => Outcome::Unanswered,
        None => {
            if let Some(code) = word_after(error, "status code: ").and_then(|c| c.parse().ok()) {
                http_outcome(code)
            } else if let Some(code) = word_after(error, "gRPC code: ") {
                grpc_outcome(code)
            } else {
                // A failure before anything was sent (a refused connection, as far as the
                // exporter tells): worth another try, within the bound.
                Outcome::NotTaken
            }
        }
    }
}

/// The word (letters and digits) right after `marker` in `text`.
fn word_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// The failure of an export that failed with `error`, as the log tells it: the collector's
/// status and message when it answered.
fn failure(error: &str, answer: Option<Answer>) -> Failure {
    let outcome = outcome(error, answer.as_ref());
    let detail = match answer {
        Some(Answer::Status { code, message }) if message.is_empty() => {
            format!("the collector answered HTTP {code}")
        }
        Some(Answer::Status { code, message }) => {
            format!("the collector answered HTTP {code}: {message}")
        }
        Some(Answer::Unreachable) => format!("{error} (no connection to the collector)"),
        Some(Answer::Broken) => format!("{error} (the connection failed mid-request)"),
        Some(Answer::NotSent(why)) => format!("not sent: {why}"),
        None => error.to_owned(),
    };
    Failure::new(outcome, detail)
}

/// The values of the request's headers that may be secret (an API key from
/// `OTEL_EXPORTER_OTLP_HEADERS`), for [`message`] to take out of what the collector
/// echoes: each value whole, and each of its words of 8 characters or more (the token of
/// `Bearer <token>`).
fn secrets(headers: &HeaderMap) -> Vec<String> {
    let plain = [
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::CONTENT_LENGTH,
        header::USER_AGENT,
    ];
    let mut secrets: Vec<String> = headers
        .iter()
        .filter(|(name, _)| !plain.contains(name))
        .filter_map(|(_, value)| value.to_str().ok())
        .flat_map(|value| {
            let words = value
                .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '=' | ':'))
                .filter(|word| word.len() >= 8);
            std::iter::once(value).chain(words)
        })
        .filter(|secret| secret.len() >= 4)
        .map(str::to_owned)
        .collect();
    // Longest first, so a value goes whole before its words are looked for.
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    secrets
}

/// The collector's message in a failed answer, for the log: the `message` of the
/// `google.rpc.Status` the OTLP specification asks for (protobuf or JSON), else the body as
/// text; with `secrets` replaced, control characters made spaces, at most [`MAX_MESSAGE`]
/// bytes.
fn message(headers: &HeaderMap, body: &[u8], secrets: &[String]) -> String {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let text = if content_type.starts_with("application/x-protobuf") {
        status_message(body).unwrap_or_default()
    } else if content_type.starts_with("application/json") {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|status| status.get("message")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    let mut text = secrets.iter().fold(text, |text, secret| {
        text.replace(secret.as_str(), "<redacted>")
    });
    text = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned();
    if text.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// The `message` (field 2) of a protobuf `google.rpc.Status`.
fn status_message(mut buf: &[u8]) -> Option<String> {
    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first()?;
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        match (key >> 3, key & 7) {
            (_, 0) => {
                varint(&mut buf)?;
            }
            (field, 2) => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let value = buf.get(..len)?;
                if field == 2 {
                    return Some(String::from_utf8_lossy(value).into_owned());
                }
                buf = buf.get(len..)?;
            }
            (_, 1) => buf = buf.get(8..)?,
            (_, 5) => buf = buf.get(4..)?,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    use Outcome::{Delivered, NotTaken, Rejected, Unanswered};

    #[test]
    fn statuses_as_the_otlp_specification_says() {
        let cases = [
            (200, Delivered),
            (202, Delivered),
            (307, Rejected),
            (400, Rejected),
            (401, Rejected),
            (403, Rejected),
            (404, Rejected),
            (408, NotTaken),
            (413, Rejected),
            (415, Rejected),
            (429, NotTaken),
            (500, Rejected),
            (501, Rejected),
            (502, NotTaken),
            (503, NotTaken),
            (504, NotTaken),
        ];
        for (code, expected) in cases {
            assert_eq!(http_outcome(code), expected, "{code}");
        }
    }

    #[test]
    fn grpc_codes_as_the_otlp_specification_says() {
        let cases = [
            ("InvalidArgument", Rejected),
            ("Unauthenticated", Rejected),
            ("PermissionDenied", Rejected),
            ("Unimplemented", Rejected),
            ("Unavailable", NotTaken),
            ("ResourceExhausted", NotTaken),
            ("DeadlineExceeded", NotTaken),
            ("Cancelled", NotTaken),
            ("Aborted", NotTaken),
            ("DataLoss", NotTaken),
            // Not retryable by the specification, but also tonic's code for a local
            // transport failure: tried again, within the bound.
            ("Unknown", NotTaken),
            ("Internal", NotTaken),
        ];
        for (code, expected) in cases {
            assert_eq!(grpc_outcome(code), expected, "{code}");
        }
    }

    /// The exporter's own text (opentelemetry-otlp 0.33, as `OTelSdkError` displays it),
    /// with and without what the noting client saw.
    #[test]
    fn failed_exports_are_classified() {
        let status = |code| Answer::Status {
            code,
            message: String::new(),
        };
        let network = "Operation failed: HTTP export failed: network error";
        let cases = [
            (
                "Operation failed: HTTP export failed with status code: 400",
                None,
                Rejected,
            ),
            (
                "Operation failed: HTTP export failed with status code: 503",
                None,
                NotTaken,
            ),
            (
                "Operation failed: HTTP export failed with status code: 400",
                Some(status(400)),
                Rejected,
            ),
            (
                "Operation failed: HTTP export failed with status code: 429",
                Some(status(429)),
                NotTaken,
            ),
            (network, Some(Answer::Unreachable), NotTaken),
            (network, Some(Answer::Broken), Unanswered),
            (network, None, NotTaken),
            (
                "Operation failed: traces export failed with gRPC code: InvalidArgument",
                None,
                Rejected,
            ),
            (
                "Operation failed: metrics export failed with gRPC code: Unavailable: \
                 transport error: connection refused",
                None,
                NotTaken,
            ),
            (
                "Operation failed: logs export failed with gRPC code: Unauthenticated",
                None,
                Rejected,
            ),
            (
                "Operation failed: Exporter already shutdown",
                None,
                NotTaken,
            ),
            ("Operation failed: status code: ", None, NotTaken),
        ];
        for (error, answer, expected) in cases {
            assert_eq!(
                outcome(error, answer.as_ref()),
                expected,
                "{error} {answer:?}"
            );
        }
    }

    /// A `google.rpc.Status` as protobuf: code (field 1), message (field 2), a detail
    /// (field 3) after it.
    fn status_protobuf(message: &str) -> Vec<u8> {
        let mut body = vec![0x08, 0x03, 0x12, message.len() as u8];
        body.extend_from_slice(message.as_bytes());
        body.extend_from_slice(&[0x1a, 0x02, 0x0a, 0x00]);
        body
    }

    #[test]
    fn the_collectors_message_is_read_bounded_and_without_secrets() {
        let typed = |content_type: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            headers
        };
        let protobuf = typed("application/x-protobuf");
        let json = typed("application/json");
        let text = typed("text/plain; charset=utf-8");
        let mut request = HeaderMap::new();
        request.insert("x-api-key", HeaderValue::from_static("k3y-0123456789"));
        request.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer eyJhbGciOi.payload"),
        );
        request.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        let secrets = secrets(&request);
        let long = "x".repeat(1000);
        let cases: [(&HeaderMap, Vec<u8>, &str); 9] = [
            (
                &protobuf,
                status_protobuf("span 3 has no trace id"),
                "span 3 has no trace id",
            ),
            (&protobuf, vec![0xff, 0xff], ""),
            (
                &json,
                br#"{"code":3,"message":"bad batch"}"#.to_vec(),
                "bad batch",
            ),
            (&json, b"not json".to_vec(), "not json"),
            (
                &text,
                b"sink is failing on purpose\n".to_vec(),
                "sink is failing on purpose",
            ),
            (
                &text,
                b"line 1\r\nline 2\x1b[31m".to_vec(),
                "line 1  line 2 [31m",
            ),
            (
                &text,
                b"unknown key k3y-0123456789 for tenant".to_vec(),
                "unknown key <redacted> for tenant",
            ),
            (
                &text,
                b"token eyJhbGciOi.payload expired (Bearer eyJhbGciOi.payload)".to_vec(),
                "token <redacted> expired (<redacted>)",
            ),
            (
                &text,
                b"application/x-protobuf only".to_vec(),
                "application/x-protobuf only",
            ),
        ];
        for (headers, body, expected) in cases {
            assert_eq!(message(headers, &body, &secrets), expected, "{body:?}");
        }
        let cut = message(&text, long.as_bytes(), &secrets);
        assert_eq!(cut, format!("{}…", &long[..MAX_MESSAGE]));
        let accents = "é".repeat(200);
        let cut = message(&text, accents.as_bytes(), &secrets);
        assert!(cut.len() <= MAX_MESSAGE + '…'.len_utf8(), "{}", cut.len());
    }

    /// The failure as the log tells it: the status and the collector's message.
    #[test]
    fn the_failure_names_the_status_and_the_message() {
        let answer = Answer::Status {
            code: 400,
            message: "span 3 has no trace id".to_owned(),
        };
        let failure = failure(
            "Operation failed: HTTP export failed with status code: 400",
            Some(answer),
        );
        assert_eq!(failure.outcome, Rejected);
        assert_eq!(
            failure.to_string(),
            "the collector answered HTTP 400: span 3 has no trace id"
        );
    }
}
