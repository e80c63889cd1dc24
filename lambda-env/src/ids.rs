//! Random identifiers in the shapes Lambda uses (request ids, X-Ray trace ids, span ids).
//!
//! Extensions parse these, so their formats must match Lambda's exactly: a W3C trace id is
//! derived from the X-Ray root by joining its two hex parts.

use std::time::{SystemTime, UNIX_EPOCH};

/// `n` random bytes as lowercase hex. Falls back to a time-seeded mix if the OS RNG fails,
/// because a dev tool should not abort over an id.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    if getrandom::fill(&mut buf).is_err() {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A version-4 UUID string (8-4-4-4-12), as Lambda uses for request and extension ids.
pub fn uuid_v4() -> String {
    let h = random_hex(16);
    let mut chars: Vec<char> = h.chars().collect();
    chars[12] = '4';
    let variant = u8::from_str_radix(&h[16..17], 16).unwrap_or(0) & 0x3 | 0x8;
    chars[16] = char::from_digit(u32::from(variant), 16).unwrap_or('8');
    let s: String = chars.into_iter().collect();
    format!(
        "{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

/// An X-Ray trace header value for a new trace, plus the W3C trace id it maps to.
#[derive(Debug, Clone)]
pub struct XrayTrace {
    /// `Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;Sampled=1` (or `Sampled=0`)
    pub value: String,
    /// The 32-hex W3C trace id (the root's time and random parts joined).
    pub trace_id: String,
}

impl Default for XrayTrace {
    fn default() -> Self {
        Self::new(true)
    }
}

impl XrayTrace {
    /// `sampled`: X-Ray's decision, `Sampled=1` or `Sampled=0` (what Lambda sends for a
    /// request X-Ray's rules did not pick, or for a function without Active tracing).
    pub fn new(sampled: bool) -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let time_hex = format!("{:08x}", secs as u32);
        let random = random_hex(12);
        let parent = random_hex(8);
        XrayTrace {
            value: format!(
                "Root=1-{time_hex}-{random};Parent={parent};Sampled={}",
                u8::from(sampled)
            ),
            trace_id: format!("{time_hex}{random}"),
        }
    }
}

/// Maps an X-Ray header value (`Root=1-xxxxxxxx-yyyy…;…`) to a 32-hex W3C trace id.
pub fn w3c_trace_id(xray_value: &str) -> Option<String> {
    let root = xray_value
        .split(';')
        .find_map(|part| part.trim().strip_prefix("Root="))?;
    let mut parts = root.split('-');
    let (version, time, random) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = version == "1"
        && time.len() == 8
        && random.len() == 24
        && time
            .chars()
            .chain(random.chars())
            .all(|c| c.is_ascii_hexdigit());
    ok.then(|| format!("{time}{random}").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_has_v4_shape() {
        let u = uuid_v4();
        let parts: Vec<&str> = u.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn xray_maps_to_w3c() {
        let t = XrayTrace::new(true);
        assert_eq!(w3c_trace_id(&t.value).as_deref(), Some(t.trace_id.as_str()));
        assert!(t.value.ends_with(";Sampled=1"), "{}", t.value);
        assert!(XrayTrace::new(false).value.ends_with(";Sampled=0"));
        assert_eq!(
            w3c_trace_id(
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
            )
            .as_deref(),
            Some("5759e988bd862e3fe1be46a994272793")
        );
        assert_eq!(w3c_trace_id("Root=1-zz;Parent=1"), None);
    }
}
