//! A `POST /token` body against a configuration with audiences and allowed claims:
//! parsing and building never panic, and an accepted request obeys the claim rules.
#![no_main]

use std::sync::LazyLock;

use lambda_sidecar::config::{Config, TokenConfig};
use lambda_sidecar::token::claims::{SIDECAR_CLAIMS, TokenRequest, build};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const NOW: u64 = 1_700_000_000;

static CONFIG: LazyLock<TokenConfig> = LazyLock::new(|| {
    let env = [
        ("JWT_SECRET", "k7Qm2vXp9LrT4sWz8YbN3cFh6JdGa1Ue5KoP0iRt"),
        ("JWT_ISSUER", "https://issuer.example"),
        ("JWT_AUDIENCE", "api,billing"),
        ("JWT_ALLOWED_CLAIMS", "role,tenant"),
        ("JWT_MAX_TTL_SECONDS", "3600"),
        ("AWS_SESSION_TOKEN", "fuzz"),
    ];
    let lookup = |k: &str| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    };
    Config::parse(lookup, env.iter().map(|(n, _)| *n))
        .expect("valid configuration")
        .token
});

fuzz_target!(|body: &[u8]| {
    let config = &*CONFIG;
    let Ok(request) = TokenRequest::parse(body) else {
        return;
    };
    let requested: Vec<String> = request.claims.keys().cloned().collect();
    let Ok(claims) = build(request, config, NOW, "jti-fuzz") else {
        return;
    };
    // What goes into the token: the claims as they serialize.
    let b = serde_json::to_value(&claims).expect("claims serialize");
    assert_eq!(b["iss"], json!(config.issuer));
    assert_eq!(
        (b["iat"].clone(), b["nbf"].clone()),
        (json!(NOW), json!(NOW))
    );
    assert_eq!(b["exp"], json!(NOW + claims.ttl));
    assert_eq!(b["jti"], json!("jti-fuzz"));
    assert!((1..=config.max_ttl).contains(&claims.ttl));
    let aud = match b.get("aud") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect(),
        // None included: with JWT_AUDIENCE set, every token names an audience.
        other => panic!("aud {other:?}"),
    };
    assert!(aud.iter().all(|a| config.audiences.contains(a)), "{aud:?}");
    for name in &requested {
        assert!(!SIDECAR_CLAIMS.contains(&name.as_str()) && config.allowed_claims.contains(name));
    }
});
