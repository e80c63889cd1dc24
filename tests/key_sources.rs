//! Key sources against moto in server mode, through the real binary in lambda-env: the key
//! comes from Secrets Manager, SSM or KMS (JWT_KEY_SOURCE, reached through AWS_ENDPOINT_URL),
//! every token verifies with PyJWT and jose through the JWKS the sidecar serves, a rotated
//! secret changes the kid without breaking earlier tokens, and every failure reaches
//! init/error with its type and without the key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

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

/// Start-up with `vars` fails: init/error carries `error_type` and names the source, the
/// process exits 1, and none of `secrets` is in the init/error body, stdout or stderr.
/// Returns the error message.
async fn init_fails(
    moto: &Moto,
    vars: &[(&str, String)],
    error_type: &str,
    secrets: &[&str],
) -> String {
    let (config, _, _) = config(moto, 1, vars);
    let report = lambda_env::run(config).await.unwrap();
    let log = stderr_of(&report);
    let error = report
        .init
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("init must fail\n{log}"));
    assert_eq!(error.error_type, error_type, "{:?}\n{log}", error.body);
    let message = error.body["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("JWT_KEY_SOURCE="), "{message}");
    assert_eq!(error.exit_code, Some(1), "{log}");
    assert!(report.invokes.is_empty());
    let stdout = report
        .stdout_path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    for secret in secrets {
        for (what, text) in [
            ("init/error", error.body.to_string()),
            ("stderr", log.clone()),
            ("stdout", stdout.clone()),
        ] {
            assert!(!text.contains(secret), "key material in {what}: {text}");
        }
    }
    message.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_is_not_found() {
    let moto = Moto::start(&[]);
    init_fails(
        &moto,
        &[(
            "JWT_KEY_SOURCE",
            "secretsmanager:no-such-secret".to_string(),
        )],
        "KeySource.NotFound",
        &[],
    )
    .await;
}

/// A secret of the wrong kind for the algorithm: an HMAC secret for ES256 (whose text must
/// not be echoed), an RSA key for ES256, and a plain String parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_the_wrong_type_is_refused_without_echoing_it() {
    let moto = Moto::start(&[]);
    let secret = random_secret();
    let rsa_pem = moto.python(&format!(
        "p = pem('rsa')\n\
         sm.create_secret(Name='hmac', SecretString='{secret}')\n\
         sm.create_secret(Name='rsa', SecretString=p)\n\
         ssm.put_parameter(Name='plain', Value=pem(ec.SECP256R1()), Type='String')\n\
         print(p.splitlines()[1])"
    ));
    let es256 = ("JWT_ALGORITHM", "ES256".to_string());
    for (source, material) in [
        ("secretsmanager:hmac", secret.as_str()),
        ("secretsmanager:rsa", rsa_pem.as_str()),
        ("ssm:plain", "PRIVATE KEY"),
    ] {
        init_fails(
            &moto,
            &[("JWT_KEY_SOURCE", source.to_string()), es256.clone()],
            "KeySource.WrongKeyType",
            &[material],
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_kms_key_is_refused() {
    let moto = Moto::start(&[]);
    let id = moto.python(
        "k = kms.create_key(KeyUsage='SIGN_VERIFY', KeySpec='ECC_NIST_P256')['KeyMetadata']['KeyId']\n\
         kms.disable_key(KeyId=k)\n\
         print(k)",
    );
    init_fails(
        &moto,
        &[
            ("JWT_KEY_SOURCE", format!("kms:{id}")),
            ("JWT_ALGORITHM", "ES256".to_string()),
        ],
        "KeySource.KeyDisabled",
        &[],
    )
    .await;
}

/// moto enforcing IAM (after the setup's unauthenticated calls): the sidecar signs with the
/// keys of a user whose policy denies secretsmanager:GetSecretValue. A user's keys come with
/// no session token (moto refuses a made-up one as InvalidClientTokenId), so the variable is
/// empty here and /token needs no header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_by_iam() {
    // create_secret, create_user, put_user_policy, create_access_key.
    let moto = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "4")]);
    let secret = random_secret();
    let keys = moto.python(&format!(
        "sm.create_secret(Name='guarded', SecretString='{secret}')\n\
         iam.create_user(UserName='fn')\n\
         iam.put_user_policy(UserName='fn', PolicyName='deny', PolicyDocument=json.dumps({{\n\
           'Version': '2012-10-17',\n\
           'Statement': [{{'Effect': 'Deny', 'Action': 'secretsmanager:GetSecretValue', 'Resource': '*'}}]}}))\n\
         k = iam.create_access_key(UserName='fn')['AccessKey']\n\
         print(k['AccessKeyId'], k['SecretAccessKey'])"
    ));
    let (id, key) = keys.split_once(' ').unwrap();
    let message = init_fails(
        &moto,
        &[
            ("JWT_KEY_SOURCE", "secretsmanager:guarded".to_string()),
            ("AWS_ACCESS_KEY_ID", id.to_string()),
            ("AWS_SECRET_ACCESS_KEY", key.to_string()),
            ("AWS_SESSION_TOKEN", String::new()),
            ("SIDECAR_TOKEN_AUTH", "off".to_string()),
        ],
        "KeySource.AccessDenied",
        &[&secret, key],
    )
    .await;
    // Refused by the policy, which means moto accepted the signature first.
    assert!(
        message.contains("is not authorized to perform"),
        "{message}"
    );
}

/// A new secret version put during a run: after the refresh, tokens carry the new kid; a
/// token from before still verifies against the served JWKS (which holds both keys); once
/// JWT_MAX_TTL_SECONDS have passed since the switch, the old key leaves the JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_changes_the_kid_without_breaking_tokens() {
    let moto = Moto::start(&[]);
    moto.python("sm.create_secret(Name='jwt-es', SecretString=pem(ec.SECP256R1()))");
    let (mut config, base, session) = config(
        &moto,
        200,
        &[
            ("JWT_KEY_SOURCE", "secretsmanager:jwt-es".to_string()),
            ("JWT_ALGORITHM", "ES256".to_string()),
            ("JWT_KEY_REFRESH_SECONDS", "1".to_string()),
            // Long enough for `before` to outlive the switch on a loaded machine.
            ("JWT_MAX_TTL_SECONDS", "8".to_string()),
        ],
    );
    config.gap_ms = 100;
    let handle = tokio::spawn(async move { lambda_env::run(config).await.unwrap() });
    let client = reqwest::Client::new();
    let jwks_url = format!("{base}/.well-known/jwks.json");
    let token_url = format!("{base}/token");
    let token = |body: Option<Value>| body.unwrap()["token"].as_str().unwrap().to_string();

    let first = wait_for(&client, &jwks_url, &session, &handle)
        .await
        .expect("the sidecar never served its JWKS");
    let before = token(get(&client, &token_url, &session).await);
    let old_kid = kid(&before);
    assert_eq!(kids(&first), std::slice::from_ref(&old_kid));

    // Taken before the put: the switch (from which the old key's time counts) comes after it.
    let rotated_at = Instant::now();
    moto.python("sm.put_secret_value(SecretId='jwt-es', SecretString=pem(ec.SECP256R1()))");
    let deadline = rotated_at + Duration::from_secs(30);
    let after = loop {
        let t = token(get(&client, &token_url, &session).await);
        if kid(&t) != old_kid {
            break t;
        }
        assert!(Instant::now() < deadline, "the kid never changed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let new_kid = kid(&after);
    let both = get(&client, &jwks_url, &session).await.unwrap();
    assert_eq!(kids(&both), [new_kid.clone(), old_kid.clone()]);
    verify_tokens("ES256", &[before.clone(), after.clone()], Some(&both), None).unwrap();

    let gone = loop {
        let jwks = get(&client, &jwks_url, &session).await.unwrap();
        if kids(&jwks) == [new_kid.clone()] {
            break jwks;
        }
        assert!(
            Instant::now() < deadline,
            "the old key is still published: {jwks}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Not before JWT_MAX_TTL_SECONDS after the switch (which came after `rotated_at`).
    assert!(rotated_at.elapsed() >= Duration::from_secs(8));
    assert!(verify_tokens("ES256", &[before], Some(&gone), None).is_err());
    let fresh = token(get(&client, &token_url, &session).await);
    assert_eq!(kid(&fresh), new_kid);
    verify_tokens("ES256", &[fresh], Some(&gone), None).unwrap();
    let report = handle.await.unwrap();
    common::assert_clean_exit(&report);
}

/// `lambda-sidecar jwks` with `vars` and moto's variables, as a deploy step (or a fresh
/// execution environment) would load the key now.
fn printed_jwks(moto: &Moto, vars: &[(&str, String)]) -> Value {
    let out = std::process::Command::new(common::sidecar_bin())
        .arg("jwks")
        .env_clear()
        .envs(moto.sidecar_env().into_iter().chain(vars.iter().cloned()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// With JWT_KEY_ID set, a rotated secret gets a kid of its own: every key in the JWKS has a
/// distinct kid, and tokens from before and after the rotation both verify by their kid with
/// PyJWT's rule (the first key with that kid) and with jose. Each version's kid is
/// `JWT_KEY_ID-<the start of its RFC 7638 thumbprint>`, so every environment (and the print
/// command a deploy step runs) names the same key the same way. Before, both keys were
/// published as `mykid`, and PyJWT failed on the tokens signed before the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_with_a_key_id_gets_a_kid_of_its_own() {
    let moto = Moto::start(&[]);
    moto.python("sm.create_secret(Name='jwt-kid', SecretString=pem(ec.SECP256R1()))");
    let vars = [
        ("JWT_KEY_SOURCE", "secretsmanager:jwt-kid".to_string()),
        ("JWT_ALGORITHM", "ES256".to_string()),
        ("JWT_KEY_ID", "mykid".to_string()),
        ("JWT_KEY_REFRESH_SECONDS", "1".to_string()),
        ("JWT_MAX_TTL_SECONDS", "600".to_string()),
    ];
    let (mut config, base, session) = config(&moto, 200, &vars);
    config.gap_ms = 100;
    let handle = tokio::spawn(async move { lambda_env::run(config).await.unwrap() });
    let client = reqwest::Client::new();
    let jwks_url = format!("{base}/.well-known/jwks.json");
    let token_url = format!("{base}/token");
    let token = |body: Option<Value>| body.unwrap()["token"].as_str().unwrap().to_string();

    let first = wait_for(&client, &jwks_url, &session, &handle)
        .await
        .expect("the sidecar never served its JWKS");
    let before = token(get(&client, &token_url, &session).await);
    assert_eq!(kids(&first), [kid(&before)]);
    assert_eq!(kids(&printed_jwks(&moto, &vars)), kids(&first));

    moto.python("sm.put_secret_value(SecretId='jwt-kid', SecretString=pem(ec.SECP256R1()))");
    let deadline = Instant::now() + Duration::from_secs(30);
    let both = loop {
        let jwks = get(&client, &jwks_url, &session).await.unwrap();
        if kids(&jwks).len() == 2 {
            break jwks;
        }
        assert!(Instant::now() < deadline, "the key never rotated: {jwks}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after = token(get(&client, &token_url, &session).await);
    let published = kids(&both);
    let distinct: std::collections::HashSet<&String> = published.iter().collect();
    assert_eq!(
        distinct.len(),
        published.len(),
        "two keys in the JWKS share a kid: {both}"
    );
    assert_eq!(published, [kid(&after), kid(&before)]);
    verify_tokens("ES256", &[before.clone(), after.clone()], Some(&both), None).unwrap();
    // An environment started now (or a deploy step) names the new key as this one does.
    assert_eq!(kids(&printed_jwks(&moto, &vars)), [kid(&after)]);
    for kid in &published {
        assert!(kid.starts_with("mykid-"), "{kid}");
    }
    common::assert_clean_exit(&handle.await.unwrap());
}

async fn metrics_text(client: &reqwest::Client, base: &str, session: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .header("X-Sidecar-Token", session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// KMS gone mid-run: /token answers 503 naming KMS (no unwrap, no hang), and the failure is
/// counted in sidecar.keys.failures{operation="sign"}.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_unreachable_after_start_answers_503_and_is_counted() {
    let moto = Moto::start(&[]);
    let id = moto.python(
        "print(kms.create_key(KeyUsage='SIGN_VERIFY', KeySpec='ECC_NIST_P256')['KeyMetadata']['KeyId'])",
    );
    let (config, base, session) = config(
        &moto,
        40,
        &[
            ("JWT_KEY_SOURCE", format!("kms:{id}")),
            ("JWT_ALGORITHM", "ES256".to_string()),
        ],
    );
    let handle = tokio::spawn(async move { lambda_env::run(config).await.unwrap() });
    let client = reqwest::Client::new();
    wait_for(&client, &format!("{base}/health"), &session, &handle)
        .await
        .expect("the sidecar never answered");
    drop(moto);
    let started = Instant::now();
    let response = client
        .get(format!("{base}/token"))
        .header("X-Sidecar-Token", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("KMS"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let text = metrics_text(&client, &base, &session).await;
    // At least ours; the function's own token calls fail the same way meanwhile.
    let failures: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(r#"sidecar_keys_failures_total{operation="sign"} "#))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sign failure counted: {text}"));
    assert!(failures >= 1.0, "{text}");
    handle.await.unwrap();
}

/// Secrets Manager gone mid-run: the refresh at INVOKE fails, is counted
/// (sidecar.keys.failures{operation="refresh"}), and the current key keeps signing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_keeps_the_key_and_is_counted() {
    let moto = Moto::start(&[]);
    moto.python("sm.create_secret(Name='jwt-es', SecretString=pem(ec.SECP256R1()))");
    let (mut config, base, session) = config(
        &moto,
        60,
        &[
            ("JWT_KEY_SOURCE", "secretsmanager:jwt-es".to_string()),
            ("JWT_ALGORITHM", "ES256".to_string()),
            ("JWT_KEY_REFRESH_SECONDS", "1".to_string()),
        ],
    );
    config.gap_ms = 100;
    let handle = tokio::spawn(async move { lambda_env::run(config).await.unwrap() });
    let client = reqwest::Client::new();
    let jwks = wait_for(
        &client,
        &format!("{base}/.well-known/jwks.json"),
        &session,
        &handle,
    )
    .await
    .expect("the sidecar never served its JWKS");
    drop(moto);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics_text(&client, &base, &session).await;
        if text.contains(r#"sidecar_keys_failures_total{operation="refresh"}"#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refresh failure counted: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = get(&client, &format!("{base}/token"), &session)
        .await
        .expect("tokens still issued");
    let token = token["token"].as_str().unwrap().to_string();
    verify_tokens("ES256", &[token], Some(&jwks), None).unwrap();
    common::assert_clean_exit(&handle.await.unwrap());
}

/// At every log level, even `trace` with every dependency's events on, neither the session
/// token (the `X-Sidecar-Token` value, and a credential the AWS signer handles) nor the key
/// reaches the log: the signing library traces its canonical request, which carries
/// `x-amz-security-token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_level_prints_the_session_token_or_the_key() {
    let moto = Moto::start(&[]);
    let secret = random_secret();
    moto.python(&format!(
        "sm.create_secret(Name='jwt-trace', SecretString='{secret}')"
    ));
    let (config, _, session) = config(
        &moto,
        2,
        &[
            ("JWT_KEY_SOURCE", "secretsmanager:jwt-trace".to_string()),
            ("SIDECAR_LOG", "trace".to_string()),
        ],
    );
    let report = lambda_env::run(config).await.unwrap();
    let log = stderr_of(&report);
    assert!(report.init.error.is_none(), "{log}");
    assert!(log.contains("TRACE"), "trace events were logged");
    assert!(!log.contains(&session), "the session token was logged");
    assert!(!log.contains(&secret), "the key was logged");
}

/// SnapStart (issue 18): Lambda gives no `AWS_SESSION_TOKEN` and no access keys there, only
/// the container credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`, with
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN`), which lambda-env's restore mode serves. The sidecar
/// starts; fetches its credentials from the endpoint with the right `Authorization` header;
/// signs its Secrets Manager calls with them (moto enforces IAM here and checks the
/// signature of the IAM user's keys the endpoint hands out, so any other credentials would
/// fail init); fetches them again as they near expiry (handed out with 4 minutes left, under
/// the 5-minute margin, so every call fetches); and the function gets its tokens with
/// `X-Sidecar-Token` = `AWS_CONTAINER_AUTHORIZATION_TOKEN`. Without that header, 401; and
/// no log line, even at trace, holds the token or a credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapstart_loads_the_key_with_container_credentials() {
    // create_secret, create_user, put_user_policy, create_access_key.
    let moto = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "4")]);
    let secret = random_secret();
    let keys = moto.python(&format!(
        "sm.create_secret(Name='jwt-snap', SecretString='{secret}')\n\
         iam.create_user(UserName='fn')\n\
         iam.put_user_policy(UserName='fn', PolicyName='read', PolicyDocument=json.dumps({{\n\
           'Version': '2012-10-17',\n\
           'Statement': [{{'Effect': 'Allow', 'Action': 'secretsmanager:GetSecretValue', 'Resource': '*'}}]}}))\n\
         k = iam.create_access_key(UserName='fn')['AccessKey']\n\
         print(k['AccessKeyId'], k['SecretAccessKey'])"
    ));
    let (id, key) = keys.split_once(' ').unwrap();
    let container_token = random_hex(32);
    let mut config = environment(
        "snapstart",
        8,
        1,
        &[
            ("JWT_KEY_SOURCE", "secretsmanager:jwt-snap".to_string()),
            ("JWT_KEY_REFRESH_SECONDS", "1".to_string()),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.endpoint.clone()),
            ("AWS_REGION", common::MOTO_REGION.to_string()),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", container_token.clone()),
            ("SIDECAR_LOG", "trace".to_string()),
        ],
    );
    config.env.retain(|(k, _)| k != "JWT_SECRET");
    config.snapstart = true;
    config.container_keys = Some((id.to_string(), key.to_string()));
    config.credentials_ttl = Duration::from_secs(4 * 60);
    config.freeze = false;
    config.gap_ms = 300;
    assert!(
        !config.env.iter().any(|(k, _)| k.starts_with("AWS_ACCESS")
            || k == "AWS_SECRET_ACCESS_KEY"
            || k == "AWS_SESSION_TOKEN"),
        "{:?}",
        config.env
    );
    let base = config.token_url.trim_end_matches("/token").to_string();
    let handle = tokio::spawn(async move { lambda_env::run(config).await.unwrap() });
    let client = reqwest::Client::new();
    let health = wait_for(
        &client,
        &format!("{base}/health"),
        &container_token,
        &handle,
    )
    .await;
    let direct = get(&client, &format!("{base}/token"), &container_token).await;
    let without = client.get(format!("{base}/token")).send().await;
    let report = handle.await.unwrap();
    let log = stderr_of(&report);
    assert!(
        report.init.error.is_none(),
        "the sidecar must start with SnapStart's credentials: {:?}\n{log}",
        report.init.error
    );
    assert!(health.is_some(), "the sidecar never answered\n{log}");
    assert_eq!(without.unwrap().status(), 401, "no header, no token");

    // The function's calls, with the container token as X-Sidecar-Token, and ours.
    let mut tokens: Vec<String> = report
        .invokes
        .iter()
        .flat_map(|i| &i.tokens)
        .filter_map(|t| t.body["token"].as_str().map(str::to_string))
        .collect();
    assert_eq!(tokens.len(), 8, "a token call failed\n{log}");
    tokens.extend(direct.and_then(|d| d["token"].as_str().map(str::to_string)));
    assert_eq!(tokens.len(), 9, "the direct call failed\n{log}");
    verify_tokens("HS256", &tokens, None, Some(&secret)).unwrap();

    // Fetched at init and again at the key's re-reads, every time with the right header.
    assert_eq!(report.credentials.refused, 0, "{:?}", report.credentials);
    assert!(
        report.credentials.served >= 2,
        "the credentials were never fetched again: {:?}\n{log}",
        report.credentials
    );
    for (what, value) in [
        ("the container token", container_token.as_str()),
        ("the secret access key", key),
        ("the key", secret.as_str()),
    ] {
        assert!(!log.contains(value), "{what} was logged");
    }
    common::assert_clean_exit(&report);
}

/// SnapStart, with an endpoint that refuses the authorization token (here the token file
/// the SDKs prefer holds a wrong one): init fails with `KeySource.NoCredentials`, naming
/// the endpoint's answer, never a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapstart_credentials_refused_fail_init_with_no_credentials() {
    let moto = Moto::start(&[]);
    moto.python("sm.create_secret(Name='jwt-snap', SecretString=pem(ec.SECP256R1()))");
    let dir = std::env::temp_dir().join(format!("sidecar-snapstart-{}", random_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong = random_hex(16);
    let file = dir.join("token");
    std::fs::write(&file, &wrong).unwrap();
    let mut config = environment(
        "snapstart",
        1,
        1,
        &[
            ("JWT_KEY_SOURCE", "secretsmanager:jwt-snap".to_string()),
            ("JWT_ALGORITHM", "ES256".to_string()),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.endpoint.clone()),
            ("AWS_REGION", common::MOTO_REGION.to_string()),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                file.display().to_string(),
            ),
        ],
    );
    config.env.retain(|(k, _)| k != "JWT_SECRET");
    config.snapstart = true;
    let report = lambda_env::run(config).await.unwrap();
    let log = stderr_of(&report);
    let error = report
        .init
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("init must fail\n{log}"));
    assert_eq!(
        error.error_type, "KeySource.NoCredentials",
        "{:?}",
        error.body
    );
    let message = error.body["errorMessage"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("JWT_KEY_SOURCE=secretsmanager:jwt-snap: no AWS credentials")
            && message.contains("HTTP 401"),
        "{message}"
    );
    assert!(report.credentials.refused >= 1, "{:?}", report.credentials);
    assert_eq!(report.credentials.served, 0);
    assert!(!log.contains(&wrong) && !message.contains(&wrong));
    std::fs::remove_dir_all(dir).ok();
}
