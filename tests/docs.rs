//! The README's tables are the user's reference: every configuration variable and every
//! metric the code defines must be documented there.

use lambda_sidecar::config::SIDECAR_VARIABLES;
use lambda_sidecar::signals::METRICS;

const README: &str = include_str!("../README.md");

#[test]
fn every_variable_and_metric_is_in_the_readme() {
    let missing: Vec<&str> = SIDECAR_VARIABLES
        .iter()
        .copied()
        .chain(METRICS.iter().map(|m| m.name))
        .chain([
            "JWT_ALGORITHM",
            "JWT_SECRET",
            "JWT_PRIVATE_KEY",
            "JWT_PRIVATE_KEY_FILE",
            "JWT_KEY_ID",
            "JWT_ISSUER",
            "JWT_JWKS_URI",
            "JWT_AUDIENCE",
            "JWT_DEFAULT_SUBJECT",
            "JWT_TTL_SECONDS",
            "JWT_MAX_TTL_SECONDS",
            "JWT_ALLOWED_CLAIMS",
            "JWT_KEY_SOURCE",
            "JWT_KEY_REFRESH_SECONDS",
            "JWT_KMS_VERIFY_KEYS",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER",
            "AWS_ENDPOINT_URL_SSM",
            "AWS_ENDPOINT_URL_KMS",
        ])
        .filter(|name| !README.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not documented in README.md: {missing:?}"
    );
}
