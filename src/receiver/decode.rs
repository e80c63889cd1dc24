//! What a request to the OTLP receiver holds (pure: no I/O): its encoding from
//! `Content-Type`, its body from `Content-Encoding` within the size bound, the export
//! request decoded with the official protobuf model or its OTLP/JSON mapping, the items the
//! specification says to refuse, and the answers, in the request's own encoding.

use std::io::Read as _;
use std::ops::Range;

use axum::body::Bytes;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::export::Payload;

/// Most bytes of a request body, both as sent and once decompressed: 4 MiB, what the
/// receiver holds per signal at most (`export::RECEIVED_BUFFER_BYTES`), so any request it
/// takes fits an empty queue. An SDK's batch (512 spans by default) is a few hundred KiB.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The encodings OTLP/HTTP defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json`: the OTLP/JSON mapping (hex ids, lowerCamelCase names, enums as
    /// numbers, 64-bit integers as strings or numbers).
    Json,
}

impl Encoding {
    /// The encoding `Content-Type` names (parameters ignored), if it is one of OTLP's.
    pub fn of(content_type: Option<&str>) -> Option<Encoding> {
        let media = content_type?.split(';').next()?.trim();
        match media.to_ascii_lowercase().as_str() {
            "application/x-protobuf" => Some(Encoding::Protobuf),
            "application/json" => Some(Encoding::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// Why a request is refused whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// 413: over [`MAX_BODY_BYTES`], as sent or decompressed.
    TooLarge,
    /// 415: not an OTLP content type, or a content encoding other than gzip.
    UnsupportedMediaType,
    /// 400: not an export request in its encoding.
    Undecodable(String),
}

/// The body as the encoder wrote it: gunzipped for `Content-Encoding: gzip` (no more than
/// [`MAX_BODY_BYTES`]: a small gzip body may inflate a thousandfold), as it is otherwise.
pub fn body(raw: &Bytes, content_encoding: Option<&str>) -> Result<Bytes, Refused> {
    if raw.len() > MAX_BODY_BYTES {
        return Err(Refused::TooLarge);
    }
    match content_encoding
        .map(|e| e.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => Ok(raw.clone()),
        Some("gzip") => {
            let mut out = Vec::with_capacity(raw.len() * 4);
            flate2::read::GzDecoder::new(&raw[..])
                .take(MAX_BODY_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| Refused::Undecodable(format!("gzip: {e}")))?;
            if out.len() > MAX_BODY_BYTES {
                return Err(Refused::TooLarge);
            }
            Ok(Bytes::from(out))
        }
        Some(_) => Err(Refused::UnsupportedMediaType),
    }
}

/// One signal's export request and its answer.
pub trait Request: Message + DeserializeOwned + Default + Sized {
    type Payload: Payload;
    type Response: Message + Serialize + Default;
    /// The path it is posted to.
    const PATH: &'static str;
    fn payloads(self) -> Vec<Self::Payload>;
    /// Takes the items the specification calls invalid out of `payloads`; how many.
    fn refuse_invalid(payloads: &mut [Self::Payload]) -> usize;
    /// The answer when `rejected` items were refused, for `message`.
    fn response(rejected: usize, message: String) -> Self::Response;
}

impl Request for ExportTraceServiceRequest {
    type Payload = ResourceSpans;
    type Response = ExportTraceServiceResponse;
    const PATH: &'static str = "/v1/traces";
    fn payloads(self) -> Vec<ResourceSpans> {
        self.resource_spans
    }
    fn refuse_invalid(payloads: &mut [ResourceSpans]) -> usize {
        refuse_invalid_spans(payloads)
    }
    fn response(rejected: usize, message: String) -> ExportTraceServiceResponse {
        ExportTraceServiceResponse {
            partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: rejected as i64,
                error_message: message,
            }),
        }
    }
}

impl Request for ExportMetricsServiceRequest {
    type Payload = ResourceMetrics;
    type Response = ExportMetricsServiceResponse;
    const PATH: &'static str = "/v1/metrics";
    fn payloads(self) -> Vec<ResourceMetrics> {
        self.resource_metrics
    }
    /// A data point has no id to check.
    fn refuse_invalid(_: &mut [ResourceMetrics]) -> usize {
        0
    }
    fn response(rejected: usize, message: String) -> ExportMetricsServiceResponse {
        ExportMetricsServiceResponse {
            partial_success: (rejected > 0).then_some(ExportMetricsPartialSuccess {
                rejected_data_points: rejected as i64,
                error_message: message,
            }),
        }
    }
}

impl Request for ExportLogsServiceRequest {
    type Payload = ResourceLogs;
    type Response = ExportLogsServiceResponse;
    const PATH: &'static str = "/v1/logs";
    fn payloads(self) -> Vec<ResourceLogs> {
        self.resource_logs
    }
    fn refuse_invalid(payloads: &mut [ResourceLogs]) -> usize {
        refuse_invalid_logs(payloads)
    }
    fn response(rejected: usize, message: String) -> ExportLogsServiceResponse {
        ExportLogsServiceResponse {
            partial_success: (rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: rejected as i64,
                error_message: message,
            }),
        }
    }
}

/// Where each occurrence of field 1 (length-delimited) lies in `message`: the payloads of an
/// export request (`resource_spans`, `resource_metrics`, `resource_logs`), in order. `None`
/// when the message holds any other field, or is malformed: the caller encodes the decoded
/// payloads itself then.
pub fn payload_ranges(message: &[u8]) -> Option<Vec<Range<usize>>> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut rest = message;
    let mut ranges = Vec::new();
    while !rest.is_empty() {
        let (tag, wire_type) = decode_key(&mut rest).ok()?;
        if tag != 1 || wire_type != WireType::LengthDelimited {
            return None;
        }
        let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
        let start = message.len() - rest.len();
        rest = rest.get(len..)?;
        ranges.push(start..start + len);
    }
    Some(ranges)
}

/// Decodes `body` as `R` in `encoding`.
pub fn decode<R: Request>(body: &[u8], encoding: Encoding) -> Result<R, Refused> {
    match encoding {
        Encoding::Protobuf => R::decode(body).map_err(|e| Refused::Undecodable(e.to_string())),
        Encoding::Json => {
            serde_json::from_slice(body).map_err(|e| Refused::Undecodable(e.to_string()))
        }
    }
}

/// Encodes `message` in `encoding`.
pub fn encode<M: Message + Serialize>(message: &M, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => message.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(message).unwrap_or_default(),
    }
}

/// The body of a refusal: a `google.rpc.Status` with `message`, as OTLP/HTTP asks (code 3,
/// INVALID_ARGUMENT, the one the receiver answers with a body). Written with prost's
/// field encoders: opentelemetry-proto has no `Status` type.
pub fn status(message: &str, encoding: Encoding) -> Vec<u8> {
    const INVALID_ARGUMENT: i32 = 3;
    match encoding {
        Encoding::Protobuf => {
            let mut out = Vec::new();
            prost::encoding::int32::encode(1, &INVALID_ARGUMENT, &mut out);
            prost::encoding::string::encode(2, &message.to_owned(), &mut out);
            out
        }
        Encoding::Json => serde_json::to_vec(&serde_json::json!({
            "code": INVALID_ARGUMENT,
            "message": message,
        }))
        .unwrap_or_default(),
    }
}

/// Takes out of `spans` each span the OTLP specification calls invalid (a trace id that is
/// not 16 bytes, a span id that is not 8, either all zeros, a parent id neither empty nor 8
/// bytes); returns how many.
pub fn refuse_invalid_spans(spans: &mut [ResourceSpans]) -> usize {
    let valid_id = |id: &[u8], len: usize| id.len() == len && id.iter().any(|b| *b != 0);
    let mut refused = 0;
    for scope in spans.iter_mut().flat_map(|r| &mut r.scope_spans) {
        scope.spans.retain(|span| {
            let valid = valid_id(&span.trace_id, 16)
                && valid_id(&span.span_id, 8)
                && matches!(span.parent_span_id.len(), 0 | 8);
            refused += usize::from(!valid);
            valid
        });
    }
    refused
}

/// Takes out of `logs` each record whose trace or span id has a length other than none or
/// the id's (16, 8); returns how many.
pub fn refuse_invalid_logs(logs: &mut [ResourceLogs]) -> usize {
    let mut refused = 0;
    for scope in logs.iter_mut().flat_map(|r| &mut r.scope_logs) {
        scope.log_records.retain(|record| {
            let valid =
                matches!(record.trace_id.len(), 0 | 16) && matches!(record.span_id.len(), 0 | 8);
            refused += usize::from(!valid);
            valid
        });
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_ranges_are_each_payloads_own_bytes() {
        let payload = |name: &str| ResourceSpans {
            schema_url: name.to_string(),
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![payload("a"), payload("bb")],
        };
        let bytes = request.encode_to_vec();
        let ranges = payload_ranges(&bytes).unwrap();
        let decoded: Vec<ResourceSpans> = ranges
            .into_iter()
            .map(|r| ResourceSpans::decode(&bytes[r]).unwrap())
            .collect();
        assert_eq!(decoded, request.resource_spans);
        // Another field, or a truncated one: the caller encodes the payloads itself.
        assert_eq!(payload_ranges(&[0x10, 0x01]), None);
        assert_eq!(payload_ranges(&bytes[..bytes.len() - 1]), None);
        assert_eq!(payload_ranges(&[]), Some(vec![]));
    }
}
