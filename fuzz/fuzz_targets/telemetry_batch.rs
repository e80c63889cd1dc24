//! A Telemetry API POST body: `parse_batch` never panics, refuses only what is not a JSON
//! array, and counts every element of an array exactly once.
#![no_main]

use lambda_sidecar::events::parse_batch;
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;

fuzz_target!(|body: &[u8]| {
    // JSON is UTF-8; IgnoredAny alone would skip invalid UTF-8 inside strings.
    let elements = std::str::from_utf8(body)
        .ok()
        .and_then(|text| serde_json::from_str::<Vec<IgnoredAny>>(text).ok())
        .map(|array| array.len());
    match (parse_batch(body), elements) {
        (Ok(batch), Some(n)) => assert_eq!(batch.events.len() + batch.unknown + batch.malformed, n),
        (Err(_), None) => {}
        (result, elements) => panic!("parse_batch: {result:?}, array of {elements:?}"),
    }
});
