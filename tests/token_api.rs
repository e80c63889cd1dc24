//! The token service end to end over real HTTP on 127.0.0.1:0: every status it answers,
//! tokens verified through the published JWKS, keys of every supported algorithm.
//! (PyJWT and jose verify the same tokens independently: tests/verifiers.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use lambda_sidecar::config::Config;
use lambda_sidecar::pipeline::{Pipeline, Recorder};
use lambda_sidecar::token::{self, TokenService, source};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

mod common;
use common::private_key;

const SECRET: &str = "k7Qm2vXp9LrT4sWz8YbN3cFh6JdGa1Ue5KoP0iRt";

/// A running token server; stopped when dropped.
struct Server {
    base: String,
    addr: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The value the sidecar sees in `AWS_SESSION_TOKEN`, and the function sends back.
const SESSION: &str = "IQoJb3JpZ2luX2VjEtest-session-token";

/// The configuration from `env`, with `AWS_SESSION_TOKEN` set to [`SESSION`] as Lambda does.
fn config(env: &[(&str, &str)]) -> Config {
    let mut map: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.insert("AWS_SESSION_TOKEN".into(), SESSION.into());
    Config::parse(|k| map.get(k).cloned(), map.keys().map(String::as_str)).unwrap()
}

async fn start(env: &[(&str, &str)]) -> Server {
    start_recording(env, None).await
}

/// [`start`], with token records going to `recorder`, as in extension mode.
async fn start_recording(env: &[(&str, &str)], recorder: Option<Recorder>) -> Server {
    let config = config(env);
    let keys = source::load(&config.token).await.unwrap().ring;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let service = Arc::new(TokenService::new(config.token, keys, recorder, addr.port()));
    let task = tokio::spawn(token::serve(listener, service, async {
        let _ = stopped.await;
    }));
    Server {
        base: format!("http://{addr}"),
        addr,
        stop,
        task,
    }
}

/// A GET as the function sends it, with `X-Sidecar-Token`.
async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(url)
        .header("X-Sidecar-Token", SESSION)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A JSON POST as the function sends it, with `X-Sidecar-Token`.
async fn post(url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("X-Sidecar-Token", SESSION)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn validation(alg: jsonwebtoken::Algorithm, aud: Option<&str>) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&["https://issuer.example"]);
    match aud {
        Some(a) => v.set_audience(&[a]),
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "sub"]);
    v
}

#[tokio::test]
async fn hs256_tokens_carry_every_claim_and_verify() {
    let server = start(&[
        ("JWT_SECRET", SECRET),
        ("JWT_ISSUER", "https://issuer.example"),
        ("JWT_AUDIENCE", "api,billing"),
        ("JWT_DEFAULT_SUBJECT", "orders-fn"),
        ("JWT_ALLOWED_CLAIMS", "role"),
    ])
    .await;
    let (status, body) = get(&format!("{}/token", server.base)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["user_id"], "orders-fn");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["kid"], "hs256-hmac");
    let token = body["token"].as_str().unwrap();
    let header = decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.kid.as_deref(), Some("hs256-hmac"));
    let data = decode::<Value>(
        token,
        &DecodingKey::from_secret(SECRET.as_bytes()),
        &validation(jsonwebtoken::Algorithm::HS256, Some("api")),
    )
    .unwrap();
    let c = data.claims;
    assert_eq!(c["sub"], "orders-fn");
    assert_eq!(c["aud"], "api");
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 900);
    assert_eq!(c["exp"], body["expires_at"]);
    assert!(c["jti"].as_str().is_some_and(|j| j.len() >= 22));
    // A different key, or an algorithm other than the pinned one, fails verification.
    let wrong = decode::<Value>(
        token,
        &DecodingKey::from_secret(b"another-secret-of-enough-length!!"),
        &validation(jsonwebtoken::Algorithm::HS256, Some("api")),
    );
    assert!(wrong.is_err());
    let other_alg = decode::<Value>(
        token,
        &DecodingKey::from_secret(SECRET.as_bytes()),
        &validation(jsonwebtoken::Algorithm::HS512, Some("api")),
    );
    assert!(other_alg.is_err());

    let (status, body) = post(
        &format!("{}/token", server.base),
        json!({"sub": "user-42", "aud": ["billing"], "ttl_seconds": 60, "claims": {"role": "reader"}}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "user-42");
    assert_eq!(body["expires_in"], 60);
    let c = decode::<Value>(
        body["token"].as_str().unwrap(),
        &DecodingKey::from_secret(SECRET.as_bytes()),
        &validation(jsonwebtoken::Algorithm::HS256, Some("billing")),
    )
    .unwrap()
    .claims;
    assert_eq!(
        (c["sub"].as_str(), c["role"].as_str()),
        (Some("user-42"), Some("reader"))
    );

    // The JWKS never publishes a symmetric key.
    let (status, jwks) = get(&format!("{}/.well-known/jwks.json", server.base)).await;
    assert_eq!((status, jwks), (200, json!({"keys": []})));
}

/// `GET /token` is answered before the router (`server::Shortcut`); the same request through
/// the router (where the guard and `get_token` answer it, as for a KMS key) must get the
/// same answer: status, headers, the answer's fields in order, the token's header and claims
/// (the jti and, across a second boundary, the times aside).
#[tokio::test]
async fn get_token_is_answered_alike_before_and_through_the_router() {
    use axum::body::Body;
    use http::{HeaderMap, Method, Request, Uri};
    use lambda_sidecar::server::Shortcut;
    use tower_service::Service as _;

    let config = config(&[
        ("JWT_SECRET", SECRET),
        ("JWT_AUDIENCE", "api,billing"),
        ("JWT_DEFAULT_SUBJECT", "orders-fn"),
    ]);
    let keys = source::load(&config.token).await.unwrap().ring;
    let service = Arc::new(TokenService::new(config.token, keys, None, 3003));
    let uri = Uri::from_static("/token");
    let mut headers = HeaderMap::new();
    headers.insert("host", "127.0.0.1:3003".parse().unwrap());
    headers.insert("x-sidecar-token", SESSION.parse().unwrap());

    let fast = service
        .answer(&Method::GET, &uri, http::Version::HTTP_11, &headers, None)
        .unwrap();
    let mut request = Request::get(uri.clone()).body(Body::empty()).unwrap();
    *request.headers_mut() = headers.clone();
    let routed = token::router(service.clone()).call(request).await.unwrap();
    assert_eq!(fast.status(), routed.status());
    // axum sets content-length itself; hyper writes it for the shortcut's whole body.
    let (mut parts, routed) = routed.into_parts();
    let length = parts.headers.remove("content-length").unwrap();
    assert_eq!(fast.headers(), &parts.headers);
    let routed = axum::body::to_bytes(routed, usize::MAX).await.unwrap();
    assert_eq!(length.to_str().unwrap(), routed.len().to_string());
    let answers = [fast.into_body(), routed].map(|bytes| {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        let token = body["token"].as_str().unwrap();
        let mut claims = jsonwebtoken::dangerous::insecure_decode::<Value>(token)
            .unwrap()
            .claims;
        assert_eq!(claims["jti"].as_str().map(str::len), Some(22), "{text}");
        for time in ["jti", "iat", "nbf", "exp"] {
            claims.as_object_mut().unwrap().remove(time);
        }
        // The fields in the order they are written (serde_json's map sorts them).
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_by_key(|k| text.find(&format!("\"{k}\":")));
        let keys: Vec<String> = keys.into_iter().map(String::from).collect();
        let header = token.split('.').next().unwrap().to_string();
        (
            keys,
            header,
            claims,
            body["expires_in"].clone(),
            body["kid"].clone(),
        )
    });
    assert_eq!(answers[0], answers[1]);
    assert_eq!(
        answers[0].0,
        [
            "token",
            "token_type",
            "expires_at",
            "expires_in",
            "user_id",
            "kid"
        ]
    );

    // A refusal is left to the router, whose guard answers and records it.
    headers.remove("x-sidecar-token");
    assert!(
        service
            .answer(&Method::GET, &uri, http::Version::HTTP_11, &headers, None)
            .is_none()
    );
    // So are other methods and paths.
    headers.insert("x-sidecar-token", SESSION.parse().unwrap());
    assert!(
        service
            .answer(&Method::POST, &uri, http::Version::HTTP_11, &headers, None)
            .is_none()
    );
    let health = Uri::from_static("/health");
    assert!(
        service
            .answer(
                &Method::GET,
                &health,
                http::Version::HTTP_11,
                &headers,
                None
            )
            .is_none()
    );
}

#[tokio::test]
async fn jti_is_unique() {
    let server = start(&[("JWT_SECRET", SECRET)]).await;
    let mut seen = HashSet::new();
    for _ in 0..50 {
        let (_, body) = get(&format!("{}/token", server.base)).await;
        let token = body["token"].as_str().unwrap();
        let claims: Value = jsonwebtoken::dangerous::insecure_decode::<Value>(token)
            .unwrap()
            .claims;
        assert!(seen.insert(claims["jti"].as_str().unwrap().to_string()));
    }
}

#[tokio::test]
async fn asymmetric_tokens_verify_through_the_jwks() {
    for alg in ["ES256", "ES384", "RS256", "PS256", "EdDSA"] {
        let key = private_key(alg);
        let server = start(&[
            ("JWT_ALGORITHM", alg),
            ("JWT_PRIVATE_KEY", &key),
            ("JWT_ISSUER", "https://issuer.example"),
        ])
        .await;
        let (status, body) = get(&format!("{}/token", server.base)).await;
        assert_eq!(status, 200, "{alg}: {body}");
        let token = body["token"].as_str().unwrap();
        let header = decode_header(token).unwrap();
        let (_, jwks) = get(&format!("{}/.well-known/jwks.json", server.base)).await;
        let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
        assert_eq!(set.keys.len(), 1, "{alg}");
        let jwk = set
            .find(header.kid.as_deref().unwrap())
            .unwrap_or_else(|| panic!("{alg}: kid not in JWKS {jwks}"));
        assert_eq!(body["kid"].as_str(), header.kid.as_deref());
        assert!(
            jwks.to_string().find("\"d\"").is_none(),
            "{alg}: private part published"
        );
        let decoding = DecodingKey::from_jwk(jwk).unwrap();
        let c = decode::<Value>(token, &decoding, &validation(header.alg, None))
            .unwrap()
            .claims;
        assert_eq!(c["iss"], "https://issuer.example", "{alg}");
        assert_eq!(format!("{:?}", header.alg), alg);
    }
}

#[tokio::test]
async fn kid_is_the_rfc7638_thumbprint_unless_configured() {
    let key = private_key("ES256");
    let server = start(&[("JWT_ALGORITHM", "ES256"), ("JWT_PRIVATE_KEY", &key)]).await;
    let (_, jwks) = get(&format!("{}/.well-known/jwks.json", server.base)).await;
    let set: JwkSet = serde_json::from_value(jwks).unwrap();
    let jwk = &set.keys[0];
    let thumb = jwk
        .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
        .unwrap();
    assert_eq!(jwk.common.key_id.as_deref(), Some(thumb.as_str()));

    let server = start(&[
        ("JWT_ALGORITHM", "ES256"),
        ("JWT_PRIVATE_KEY", &key),
        ("JWT_KEY_ID", "key-2026"),
    ])
    .await;
    let (_, body) = get(&format!("{}/token", server.base)).await;
    assert_eq!(body["kid"], "key-2026");
}

/// Every error is `{"error","message","status"}` with the right status; none panics the
/// server (it still answers afterwards).
#[tokio::test]
async fn every_error_status() {
    let server = start(&[("JWT_SECRET", SECRET), ("JWT_ALLOWED_CLAIMS", "role")]).await;
    let url = format!("{}/token", server.base);
    let cases: Vec<(u16, &str, (u16, Value))> = vec![
        (400, "not valid JSON", post(&url, "{\"sub\":").await),
        (
            400,
            "iss is set by the sidecar",
            post(&url, r#"{"iss":"x"}"#).await,
        ),
        (
            400,
            "exp is set by the sidecar",
            post(&url, r#"{"claims":{"exp":1}}"#).await,
        ),
        (
            400,
            "claim admin is not allowed",
            post(&url, r#"{"claims":{"admin":true}}"#).await,
        ),
        (
            400,
            "JWT_MAX_TTL_SECONDS",
            post(&url, r#"{"ttl_seconds":999999}"#).await,
        ),
        (400, "JWT_AUDIENCE", post(&url, r#"{"aud":"anyone"}"#).await),
        (400, "JSON object", post(&url, "[]").await),
        (413, "16384", post(&url, vec![b' '; 17 * 1024]).await),
        (
            404,
            "no such endpoint",
            get(&format!("{}/nope", server.base)).await,
        ),
    ];
    for (want, fragment, (status, body)) in cases {
        assert_eq!(status, want, "{body}");
        assert_eq!(body["status"], want, "{body}");
        assert!(body["error"].is_string(), "{body}");
        assert!(
            body["message"].as_str().unwrap().contains(fragment),
            "{fragment:?} not in {body}"
        );
    }
    let r = reqwest::Client::new()
        .delete(&url)
        .header("X-Sidecar-Token", SESSION)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], 405);
    let (status, body) = get(&format!("{}/health", server.base)).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
}

#[tokio::test]
async fn bad_keys_are_refused_at_start() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("JWT_SECRET", "super_secret")], "Config.InvalidSecret"),
        (
            &[("JWT_ALGORITHM", "ES256"), ("JWT_PRIVATE_KEY", "not a pem")],
            "Config.InvalidKey",
        ),
    ];
    for (env, error_type) in cases {
        let err = source::load(&config(env).token)
            .await
            .err()
            .expect("must be refused");
        assert_eq!(err.error_type(), *error_type);
        assert!(!err.to_string().contains("super_secret"));
    }
    // An ES256 key offered for RS256 is refused, naming the variable.
    let key = private_key("ES256");
    let config = config(&[
        ("JWT_ALGORITHM", "RS256"),
        ("JWT_PRIVATE_KEY", key.as_str()),
    ]);
    let err = source::load(&config.token)
        .await
        .err()
        .expect("must be refused");
    assert!(err.to_string().contains("JWT_PRIVATE_KEY"), "{err}");
}

/// At SHUTDOWN the token server stops accepting, but a request already being received is
/// answered in full.
#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(&[("JWT_SECRET", SECRET)]).await;
    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let body = r#"{"sub":"late-caller"}"#;
    let head = format!(
        "POST /token HTTP/1.1\r\nHost: {}\r\nX-Sidecar-Token: {SESSION}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.addr,
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // The request is in flight (headers read, body pending) when shutdown starts.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    server.stop.send(()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    conn.write_all(body.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("late-caller"), "{response}");
    // The server then ends, and new connections are refused.
    tokio::time::timeout(std::time::Duration::from_secs(5), server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

/// Sends `request` as raw bytes over a fresh connection (so that Host, the request target and
/// the forwarding headers are exactly what an SSRF would send) and returns the status and body.
async fn raw(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    (status, response)
}

/// A whole request from its request line and header lines (each ending in CRLF) and body.
fn request(head: &str, body: &str) -> String {
    format!(
        "{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Data-driven: each case is a request head (`{host}` is replaced by `127.0.0.1:<port>`,
/// `{auth}` by a right `X-Sidecar-Token` line), an optional JSON body, the status expected and
/// a fragment of the answer.
async fn check(server: &Server, cases: &[(&str, &str, u16, &str)]) {
    let host = format!("127.0.0.1:{}", server.addr.port());
    let auth = format!("X-Sidecar-Token: {SESSION}\r\n");
    let mut failures = Vec::new();
    for (head, body, want, fragment) in cases {
        let head = head.replace("{host}", &host).replace("{auth}", &auth);
        let (status, response) = raw(server.addr, &request(&head, body)).await;
        if status != *want || !response.contains(fragment) {
            failures.push(format!(
                "{head:?}: got {status}, want {want} with {fragment:?}: {response}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Finding 1 of the hardening issue: everything an SSRF through the function can send is
/// refused; only a request that carries the per-environment secret and names the loopback
/// listener gets a token.
#[tokio::test]
async fn the_token_boundary_refuses_what_an_ssrf_can_send() {
    let server = start(&[("JWT_SECRET", SECRET)]).await;
    let port = server.addr.port();
    let attacker = format!("GET /token HTTP/1.1\r\nHost: attacker.example:{port}\r\n{{auth}}");
    let localhost = format!("GET /token HTTP/1.1\r\nHost: LocalHost:{port}\r\n{{auth}}");
    let json = r#"{"sub":"user-1"}"#;
    check(
        &server,
        &[
            ("GET /token HTTP/1.1\r\nHost: {host}\r\n{auth}", "", 200, "\"token\""),
            (&localhost, "", 200, "\"token\""),
            (&attacker, "", 400, "Host"),
            ("GET /token HTTP/1.1\r\nHost: 127.0.0.1:1\r\n{auth}", "", 400, "Host"),
            ("GET /token HTTP/1.1\r\n{auth}", "", 400, "Host"),
            ("GET /token HTTP/1.1\r\nHost: {host}\r\n{auth}X-Forwarded-For: 10.0.0.1\r\n", "", 400, "X-Forwarded-For"),
            ("GET /token HTTP/1.1\r\nHost: {host}\r\n{auth}Forwarded: for=10.0.0.1\r\n", "", 400, "Forwarded"),
            ("GET /token HTTP/1.1\r\nHost: {host}\r\n{auth}Via: 1.1 proxy\r\n", "", 400, "Via"),
            ("GET /token HTTP/1.1\r\nHost: {host}\r\n{auth}X-Forwarded-Host: a.example\r\n", "", 400, "X-Forwarded-Host"),
            ("GET http://attacker.example/token HTTP/1.1\r\nHost: {host}\r\n{auth}", "", 400, "absolute-form"),
            ("GET http://{host}/token HTTP/1.1\r\nHost: {host}\r\n{auth}", "", 400, "absolute-form"),
            ("POST /token HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: text/plain\r\n", json, 415, "application/json"),
            ("POST /token HTTP/1.1\r\nHost: {host}\r\n{auth}", json, 415, "application/json"),
            ("POST /token HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json; charset=utf-8\r\n", json, 200, "user-1"),
            ("HEAD /token HTTP/1.1\r\nHost: {host}\r\n{auth}", "", 405, ""),
            ("GET /token HTTP/1.1\r\nHost: {host}\r\n", "", 401, "X-Sidecar-Token"),
            ("GET /token HTTP/1.1\r\nHost: {host}\r\nX-Sidecar-Token: IQoJb3JpZ2luX2VjEtest-session-tokem\r\n", "", 401, "X-Sidecar-Token"),
            ("GET /token HTTP/1.1\r\nHost: {host}\r\nX-Sidecar-Token: \r\n", "", 401, "X-Sidecar-Token"),
            // The other endpoints need no secret, but the same boundary holds on every path.
            ("GET /health HTTP/1.1\r\nHost: {host}\r\n", "", 200, "ok"),
            ("GET /.well-known/jwks.json HTTP/1.1\r\nHost: {host}\r\n", "", 200, "keys"),
            ("GET /health HTTP/1.1\r\nHost: {host}\r\nVia: 1.1 proxy\r\n", "", 400, "Via"),
            ("GET /.well-known/jwks.json HTTP/1.1\r\nHost: attacker.example\r\n", "", 400, "Host"),
            // Public like the JWKS, under the same boundary; without JWT_JWKS_URI there is none.
            ("GET /.well-known/openid-configuration HTTP/1.1\r\nHost: {host}\r\n", "", 404, "JWT_JWKS_URI"),
            ("GET /.well-known/openid-configuration HTTP/1.1\r\nHost: attacker.example\r\n", "", 400, "Host"),
            ("GET /.well-known/openid-configuration HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 10.0.0.1\r\n", "", 400, "X-Forwarded-For"),
        ],
    )
    .await;
}

/// The two refusals answer the same message, so a caller learns nothing from the difference.
#[tokio::test]
async fn a_missing_and_a_wrong_secret_are_refused_alike() {
    let server = start(&[("JWT_SECRET", SECRET)]).await;
    let host = format!("127.0.0.1:{}", server.addr.port());
    let body = |r: &str| r.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    let (s1, missing) = raw(
        server.addr,
        &format!("GET /token HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    let (s2, wrong) = raw(
        server.addr,
        &format!("GET /token HTTP/1.1\r\nHost: {host}\r\nX-Sidecar-Token: nope\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(body(&missing), body(&wrong));
    assert!(!missing.contains(SESSION) && !wrong.contains(SESSION));
}

/// `SIDECAR_TOKEN_AUTH=off` keeps the header-less `GET /token` for those who choose it; the
/// Host and forwarding checks still hold.
#[tokio::test]
async fn token_auth_off_issues_without_the_header() {
    let server = start(&[("JWT_SECRET", SECRET), ("SIDECAR_TOKEN_AUTH", "off")]).await;
    check(
        &server,
        &[
            (
                "GET /token HTTP/1.1\r\nHost: {host}\r\n",
                "",
                200,
                "\"token\"",
            ),
            (
                "GET /token HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 10.0.0.1\r\n",
                "",
                400,
                "X-Forwarded-For",
            ),
            (
                "GET /token HTTP/1.1\r\nHost: attacker.example\r\n",
                "",
                400,
                "Host",
            ),
        ],
    )
    .await;
}

/// `JWT_TYP` sets the JOSE header's `typ`, e.g. RFC 9068's `at+jwt`.
#[tokio::test]
async fn jwt_typ_sets_the_header_typ() {
    let server = start(&[("JWT_SECRET", SECRET), ("JWT_TYP", "at+jwt")]).await;
    let (status, body) = get(&format!("{}/token", server.base)).await;
    assert_eq!(status, 200, "{body}");
    let header = decode_header(body["token"].as_str().unwrap()).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
}

/// Every refused /token request is still recorded for telemetry with its status, so that
/// SREs can count rejections (an SSRF attempt shows as `outcome="unauthorized"` or
/// `"bad_request"`); only those past the boundary make a span (issue 18, item 7).
#[tokio::test]
async fn refused_token_requests_are_recorded_with_their_status() {
    use lambda_sidecar::derive::Deriver;
    use lambda_sidecar::export::MetricsSource;
    use lambda_sidecar::function::FunctionInfo;
    use lambda_sidecar::metrics::Metrics;
    let source = MetricsSource::new(opentelemetry_sdk::Resource::builder_empty().build());
    let metrics = Arc::new(Metrics::new(&source.meter()));
    let (pipeline, recorder) = Pipeline::start(
        Deriver::new(FunctionInfo::from_vars(|_| None), metrics.clone()),
        metrics.clone(),
    );
    let server = start_recording(&[("JWT_SECRET", SECRET)], Some(recorder)).await;
    let port = server.addr.port();
    let host = format!("Host: 127.0.0.1:{port}\r\n");
    let auth = format!("X-Sidecar-Token: {SESSION}\r\n");
    for (head, body) in [
        (
            format!("GET /token HTTP/1.1\r\nHost: attacker.example:{port}\r\n"),
            "",
        ),
        (format!("GET /token HTTP/1.1\r\n{host}"), ""),
        (format!("HEAD /token HTTP/1.1\r\n{host}{auth}"), ""),
        (
            format!("POST /token HTTP/1.1\r\n{host}{auth}Content-Type: text/plain\r\n"),
            "{}",
        ),
        (format!("GET /token HTTP/1.1\r\n{host}{auth}"), ""),
        // Not /token: no record.
        (format!("GET /health HTTP/1.1\r\n{host}"), ""),
    ] {
        raw(server.addr, &request(&head, body)).await;
    }
    // Outside any invocation, token spans wait for telemetry that could place them: SHUTDOWN
    // (`finish`) lets them go.
    let mut statuses: Vec<i64> = pipeline
        .finish(std::time::SystemTime::now())
        .await
        .0
        .iter()
        .filter(|s| s.name.ends_with(" /token"))
        .filter_map(|s| {
            s.attributes
                .iter()
                .find(|kv| kv.key.as_str() == "http.response.status_code")
                .and_then(|kv| match kv.value {
                    opentelemetry::Value::I64(v) => Some(v),
                    _ => None,
                })
        })
        .collect();
    statuses.sort();
    // The foreign Host (400) and the missing secret (401) were refused at the boundary:
    // counted, not traced.
    assert_eq!(statuses, [200, 405, 415]);
    let text = metrics.prometheus_text().unwrap();
    for outcome in [
        "bad_request",
        "unauthorized",
        "method_not_allowed",
        "unsupported_media_type",
        "issued",
    ] {
        let series =
            format!("sidecar_token_requests_total{{algorithm=\"HS256\",outcome=\"{outcome}\"}} 1");
        assert!(text.contains(&series), "{series} not in:\n{text}");
    }
}

/// The `Lambda-Runtime-Aws-Request-Id` header reaches derivation and decides the token span's
/// invocation over time: with two invocations started, the later one holds the request by
/// time, but a request naming the earlier one is placed there; a malformed name is ignored.
#[tokio::test]
async fn the_request_id_header_names_the_invocation() {
    use lambda_sidecar::derive::Deriver;
    use lambda_sidecar::export::MetricsSource;
    use lambda_sidecar::function::FunctionInfo;
    use lambda_sidecar::metrics::Metrics;
    use lambda_sidecar::records::{InvokeRecord, Record};
    use std::time::{Duration, SystemTime};
    let source = MetricsSource::new(opentelemetry_sdk::Resource::builder_empty().build());
    let metrics = Arc::new(Metrics::new(&source.meter()));
    let (pipeline, recorder) = Pipeline::start(
        Deriver::new(FunctionInfo::from_vars(|_| None), metrics.clone()),
        metrics,
    );
    let now = SystemTime::now();
    for (request_id, ago) in [("r-early", 2), ("r-late", 1)] {
        recorder.record(Record::Invoke(InvokeRecord {
            request_id: request_id.to_owned(),
            deadline_ms: 0,
            invoked_arn: "arn:aws:lambda:us-east-1:123456789012:function:f".to_owned(),
            xray: None,
            received: now - Duration::from_secs(ago),
        }));
    }
    let server = start_recording(&[("JWT_SECRET", SECRET)], Some(recorder)).await;
    let url = format!("{}/token", server.base);
    for request_id in [Some("r-early"), None, Some("r early")] {
        let mut request = reqwest::Client::new()
            .get(&url)
            .header("X-Sidecar-Token", SESSION);
        if let Some(request_id) = request_id {
            request = request.header("Lambda-Runtime-Aws-Request-Id", request_id);
        }
        assert_eq!(request.send().await.unwrap().status().as_u16(), 200);
    }
    let (spans, _logs) = pipeline.finish(SystemTime::now()).await;
    let invocation = |request_id: &str| {
        spans
            .iter()
            .find(|s| {
                s.attributes.iter().any(|kv| {
                    kv.key.as_str() == "faas.invocation_id" && kv.value.as_str() == request_id
                })
            })
            .map(|s| s.span_context.span_id())
            .unwrap()
    };
    let mut tokens: Vec<_> = spans.iter().filter(|s| s.name.contains("token")).collect();
    tokens.sort_by_key(|s| s.start_time);
    let parents: Vec<_> = tokens.iter().map(|s| s.parent_span_id).collect();
    assert_eq!(
        parents,
        [
            invocation("r-early"),
            invocation("r-late"),
            invocation("r-late")
        ]
    );
}
