use super::*;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use opentelemetry_otlp::Protocol;
use opentelemetry_sdk::metrics::Temporality;

use crate::sampling::{Propagators, Root, Sampler};

const SECRET: &str = "k7Qm2vXp9LrT4sWz8YbN3cFh6JdGa1Ue5KoP0iRt";

/// The session token a default configuration needs, added unless a case sets it.
const SESSION: &str = "IQoJb3JpZ2luX2VjEsession";

fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.entry("AWS_SESSION_TOKEN".into())
        .or_insert_with(|| SESSION.into());
    Config::parse(|k| map.get(k).cloned(), map.keys().map(String::as_str))
}

/// [`parse`] without the default session token.
fn parse_exact(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::parse(|k| map.get(k).cloned(), map.keys().map(String::as_str))
}

/// Data-driven: each case is the environment and the variable the error must name
/// (or `None` when the configuration must be accepted).
fn check(pairs: &[(&str, &str)], expect: Option<(&str, &str)>) {
    let result = parse(pairs);
    match (result, expect) {
        (Ok(_), None) => {}
        (Err(e), Some((var, error_type))) => {
            let message = e.to_string();
            assert!(message.contains(var), "{message:?} should name {var}");
            assert_eq!(e.error_type(), error_type, "{message}");
            assert!(!message.contains(SECRET), "secret leaked: {message}");
            assert!(
                !message.contains(SESSION),
                "session token leaked: {message}"
            );
        }
        (Ok(c), Some(e)) => panic!("accepted {pairs:?} as {c:?}, expected error {e:?}"),
        (Err(e), None) => panic!("refused {pairs:?}: {e}"),
    }
}

#[test]
fn accepted_and_refused_environments() {
    check(&[("JWT_SECRET", SECRET)], None);
    check(&[], Some(("JWT_SECRET", "Config.MissingValue")));
    check(
        &[("JWT_SECRET", SECRET), ("SIDECAR_PORT", "70000")],
        Some(("SIDECAR_PORT", "Config.InvalidValue")),
    );
    check(
        &[("JWT_SECRET", SECRET), ("SIDECAR_PORT", "abc")],
        Some(("SIDECAR_PORT", "Config.InvalidValue")),
    );
    check(
        &[("JWT_SECRET", SECRET), ("SIDECAR_PORT", "9001")],
        Some(("SIDECAR_PORT", "Config.InvalidValue")),
    );
    check(
        &[("JWT_SECRET", SECRET), ("SIDECAR_PROT", "4000")],
        Some(("SIDECAR_PROT", "Config.UnknownVariable")),
    );
    check(
        &[("JWT_SECRET", SECRET), ("SIDECAR_LOG", "info,=[")],
        Some(("SIDECAR_LOG", "Config.InvalidValue")),
    );
    check(
        &[("JWT_SECRET", SECRET), ("SIDECAR_LOG_FORMAT", "xml")],
        Some(("SIDECAR_LOG_FORMAT", "Config.InvalidValue")),
    );
    check(
        &[("JWT_SECRET", SECRET), ("JWT_ALGORITHM", "none")],
        Some(("JWT_ALGORITHM", "Config.InvalidValue")),
    );
    check(
        &[("JWT_SECRET", SECRET), ("JWT_ALGORITHM", "ES256")],
        Some(("JWT_SECRET", "Config.InvalidValue")),
    );
    check(
        &[("JWT_ALGORITHM", "RS256")],
        Some(("JWT_PRIVATE_KEY", "Config.MissingValue")),
    );
    check(
        &[("JWT_PRIVATE_KEY", "x"), ("JWT_PRIVATE_KEY_FILE", "/x")],
        Some(("JWT_PRIVATE_KEY_FILE", "Config.InvalidValue")),
    );
    check(
        &[
            ("JWT_ALGORITHM", "ES256"),
            ("JWT_PRIVATE_KEY_FILE", "/nonexistent/key.pem"),
        ],
        Some(("JWT_PRIVATE_KEY_FILE", "Config.InvalidValue")),
    );
    check(
        &[("JWT_SECRET", SECRET), ("JWT_TTL_SECONDS", "0")],
        Some(("JWT_TTL_SECONDS", "Config.InvalidValue")),
    );
    check(
        &[("JWT_SECRET", SECRET), ("JWT_TTL_SECONDS", "7200")],
        Some(("JWT_TTL_SECONDS", "Config.InvalidValue")),
    );
    check(
        &[
            ("JWT_SECRET", SECRET),
            ("JWT_TTL_SECONDS", "7200"),
            ("JWT_MAX_TTL_SECONDS", "7200"),
        ],
        None,
    );
    check(
        &[("JWT_SECRET", SECRET), ("JWT_ALLOWED_CLAIMS", "role,exp")],
        Some(("JWT_ALLOWED_CLAIMS", "Config.InvalidValue")),
    );
    check(
        &[("JWT_SECRET", SECRET), ("JWT_ISSUER", " ")],
        Some(("JWT_ISSUER", "Config.InvalidValue")),
    );
    check(
        &[
            ("JWT_SECRET", SECRET),
            ("SIDECAR_TELEMETRY_TYPES", "platform,logs"),
        ],
        Some(("SIDECAR_TELEMETRY_TYPES", "Config.InvalidValue")),
    );
    check(
        &[
            ("JWT_SECRET", SECRET),
            ("SIDECAR_TELEMETRY_BUFFER_MS", "10"),
        ],
        Some(("SIDECAR_TELEMETRY_BUFFER_MS", "Config.InvalidValue")),
    );
    check(
        &[("JWT_SECRET", SECRET), ("SIDECAR_TELEMETRY_PORT", "4318")],
        Some(("SIDECAR_TELEMETRY_PORT", "Config.InvalidValue")),
    );
    check(
        &[("JWT_SECRET", SECRET), ("SIDECAR_FLUSH_TIMEOUT_MS", "-5")],
        Some(("SIDECAR_FLUSH_TIMEOUT_MS", "Config.InvalidValue")),
    );
    for bad in ["0", "99", "60001", "1s"] {
        check(
            &[("JWT_SECRET", SECRET), ("SIDECAR_FLUSH_INTERVAL_MS", bad)],
            Some(("SIDECAR_FLUSH_INTERVAL_MS", "Config.InvalidValue")),
        );
    }
}

/// `SIDECAR_EMF`: off unless asked for (each line is billed, docs/signals.md); the
/// namespace is checked against CloudWatch's rules, since CloudWatch drops lines it refuses silently.
#[test]
fn emf() {
    let off = parse(&[("JWT_SECRET", SECRET)]).unwrap();
    assert_eq!(off.emf_namespace, None);
    let off = parse(&[("JWT_SECRET", SECRET), ("SIDECAR_EMF", "off")]).unwrap();
    assert_eq!(off.emf_namespace, None);
    let on = parse(&[("JWT_SECRET", SECRET), ("SIDECAR_EMF", "on")]).unwrap();
    assert_eq!(on.emf_namespace.as_deref(), Some("LambdaSidecar"));
    for good in ["Orders/Sidecar", "a", "my-app_1.2 #x:y", &"n".repeat(255)] {
        let on = parse(&[
            ("JWT_SECRET", SECRET),
            ("SIDECAR_EMF", "ON"),
            ("SIDECAR_EMF_NAMESPACE", good),
        ])
        .unwrap();
        assert_eq!(on.emf_namespace.as_deref(), Some(good));
    }
    check(
        &[("JWT_SECRET", SECRET), ("SIDECAR_EMF", "yes")],
        Some(("SIDECAR_EMF", "Config.InvalidValue")),
    );
    for bad in ["", "   ", "AWS/Lambda", "a\"b", "émf", &"n".repeat(256)] {
        check(
            &[
                ("JWT_SECRET", SECRET),
                ("SIDECAR_EMF", "on"),
                ("SIDECAR_EMF_NAMESPACE", bad),
            ],
            Some(("SIDECAR_EMF_NAMESPACE", "Config.InvalidValue")),
        );
    }
}

/// `SIDECAR_FAAS_TRIGGER`: `other` unless set; exactly the semantic conventions'
/// well-known values, and an error that lists them.
#[test]
fn faas_trigger() {
    let default = parse(&[("JWT_SECRET", SECRET)]).unwrap();
    assert_eq!(default.telemetry.faas_trigger, "other");
    for trigger in ["datasource", "http", "pubsub", "timer", "other"] {
        let config = parse(&[("JWT_SECRET", SECRET), ("SIDECAR_FAAS_TRIGGER", trigger)]);
        assert_eq!(config.unwrap().telemetry.faas_trigger, trigger);
    }
    for bad in ["", "sqs", "https", "cron", "http,timer"] {
        let error = parse(&[("JWT_SECRET", SECRET), ("SIDECAR_FAAS_TRIGGER", bad)])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("SIDECAR_FAAS_TRIGGER")
                && error.contains("datasource, http, pubsub, timer, other"),
            "{error}"
        );
    }
}

/// `SIDECAR_METRICS_ADDR`: an IP and a non-zero port; accepted by `serve`, refused as a
/// configuration error inside Lambda.
#[test]
fn metrics_addr() {
    for bad in ["9464", "localhost:9464", "0.0.0.0:0", "0.0.0.0:70000", ""] {
        check(
            &[("JWT_SECRET", SECRET), ("SIDECAR_METRICS_ADDR", bad)],
            Some(("SIDECAR_METRICS_ADDR", "Config.InvalidValue")),
        );
    }
    let config = parse(&[("JWT_SECRET", SECRET)]).unwrap();
    assert_eq!(config.metrics_addr, None);
    assert_eq!(config.check_extension_mode(), Ok(()));
    for (raw, addr) in [
        ("0.0.0.0:9464", "0.0.0.0:9464"),
        (" [::]:9464", "[::]:9464"),
    ] {
        let config = parse(&[("JWT_SECRET", SECRET), ("SIDECAR_METRICS_ADDR", raw)]).unwrap();
        assert_eq!(config.metrics_addr, Some(addr.parse().unwrap()));
        let refused = config.check_extension_mode().unwrap_err();
        assert_eq!(refused.error_type(), "Config.InvalidValue");
        let message = refused.to_string();
        assert!(message.contains("SIDECAR_METRICS_ADDR"), "{message}");
        assert!(message.contains("serve"), "{message}");
    }
}

/// `SIDECAR_TOKEN_AUTH` and `JWT_TYP`: refused values name the variable (both variables
/// when the session token is missing) and never echo the session token.
#[test]
fn token_auth_and_typ() {
    const LONG_TYP: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    assert_eq!(LONG_TYP.len(), 65);
    let base = [("JWT_SECRET", SECRET), ("AWS_SESSION_TOKEN", SESSION)];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut pairs = base.to_vec();
        pairs.extend_from_slice(extra);
        pairs
    };
    check(&base, None);
    check(&with(&[("SIDECAR_TOKEN_AUTH", "session-token")]), None);
    check(&with(&[("JWT_TYP", "at+jwt")]), None);
    check(&with(&[("JWT_TYP", "application/at+jwt")]), None);
    assert!(parse_exact(&[("JWT_SECRET", SECRET), ("SIDECAR_TOKEN_AUTH", "off")]).is_ok());
    // Unset: the error names both variables.
    let e = parse_exact(&[("JWT_SECRET", SECRET)]).unwrap_err();
    assert_eq!(e.error_type(), "Config.MissingValue");
    let message = e.to_string();
    assert!(
        message.contains("AWS_SESSION_TOKEN") && message.contains("SIDECAR_TOKEN_AUTH"),
        "{message}"
    );
    for (pairs, var, error_type) in [
        (
            vec![("JWT_SECRET", SECRET), ("AWS_SESSION_TOKEN", "")],
            "SIDECAR_TOKEN_AUTH",
            "Config.MissingValue",
        ),
        (
            vec![("JWT_SECRET", SECRET), ("AWS_SESSION_TOKEN", "a b\n")],
            "AWS_SESSION_TOKEN",
            "Config.InvalidValue",
        ),
        (
            with(&[("SIDECAR_TOKEN_AUTH", "none")]),
            "SIDECAR_TOKEN_AUTH",
            "Config.InvalidValue",
        ),
        (with(&[("JWT_TYP", "")]), "JWT_TYP", "Config.InvalidValue"),
        (
            with(&[("JWT_TYP", "at jwt")]),
            "JWT_TYP",
            "Config.InvalidValue",
        ),
        (
            with(&[("JWT_TYP", "JWT\"")]),
            "JWT_TYP",
            "Config.InvalidValue",
        ),
        (
            with(&[("JWT_TYP", LONG_TYP)]),
            "JWT_TYP",
            "Config.InvalidValue",
        ),
    ] {
        check(&pairs, Some((var, error_type)));
        let message = parse(&pairs).unwrap_err().to_string();
        assert!(
            !message.contains(SESSION) && !message.contains("a b"),
            "{message}"
        );
    }
    let c = parse(&base).unwrap();
    assert_eq!(c.token.typ, "JWT");
    assert_eq!(c.token.auth, TokenAuth::SessionToken(SESSION.to_string()));
    assert!(
        !format!("{c:?}").contains(SESSION),
        "Debug must not print it"
    );
    let c = parse(&with(&[
        ("SIDECAR_TOKEN_AUTH", "OFF"),
        ("JWT_TYP", "at+jwt"),
    ]))
    .unwrap();
    assert_eq!(
        (c.token.auth, c.token.typ.as_str()),
        (TokenAuth::Off, "at+jwt")
    );
}

/// `JWT_JWKS_URI`: an https URL, only with an asymmetric key and an https `JWT_ISSUER`
/// (what a relying party's discovery needs); each refusal names the variable to fix.
#[test]
fn jwks_uri() {
    const URI: &str = "https://keys.s3.eu-west-1.amazonaws.com/.well-known/jwks.json";
    const ISSUER: &str = "https://keys.s3.eu-west-1.amazonaws.com";
    let es256 = |extra: &[(&'static str, &'static str)]| {
        let mut pairs = vec![("JWT_ALGORITHM", "ES256"), ("JWT_PRIVATE_KEY", "x")];
        pairs.extend_from_slice(extra);
        pairs
    };
    assert_eq!(parse(&es256(&[])).unwrap().token.jwks_uri, None);
    let c = parse(&es256(&[("JWT_JWKS_URI", URI), ("JWT_ISSUER", ISSUER)])).unwrap();
    assert_eq!(c.token.jwks_uri.as_deref(), Some(URI));
    check(
        &es256(&[
            ("JWT_JWKS_URI", "https://idp.example:8443/keys"),
            ("JWT_ISSUER", "https://idp.example/"),
        ]),
        None,
    );
    for bad in [
        "http://keys.example/jwks.json",
        "keys.example/jwks.json",
        "https:///jwks.json",
        "https://keys.example/jwks.json?v=1",
        "https://keys.example/jwks.json#k",
        "https://user@keys.example/jwks.json",
        "https://keys.example/a b",
        "",
    ] {
        check(
            &es256(&[("JWT_JWKS_URI", bad), ("JWT_ISSUER", ISSUER)]),
            Some(("JWT_JWKS_URI", "Config.InvalidValue")),
        );
    }
    for issuer in [
        "lambda-sidecar",
        "http://issuer.example",
        "https://issuer.example?x=1",
    ] {
        check(
            &es256(&[("JWT_JWKS_URI", URI), ("JWT_ISSUER", issuer)]),
            Some(("JWT_ISSUER", "Config.InvalidValue")),
        );
    }
    // The default issuer is not a URL either.
    let e = parse(&es256(&[("JWT_JWKS_URI", URI)]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("JWT_ISSUER") && e.contains("JWT_JWKS_URI"),
        "{e}"
    );
    // An HMAC secret is never published: a JWKS URL for it is a mistake.
    let e = parse(&[
        ("JWT_SECRET", SECRET),
        ("JWT_JWKS_URI", URI),
        ("JWT_ISSUER", ISSUER),
    ])
    .unwrap_err();
    assert_eq!(e.error_type(), "Config.InvalidValue");
    let message = e.to_string();
    assert!(
        message.contains("JWT_JWKS_URI") && message.contains("HMAC"),
        "{message}"
    );
    assert!(!message.contains(SECRET), "{message}");
}

#[test]
fn a_pem_in_the_key_file_variable_is_not_echoed() {
    let body = "MC4CAQAwBQYDK2VwBCIEIPmZ0b3JhbmRvbWtleW1hdGVyaWFsZm9ydGVzdHM=";
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
    let e = parse(&[("JWT_ALGORITHM", "EdDSA"), ("JWT_PRIVATE_KEY_FILE", &pem)])
        .expect_err("a PEM is not a path");
    let message = e.to_string();
    assert!(message.contains("JWT_PRIVATE_KEY_FILE"), "{message}");
    assert!(message.contains("put it in JWT_PRIVATE_KEY"), "{message}");
    assert!(
        !message.contains(body) && !message.contains("BEGIN"),
        "key material echoed: {message}"
    );
    // Every key-bearing variable is hidden by the error itself, whoever builds it.
    let hidden: Vec<&str> = VARIABLES
        .iter()
        .filter(|v| v.hidden)
        .map(|v| v.name)
        .collect();
    assert_eq!(
        hidden,
        [
            "SIDECAR_OTLP_HEADERS_SOURCE",
            "JWT_SECRET",
            "JWT_PRIVATE_KEY",
            "JWT_PRIVATE_KEY_FILE",
            "JWT_KEY_SOURCE",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
        ]
    );
    for var in hidden {
        let e = ConfigError::Invalid {
            var,
            value: body.to_string(),
            expected: "x".to_string(),
        };
        assert!(!e.to_string().contains(body), "{e}");
    }
}

#[test]
fn values_that_are_not_utf8_are_refused_without_echo() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt as _;
    let raw = |name: &str, value: &[u8]| (OsString::from(name), OsString::from_vec(value.to_vec()));
    for var in [
        "SIDECAR_LOG_FORMAT",
        "JWT_SECRET",
        "OTEL_EXPORTER_OTLP_HEADERS",
    ] {
        let e = check_utf8(&[
            raw("PATH", b"/usr/bin"),
            raw(var, b"k7Qm2vXp\xff\xfe9LrT4sWz"),
        ])
        .expect_err("not UTF-8");
        let message = e.to_string();
        assert!(
            message.contains(var) && message.contains("UTF-8"),
            "{message}"
        );
        assert!(!message.contains("k7Qm2vXp"), "value echoed: {message}");
        assert_eq!(e.error_type(), "Config.InvalidValue");
    }
    // Variables the sidecar does not read are none of its business.
    assert!(check_utf8(&[raw("LANG_FILE", b"\xff"), raw("SIDECAR_LOG", b"info")]).is_ok());
}

#[test]
fn defaults() {
    let c = parse(&[
        ("JWT_SECRET", SECRET),
        ("AWS_LAMBDA_FUNCTION_NAME", "orders"),
    ])
    .unwrap();
    assert_eq!(c.port, 3003);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.token.algorithm, Algorithm::HS256);
    assert_eq!(c.token.issuer, "lambda-sidecar");
    assert_eq!(c.token.default_subject, "orders");
    assert_eq!((c.token.ttl, c.token.max_ttl), (900, 3600));
    assert!(c.token.audiences.is_empty() && c.token.allowed_claims.is_empty());
    assert_eq!(c.telemetry.types, ["platform", "function"]);
    assert_eq!(c.telemetry.buffer_ms, 25);
    assert_eq!(c.telemetry.port, None);
    assert_eq!(c.telemetry.flush_timeout, Duration::from_millis(500));
    assert_eq!(c.telemetry.flush_interval, Duration::from_secs(1));
    assert!(
        !format!("{c:?}").contains(SECRET),
        "Debug must not print the secret"
    );
}

#[test]
fn lists_are_trimmed() {
    let c = parse(&[
        ("JWT_SECRET", SECRET),
        ("JWT_AUDIENCE", " api , billing,"),
        ("JWT_ALLOWED_CLAIMS", "role, tenant"),
        ("JWT_ALGORITHM", "hs512"),
    ])
    .unwrap();
    assert_eq!(c.token.audiences, ["api", "billing"]);
    assert!(c.token.allowed_claims.contains("tenant"));
    assert_eq!(c.token.algorithm, Algorithm::HS512);
}

/// JWT_KEY_SOURCE and its companions: each refusal names its variable, none shows a key
/// or a credential; endpoints resolve as the AWS SDKs do.
#[test]
fn key_sources() {
    const AWS: [(&str, &str); 3] = [
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut pairs = AWS.to_vec();
        pairs.extend_from_slice(extra);
        pairs
    };
    let invalid = "Config.InvalidValue";
    for (pairs, expect) in [
        (
            with(&[("JWT_KEY_SOURCE", "vault:x")]),
            Some(("JWT_KEY_SOURCE", invalid)),
        ),
        (
            with(&[("JWT_KEY_SOURCE", "ssm:")]),
            Some(("JWT_KEY_SOURCE", invalid)),
        ),
        (
            with(&[("JWT_KEY_SOURCE", "ssm:a b")]),
            Some(("JWT_KEY_SOURCE", invalid)),
        ),
        (
            with(&[("JWT_KEY_SOURCE", "ssm:/k"), ("JWT_SECRET", SECRET)]),
            Some(("JWT_SECRET", invalid)),
        ),
        (
            with(&[("JWT_KEY_SOURCE", "kms:k")]),
            Some(("JWT_ALGORITHM", invalid)),
        ),
        (
            with(&[("JWT_KEY_SOURCE", "kms:k"), ("JWT_ALGORITHM", "EdDSA")]),
            Some(("JWT_ALGORITHM", invalid)),
        ),
        (
            vec![("JWT_KEY_SOURCE", "secretsmanager:k")],
            Some(("AWS_REGION", "Config.MissingValue")),
        ),
        (
            vec![
                ("JWT_KEY_SOURCE", "secretsmanager:k"),
                ("AWS_REGION", "eu-west-1"),
                ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ],
            Some(("AWS_SECRET_ACCESS_KEY", "Config.MissingValue")),
        ),
        (
            with(&[("JWT_SECRET", SECRET), ("JWT_KMS_VERIFY_KEYS", "k2")]),
            Some(("JWT_KMS_VERIFY_KEYS", invalid)),
        ),
        (
            with(&[
                ("JWT_KEY_SOURCE", "ssm:/k"),
                ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:5000/path"),
            ]),
            Some(("AWS_ENDPOINT_URL_SSM", invalid)),
        ),
        (
            with(&[
                ("JWT_KEY_SOURCE", "ssm:/k"),
                ("JWT_KEY_REFRESH_SECONDS", "0"),
            ]),
            Some(("JWT_KEY_REFRESH_SECONDS", invalid)),
        ),
        (with(&[("JWT_KEY_SOURCE", "ssm:/k")]), None),
        (
            with(&[("JWT_KEY_SOURCE", "env"), ("JWT_SECRET", SECRET)]),
            None,
        ),
    ] {
        check(&pairs, expect);
    }
    let endpoint = |extra: &[(&'static str, &'static str)]| {
        let c = parse(&with(extra)).unwrap();
        c.token.aws.map(|a| a.endpoint)
    };
    assert_eq!(
        endpoint(&[("JWT_KEY_SOURCE", "secretsmanager:k")]).as_deref(),
        Some("https://secretsmanager.eu-west-1.amazonaws.com")
    );
    assert_eq!(
        endpoint(&[
            ("JWT_KEY_SOURCE", "kms:alias/jwt"),
            ("JWT_ALGORITHM", "ES256"),
            ("AWS_ENDPOINT_URL", "http://localhost:4566/"),
            ("AWS_ENDPOINT_URL_SSM", "http://ssm.local"),
        ])
        .as_deref(),
        Some("http://localhost:4566")
    );
    assert_eq!(
        endpoint(&[
            ("JWT_KEY_SOURCE", "ssm:/k"),
            ("AWS_ENDPOINT_URL", "http://localhost:4566"),
            ("AWS_ENDPOINT_URL_SSM", "http://ssm.local"),
        ])
        .as_deref(),
        Some("http://ssm.local")
    );
    let c = parse(&with(&[("JWT_KEY_SOURCE", "ssm:/k")])).unwrap();
    assert!(!format!("{c:?}").contains(SECRET), "{c:?}");
}

/// What Lambda puts in `AWS_CONTAINER_CREDENTIALS_FULL_URI` could be any loopback or
/// link-local URL; this one is made up.
const CONTAINER_URI: &str = "http://127.0.0.1:9001/2021-04-23/credentials";

/// A SnapStart environment: no `AWS_SESSION_TOKEN`, no access keys, the container credentials
/// endpoint and its token instead (`parse_exact`: no default session token).
fn snapstart(extra: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
    let mut pairs = vec![
        ("JWT_SECRET", SECRET),
        ("AWS_REGION", "eu-west-1"),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start"),
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", CONTAINER_URI),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", SESSION),
    ];
    for (name, value) in extra {
        pairs.retain(|(k, _)| k != name);
        if !value.is_empty() || *name == "AWS_SESSION_TOKEN" {
            pairs.push((name, value));
        }
    }
    parse_exact(&pairs)
}

/// SnapStart gives no `AWS_SESSION_TOKEN`: `/token` then checks the header against
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN`, which the function has too; `AWS_SESSION_TOKEN`
/// wins whenever it is set, and without either the error names both and the way out.
#[test]
fn snapstart_token_auth() {
    let c = snapstart(&[]).unwrap();
    assert_eq!(c.token.auth, TokenAuth::ContainerToken(SESSION.to_string()));
    assert_eq!(c.token.auth.expected(), Some(SESSION));
    assert_eq!(
        c.token.auth.variable(),
        Some("AWS_CONTAINER_AUTHORIZATION_TOKEN")
    );
    assert!(!format!("{c:?}").contains(SESSION), "{c:?}");
    // Either sign of SnapStart is enough.
    for without in [
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        let c = snapstart(&[(without, "")]).unwrap();
        assert_eq!(c.token.auth, TokenAuth::ContainerToken(SESSION.to_string()));
    }
    // AWS_SESSION_TOKEN, when there is one, is what the function sends elsewhere: it wins.
    let c = snapstart(&[("AWS_SESSION_TOKEN", "the-session-token")]).unwrap();
    assert_eq!(
        c.token.auth,
        TokenAuth::SessionToken("the-session-token".to_string())
    );
    // Set but empty counts as absent here.
    let c = snapstart(&[("AWS_SESSION_TOKEN", "")]).unwrap();
    assert_eq!(c.token.auth, TokenAuth::ContainerToken(SESSION.to_string()));
    // Neither: refused, naming both and SIDECAR_TOKEN_AUTH.
    let e = snapstart(&[("AWS_CONTAINER_AUTHORIZATION_TOKEN", "")]).unwrap_err();
    assert_eq!(e.error_type(), "Config.MissingValue");
    let message = e.to_string();
    for name in [
        "AWS_CONTAINER_AUTHORIZATION_TOKEN is required",
        "SnapStart",
        "AWS_SESSION_TOKEN",
        "SIDECAR_TOKEN_AUTH=off",
    ] {
        assert!(message.contains(name), "{message}");
    }
    let c = snapstart(&[
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", ""),
        ("SIDECAR_TOKEN_AUTH", "off"),
    ])
    .unwrap();
    assert_eq!(c.token.auth, TokenAuth::Off);
    // A value a header cannot carry is refused without echo.
    for bad in [
        "line\nbreak",
        " leading",
        "trailing ",
        "tab\there",
        "caf\u{e9}",
    ] {
        let e = snapstart(&[("AWS_CONTAINER_AUTHORIZATION_TOKEN", bad)]).unwrap_err();
        assert_eq!(e.error_type(), "Config.InvalidValue", "{bad:?}");
        let message = e.to_string();
        assert!(
            message.contains("AWS_CONTAINER_AUTHORIZATION_TOKEN") && !message.contains(bad),
            "{message}"
        );
    }
    // Spaces inside are fine ("Basic abcd", as the AWS SDKs' documentation shows).
    let c = snapstart(&[("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Basic abcd")]).unwrap();
    assert_eq!(c.token.auth.expected(), Some("Basic abcd"));
    // Outside SnapStart nothing changes: AWS_SESSION_TOKEN is required.
    let e = parse_exact(&[
        ("JWT_SECRET", SECRET),
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", SESSION),
    ])
    .unwrap_err();
    assert!(
        e.to_string().starts_with("AWS_SESSION_TOKEN is required"),
        "{e}"
    );
}

/// The AWS key sources sign with the access-key variables when they are set, else with the
/// container credentials endpoint (SnapStart), whose URI must be https or local.
#[test]
fn snapstart_key_source_credentials() {
    let source = ("JWT_KEY_SOURCE", "secretsmanager:k");
    let credentials = |extra: &[(&'static str, &'static str)]| {
        let mut pairs = vec![source, ("JWT_SECRET", "")];
        pairs.extend_from_slice(extra);
        snapstart(&pairs).map(|c| c.token.aws.unwrap().credentials)
    };
    match credentials(&[]).unwrap() {
        AwsCredentials::Container(ContainerCredentials {
            uri,
            authorization: ContainerAuthorization::Token(token),
        }) => assert_eq!((uri.as_str(), token.as_str()), (CONTAINER_URI, SESSION)),
        other => panic!("{other:?}"),
    }
    // The file wins over the variable, as in the AWS SDKs (the header check still uses the
    // variable, which the function has).
    match credentials(&[("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/var/run/token")]).unwrap() {
        AwsCredentials::Container(ContainerCredentials {
            authorization: ContainerAuthorization::File(path),
            ..
        }) => assert_eq!(path, std::path::Path::new("/var/run/token")),
        other => panic!("{other:?}"),
    }
    match credentials(&[
        ("AWS_CONTAINER_AUTHORIZATION_TOKEN", ""),
        ("SIDECAR_TOKEN_AUTH", "off"),
    ])
    .unwrap()
    {
        AwsCredentials::Container(ContainerCredentials {
            authorization: ContainerAuthorization::None,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // The variables win when set, as in the SDKs' default chain.
    match credentials(&[
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
    ])
    .unwrap()
    {
        AwsCredentials::Keys { access_key_id, .. } => assert_eq!(access_key_id, "AKIDEXAMPLE"),
        other => panic!("{other:?}"),
    }
    // Half of the keys is still an error about the other half.
    let e = credentials(&[("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")]).unwrap_err();
    assert_eq!(
        e,
        ConfigError::Missing {
            var: "AWS_SECRET_ACCESS_KEY",
            why: "JWT_KEY_SOURCE names an AWS key source, which needs credentials: \
                  AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or, as Lambda gives them with \
                  SnapStart, AWS_CONTAINER_CREDENTIALS_FULL_URI",
        }
    );
    // Neither the keys nor the endpoint: the error names both.
    let e = credentials(&[("AWS_CONTAINER_CREDENTIALS_FULL_URI", "")]).unwrap_err();
    let message = e.to_string();
    assert!(
        message.starts_with("AWS_ACCESS_KEY_ID is required")
            && message.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        "{message}"
    );
    // Debug shows the URI, never the token.
    let c = snapstart(&[source, ("JWT_SECRET", "")]).unwrap();
    let debug = format!("{c:?}");
    assert!(
        debug.contains(CONTAINER_URI) && !debug.contains(SESSION),
        "{debug}"
    );

    // The URIs accepted: https anywhere, http only to this machine or its link.
    for good in [
        CONTAINER_URI,
        "http://127.3.2.1/creds",
        "http://localhost:8080/get-credentials",
        "http://LOCALHOST/x",
        "http://169.254.170.2/v2/credentials/abc",
        "http://169.254.100.1:9001/creds",
        "http://[::1]:9001/creds",
        "http://[fd00:ec2::23]/v1/credentials",
        "https://credentials.example.com/get?role=x",
    ] {
        assert_eq!(container_uri(good).as_deref(), Some(good), "{good}");
        let c = snapstart(&[
            source,
            ("JWT_SECRET", ""),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", good),
        ]);
        assert!(c.is_ok(), "{good}: {c:?}");
    }
    for bad in [
        "http://example.com/creds",
        "http://10.0.0.1/creds",
        "http://0.0.0.0:9001/creds",
        "http://[fe80::1]/creds",
        "http://127.0.0.1.nip.io/creds",
        "http://user:pw@127.0.0.1/creds",
        "https://user@example.com/creds",
        "ftp://127.0.0.1/creds",
        "127.0.0.1:9001/creds",
        "/2021-04-23/credentials",
        "not a uri",
    ] {
        assert_eq!(container_uri(bad), None, "{bad}");
        let e = snapstart(&[
            source,
            ("JWT_SECRET", ""),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", bad),
        ])
        .unwrap_err();
        assert_eq!(e.error_type(), "Config.InvalidValue", "{bad}");
        assert!(
            e.to_string().contains("AWS_CONTAINER_CREDENTIALS_FULL_URI")
                && e.to_string().contains("loopback or link-local"),
            "{e}"
        );
    }
}

/// A secret pasted into JWT_KEY_SOURCE by mistake is never printed: the error names the
/// variable and the accepted forms, and shows the scheme at most (issue 18, item 10).
#[test]
fn a_secret_in_the_key_source_variable_is_not_echoed() {
    const PEM_BODY: &str = "MC4CAQAwBQYDK2VwBCIEIPmZ0b3JhbmRvbWtleW1hdGVyaWFsZm9ydGVzdHM=";
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----\n");
    let json = format!("{{\"key\":\"{SECRET}\"}}");
    let vault = format!("vault:{SECRET}");
    let spaced = format!("ssm:{SECRET} {SECRET}");
    let arn = format!("arn:aws:secretsmanager:eu-west-1:123456789012:secret:{SECRET}");
    // (value, what is kept out of the message, what the message says of the value)
    let cases = [
        (SECRET, SECRET, "without a scheme"),
        (pem.as_str(), PEM_BODY, "without a scheme"),
        (json.as_str(), SECRET, "without a scheme"),
        (vault.as_str(), SECRET, "starting with \"vault:\""),
        (spaced.as_str(), SECRET, "starting with \"ssm:\""),
        (arn.as_str(), SECRET, "an ARN needs its source in front"),
    ];
    for (value, secret, says) in cases {
        let e = parse(&[("JWT_KEY_SOURCE", value)]).expect_err("not a key source");
        let message = e.to_string();
        assert!(message.contains("JWT_KEY_SOURCE"), "{message}");
        assert!(
            message.contains("secretsmanager:<secret id or ARN>"),
            "{message}"
        );
        assert!(!message.contains(secret), "value echoed: {message}");
        assert!(message.contains(says), "{message:?} should say {says:?}");
        assert!(!format!("{e:?}").contains(secret), "value in Debug: {e:?}");
        assert_eq!(e.error_type(), "Config.InvalidValue");
    }
}

/// Credentials in a URL's user info are not echoed either: JWT_JWKS_URI and JWT_ISSUER
/// refuse them, AWS_ENDPOINT_URL with a path is refused; the rest of the URL is shown.
#[test]
fn credentials_in_a_url_are_not_echoed() {
    let pem_key =
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIPmZ0b3Jh\n-----END PRIVATE KEY-----\n";
    let url = format!("https://admin:{SECRET}@keys.example.com/jwks.json");
    let endpoint = format!("http://admin:{SECRET}@127.0.0.1:5000/path?x=1");
    for (pairs, var) in [
        (
            vec![
                ("JWT_ALGORITHM", "EdDSA"),
                ("JWT_PRIVATE_KEY", pem_key),
                ("JWT_ISSUER", "https://issuer.example.com"),
                ("JWT_JWKS_URI", url.as_str()),
            ],
            "JWT_JWKS_URI",
        ),
        (
            vec![
                ("JWT_ALGORITHM", "EdDSA"),
                ("JWT_PRIVATE_KEY", pem_key),
                ("JWT_ISSUER", url.as_str()),
                ("JWT_JWKS_URI", "https://keys.example.com/jwks.json"),
            ],
            "JWT_ISSUER",
        ),
        (
            vec![
                ("JWT_KEY_SOURCE", "ssm:/k"),
                ("AWS_REGION", "eu-west-1"),
                ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
                ("AWS_SECRET_ACCESS_KEY", "x"),
                ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ],
            "AWS_ENDPOINT_URL",
        ),
    ] {
        let e = parse(&pairs).expect_err("refused");
        let message = e.to_string();
        assert!(message.contains(var), "{message}");
        assert!(!message.contains(SECRET), "credentials echoed: {message}");
        assert!(message.contains("<user info not shown>@"), "{message}");
    }
    assert_eq!(
        shown("JWT_JWKS_URI", "https://a:b@h.example/p?q#f"),
        "\"https://<user info not shown>@h.example/p?q#f\""
    );
    assert_eq!(
        shown("JWT_ISSUER", "https://h.example/a@b"),
        "\"https://h.example/a@b\""
    );
    assert_eq!(shown("JWT_TYP", "a@b"), "\"a@b\"");
}

// The OTLP export (`ExportConfig`) and its sampler: read apart from `Config`.

fn export(pairs: &[(&str, &str)]) -> Result<ExportConfig, ConfigError> {
    let map: HashMap<&str, &str> = pairs.iter().copied().collect();
    ExportConfig::parse(|k| map.get(k).map(|v| v.to_string()))
}

/// OTEL_EXPORTER_OTLP_HEADERS and its per-signal forms: what opentelemetry-otlp sends
/// (split at `,` and the first `=`, trimmed, percent-decoded) is accepted as such; what it
/// would skip or send mangled is refused, naming the variable and the expected form, never
/// showing the value (issue 18, item 9).
#[test]
fn otlp_headers_are_checked_without_showing_them() {
    const VAR: &str = "OTEL_EXPORTER_OTLP_HEADERS";
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    for (raw, expected) in [
        ("", pairs(&[])),
        ("api-key=k7Qm", pairs(&[("api-key", "k7Qm")])),
        (
            " Authorization = Bearer%20tok== , x-tenant=a%2Cb%25c ,",
            pairs(&[("authorization", "Bearer tok=="), ("x-tenant", "a,b%c")]),
        ),
        // A raw space inside a value is sent as is by the SDK: accepted alike.
        (
            "authorization=Bearer tok",
            pairs(&[("authorization", "Bearer tok")]),
        ),
        ("x-name=J%C3%BCrgen", pairs(&[("x-name", "Jürgen")])),
        ("a=1,,b=2", pairs(&[("a", "1"), ("b", "2")])),
    ] {
        assert_eq!(
            telemetry::otlp_headers(VAR, raw).unwrap(),
            expected,
            "{raw:?}"
        );
    }
    let secret = "Bearer k7Qm2vXp9LrT4sWz";
    for (raw, says) in [
        // The audit's case: a space where the `=` should be.
        (
            format!("Authorization {secret}"),
            "member 1 of 1 has no '='",
        ),
        (format!("a=1,={secret}"), "member 2 of 2 has an empty key"),
        (
            format!("x api={secret}"),
            "member 1 of 1 has a key that is not an HTTP header name",
        ),
        (
            "authorization=".to_string(),
            "(authorization) has an empty value",
        ),
        (
            format!("authorization={secret}%zz"),
            "(authorization) has a '%' not followed by two hex digits",
        ),
        (
            format!("authorization={secret}%"),
            "(authorization) has a '%' not followed by two hex digits",
        ),
        (
            format!("authorization={secret}%FF"),
            "or encoding no UTF-8 text",
        ),
        (
            format!("authorization={secret}%0A"),
            "(authorization) has a value with control characters",
        ),
    ] {
        let e = telemetry::otlp_headers(VAR, &raw).expect_err(&raw);
        let message = e.to_string();
        assert!(message.contains(VAR), "{message}");
        assert!(message.contains("key=value"), "{message}");
        assert!(message.contains(says), "{message:?} should say {says:?}");
        assert!(!message.contains("k7Qm2vXp"), "value echoed: {message}");
        assert!(
            !format!("{e:?}").contains("k7Qm2vXp"),
            "value in Debug: {e:?}"
        );
        assert_eq!(e.error_type(), "Config.InvalidValue");
    }
    // Through ExportConfig, each of the four variables, whether or not a signal exports.
    for var in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
    ] {
        let bad = format!("Authorization {secret}");
        for endpoint in [None, Some("http://collector:4318")] {
            let mut env = vec![(var, bad.as_str())];
            env.extend(endpoint.map(|e| ("OTEL_EXPORTER_OTLP_ENDPOINT", e)));
            let message = export(&env).expect_err(var).to_string();
            assert!(
                message.starts_with(&format!("{var}=<not shown>")),
                "{message}"
            );
            assert!(!message.contains("k7Qm2vXp"), "{message}");
        }
        assert!(export(&[(var, "authorization=Bearer%20x")]).is_ok());
    }
}

fn sampler(pairs: &[(&str, &str)]) -> Result<Sampler, ConfigError> {
    let map: HashMap<&str, &str> = pairs.iter().copied().collect();
    Sampler::parse(|k| map.get(k).map(|v| (*v).to_owned()))
}

#[test]
fn temporality_preference() {
    const TEMPORALITY_VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE";
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c");
    for (value, want) in [
        ("cumulative", Temporality::Cumulative),
        ("Delta", Temporality::Delta),
        (" LOWMEMORY ", Temporality::LowMemory),
        ("", Temporality::Cumulative),
    ] {
        let config = export(&[endpoint, (TEMPORALITY_VAR, value)]).unwrap();
        assert_eq!(config.temporality, want, "{value:?}");
    }
    let err = export(&[endpoint, (TEMPORALITY_VAR, "deltas")]).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(TEMPORALITY_VAR) && message.contains("cumulative, delta or lowmemory"),
        "{message}"
    );
}

/// A build without the `grpc` feature refuses `grpc` at init, naming the variable that
/// asked for it and the way out, instead of exporting nothing.
#[cfg(not(feature = "grpc"))]
#[test]
fn grpc_is_refused_by_a_build_without_it() {
    for var in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ] {
        let err = export(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            (var, "grpc"),
        ])
        .unwrap_err();
        let ConfigError::Invalid {
            var: named,
            expected,
            ..
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!(*named, var);
        assert!(
            expected.contains("http/protobuf") && expected.contains("`grpc` Cargo feature"),
            "{err}"
        );
    }
}

#[test]
fn export_configuration() {
    let none = ExportConfig {
        traces: None,
        metrics: None,
        logs: None,
        certificate: None,
        temporality: Temporality::Cumulative,
        sampler: Sampler::default(),
        propagators: Propagators::default(),
        service_name: None,
        resource_attributes: Vec::new(),
        warnings: Vec::new(),
        set: Vec::new(),
        aws: Default::default(),
        forward: Default::default(),
    };
    assert_eq!(export(&[]).unwrap(), none);
    let both = export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")]).unwrap();
    let protocol = |otlp: &Option<Otlp>| otlp.as_ref().map(|o| o.protocol);
    assert_eq!(protocol(&both.traces), Some(Protocol::HttpBinary));
    assert_eq!(protocol(&both.metrics), Some(Protocol::HttpBinary));
    assert_eq!(
        protocol(&both.logs),
        Some(Protocol::HttpBinary),
        "logs are on by default"
    );
    #[cfg(feature = "grpc")]
    {
        let grpc = export(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap();
        assert_eq!(protocol(&grpc.traces), Some(Protocol::Grpc));
    }
    let traces_only =
        export(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c/v1/traces")]).unwrap();
    assert_eq!(
        (traces_only.traces.is_some(), traces_only.metrics.is_some()),
        (true, false)
    );
    let off = export(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
        ("OTEL_METRICS_EXPORTER", "none"),
    ])
    .unwrap();
    assert_eq!((off.traces.is_some(), off.metrics.is_some()), (true, false));
    let json = export(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ]);
    assert!(matches!(
        json,
        Err(ConfigError::Invalid {
            var: "OTEL_EXPORTER_OTLP_PROTOCOL",
            ..
        })
    ));
    let ca = export(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem")]).unwrap();
    assert_eq!(ca.certificate.as_deref(), Some("/etc/ca.pem"));
    let logs_off = export(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
        ("OTEL_LOGS_EXPORTER", "none"),
    ])
    .unwrap();
    assert_eq!(
        (logs_off.traces.is_some(), logs_off.logs.is_some()),
        (true, false)
    );
    let logs_only = export(&[
        ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://c:4318/v1/logs"),
        ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf"),
    ])
    .unwrap();
    assert_eq!(
        (protocol(&logs_only.traces), protocol(&logs_only.logs)),
        (None, Some(Protocol::HttpBinary))
    );
    #[cfg(feature = "grpc")]
    {
        let logs_grpc = export(&[
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grpc"),
        ])
        .unwrap();
        assert_eq!(
            (protocol(&logs_grpc.traces), protocol(&logs_grpc.logs)),
            (None, Some(Protocol::Grpc))
        );
    }
    for (var, value) in [
        ("OTEL_LOGS_EXPORTER", "console"),
        ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/json"),
    ] {
        let err = export(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), (var, value)]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { var: v, .. } if *v == var),
            "{err}"
        );
    }
    let named = export(&[("OTEL_SERVICE_NAME", "orders")]).unwrap();
    assert_eq!(named.service_name.as_deref(), Some("orders"));
    let bad = export(&[("OTEL_TRACES_EXPORTER", "zipkin")]);
    assert!(matches!(
        bad,
        Err(ConfigError::Invalid {
            var: "OTEL_TRACES_EXPORTER",
            ..
        })
    ));
}

#[test]
fn sampler_values() {
    let ratio = |r| Root::Ratio(r);
    for (name, arg, parent_based, root) in [
        ("always_on", None, false, Root::AlwaysOn),
        ("always_off", None, false, Root::AlwaysOff),
        ("traceidratio", Some("0.25"), false, ratio(0.25)),
        ("traceidratio", None, false, ratio(1.0)),
        ("parentbased_always_on", None, true, Root::AlwaysOn),
        ("ParentBased_Always_Off", None, true, Root::AlwaysOff),
        ("parentbased_traceidratio", Some(" 0 "), true, ratio(0.0)),
    ] {
        let mut vars = vec![("OTEL_TRACES_SAMPLER", name)];
        vars.extend(arg.map(|a| ("OTEL_TRACES_SAMPLER_ARG", a)));
        assert_eq!(
            sampler(&vars).unwrap(),
            Sampler { parent_based, root },
            "{name} {arg:?}"
        );
    }
    assert_eq!(sampler(&[]).unwrap(), Sampler::default());
    assert_eq!(
        sampler(&[("OTEL_TRACES_SAMPLER_ARG", "0.5")]).unwrap(),
        Sampler::default(),
        "the argument alone changes nothing"
    );
}

#[test]
fn sampler_errors_name_the_variable_and_what_it_accepts() {
    for (vars, needle) in [
        (
            vec![("OTEL_TRACES_SAMPLER", "xray")],
            "OTEL_TRACES_SAMPLER=\"xray\" is not valid: expected always_on, always_off, \
             traceidratio",
        ),
        (
            vec![
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ],
            "OTEL_TRACES_SAMPLER_ARG=\"1.5\" is not valid: expected a sampling probability",
        ),
        (
            vec![
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "NaN"),
            ],
            "OTEL_TRACES_SAMPLER_ARG=\"NaN\"",
        ),
    ] {
        let error = sampler(&vars).unwrap_err().to_string();
        assert!(error.contains(needle), "{error}");
    }
}

// What Lambda sets: never refused.

fn lambda(pairs: &[(&str, &str)]) -> Lambda {
    let map: HashMap<&str, &str> = pairs.iter().copied().collect();
    Lambda::parse(|k| map.get(k).map(|v| v.to_string()))
}

#[test]
fn runtime_api() {
    for ok in [
        "127.0.0.1:9001",
        "localhost:9001",
        "http://127.0.0.1:9001/prefix",
    ] {
        let lambda = lambda(&[("AWS_LAMBDA_RUNTIME_API", ok)]);
        assert_eq!(lambda.runtime_api.as_deref(), Some(ok));
        assert_eq!(lambda.check_runtime_api(), Ok(()), "{ok}");
    }
    for bad in ["", "https://127.0.0.1:9001", "a b:9001"] {
        let error = lambda(&[("AWS_LAMBDA_RUNTIME_API", bad)])
            .check_runtime_api()
            .unwrap_err();
        assert!(
            error.starts_with(&format!("AWS_LAMBDA_RUNTIME_API={bad:?} is not valid")),
            "{error}"
        );
    }
    let unset = lambda(&[]);
    assert_eq!(unset.runtime_api, None);
    assert_eq!(
        unset.check_runtime_api(),
        Err("AWS_LAMBDA_RUNTIME_API is not set".to_string())
    );
}

#[test]
fn managed_instances() {
    let managed = |pairs: &[(&str, &str)]| lambda(pairs).managed_instances();
    assert!(managed(&[(
        "AWS_LAMBDA_INITIALIZATION_TYPE",
        "lambda-managed-instances"
    )]));
    assert!(!managed(&[("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")]));
    assert!(!managed(&[]));
    // Everything else Lambda sets is read too, whatever the rest of the configuration says.
    let lambda = lambda(&[
        ("AWS_LAMBDA_FUNCTION_NAME", "orders"),
        ("SIDECAR_PORT", "not a port"),
    ]);
    assert_eq!(lambda.function.name, "orders");
}

// The list of every variable.

/// Runs every parser over a few configurations that between them take every branch that
/// reads a variable, recording each name looked up: each is listed in [`VARIABLES`], and each
/// variable listed as read by `config` is looked up by one of them.
#[test]
fn every_variable_looked_up_is_listed_and_every_listed_one_is_looked_up() {
    const AWS: [(&str, &str); 3] = [
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
    ];
    let configurations: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![
            ("JWT_SECRET", SECRET),
            ("AWS_SESSION_TOKEN", SESSION),
            ("SIDECAR_EMF", "on"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
        ],
        vec![
            ("JWT_ALGORITHM", "ES256"),
            ("JWT_PRIVATE_KEY", "x"),
            ("SIDECAR_TOKEN_AUTH", "off"),
        ],
        [
            ("JWT_KEY_SOURCE", "secretsmanager:k"),
            ("SIDECAR_TOKEN_AUTH", "off"),
        ]
        .into_iter()
        .chain(AWS)
        .collect(),
        [("JWT_KEY_SOURCE", "ssm:/k"), ("SIDECAR_TOKEN_AUTH", "off")]
            .into_iter()
            .chain(AWS)
            .collect(),
        vec![
            ("JWT_KEY_SOURCE", "kms:k"),
            ("JWT_ALGORITHM", "ES256"),
            ("SIDECAR_TOKEN_AUTH", "off"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
        ],
        // SnapStart: no AWS_SESSION_TOKEN nor keys, the container credentials endpoint.
        vec![
            ("JWT_KEY_SOURCE", "secretsmanager:k"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", CONTAINER_URI),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", SESSION),
        ],
        // Straight to CloudWatch, with exporter headers from a secret.
        [
            ("JWT_SECRET", SECRET),
            ("SIDECAR_TOKEN_AUTH", "off"),
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                "https://logs.eu-west-1.amazonaws.com/v1/logs",
            ),
            ("SIDECAR_OTLP_SIGV4", "auto"),
            ("SIDECAR_OTLP_SIGV4_SERVICE", "logs"),
            ("SIDECAR_OTLP_SIGV4_REGION", "eu-west-1"),
            ("SIDECAR_OTLP_HEADERS_SOURCE", "ssm:/otlp/headers"),
            ("SIDECAR_OTLP_LOG_GROUP", "/otlp/orders"),
        ]
        .into_iter()
        .chain(AWS)
        .collect(),
    ];
    let looked_up = RefCell::new(BTreeSet::new());
    for pairs in &configurations {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        let lookup = |name: &str| {
            looked_up.borrow_mut().insert(name.to_string());
            map.get(name).map(|v| v.to_string())
        };
        let config = Config::parse(lookup, map.keys().copied());
        if !pairs.is_empty() {
            assert!(config.is_ok(), "{pairs:?}: {config:?}");
        }
        assert!(ExportConfig::parse(lookup).is_ok(), "{pairs:?}");
        let _ = Lambda::parse(lookup);
    }
    let looked_up = looked_up.into_inner();
    let unlisted: Vec<&String> = looked_up
        .iter()
        .filter(|name| variable(name).is_none())
        .collect();
    assert!(unlisted.is_empty(), "not in VARIABLES: {unlisted:?}");
    for v in VARIABLES {
        assert!(
            looked_up.contains(v.name),
            "{} is listed but never read",
            v.name
        );
    }
}

#[test]
fn the_variable_list() {
    let names: BTreeSet<&str> = VARIABLES.iter().map(|v| v.name).collect();
    assert_eq!(names.len(), VARIABLES.len(), "a variable is listed twice");
    assert!(
        VARIABLES
            .iter()
            .all(|v| READ_PREFIXES.iter().any(|p| v.name.starts_with(p))),
        "every variable is under a prefix whose values are checked for UTF-8"
    );
    // The unknown-variable error lists them in this order.
    assert_eq!(
        SIDECAR_VARIABLES,
        [
            "SIDECAR_PORT",
            "SIDECAR_LOG",
            "SIDECAR_LOG_FORMAT",
            "SIDECAR_TELEMETRY_TYPES",
            "SIDECAR_TELEMETRY_BUFFER_MS",
            "SIDECAR_TELEMETRY_PORT",
            "SIDECAR_FLUSH_TIMEOUT_MS",
            "SIDECAR_FLUSH_INTERVAL_MS",
            "SIDECAR_TOKEN_AUTH",
            "SIDECAR_METRICS_ADDR",
            "SIDECAR_EMF",
            "SIDECAR_EMF_NAMESPACE",
            "SIDECAR_FAAS_TRIGGER",
            "SIDECAR_FLUSH_STRATEGY",
            "SIDECAR_FLUSH_MAX_AGE_MS",
            "SIDECAR_SELF_TRACES",
            "SIDECAR_OTLP_SIGV4",
            "SIDECAR_OTLP_SIGV4_SERVICE",
            "SIDECAR_OTLP_SIGV4_REGION",
            "SIDECAR_OTLP_LOG_GROUP",
            "SIDECAR_OTLP_METRICS_WITH_EMF",
            "SIDECAR_OTLP_HEADERS_SOURCE",
            "SIDECAR_OTLP_HEADERS_REFRESH_SECONDS",
            "SIDECAR_OTLP_RECEIVER",
            "SIDECAR_OTLP_RECEIVER_ADDR",
        ]
    );
    let unknown = parse(&[("JWT_SECRET", SECRET), ("SIDECAR_PROT", "4000")]).unwrap_err();
    assert_eq!(
        unknown.to_string(),
        format!(
            "SIDECAR_PROT is not a variable lambda-sidecar knows; did you mean SIDECAR_PORT? \
             Known SIDECAR_ variables: {}",
            SIDECAR_VARIABLES.join(", ")
        )
    );
    assert_eq!(
        variable("SIDECAR_PORT").map(|v| v.domain),
        Some(Domain::Token)
    );
    assert_eq!(variable("PATH"), None);
}

// Issue 21: the OTel conventions the export follows, and errors that teach.

/// `OTEL_SDK_DISABLED=true` (case-insensitive, as the spec's booleans) turns every signal
/// off, endpoints and all; `false` or empty leaves them on; anything else is refused.
#[test]
fn sdk_disabled_exports_nothing() {
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
    for value in ["true", "TRUE", " True "] {
        let off = export(&[endpoint, ("OTEL_SDK_DISABLED", value)]).unwrap();
        assert!(!off.exports(), "{value:?}: {off:?}");
    }
    for value in ["false", ""] {
        let on = export(&[endpoint, ("OTEL_SDK_DISABLED", value)]).unwrap();
        assert!(on.traces.is_some() && on.metrics.is_some() && on.logs.is_some());
    }
    let err = export(&[endpoint, ("OTEL_SDK_DISABLED", "yes")]).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                var: "OTEL_SDK_DISABLED",
                ..
            }
        ),
        "{err}"
    );
}

/// Timeouts: the signal's own variable, else the general one, else the spec's 10 s;
/// milliseconds, as the spec says; a value that is not is refused, naming its variable.
#[test]
fn export_timeouts() {
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
    let timeouts = |pairs: &[(&str, &str)]| {
        let config = export(&[&[endpoint], pairs].concat()).unwrap();
        [config.traces, config.metrics, config.logs].map(|o| o.unwrap().timeout.as_millis())
    };
    assert_eq!(timeouts(&[]), [10_000; 3]);
    assert_eq!(timeouts(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "250")]), [250; 3]);
    assert_eq!(
        timeouts(&[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "250"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "40"),
        ]),
        [250, 40, 250]
    );
    for var in [
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT",
    ] {
        for bad in ["10s", "0", "-1"] {
            let err = export(&[endpoint, (var, bad)]).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { var: v, .. } if *v == var),
                "{var}={bad}: {err}"
            );
        }
    }
}

/// Endpoints: the signal's own as given, else the general one with `/v1/{signal}`; only
/// http and https URLs with a host; an error names the variable the user set.
#[test]
fn export_endpoints() {
    let config = export(&[
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://otlp.example.com/base/",
        ),
        (
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "http://logs:4318/custom",
        ),
    ])
    .unwrap();
    let endpoint =
        |otlp: &Option<Otlp>| otlp.as_ref().map(|o| (o.endpoint.clone(), o.endpoint_var));
    assert_eq!(
        endpoint(&config.traces),
        Some((
            "https://otlp.example.com/base/v1/traces".to_string(),
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        ))
    );
    assert_eq!(
        endpoint(&config.logs),
        Some((
            "http://logs:4318/custom".to_string(),
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"
        ))
    );
    for var in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ] {
        for bad in [
            "collector:4318",
            "htp://c:4318",
            "ftp://c",
            "http://",
            "/v1/traces",
        ] {
            let err = export(&[(var, bad)]).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { var: v, expected, .. }
                    if *v == var && expected.contains("http:// or https://")),
                "{var}={bad}: {err}"
            );
        }
    }
}

/// `OTEL_PROPAGATORS`: unset, both parsers; set, those listed; the others named in a
/// warning, never refused (the function shares the variable).
#[test]
fn propagators() {
    let read = |value: Option<&str>| {
        let pairs: Vec<(&str, &str)> = value.map(|v| ("OTEL_PROPAGATORS", v)).into_iter().collect();
        let config = export(&pairs).unwrap();
        (
            config.propagators.tracecontext,
            config.propagators.xray,
            config.warnings,
        )
    };
    assert_eq!(read(None), (true, true, vec![]));
    assert_eq!(read(Some("tracecontext")), (true, false, vec![]));
    assert_eq!(read(Some("xray-lambda")), (false, true, vec![]));
    assert_eq!(read(Some("none")), (false, false, vec![]));
    let (tracecontext, xray, warnings) = read(Some("tracecontext,baggage, b3 ,xray"));
    assert!(tracecontext && xray);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("baggage, b3") && warnings[0].contains("OTEL_PROPAGATORS"),
        "{warnings:?}"
    );
}

/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`, read here: the attributes
/// percent-decoded, a malformed value discarded whole with a warning.
#[test]
fn resource_variables() {
    let config = export(&[
        ("OTEL_SERVICE_NAME", "orders"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=other, deployment.environment.name=prod%2Ceu ,team=a=b",
        ),
    ])
    .unwrap();
    assert_eq!(config.service_name.as_deref(), Some("orders"));
    assert_eq!(
        config.resource_attributes,
        [
            ("service.name".to_string(), "other".to_string()),
            (
                "deployment.environment.name".to_string(),
                "prod,eu".to_string()
            ),
            ("team".to_string(), "a=b".to_string()),
        ]
    );
    for bad in ["team", "=x", "a=%zz"] {
        let config = export(&[("OTEL_RESOURCE_ATTRIBUTES", bad)]).unwrap();
        assert!(config.resource_attributes.is_empty(), "{bad}");
        assert_eq!(config.warnings.len(), 1, "{bad}: {:?}", config.warnings);
    }
    let blank = export(&[("OTEL_SERVICE_NAME", " ")]).unwrap();
    assert_eq!(blank.service_name, None);
}

/// A fresh setup with several mistakes hears of all of them at once, each naming its
/// variable; the `init/error` type is the first one's.
/// The token settings are checked as the others are: every mistake in one error, not the
/// first alone. The key is checked once the algorithm is valid, against that algorithm.
#[test]
fn every_token_setting_error_at_once() {
    let err = parse(&[
        ("JWT_ALGORITHM", "HS999"),
        ("JWT_TTL_SECONDS", "0"),
        ("JWT_TYP", "a b"),
        ("JWT_ALLOWED_CLAIMS", "iss"),
        ("JWT_KEY_ID", ""),
        ("JWT_ISSUER", " "),
    ])
    .unwrap_err();
    let message = err.to_string();
    let ConfigError::Several(errors) = &err else {
        panic!("one error: {message}");
    };
    for var in [
        "JWT_ALGORITHM",
        "JWT_TTL_SECONDS",
        "JWT_TYP",
        "JWT_ALLOWED_CLAIMS",
        "JWT_KEY_ID",
        "JWT_ISSUER",
    ] {
        assert!(message.contains(var), "{var} missing from {message}");
    }
    assert_eq!(errors.len(), 6, "{message}");
    // With a valid algorithm, its missing key is one more.
    let err = parse(&[("JWT_TTL_SECONDS", "0"), ("JWT_TYP", "a b")]).unwrap_err();
    let ConfigError::Several(errors) = &err else {
        panic!("one error: {err}");
    };
    assert_eq!(errors.len(), 3, "{err}");
    assert!(err.to_string().contains("JWT_SECRET"), "{err}");
}

#[test]
fn every_configuration_error_at_once() {
    let err = parse(&[
        ("SIDECAR_PORT", "http"),
        ("SIDECAR_LOG_FORMAT", "xml"),
        ("SIDECAR_PROT", "4000"),
        ("SIDECAR_EMF", "yes"),
    ])
    .unwrap_err();
    let ConfigError::Several(errors) = &err else {
        panic!("one error: {err}");
    };
    let message = err.to_string();
    for var in [
        "SIDECAR_PORT",
        "SIDECAR_LOG_FORMAT",
        "SIDECAR_PROT",
        "SIDECAR_EMF",
        "JWT_SECRET",
    ] {
        assert!(message.contains(var), "{var} missing from {message}");
    }
    assert_eq!(errors.len(), 5, "{message}");
    assert!(
        message.starts_with("5 configuration errors: 1) SIDECAR_PROT"),
        "{message}"
    );
    assert_eq!(err.error_type(), "Config.UnknownVariable");

    let export_err = export(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "no-equals-sign"),
    ])
    .unwrap_err();
    let ConfigError::Several(errors) = &export_err else {
        panic!("one error: {export_err}");
    };
    // The general endpoint is read for each signal, and refused once.
    assert_eq!(errors.len(), 3, "{export_err}");
    // Both parts together, flattened.
    let both = ConfigError::both(parse(&[("SIDECAR_PORT", "x")]), Err::<(), _>(export_err));
    let Err(ConfigError::Several(all)) = both else {
        panic!("{both:?}");
    };
    // SIDECAR_PORT, JWT_SECRET (missing), and the export's three.
    assert_eq!(all.len(), 5, "{all:?}");
    assert!(!all.iter().any(|e| matches!(e, ConfigError::Several(_))));
}

/// A `JWT_*` or `OTEL_*` name a typo away from one the sidecar reads is warned about; names
/// of the function's own SDK, far from any, are not.
#[test]
fn near_misses_are_warned_about() {
    let names = [
        "JWT_AUDIENCES",
        "OTEL_EXPORTER_OTLP_ENDPIONT",
        "OTEL_SERVICENAME",
        "JWT_SECRET",
        "OTEL_LOG_LEVEL",
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_PYTHON_LOG_CORRELATION",
        "OTEL_METRIC_EXPORT_INTERVAL",
        "PATH",
    ];
    let warnings = near_misses(&names);
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    for (typo, known) in [
        ("JWT_AUDIENCES", "JWT_AUDIENCE"),
        ("OTEL_EXPORTER_OTLP_ENDPIONT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ("OTEL_SERVICENAME", "OTEL_SERVICE_NAME"),
    ] {
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with(typo) && w.contains(&format!("did you mean {known}?"))),
            "{typo}: {warnings:#?}"
        );
    }
    let config = parse(&[("JWT_SECRET", SECRET), ("JWT_AUDIENCES", "api")]).unwrap();
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
}

#[test]
fn edit_distances() {
    for (a, b, distance) in [
        ("", "", 0),
        ("abc", "abc", 0),
        ("abc", "", 3),
        ("ENDPOINT", "ENDPIONT", 1),
        ("AUDIENCE", "AUDIENCES", 1),
        ("PORT", "PROT", 1),
        ("kitten", "sitting", 3),
        ("ca", "abc", 3),
    ] {
        assert_eq!(super::edit_distance(a, b), distance, "{a} {b}");
        assert_eq!(super::edit_distance(b, a), distance, "{b} {a}");
    }
}

/// `SIDECAR_FLUSH_STRATEGY` (default `adaptive`), `SIDECAR_FLUSH_MAX_AGE_MS` (default 2 s)
/// and `SIDECAR_SELF_TRACES` (default off).
#[test]
fn flush_strategy_max_age_and_self_traces() {
    use crate::config::FlushStrategy;
    let default = parse(&[("JWT_SECRET", SECRET)]).unwrap().telemetry;
    assert_eq!(default.flush_strategy, FlushStrategy::Adaptive);
    assert_eq!(default.flush_max_age, Duration::from_secs(2));
    assert!(!default.self_traces);
    for (value, strategy) in [
        ("invoke", FlushStrategy::Invoke),
        ("END", FlushStrategy::End),
        ("periodic", FlushStrategy::Periodic),
        (" adaptive ", FlushStrategy::Adaptive),
    ] {
        let set = parse(&[("JWT_SECRET", SECRET), ("SIDECAR_FLUSH_STRATEGY", value)]).unwrap();
        assert_eq!(set.telemetry.flush_strategy, strategy, "{value}");
    }
    let set = parse(&[
        ("JWT_SECRET", SECRET),
        ("SIDECAR_FLUSH_MAX_AGE_MS", "500"),
        ("SIDECAR_SELF_TRACES", "on"),
    ])
    .unwrap();
    assert_eq!(set.telemetry.flush_max_age, Duration::from_millis(500));
    assert!(set.telemetry.self_traces);
    for (var, bad) in [
        ("SIDECAR_FLUSH_STRATEGY", "sometimes"),
        ("SIDECAR_FLUSH_MAX_AGE_MS", "99"),
        ("SIDECAR_FLUSH_MAX_AGE_MS", "60001"),
        ("SIDECAR_FLUSH_MAX_AGE_MS", "2s"),
        ("SIDECAR_SELF_TRACES", "yes"),
    ] {
        check(
            &[("JWT_SECRET", SECRET), (var, bad)],
            Some((var, "Config.InvalidValue")),
        );
    }
}

/// The receiver forwards the function's telemetry where opentelemetry-otlp sends the
/// sidecar's: the per-signal endpoint as it is, else the general one with `/v1/{signal}`;
/// the per-signal headers and compression replacing the general ones.
#[test]
fn forwarding_targets_resolve_as_the_otlp_exporter_does() {
    let config = export(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
        (
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            "http://logs:4318/custom",
        ),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=abc"),
        ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-tenant=m"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "none"),
    ])
    .unwrap();
    let target = |endpoint: &str, header: (&str, &str), compression| ForwardTarget {
        endpoint: endpoint.to_string(),
        headers: vec![(header.0.to_string(), header.1.to_string())],
        compression,
        timeout: Duration::from_secs(10),
    };
    assert_eq!(
        config.forward.traces,
        Some(target(
            "http://collector:4318/v1/traces",
            ("x-api-key", "abc"),
            Compression::Gzip
        ))
    );
    assert_eq!(
        config.forward.metrics,
        Some(target(
            "http://collector:4318/v1/metrics",
            ("x-tenant", "m"),
            Compression::Gzip
        ))
    );
    assert_eq!(
        config.forward.logs,
        Some(target(
            "http://logs:4318/custom",
            ("x-api-key", "abc"),
            Compression::None
        ))
    );
    let err = export(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd"),
    ])
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"),
        "{err}"
    );
    let none = export(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
        ("OTEL_LOGS_EXPORTER", "none"),
    ])
    .unwrap();
    assert!(none.forward.logs.is_none() && none.forward.traces.is_some());
}
