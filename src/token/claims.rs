//! What goes into a token: the caller's request checked against the configuration, and the
//! claims the sidecar alone sets. Pure functions, no I/O: every rule is testable with data.

use serde_json::{Map, Value};

use crate::config::TokenConfig;

/// Claims only the sidecar sets. A request that names one is refused, never silently ignored.
pub const SIDECAR_CLAIMS: &[&str] = &["iss", "exp", "iat", "nbf", "jti"];

/// Longest `sub` or `aud` value accepted: generous for ids and URLs, small enough to bound
/// token size.
const MAX_VALUE_LEN: usize = 256;

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
        Value::String(s)
            if !s.is_empty() && s.len() <= MAX_VALUE_LEN && !s.chars().any(char::is_control) =>
        {
            Ok(s)
        }
        _ => Err(ClaimError::WrongType {
            field,
            expected: "a non-empty string of at most 256 characters without control characters",
        }),
    }
}

/// The claims of one token, ready to serialize.
#[derive(Debug, PartialEq)]
pub struct Claims {
    pub body: Map<String, Value>,
    pub sub: String,
    pub expires_at: u64,
    pub ttl: u64,
}

/// Builds the claim set: the request's choices within what `config` allows, and iss, iat,
/// nbf, exp, jti from the sidecar. `now` is epoch seconds; `jti` must be unique.
pub fn build(
    request: TokenRequest,
    config: &TokenConfig,
    now: u64,
    jti: String,
) -> Result<Claims, ClaimError> {
    let ttl = match request.ttl_seconds {
        None => config.ttl,
        Some(t) if (1..=config.max_ttl).contains(&t) => t,
        Some(_) => {
            return Err(ClaimError::Ttl {
                max: config.max_ttl,
            });
        }
    };
    let aud = match request.aud {
        None => config.audiences.first().map(|a| vec![a.clone()]),
        Some(requested) => {
            if let Some(a) = requested.iter().find(|a| !config.audiences.contains(a)) {
                return Err(ClaimError::Audience(a.clone()));
            }
            Some(requested)
        }
    };
    let mut body = Map::new();
    for (name, value) in request.claims {
        if SIDECAR_CLAIMS.contains(&name.as_str()) {
            return Err(ClaimError::Reserved(name));
        }
        if name == "sub" || name == "aud" {
            return Err(ClaimError::TopLevelOnly(name));
        }
        if !config.allowed_claims.contains(&name) {
            return Err(ClaimError::NotAllowed(name));
        }
        body.insert(name, value);
    }
    let sub = request
        .sub
        .unwrap_or_else(|| config.default_subject.clone());
    let expires_at = now + ttl;
    body.insert("iss".into(), config.issuer.clone().into());
    body.insert("sub".into(), sub.clone().into());
    match aud {
        Some(mut one) if one.len() == 1 => {
            body.insert("aud".into(), one.remove(0).into());
        }
        Some(many) if !many.is_empty() => {
            body.insert("aud".into(), many.into());
        }
        _ => {}
    }
    body.insert("iat".into(), now.into());
    body.insert("nbf".into(), now.into());
    body.insert("exp".into(), expires_at.into());
    body.insert("jti".into(), jti.into());
    Ok(Claims {
        body,
        sub,
        expires_at,
        ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyMaterial;
    use crate::token::keys::Algorithm;
    use serde_json::json;

    fn config() -> TokenConfig {
        TokenConfig {
            algorithm: Algorithm::HS256,
            key: KeyMaterial::Secret(Vec::new()),
            key_id: None,
            issuer: "https://issuer.example".into(),
            audiences: vec!["api".into(), "billing".into()],
            default_subject: "orders-fn".into(),
            ttl: 900,
            max_ttl: 3600,
            allowed_claims: ["role".to_string()].into(),
        }
    }

    /// Data-driven: a request body and either the claims expected (a subset check) or the
    /// error expected.
    fn check(body: &str, expect: Result<Value, ClaimError>) {
        let result = TokenRequest::parse(body.as_bytes())
            .and_then(|r| build(r, &config(), 1_000, "id-1".into()));
        match (result, expect) {
            (Ok(claims), Ok(Value::Object(want))) => {
                for (k, v) in want {
                    assert_eq!(claims.body.get(&k), Some(&v), "claim {k} for {body}");
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
                expected: "a non-empty string of at most 256 characters without control characters",
            }),
        );
        assert!(matches!(
            TokenRequest::parse(b"{\"sub\":"),
            Err(ClaimError::MalformedJson(_))
        ));
    }
}
