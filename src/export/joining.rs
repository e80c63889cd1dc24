//! Joining what the function sent to the OTLP receiver to what the sidecar knows, at the
//! flush that forwards it (pure functions over the official protobuf model):
//!
//! - **Resource**: the SDK's resource is kept as it is; the attributes the sidecar knows of
//!   the function and its environment (`faas.*`, `cloud.*`, `aws.*`, `service.instance.id`)
//!   are added where the SDK left them out ([`SIDECAR_KEYS`]).
//! - **Trace**: a span in the trace of an invocation the sidecar saw (X-Ray's trace id)
//!   whose parent is none, or the caller's X-Ray segment (what an SDK reading
//!   `_X_AMZN_TRACE_ID` makes its handler span's parent), gets the sidecar's invocation span
//!   as its parent instead: one tree per invocation, rooted at the caller's segment, with
//!   the invocation span above the function's own. Its other spans keep their parents.
//! - **Sampling**: the spans of an invocation that is not sampled are dropped (and counted),
//!   as the sidecar's own spans of it are.
//!
//! Why at the flush, not as the request arrives: the invocation's trace context is
//! published when the pipeline applies INVOKE, which may come a moment after the function
//! already exported; every flush comes after it.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use opentelemetry_sdk::Resource;

use super::received::Invocations;
use opentelemetry_http::Bytes;

/// The resource keys the sidecar adds to the function's resource where missing: what it
/// knows of the function and its environment. Not `service.name` or `telemetry.sdk.*`, which
/// describe the function's own SDK and are always set by it.
const SIDECAR_KEYS: [&str; 4] = ["faas.", "cloud.", "aws.", "service.instance.id"];

/// The attributes of the sidecar's `resource` that [`add_resource`] adds where missing.
pub(super) fn sidecar_attributes(resource: &Resource) -> Vec<KeyValue> {
    resource
        .iter()
        .filter(|(key, _)| {
            SIDECAR_KEYS
                .iter()
                .any(|prefix| key.as_str().starts_with(prefix))
        })
        .map(|(key, value)| KeyValue {
            key: key.to_string(),
            value: Some(AnyValue::from(value.clone())),
            ..Default::default()
        })
        .collect()
}

/// Adds to `resource` (none: an empty one) each of `known` whose key it lacks.
pub(super) fn add_resource(resource: &mut Option<ProtoResource>, known: &[KeyValue]) {
    let resource = resource.get_or_insert_with(ProtoResource::default);
    for attribute in known {
        if !resource.attributes.iter().any(|a| a.key == attribute.key) {
            resource.attributes.push(attribute.clone());
        }
    }
}

/// Joins `spans` to `invocations` (see the module's doc): re-parents the function's root
/// spans under the invocation span, and drops the spans of an unsampled invocation,
/// returning how many; scopes left empty go too.
pub(super) fn join_spans(spans: &mut ResourceSpans, invocations: &Invocations) -> usize {
    let mut unsampled = 0;
    for scope in &mut spans.scope_spans {
        scope.spans.retain_mut(|span| {
            let invocation = <[u8; 16]>::try_from(span.trace_id.as_slice())
                .ok()
                .and_then(|id| invocations.get(&id));
            let Some(invocation) = invocation else {
                return true;
            };
            if !invocation.sampled {
                unsampled += 1;
                return false;
            }
            let parent = span.parent_span_id.as_slice();
            let joins = parent.is_empty()
                || parent == [0; 8]
                || invocation.parent.is_some_and(|xray| parent == xray);
            if joins && span.span_id != invocation.span_id {
                span.parent_span_id = invocation.span_id.to_vec();
            }
            true
        });
    }
    spans.scope_spans.retain(|scope| !scope.spans.is_empty());
    unsampled
}

/// The keys of `resource` among those the sidecar adds ([`SIDECAR_KEYS`]).
pub(super) fn present_keys(resource: Option<&ProtoResource>) -> Vec<String> {
    resource
        .iter()
        .flat_map(|r| &r.attributes)
        .filter(|a| SIDECAR_KEYS.iter().any(|prefix| a.key.starts_with(prefix)))
        .map(|a| a.key.clone())
        .collect()
}

/// What [`add_resource`] would add to a resource that has the keys `present`, as a second
/// occurrence of the payload's `resource` field (field 1 of `ResourceSpans`,
/// `ResourceMetrics` and `ResourceLogs` alike), to append to its encoding: protobuf merges
/// the two occurrences, so the attributes add up. Empty when nothing is missing.
pub(super) fn resource_tail(known: &[KeyValue], present: &[String]) -> Bytes {
    let missing: Vec<KeyValue> = known
        .iter()
        .filter(|a| !present.contains(&a.key))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Bytes::new();
    }
    let mut tail = Vec::new();
    let resource = ProtoResource {
        attributes: missing,
        ..Default::default()
    };
    prost::encoding::message::encode(1, &resource, &mut tail);
    Bytes::from(tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::InvocationTrace;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span};

    const TRACE: [u8; 16] = [7; 16];
    const INVOCATION_SPAN: [u8; 8] = [1; 8];
    const XRAY_PARENT: [u8; 8] = [2; 8];

    fn span(trace: [u8; 16], id: u8, parent: &[u8]) -> Span {
        Span {
            trace_id: trace.to_vec(),
            span_id: vec![id; 8],
            parent_span_id: parent.to_vec(),
            ..Default::default()
        }
    }

    fn traces(sampled: bool) -> Invocations {
        let traces = crate::items::InvocationTraces::default();
        traces.note(InvocationTrace {
            trace_id: TRACE,
            span_id: INVOCATION_SPAN,
            parent: Some(XRAY_PARENT),
            sampled,
        });
        traces.by_trace_id()
    }

    fn joined(spans: Vec<Span>, sampled: bool) -> (Vec<Span>, usize) {
        let mut batch = ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        };
        let dropped = join_spans(&mut batch, &traces(sampled));
        let spans = batch
            .scope_spans
            .into_iter()
            .flat_map(|s| s.spans)
            .collect();
        (spans, dropped)
    }

    /// Each case: a span's trace and parent, and the parent it is forwarded with.
    #[test]
    fn the_functions_root_spans_join_the_invocation_span() {
        let other = [9; 16];
        type Case<'a> = (&'a str, [u8; 16], &'a [u8], &'a [u8]);
        let cases: [Case<'_>; 5] = [
            ("root span", TRACE, &[], &INVOCATION_SPAN),
            ("all-zero parent", TRACE, &[0; 8], &INVOCATION_SPAN),
            (
                "child of X-Ray's segment",
                TRACE,
                &XRAY_PARENT,
                &INVOCATION_SPAN,
            ),
            ("child of the function's span", TRACE, &[5; 8], &[5; 8]),
            ("another trace", other, &[], &[]),
        ];
        for (case, trace, parent, expected) in cases {
            let (spans, dropped) = joined(vec![span(trace, 3, parent)], true);
            assert_eq!(dropped, 0, "{case}");
            assert_eq!(spans[0].parent_span_id, expected, "{case}");
        }
    }

    #[test]
    fn an_unsampled_invocations_spans_are_dropped_and_counted() {
        let spans = vec![
            span(TRACE, 3, &[]),
            span(TRACE, 4, &[3; 8]),
            span([9; 16], 5, &[]),
        ];
        let (kept, dropped) = joined(spans, false);
        assert_eq!(dropped, 2);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].span_id, vec![5; 8]);
        let (kept, dropped) = joined(vec![span(TRACE, 3, &[])], false);
        assert_eq!(
            (kept.len(), dropped),
            (0, 1),
            "an empty resource is not forwarded"
        );
    }

    #[test]
    fn the_sdks_resource_is_kept_and_completed() {
        let sidecar = Resource::builder_empty()
            .with_attributes([
                opentelemetry::KeyValue::new("service.name", "sidecar-view"),
                opentelemetry::KeyValue::new("faas.name", "orders"),
                opentelemetry::KeyValue::new("cloud.region", "eu-west-1"),
                opentelemetry::KeyValue::new("service.instance.id", "env-1"),
                opentelemetry::KeyValue::new("telemetry.sdk.language", "rust"),
            ])
            .build();
        let known = sidecar_attributes(&sidecar);
        let string = |key: &str, value: &str| KeyValue {
            key: key.to_string(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.to_string())),
            }),
            ..Default::default()
        };
        let mut resource = Some(ProtoResource {
            attributes: vec![
                string("service.name", "checkout"),
                string("cloud.region", "us-east-1"),
                string("telemetry.sdk.language", "nodejs"),
            ],
            ..Default::default()
        });
        add_resource(&mut resource, &known);
        let mut attributes: Vec<(String, String)> = resource
            .unwrap()
            .attributes
            .into_iter()
            .map(|a| match a.value.and_then(|v| v.value) {
                Some(Value::StringValue(s)) => (a.key, s),
                other => panic!("{other:?}"),
            })
            .collect();
        attributes.sort();
        let expected: Vec<(String, String)> = [
            ("cloud.region", "us-east-1"),
            ("faas.name", "orders"),
            ("service.instance.id", "env-1"),
            ("service.name", "checkout"),
            ("telemetry.sdk.language", "nodejs"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(attributes, expected);
    }
}
