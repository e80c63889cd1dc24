//! Key sources against moto in server mode, through the real binary in lambda-env: the key
//! comes from Secrets Manager, SSM or KMS (JWT_KEY_SOURCE, reached through AWS_ENDPOINT_URL),
//! every token verifies with PyJWT and jose through the JWKS the sidecar serves, a rotated
//! secret changes the kid without breaking earlier tokens, and every failure reaches
//! init/error with its type and without the key.

mod common;

use std::time::{Duration, Instant};

use common::{Moto, environment, random_hex, random_secret, stderr_of, verify_tokens};
use lambda_env::{EnvConfig, Report};
use serde_json::Value;

/// What one run of the sidecar gave: the report, the JWKS it served while running, and every
/// token issued (by lambda-env's function and by the test).
struct Run {
    report: Report,
    jwks: Value,
    tokens: Vec<String>,
}

/// The sidecar in lambda-env (not frozen between invokes, so the test can reach it) with
/// `source`'s variables and moto's, no JWT_SECRET of its own.
fn config(moto: &Moto, invokes: usize, vars: &[(&str, String)]) -> (EnvConfig, String, String) {
    let session = random_hex(16);
    let mut env = moto.sidecar_env();
    env.push(("AWS_SESSION_TOKEN", session.clone()));
    env.extend(vars.iter().cloned());
    let mut config = environment("keys", invokes, 1, &env);
    config.env.retain(|(k, _)| k != "JWT_SECRET");
    config.freeze = false;
    config.gap_ms = 200;
    let base = config.token_url.trim_end_matches("/token").to_string();
    (config, base, session)
}

async fn get(client: &reqwest::Client, url: &str, session: &str) -> Option<Value> {
    let response = client
        .get(url)
        .header("X-Sidecar-Token", session)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// Polls `url` until it answers 200, or the run ends (`None`).
async fn wait_for(
    client: &reqwest::Client,
    url: &str,
    session: &str,
    run: &tokio::task::JoinHandle<Report>,
) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run.is_finished() && Instant::now() < deadline {
        if let Some(body) = get(client, url, session).await {
            return Some(body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn run(moto: &Moto, vars: &[(&str, String)]) -> Run {
    let (config, base, session) = config(moto, 4, vars);
    let handle = tokio::spawn(async move { lambda_env::run(config).await.unwrap() });
    let client = reqwest::Client::new();
    let jwks = wait_for(
        &client,
        &format!("{base}/.well-known/jwks.json"),
        &session,
        &handle,
    )
    .await;
    let direct = get(&client, &format!("{base}/token"), &session).await;
    let report = handle.await.unwrap();
    let log = stderr_of(&report);
    assert!(
        report.init.error.is_none(),
        "{:?}\n{log}",
        report.init.error
    );
    let jwks = jwks.unwrap_or_else(|| panic!("the JWKS was never served\n{log}"));
    let mut tokens: Vec<String> = report
        .invokes
        .iter()
        .flat_map(|i| &i.tokens)
        .filter_map(|t| t.body["token"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        tokens.len(),
        report.invokes.len(),
        "a token call failed\n{log}"
    );
    tokens.extend(direct.and_then(|d| d["token"].as_str().map(str::to_string)));
    Run {
        report,
        jwks,
        tokens,
    }
}

fn kid(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_string()
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_from_secrets_manager() {
    let moto = Moto::start(&[]);
    let secret = random_secret();
    let version = moto.python(&format!(
        "print(sm.create_secret(Name='jwt-hs256', SecretString='{secret}')['VersionId'])"
    ));
    let run = run(
        &moto,
        &[("JWT_KEY_SOURCE", "secretsmanager:jwt-hs256".to_string())],
    )
    .await;
    assert_eq!(
        kids(&run.jwks),
        Vec::<String>::new(),
        "an HMAC key is never published"
    );
    assert_eq!(kid(&run.tokens[0]), format!("hs256-hmac-{version}"));
    verify_tokens("HS256", &run.tokens, None, Some(&secret)).unwrap();
    // Signed with that secret, not some other: a wrong one fails.
    assert!(verify_tokens("HS256", &run.tokens, None, Some(&random_secret())).is_err());
    assert!(!stderr_of(&run.report).contains(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_from_ssm_securestring() {
    let moto = Moto::start(&[]);
    moto.python(
        "ssm.put_parameter(Name='/jwt/es256', Value=pem(ec.SECP256R1()), Type='SecureString')",
    );
    let run = run(
        &moto,
        &[
            ("JWT_KEY_SOURCE", "ssm:/jwt/es256".to_string()),
            ("JWT_ALGORITHM", "ES256".to_string()),
        ],
    )
    .await;
    assert_eq!(kids(&run.jwks), [kid(&run.tokens[0])]);
    verify_tokens("ES256", &run.tokens, Some(&run.jwks), None).unwrap();
}

/// KMS signs (MessageType=RAW); the JWKS holds GetPublicKey's key, and with
/// JWT_KMS_VERIFY_KEYS a second key beside it.
async fn kms_signs(alg: &str, spec: &str) {
    let moto = Moto::start(&[]);
    let ids = moto.python(&format!(
        "a = kms.create_key(KeyUsage='SIGN_VERIFY', KeySpec='{spec}')['KeyMetadata']['KeyId']\n\
         b = kms.create_key(KeyUsage='SIGN_VERIFY', KeySpec='{spec}')['KeyMetadata']['KeyId']\n\
         kms.create_alias(AliasName='alias/jwt', TargetKeyId=a)\n\
         print(a, b)"
    ));
    let (_, other) = ids.split_once(' ').unwrap();
    let run = run(
        &moto,
        &[
            ("JWT_KEY_SOURCE", "kms:alias/jwt".to_string()),
            ("JWT_ALGORITHM", alg.to_string()),
            ("JWT_KMS_VERIFY_KEYS", other.to_string()),
        ],
    )
    .await;
    let published = kids(&run.jwks);
    assert_eq!(published.len(), 2, "{}", run.jwks);
    assert_eq!(published[0], kid(&run.tokens[0]));
    verify_tokens(alg, &run.tokens, Some(&run.jwks), None).unwrap();
    // Only the signing key verifies them: with the verify key alone, they fail.
    let mut only_other = run.jwks.clone();
    only_other["keys"].as_array_mut().unwrap().remove(0);
    assert!(verify_tokens(alg, &run.tokens, Some(&only_other), None).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es256_signed_by_kms() {
    kms_signs("ES256", "ECC_NIST_P256").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_signed_by_kms() {
    kms_signs("RS256", "RSA_2048").await;
}
