//! A `traceparent` or `X-Amzn-Trace-Id` value: neither parser panics, and what they accept
//! has the shape of the header and yields the ids written in it.
#![no_main]

use lambda_sidecar::records::{TraceParent, parse_xray};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|header: &str| {
    if let Some(TraceParent(p)) = TraceParent::parse(header) {
        let text = header.trim();
        let span = p.span_id.expect("a traceparent always has a parent id");
        // Version 00 is exactly 55 characters; a higher version (not ff) may add fields
        // after a dash (W3C, "Versioning of traceparent").
        let version = &text[..2];
        assert!(version != "ff", "{header:?}");
        if version == "00" {
            assert_eq!(text.len(), 55, "{header:?}");
        } else {
            assert!(
                text.len() == 55 || text[55..].starts_with('-'),
                "{header:?}"
            );
        }
        assert!(
            version
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        );
        assert_eq!(
            &text[2..53],
            format!("-{:032x}-{:016x}-", p.trace_id, span),
            "{header:?}"
        );
        assert!(
            text[53..55]
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        );
    }
    if let Some(p) = parse_xray(header) {
        let root = format!("{:032x}", p.trace_id);
        let written = |field: &str| {
            header
                .rsplit(';')
                .find_map(|f| f.trim().strip_prefix(field))
        };
        let value = written("Root=1-")
            .expect("accepted without a Root")
            .to_ascii_lowercase();
        assert_eq!(
            value,
            format!("{}-{}", &root[..8], &root[8..]),
            "{header:?}"
        );
        if let Some(span) = p.span_id {
            let parent = written("Parent=")
                .expect("a Parent from nowhere")
                .to_ascii_lowercase();
            assert_eq!(parent, format!("{span:016x}"), "{header:?}");
        }
    }
});
