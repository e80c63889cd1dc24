//! What relying parties outside the sandbox get (issue 8, item 4): `lambda-sidecar jwks` and
//! `lambda-sidecar openid-configuration` print the documents a deploy step publishes; they
//! are the documents the sidecar serves on loopback; a configuration they cannot be built
//! from stops them with the variable to fix; and a verifier that knows only the published
//! JWKS URL (jose's `createRemoteJWKSet`, tests/verifiers/relying_party.mjs) accepts the
//! sidecar's tokens and refuses one signed by another key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{KillOnDrop, private_key, random_hex, random_secret, sidecar_bin};
use lambda_env::free_port;
use serde_json::{Value, json};

/// Where the template's bucket publishes (docs/deploying.md, "Publishing the JWKS").
const ISSUER: &str = "https://jwks-bucket.s3.eu-west-1.amazonaws.com";
const JWKS_URI: &str = "https://jwks-bucket.s3.eu-west-1.amazonaws.com/.well-known/jwks.json";
const AUDIENCE: &str = "orders-api";

type Env = Vec<(&'static str, String)>;

/// A sidecar configured to publish: `alg` with a fresh key, the issuer and the JWKS URL.
fn publishing(alg: &str) -> Env {
    vec![
        ("JWT_ALGORITHM", alg.to_string()),
        ("JWT_PRIVATE_KEY", private_key(alg)),
        ("JWT_ISSUER", ISSUER.to_string()),
        ("JWT_JWKS_URI", JWKS_URI.to_string()),
        ("JWT_AUDIENCE", format!("{AUDIENCE},billing")),
    ]
}

/// `env` with `var` set to `value` (replaced if present).
fn with(env: &Env, var: &'static str, value: &str) -> Env {
    let mut env: Env = env.iter().filter(|(k, _)| *k != var).cloned().collect();
    env.push((var, value.to_string()));
    env
}

/// `env` without `var`.
fn without(env: &Env, var: &str) -> Env {
    env.iter().filter(|(k, _)| *k != var).cloned().collect()
}

/// `lambda-sidecar <command>` with exactly `env`: no `AWS_SESSION_TOKEN`, as a deploy step
/// has none to give. Returns the exit code, stdout and stderr.
fn run(command: &str, env: &Env) -> (Option<i32>, String, String) {
    let out = Command::new(sidecar_bin())
        .arg(command)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `lambda-sidecar serve` with `env` on a free port, listening.
struct Serve {
    _child: KillOnDrop,
    base: String,
    session: String,
}

async fn serve(env: &Env) -> Serve {
    let port = free_port().unwrap();
    let session = random_hex(32);
    let child = KillOnDrop(
        Command::new(sidecar_bin())
            .arg("serve")
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("SIDECAR_PORT", port.to_string())
            .env("AWS_SESSION_TOKEN", &session)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while reqwest::get(format!("{base}/health")).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "serve is not listening on {base}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Serve {
        _child: child,
        base,
        session,
    }
}

impl Serve {
    /// GET `path` without `X-Sidecar-Token`, as anything but the function asks.
    async fn public(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("{}{path}", self.base)).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// A token for the default subject and audience, as the function gets one.
    async fn token(&self) -> String {
        let r = reqwest::Client::new()
            .get(format!("{}/token", self.base))
            .header("X-Sidecar-Token", &self.session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let body: Value = r.json().await.unwrap();
        body["token"].as_str().unwrap().to_string()
    }
}

/// The JOSE header of `token`.
fn header(token: &str) -> Value {
    let b64 = token.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(b64).unwrap()).unwrap()
}

/// The printed documents are, byte for byte, the ones served on loopback (without the
/// header), and hold what a relying party needs: the public key only, under the kid tokens
/// carry, and every member OIDC Discovery requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printed_documents_are_the_served_ones() {
    for (alg, kty) in [("ES256", "EC"), ("RS256", "RSA")] {
        let env = publishing(alg);
        let (code, jwks, stderr) = run("jwks", &env);
        assert_eq!(code, Some(0), "{alg}: {stderr}");
        let (code, discovery, stderr) = run("openid-configuration", &env);
        assert_eq!(code, Some(0), "{alg}: {stderr}");

        let server = serve(&env).await;
        assert_eq!(
            server.public("/.well-known/jwks.json").await,
            (200, jwks.trim_end().to_string()),
            "{alg}"
        );
        assert_eq!(
            server.public("/.well-known/openid-configuration").await,
            (200, discovery.trim_end().to_string()),
            "{alg}"
        );

        let jwks: Value = serde_json::from_str(&jwks).unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1, "{jwks}");
        let key = &keys[0];
        assert_eq!(
            (key["kty"].as_str(), key["alg"].as_str()),
            (Some(kty), Some(alg))
        );
        assert_eq!(key["use"], "sig");
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(key.get(private).is_none(), "{alg}: {private} published");
        }
        assert_eq!(header(&server.token().await)["kid"], key["kid"], "{alg}");

        let discovery: Value = serde_json::from_str(&discovery).unwrap();
        assert_eq!(
            discovery,
            json!({
                "issuer": ISSUER,
                "jwks_uri": JWKS_URI,
                "id_token_signing_alg_values_supported": [alg],
                "response_types_supported": [],
                "subject_types_supported": ["public"],
                "claims_supported": ["aud", "exp", "iat", "iss", "jti", "nbf", "sub"],
            }),
            "{alg}"
        );
    }
}

/// A configuration the documents cannot be built from stops the command with exit 1, the
/// usual configuration error naming the variable(s) to fix, nothing on stdout (so a deploy
/// step publishes nothing), and no key material.
#[test]
fn the_print_commands_name_the_variable_to_fix() {
    let es256 = publishing("ES256");
    let secret = random_secret();
    let hmac: Env = vec![
        ("JWT_SECRET", secret.clone()),
        ("JWT_ISSUER", ISSUER.to_string()),
    ];
    let cases: Vec<(&str, Env, &[&str], &str)> = vec![
        // An HMAC secret is never published: no empty JWKS that nothing verifies against.
        (
            "jwks",
            hmac.clone(),
            &["JWT_ALGORITHM", "HMAC"],
            "Config.InvalidValue",
        ),
        (
            "openid-configuration",
            hmac.clone(),
            &["JWT_JWKS_URI"],
            "Config.MissingValue",
        ),
        (
            "openid-configuration",
            with(&hmac, "JWT_JWKS_URI", JWKS_URI),
            &["JWT_JWKS_URI", "HMAC"],
            "Config.InvalidValue",
        ),
        (
            "openid-configuration",
            without(&es256, "JWT_JWKS_URI"),
            &["JWT_JWKS_URI", "JWT_ISSUER"],
            "Config.MissingValue",
        ),
        (
            "openid-configuration",
            without(&es256, "JWT_ISSUER"),
            &["JWT_ISSUER", "JWT_JWKS_URI", "https"],
            "Config.InvalidValue",
        ),
        (
            "openid-configuration",
            with(
                &es256,
                "JWT_JWKS_URI",
                "http://jwks-bucket.example/jwks.json",
            ),
            &["JWT_JWKS_URI", "https"],
            "Config.InvalidValue",
        ),
        (
            "jwks",
            with(&es256, "JWT_ISSUER", "lambda-sidecar"),
            &["JWT_ISSUER"],
            "Config.InvalidValue",
        ),
        (
            "jwks",
            without(&es256, "JWT_PRIVATE_KEY"),
            &["JWT_PRIVATE_KEY"],
            "Config.MissingValue",
        ),
        (
            "jwks",
            with(&es256, "JWT_PRIVATE_KEY", &private_key("RS256")),
            &["JWT_PRIVATE_KEY", "ES256"],
            "Config.InvalidKey",
        ),
    ];
    let mut failures = Vec::new();
    for (command, env, names, error_type) in &cases {
        let (code, stdout, stderr) = run(command, env);
        let leaked = stderr.contains(&secret) || stderr.contains("PRIVATE KEY");
        if code != Some(1)
            || !stdout.is_empty()
            || !stderr.contains(&format!("configuration error ({error_type})"))
            || names.iter().any(|n| !stderr.contains(n))
            || leaked
        {
            failures.push(format!(
                "{command} {:?}: exit {code:?}, want 1 naming {names:?} ({error_type}); \
                 stdout {stdout:?}, stderr {stderr:?}",
                env.iter().map(|(k, _)| k).collect::<Vec<_>>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A static web server on loopback (Python's http.server), standing in for the public
/// bucket: it serves `files` (path, content) and nothing else; stopped and removed on drop.
struct StaticSite {
    _server: KillOnDrop,
    dir: PathBuf,
    base: String,
}

impl StaticSite {
    fn start(files: &[(&str, &str)]) -> StaticSite {
        let dir = std::env::temp_dir().join(format!("lambda-sidecar-publish-{}", random_hex(8)));
        for (path, content) in files {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        let port = free_port().unwrap();
        let server = KillOnDrop(
            Command::new("python3")
                .args([
                    "-m",
                    "http.server",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                ])
                .arg("--directory")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 runs the static site"),
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http.server is not listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        StaticSite {
            _server: server,
            dir,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs tests/verifiers/relying_party.mjs on `cases` against the JWKS at `jwks_uri`; one
/// result per case, by name.
fn relying_party(jwks_uri: &str, cases: &[Value]) -> Vec<Value> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/verifiers/relying_party.mjs");
    let mut node = Command::new("node")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs the relying party (jose is in tests/verifiers/node_modules)");
    let input = json!({"jwks_uri": jwks_uri, "cases": cases}).to_string();
    node.stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = node.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "relying_party.mjs failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

/// The relying party outside the sandbox: jose's `createRemoteJWKSet`, pointed at the JWKS
/// printed by `lambda-sidecar jwks` and served by a web server that knows nothing of the
/// sidecar, verifies the tokens the sidecar issues (algorithm pinned, issuer and audience
/// required), and refuses a token signed by another key under the same kid, one for
/// another audience or issuer, and one checked for another algorithm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relying_party_outside_verifies_through_the_published_jwks() {
    for (alg, other_alg) in [("ES256", "RS256"), ("RS256", "ES256")] {
        let env = publishing(alg);
        let (code, jwks, stderr) = run("jwks", &env);
        assert_eq!(code, Some(0), "{stderr}");
        let (code, discovery, stderr) = run("openid-configuration", &env);
        assert_eq!(code, Some(0), "{stderr}");
        let site = StaticSite::start(&[
            (".well-known/jwks.json", &jwks),
            (".well-known/openid-configuration", &discovery),
        ]);
        let kid = serde_json::from_str::<Value>(&jwks).unwrap()["keys"][0]["kid"].clone();

        let sidecar = serve(&env).await;
        let token = sidecar.token().await;
        // Another sidecar, another key of the same type, claiming the published kid.
        let impostor = with(&publishing(alg), "JWT_KEY_ID", kid.as_str().unwrap());
        let forged = serve(&impostor).await.token().await;
        assert_eq!(header(&forged)["kid"], kid);

        let case = |name: &str, token: &str, issuer: &str, audience: &str, alg: &str| {
            json!({"name": name, "token": token, "issuer": issuer, "audience": audience,
                   "algorithms": [alg]})
        };
        let results = relying_party(
            &format!("{}/.well-known/jwks.json", site.base),
            &[
                case("issued", &token, ISSUER, AUDIENCE, alg),
                case("another key", &forged, ISSUER, AUDIENCE, alg),
                case("another audience", &token, ISSUER, "payments-api", alg),
                case(
                    "another issuer",
                    &token,
                    "https://elsewhere.example",
                    AUDIENCE,
                    alg,
                ),
                case("another algorithm", &token, ISSUER, AUDIENCE, other_alg),
            ],
        );
        let expected = [
            json!({"name": "issued", "ok": true, "kid": kid, "sub": "lambda-sidecar", "aud": AUDIENCE}),
            json!({"name": "another key", "ok": false, "code": "ERR_JWS_SIGNATURE_VERIFICATION_FAILED"}),
            json!({"name": "another audience", "ok": false, "code": "ERR_JWT_CLAIM_VALIDATION_FAILED"}),
            json!({"name": "another issuer", "ok": false, "code": "ERR_JWT_CLAIM_VALIDATION_FAILED"}),
            json!({"name": "another algorithm", "ok": false, "code": "ERR_JOSE_ALG_NOT_ALLOWED"}),
        ];
        assert_eq!(results, expected, "{alg}");
    }
}

/// Inside Lambda, a `JWT_JWKS_URI` whose issuer is not an https URL stops init with
/// `init/error` naming `JWT_ISSUER`: found at deploy, not when a relying party fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_configured_issuer_fails_init() {
    let env = with(&publishing("ES256"), "JWT_ISSUER", "orders");
    let mut config = common::environment("orders-fn", 1, 1, &env);
    // environment() gives every run an HMAC secret; this one signs with the ES256 key.
    config.env.retain(|(k, _)| k != "JWT_SECRET");
    let report = lambda_env::run(config).await.unwrap();
    let error = report.init.error.as_ref().expect("init must fail");
    assert_eq!(error.error_type, "Config.InvalidValue");
    let message = error.body["errorMessage"].as_str().unwrap_or_default();
    assert!(
        message.contains("JWT_ISSUER") && message.contains("JWT_JWKS_URI"),
        "{message}"
    );
    assert!(!message.contains("PRIVATE KEY"), "{message}");
    assert_eq!(error.exit_code, Some(1));
}
