//! What a relying party outside the sandbox needs to verify our tokens: the JWKS and the
//! OpenID Connect discovery document.
//!
//! The sidecar's listener is on 127.0.0.1, which no API Gateway or other service can reach,
//! so both documents are also printed (`lambda-sidecar jwks`, `lambda-sidecar
//! openid-configuration`) for a deploy step to publish at a public https URL
//! (docs/deploying.md, "Publishing the JWKS"). The printed and the served documents are built
//! here, by the same functions from the same configuration and key, so they cannot drift
//! apart.
//!
//! Owns: the content of both documents. Never: a private or HMAC key in either.

use serde_json::{Value, json};

use super::claims::SIDECAR_CLAIMS;
use super::source::{self, LoadError};
use crate::config::{ConfigError, TokenConfig};

/// The OIDC discovery document (OpenID Connect Discovery 1.0, section 3), when `JWT_JWKS_URI`
/// is set (`config` has then checked that `JWT_ISSUER` is an https URL and the key is not
/// HMAC).
///
/// API Gateway's JWT authorizer and OIDC libraries read `issuer` and `jwks_uri` from it. The
/// other members the specification marks REQUIRED are given with values that are true of
/// this issuer: it has no authorization endpoint, so it supports no OAuth response type
/// (`[]`), and `sub` is the same for every relying party (`public`). `authorization_endpoint`
/// is left out rather than filled with a URL that does not exist: `/token` answers only the
/// function beside it, on loopback, and is no OAuth endpoint.
pub fn openid_configuration(config: &TokenConfig) -> Option<Value> {
    let jwks_uri = config.jwks_uri.as_ref()?;
    let mut claims: Vec<&str> = ["sub", "aud"]
        .into_iter()
        .chain(SIDECAR_CLAIMS.iter().copied())
        .chain(config.allowed_claims.iter().map(String::as_str))
        .collect();
    claims.sort_unstable();
    Some(json!({
        "issuer": config.issuer,
        "jwks_uri": jwks_uri,
        "id_token_signing_alg_values_supported": [config.algorithm.name()],
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "claims_supported": claims,
    }))
}

/// `lambda-sidecar jwks`: the JWKS of the configured key, loaded as the server loads it.
///
/// An HMAC key is refused rather than printed as `{"keys":[]}`: a deploy step that published
/// an empty set would succeed, and every relying party would then reject every token with
/// nothing pointing at the cause. It is refused from the algorithm alone, before the secret
/// is read.
pub async fn published_jwks(config: &TokenConfig) -> Result<String, LoadError> {
    if config.algorithm.is_hmac() {
        return Err(LoadError::Config(ConfigError::Invalid {
            var: "JWT_ALGORITHM",
            value: config.algorithm.name().to_string(),
            expected: "an asymmetric algorithm (ES256, ES384, RS256, PS256, EdDSA) for \
                       `lambda-sidecar jwks`: an HMAC secret is never published, so there is \
                       no public JWKS, and only holders of the secret can verify its tokens"
                .to_string(),
        }));
    }
    let jwks = source::load(config).await?.ring.jwks();
    Ok(String::from_utf8_lossy(&jwks).into_owned())
}

/// `lambda-sidecar openid-configuration`: the discovery document, or why there is none.
pub fn published_openid_configuration(config: &TokenConfig) -> Result<String, ConfigError> {
    openid_configuration(config)
        .map(|document| document.to_string())
        .ok_or(ConfigError::Missing {
            var: "JWT_JWKS_URI",
            why: "`openid-configuration` needs the https URL where the JWKS is published, \
                  and JWT_ISSUER an https URL whose /.well-known/openid-configuration will \
                  serve the document",
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Algorithm, KeyMaterial, KeySource, TokenAuth};

    fn config(jwks_uri: Option<&str>) -> TokenConfig {
        TokenConfig {
            algorithm: Algorithm::ES256,
            key: KeySource::Env(KeyMaterial::Secret(Vec::new())),
            key_refresh: std::time::Duration::from_secs(300),
            kms_verify_keys: Vec::new(),
            aws: None,
            key_id: None,
            issuer: "https://issuer.example".into(),
            audiences: vec!["api".into()],
            default_subject: "fn".into(),
            ttl: 900,
            max_ttl: 3600,
            allowed_claims: ["role".to_string()].into(),
            typ: "JWT".into(),
            auth: TokenAuth::Off,
            jwks_uri: jwks_uri.map(String::from),
        }
    }

    #[test]
    fn the_discovery_document_has_every_required_member() {
        assert_eq!(openid_configuration(&config(None)), None);
        let doc = openid_configuration(&config(Some("https://keys.example/jwks.json"))).unwrap();
        assert_eq!(
            doc,
            json!({
                "issuer": "https://issuer.example",
                "jwks_uri": "https://keys.example/jwks.json",
                "id_token_signing_alg_values_supported": ["ES256"],
                "response_types_supported": [],
                "subject_types_supported": ["public"],
                "claims_supported": ["aud", "exp", "iat", "iss", "jti", "nbf", "role", "sub"],
            })
        );
        let e = published_openid_configuration(&config(None)).unwrap_err();
        assert!(e.to_string().contains("JWT_JWKS_URI") && e.to_string().contains("JWT_ISSUER"));
    }
}
