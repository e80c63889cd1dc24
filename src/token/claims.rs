//! What goes into a token: the caller's request checked against the configuration, and the
//! claims the sidecar alone sets. Pure functions, no I/O: every rule is testable with data.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::TokenConfig;

pub use crate::config::SIDECAR_CLAIMS;

/// Longest `sub` or `aud` value accepted: generous for ids and URLs, small enough to bound
/// token size.
const MAX_VALUE_LEN: usize = 256;

/// Most claims one request may set. A token carries a handful of claims; 32 leaves room for
/// any real use while bounding the work and the token's size.
pub const MAX_CLAIMS: usize = 32;

/// Largest serialized JSON of one requested claim, in bytes. With [`MAX_CLAIMS`] this keeps a
/// token under ~33 KiB even before the 16 KiB body limit applies; a role, tenant or scope
/// list fits many times over.
pub const MAX_CLAIM_BYTES: usize = 1024;

/// Deepest nesting of arrays and objects inside one requested claim (a string is 0, `["a"]`
/// is 1, `{"a":["b"]}` is 2). Verifiers and the services reading claims recurse over them;
/// 4 allows structured claims such as `{"org":{"teams":[{"id":"x"}]}}` and nothing that
/// exists only to exhaust a parser's stack.
pub const MAX_CLAIM_DEPTH: usize = 4;

/// A `POST /token` request, validated.
#[derive(Debug, Default, PartialEq)]
pub struct TokenRequest {
    pub sub: Option<String>,
    pub aud: Option<Vec<String>>,
    pub ttl_seconds: Option<u64>,
    pub claims: Map<String, Value>,
}

/// Why a request is refused; the message is returned to the caller as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("request body must be a JSON object")]
    NotAnObject,
    #[error("{0} is set by the sidecar and cannot be requested")]
    Reserved(String),
    #[error("unknown field {0}: accepted fields are sub, aud, ttl_seconds, claims")]
    UnknownField(String),
    #[error("{field} must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("claim {0} is not allowed: add it to JWT_ALLOWED_CLAIMS to let callers set it")]
    NotAllowed(String),
    #[error("claim {0} goes in the top-level field of the same name, not in claims")]
    TopLevelOnly(String),
    #[error("aud {0:?} is not one of the audiences configured in JWT_AUDIENCE")]
    Audience(String),
    #[error("ttl_seconds must be from 1 to {max} (JWT_MAX_TTL_SECONDS)")]
    Ttl { max: u64 },
    #[error("aud must list at least one audience; leave it out for the default")]
    EmptyAudience,
    #[error("aud lists {0:?} twice")]
    DuplicateAudience(String),
    #[error(
        "{field} contains U+{code:04X}, a control, bidi or invisible formatting character; \
         these are refused because they make a value display as something it is not"
    )]
    ForbiddenCharacter { field: String, code: u32 },
    #[error("claims may set at most {MAX_CLAIMS} claims")]
    TooManyClaims,
    #[error("claims.{0} is nested deeper than {MAX_CLAIM_DEPTH} levels of arrays and objects")]
    ClaimTooDeep(String),
    #[error("claims.{0} is larger than {MAX_CLAIM_BYTES} bytes of JSON")]
    ClaimTooLarge(String),
}

impl TokenRequest {
    /// Parses a request body. An empty body means "all defaults", like `GET /token`.
    pub fn parse(body: &[u8]) -> Result<TokenRequest, ClaimError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(TokenRequest::default());
        }
        let value: Value =
            serde_json::from_slice(body).map_err(|e| ClaimError::MalformedJson(e.to_string()))?;
        let Value::Object(fields) = value else {
            return Err(ClaimError::NotAnObject);
        };
        let mut request = TokenRequest::default();
        for (name, value) in fields {
            match name.as_str() {
                "sub" => request.sub = Some(short_string("sub", value)?),
                "aud" => {
                    request.aud = Some(match value {
                        Value::Array(items) => items
                            .into_iter()
                            .map(|v| short_string("aud", v))
                            .collect::<Result<_, _>>()?,
                        other => vec![short_string("aud", other)?],
                    })
                }
                "ttl_seconds" => {
                    request.ttl_seconds = Some(value.as_u64().ok_or(ClaimError::WrongType {
                        field: "ttl_seconds",
                        expected: "a whole number of seconds",
                    })?)
                }
                "claims" => {
                    let Value::Object(claims) = value else {
                        return Err(ClaimError::WrongType {
                            field: "claims",
                            expected: "a JSON object",
                        });
                    };
                    request.claims = claims;
                }
                reserved if SIDECAR_CLAIMS.contains(&reserved) => {
                    return Err(ClaimError::Reserved(name));
                }
                _ => return Err(ClaimError::UnknownField(name)),
            }
        }
        Ok(request)
    }
}

fn short_string(field: &'static str, value: Value) -> Result<String, ClaimError> {
    match value {
        Value::String(s) if !s.is_empty() && s.len() <= MAX_VALUE_LEN => match forbidden(&s) {
            Some(code) => Err(ClaimError::ForbiddenCharacter {
                field: field.to_string(),
                code,
            }),
            None => Ok(s),
        },
        _ => Err(ClaimError::WrongType {
            field,
            expected: "a non-empty string of at most 256 bytes",
        }),
    }
}

/// Refuses text that displays as something it is not: control characters, bidi overrides
/// and isolates, zero-width and other invisible format characters (all of Unicode category
/// Cf), and the line and paragraph separators. A verifier compares bytes, but people and
/// log viewers read glyphs: `admin\u{202E}` and `admin` must not both be subjects.
/// Returns the first such character's code point.
fn forbidden(text: &str) -> Option<u32> {
    text.chars()
        .find(|&c| c.is_control() || is_format(c))
        .map(u32::from)
}

/// Unicode general category Cf (format characters: bidi controls, zero-width joiners, BOM,
/// tags...) plus Zl and Zp (U+2028, U+2029), as of Unicode 16. The standard library has no
/// category lookup, and a table crate would be a dependency for 21 ranges.
fn is_format(c: char) -> bool {
    const RANGES: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x2028, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let c = u32::from(c);
    c >= 0xAD && RANGES.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// Checks one requested claim's value against [`MAX_CLAIM_DEPTH`], [`MAX_CLAIM_BYTES`] and
/// [`forbidden`] characters (in object keys too).
fn check_claim(name: &str, value: &Value) -> Result<(), ClaimError> {
    /// `depth` counts the arrays and objects around `value`.
    fn walk(name: &str, value: &Value, depth: usize) -> Result<(), ClaimError> {
        let text = |s: &str| match forbidden(s) {
            Some(code) => Err(ClaimError::ForbiddenCharacter {
                field: format!("claims.{name}"),
                code,
            }),
            None => Ok(()),
        };
        let too_deep = || Err(ClaimError::ClaimTooDeep(name.to_string()));
        match value {
            Value::String(s) => text(s),
            Value::Array(_) | Value::Object(_) if depth >= MAX_CLAIM_DEPTH => too_deep(),
            Value::Array(items) => items.iter().try_for_each(|v| walk(name, v, depth + 1)),
            Value::Object(map) => map.iter().try_for_each(|(k, v)| {
                text(k)?;
                walk(name, v, depth + 1)
            }),
            Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
        }
    }
    walk(name, value, 0)?;
    let mut size = ByteCount(0);
    // Writing to a counter cannot fail; an error would only come from the writer.
    let _ = serde_json::to_writer(&mut size, value);
    if size.0 > MAX_CLAIM_BYTES {
        return Err(ClaimError::ClaimTooLarge(name.to_string()));
    }
    Ok(())
}

/// Counts the bytes serde_json would write, without keeping them.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The claims of one token, serialized as they are (a typed struct, not a `serde_json::Value`
/// tree: no key strings, map nodes or value copies per token). The sidecar's values borrow
/// from the configuration; only a requested `sub` or `aud` is owned.
#[derive(Debug, PartialEq, Serialize)]
pub struct Claims<'a> {
    /// What the request asked for, within `JWT_ALLOWED_CLAIMS`; [`build`] has checked that
    /// none is a name of the sidecar's own claims below, so the object has no duplicate key.
    #[serde(flatten)]
    pub requested: Map<String, Value>,
    pub iss: &'a str,
    pub sub: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience<'a>>,
    pub iat: u64,
    pub nbf: u64,
    /// The expiry, epoch seconds.
    pub exp: u64,
    pub jti: &'a str,
    /// The lifetime in seconds (the response's `expires_in`), not a claim.
    #[serde(skip)]
    pub ttl: u64,
}

/// `aud`: a string for one audience (what most verifiers expect), an array for several.
#[derive(Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Audience<'a> {
    One(Cow<'a, str>),
    Many(Vec<String>),
}

/// Builds the claim set: the request's choices within what `config` allows, and iss, iat,
/// nbf, exp, jti from the sidecar. `now` is epoch seconds; `jti` must be unique.
pub fn build<'a>(
    request: TokenRequest,
    config: &'a TokenConfig,
    now: u64,
    jti: &'a str,
) -> Result<Claims<'a>, ClaimError> {
    let ttl = match request.ttl_seconds {
        None => config.ttl,
        Some(t) if (1..=config.max_ttl).contains(&t) => t,
        Some(_) => {
            return Err(ClaimError::Ttl {
                max: config.max_ttl,
            });
        }
    };
    // Checked here rather than in `parse` so that no TokenRequest, however built, can drop
    // the audience: with audiences configured, every token carries one.
    let aud = match request.aud {
        None => config
            .audiences
            .first()
            .map(|a| Audience::One(Cow::Borrowed(a))),
        Some(requested) if requested.is_empty() => return Err(ClaimError::EmptyAudience),
        Some(mut requested) => {
            if let Some(a) = requested.iter().find(|a| !config.audiences.contains(a)) {
                return Err(ClaimError::Audience(a.clone()));
            }
            if let Some(a) = requested
                .iter()
                .enumerate()
                .find_map(|(i, a)| requested[..i].contains(a).then_some(a))
            {
                return Err(ClaimError::DuplicateAudience(a.clone()));
            }
            Some(match requested.len() {
                1 => Audience::One(Cow::Owned(requested.remove(0))),
                _ => Audience::Many(requested),
            })
        }
    };
    if request.claims.len() > MAX_CLAIMS {
        return Err(ClaimError::TooManyClaims);
    }
    for (name, value) in &request.claims {
        if SIDECAR_CLAIMS.contains(&name.as_str()) {
            return Err(ClaimError::Reserved(name.clone()));
        }
        if name == "sub" || name == "aud" {
            return Err(ClaimError::TopLevelOnly(name.clone()));
        }
        if !config.allowed_claims.contains(name) {
            return Err(ClaimError::NotAllowed(name.clone()));
        }
        check_claim(name, value)?;
    }
    Ok(Claims {
        requested: request.claims,
        iss: &config.issuer,
        sub: request
            .sub
            .map_or(Cow::Borrowed(config.default_subject.as_str()), Cow::Owned),
        aud,
        iat: now,
        nbf: now,
        exp: now + ttl,
        jti,
        ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeyMaterial, KeySource, TokenAuth};
    use crate::token::keys::Algorithm;
    use serde_json::json;

    fn config() -> TokenConfig {
        TokenConfig {
            algorithm: Algorithm::HS256,
            key: KeySource::Env(KeyMaterial::Secret(Vec::new())),
            key_refresh: std::time::Duration::from_secs(300),
            kms_verify_keys: Vec::new(),
            aws: None,
            key_id: None,
            issuer: "https://issuer.example".into(),
            audiences: vec!["api".into(), "billing".into()],
            default_subject: "orders-fn".into(),
            ttl: 900,
            max_ttl: 3600,
            allowed_claims: ["role".to_string()].into(),
            typ: "JWT".into(),
            auth: TokenAuth::Off,
            jwks_uri: None,
        }
    }

    /// Data-driven: a request body and either the claims expected (a subset check) or the
    /// error expected.
    fn check(body: &str, expect: Result<Value, ClaimError>) {
        let config = config();
        let result =
            TokenRequest::parse(body.as_bytes()).and_then(|r| build(r, &config, 1_000, "id-1"));
        match (result, expect) {
            (Ok(claims), Ok(Value::Object(want))) => {
                let Value::Object(got) = serde_json::to_value(&claims).unwrap() else {
                    panic!("{body}: the claims do not serialize as an object");
                };
                for (k, v) in want {
                    assert_eq!(got.get(&k), Some(&v), "claim {k} for {body}");
                }
            }
            (Err(e), Err(want)) => assert_eq!(e, want, "for {body}"),
            (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn requests() {
        check(
            "",
            Ok(
                json!({"iss":"https://issuer.example","sub":"orders-fn","aud":"api","iat":1000,"nbf":1000,"exp":1900,"jti":"id-1"}),
            ),
        );
        check(
            r#"{"sub":"user-7","ttl_seconds":60}"#,
            Ok(json!({"sub":"user-7","exp":1060})),
        );
        check(
            r#"{"aud":["api","billing"]}"#,
            Ok(json!({"aud":["api","billing"]})),
        );
        check(
            r#"{"claims":{"role":"admin"}}"#,
            Ok(json!({"role":"admin"})),
        );
        // At the limits: 4 levels deep, 1024 bytes, non-Latin text.
        check(
            r#"{"claims":{"role":{"a":{"b":{"c":["d"]}}}}}"#,
            Ok(json!({"role":{"a":{"b":{"c":["d"]}}}})),
        );
        let at_size = format!(r#"{{"claims":{{"role":"{}"}}}}"#, "x".repeat(1022));
        check(&at_size, Ok(json!({"role": "x".repeat(1022)})));
        check(
            r#"{"sub":"José Ωμέγα 東京 مرحبا","aud":["billing","api"]}"#,
            Ok(json!({"sub":"José Ωμέγα 東京 مرحبا","aud":["billing","api"]})),
        );
        check(r#"{"iss":"evil"}"#, Err(ClaimError::Reserved("iss".into())));
        check(
            r#"{"claims":{"exp":1}}"#,
            Err(ClaimError::Reserved("exp".into())),
        );
        check(
            r#"{"claims":{"jti":"x"}}"#,
            Err(ClaimError::Reserved("jti".into())),
        );
        check(
            r#"{"claims":{"sub":"x"}}"#,
            Err(ClaimError::TopLevelOnly("sub".into())),
        );
        check(
            r#"{"claims":{"admin":true}}"#,
            Err(ClaimError::NotAllowed("admin".into())),
        );
        check(
            r#"{"aud":"other"}"#,
            Err(ClaimError::Audience("other".into())),
        );
        check(
            r#"{"ttl_seconds":3601}"#,
            Err(ClaimError::Ttl { max: 3600 }),
        );
        check(r#"{"ttl_seconds":0}"#, Err(ClaimError::Ttl { max: 3600 }));
        check(
            r#"{"ttl_seconds":-1}"#,
            Err(ClaimError::WrongType {
                field: "ttl_seconds",
                expected: "a whole number of seconds",
            }),
        );
        check(
            r#"{"subject":"x"}"#,
            Err(ClaimError::UnknownField("subject".into())),
        );
        check(r#"[1]"#, Err(ClaimError::NotAnObject));
        check(
            r#"{"sub":""}"#,
            Err(ClaimError::WrongType {
                field: "sub",
                expected: "a non-empty string of at most 256 bytes",
            }),
        );
        assert!(matches!(
            TokenRequest::parse(b"{\"sub\":"),
            Err(ClaimError::MalformedJson(_))
        ));
    }

    /// Data-driven: a request body the builder must refuse, with a fragment of the message.
    fn refused(cases: &[(&str, &str)]) {
        let config = TokenConfig {
            allowed_claims: ["role", "tenant", "ctx"].map(String::from).into(),
            ..config()
        };
        let mut failures = Vec::new();
        for (body, fragment) in cases {
            match TokenRequest::parse(body.as_bytes())
                .and_then(|r| build(r, &config, 1_000, "id-1"))
            {
                Err(e) if e.to_string().contains(fragment) => {}
                other => failures.push(format!("{body}: got {other:?}, want {fragment:?}")),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Finding 2 and the string findings of the hardening issue: an empty or duplicated
    /// audience list, invisible or direction-changing characters, and claims too deep or too
    /// big are refused, each with a message naming the field.
    #[test]
    fn hostile_requests_are_refused() {
        let deep = r#"{"claims":{"ctx":{"a":{"b":{"c":{"d":[1]}}}}}}"#;
        let big = format!(r#"{{"claims":{{"ctx":"{}"}}}}"#, "x".repeat(1100));
        let many = format!(
            r#"{{"claims":{{{}}}}}"#,
            (0..33)
                .map(|i| format!(r#""c{i}":1"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        refused(&[
            (r#"{"aud":[]}"#, "aud must list at least one audience"),
            (r#"{"aud":["api","api"]}"#, "aud lists \"api\" twice"),
            ("{\"sub\":\"user\u{202E}1\"}", "sub contains U+202E"),
            ("{\"sub\":\"us\u{200B}er\"}", "sub contains U+200B"),
            ("{\"sub\":\"us\u{2066}er\"}", "sub contains U+2066"),
            ("{\"sub\":\"us\u{061C}er\"}", "sub contains U+061C"),
            ("{\"sub\":\"\u{FEFF}user\"}", "sub contains U+FEFF"),
            ("{\"sub\":\"us\u{00AD}er\"}", "sub contains U+00AD"),
            ("{\"sub\":\"us\u{E0041}er\"}", "sub contains U+E0041"),
            ("{\"sub\":\"line\u{2028}two\"}", "sub contains U+2028"),
            ("{\"aud\":\"api\u{200D}\"}", "aud contains U+200D"),
            (
                "{\"aud\":[\"api\",\"bill\u{200E}ing\"]}",
                "aud contains U+200E",
            ),
            (
                "{\"claims\":{\"role\":\"ad\u{202E}min\"}}",
                "claims.role contains U+202E",
            ),
            (
                r#"{"claims":{"role":"ad\u0007min"}}"#,
                "claims.role contains U+0007",
            ),
            (
                "{\"claims\":{\"ctx\":{\"name\":[\"a\u{2069}\"]}}}",
                "claims.ctx contains U+2069",
            ),
            (
                "{\"claims\":{\"ctx\":{\"k\u{200F}\":1}}}",
                "claims.ctx contains U+200F",
            ),
            (deep, "claims.ctx is nested deeper than 4 levels"),
            (&big, "claims.ctx is larger than 1024 bytes"),
            (&many, "at most 32 claims"),
        ]);
    }
}
