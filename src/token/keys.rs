//! Signing keys: parsed once at start, held as aws-lc-rs key pairs, used for every token.
//!
//! jsonwebtoken decodes the PEM and builds the public JWK and its RFC 7638 thumbprint; the
//! signature itself is made here because jsonwebtoken's signer re-parses an RSA key on every
//! call, and the `/token` path must not parse keys.
//!
//! Invariant: an HMAC secret never leaves this module. It is not published in the JWKS, and
//! its default kid is a fixed label, not something derived from the secret.

use aws_lc_rs::{hmac, rand::SystemRandom, signature as sig};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse, ThumbprintHash,
};

use crate::config::{ConfigError, KeyMaterial, TokenConfig};

/// The algorithms the sidecar signs with. `none` and anything else are not representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    ES256,
    ES384,
    RS256,
    PS256,
    EdDSA,
}

impl Algorithm {
    pub const ALL: [Algorithm; 8] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::EdDSA,
    ];

    /// The JOSE `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }

    fn jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            Algorithm::HS384 => jsonwebtoken::Algorithm::HS384,
            Algorithm::HS512 => jsonwebtoken::Algorithm::HS512,
            Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::ES384 => jsonwebtoken::Algorithm::ES384,
            Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::PS256 => jsonwebtoken::Algorithm::PS256,
            Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

/// Secrets known from tutorials, defaults and leaked examples. Refused whatever their length,
/// and also when merely repeated to reach the minimum length.
const KNOWN_WEAK_SECRETS: &[&str] = &[
    "super_secret",
    "secret",
    "changeme",
    "change-me",
    "password",
    "your-256-bit-secret",
    "your-384-bit-secret",
    "your-512-bit-secret",
    "my_secret_key",
    "mysecretkey",
    "secretkey",
    "jwt_secret",
    "jwtsecret",
    "default",
    "test",
    "lambda-sidecar",
];

/// Refuses secrets below the RFC 7518 §3.2 minimum (a key at least as long as the hash
/// output), well-known values, and obviously low-entropy strings. The reason never quotes
/// the secret.
fn check_secret(secret: &[u8], algorithm: Algorithm) -> Result<(), ConfigError> {
    let min = match algorithm {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    };
    let weak = |reason: String| Err(ConfigError::WeakSecret { reason });
    if secret.len() < min {
        return weak(format!(
            "{} needs at least {min} bytes of random key material, got {} bytes (RFC 7518 §3.2)",
            algorithm.name(),
            secret.len()
        ));
    }
    let lower = String::from_utf8_lossy(secret).to_ascii_lowercase();
    if KNOWN_WEAK_SECRETS.iter().any(|known| {
        lower
            .as_bytes()
            .chunks(known.len())
            .all(|chunk| known.as_bytes().starts_with(chunk))
    }) {
        return weak("it is a well-known example secret".to_string());
    }
    let mut distinct = [false; 256];
    secret.iter().for_each(|&b| distinct[usize::from(b)] = true);
    if distinct.iter().filter(|&&seen| seen).count() < 10 {
        return weak("it uses fewer than 10 distinct characters; use random bytes".to_string());
    }
    Ok(())
}

/// The one private key of this process, ready to sign.
pub struct SigningKey {
    algorithm: Algorithm,
    kid: String,
    signer: Signer,
    /// The public key as a JWK, `None` for HMAC (a symmetric key is never published).
    public_jwk: Option<Jwk>,
    rng: SystemRandom,
}

/// Boxed where large, so the enum stays small (the HMAC key holds its hash state inline).
enum Signer {
    Hmac(Box<hmac::Key>),
    Ecdsa(sig::EcdsaKeyPair),
    Rsa(sig::RsaKeyPair, &'static dyn sig::RsaEncoding),
    Ed25519(sig::Ed25519KeyPair),
}

impl SigningKey {
    /// Parses the configured key. All key errors surface here, at start-up.
    pub fn load(config: &TokenConfig) -> Result<SigningKey, ConfigError> {
        let algorithm = config.algorithm;
        let (signer, encoding_key) = match &config.key {
            KeyMaterial::Secret(secret) => {
                check_secret(secret, algorithm)?;
                let alg = match algorithm {
                    Algorithm::HS384 => hmac::HMAC_SHA384,
                    Algorithm::HS512 => hmac::HMAC_SHA512,
                    _ => hmac::HMAC_SHA256,
                };
                (Signer::Hmac(Box::new(hmac::Key::new(alg, secret))), None)
            }
            KeyMaterial::Pem { pem, source } => {
                let invalid = |reason: String| ConfigError::InvalidKey {
                    var: source,
                    algorithm: algorithm.name(),
                    reason,
                };
                let encoding_key = match algorithm {
                    Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
                    Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(pem),
                    _ => EncodingKey::from_ed_pem(pem),
                }
                .map_err(|e| invalid(format!("not a PEM private key of that type ({e})")))?;
                let der = encoding_key.as_bytes();
                let signer = match algorithm {
                    Algorithm::ES256 | Algorithm::ES384 => {
                        let alg = if algorithm == Algorithm::ES256 {
                            &sig::ECDSA_P256_SHA256_FIXED_SIGNING
                        } else {
                            &sig::ECDSA_P384_SHA384_FIXED_SIGNING
                        };
                        sig::EcdsaKeyPair::from_pkcs8(alg, der)
                            .map(Signer::Ecdsa)
                            .map_err(|e| invalid(format!("wrong curve or not PKCS#8 ({e})")))?
                    }
                    Algorithm::RS256 | Algorithm::PS256 => {
                        let pair = sig::RsaKeyPair::from_der(der)
                            .or_else(|_| sig::RsaKeyPair::from_pkcs8(der))
                            .map_err(|e| invalid(format!("not an RSA private key ({e})")))?;
                        if pair.public_modulus_len() < 256 {
                            return Err(invalid("RSA keys must be at least 2048 bits".to_string()));
                        }
                        let encoding: &'static dyn sig::RsaEncoding =
                            if algorithm == Algorithm::RS256 {
                                &sig::RSA_PKCS1_SHA256
                            } else {
                                &sig::RSA_PSS_SHA256
                            };
                        Signer::Rsa(pair, encoding)
                    }
                    _ => sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                        .map(Signer::Ed25519)
                        .map_err(|e| invalid(format!("not an Ed25519 PKCS#8 key ({e})")))?,
                };
                (signer, Some(encoding_key))
            }
        };
        let public_jwk = match (&encoding_key, &signer) {
            (None, _) => None,
            // jsonwebtoken derives Ed25519 JWKs from PKCS#8 v1 only; v2 (which embeds the
            // public key, as aws-lc and newer OpenSSL write it) is handled here.
            (Some(_), Signer::Ed25519(pair)) => Some(Jwk {
                common: CommonParameters {
                    key_algorithm: Some(KeyAlgorithm::EdDSA),
                    public_key_use: Some(PublicKeyUse::Signature),
                    ..CommonParameters::default()
                },
                algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                    key_type: OctetKeyPairType::OctetKeyPair,
                    curve: EllipticCurve::Ed25519,
                    x: URL_SAFE_NO_PAD.encode(sig::KeyPair::public_key(pair).as_ref()),
                }),
            }),
            (Some(key), _) => {
                let mut jwk =
                    Jwk::from_encoding_key(key, algorithm.jsonwebtoken()).map_err(|e| {
                        ConfigError::InvalidKey {
                            var: "JWT_PRIVATE_KEY",
                            algorithm: algorithm.name(),
                            reason: format!("its public key could not be derived ({e})"),
                        }
                    })?;
                jwk.common.public_key_use = Some(PublicKeyUse::Signature);
                Some(jwk)
            }
        };
        let kid = match (&config.key_id, &public_jwk) {
            (Some(kid), _) => kid.clone(),
            (None, Some(jwk)) => thumbprint(jwk)?,
            // A fixed label: anything computed from the secret would leak a little of it.
            (None, None) => format!("{}-hmac", algorithm.name().to_ascii_lowercase()),
        };
        let public_jwk = public_jwk.map(|mut jwk| {
            jwk.common.key_id = Some(kid.clone());
            jwk
        });
        Ok(SigningKey {
            algorithm,
            kid,
            signer,
            public_jwk,
            rng: SystemRandom::new(),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key for `/.well-known/jwks.json`; `None` for HMAC.
    pub fn public_jwk(&self) -> Option<&Jwk> {
        self.public_jwk.as_ref()
    }

    /// Signs `message` (the JWS signing input) and returns the base64url signature.
    pub fn sign(&self, message: &[u8]) -> Result<String, SignError> {
        let signature = match &self.signer {
            Signer::Hmac(key) => hmac::sign(key, message).as_ref().to_vec(),
            Signer::Ecdsa(pair) => pair
                .sign(&self.rng, message)
                .map_err(|_| SignError)?
                .as_ref()
                .to_vec(),
            Signer::Rsa(pair, encoding) => {
                let mut out = vec![0; pair.public_modulus_len()];
                pair.sign(*encoding, &self.rng, message, &mut out)
                    .map_err(|_| SignError)?;
                out
            }
            Signer::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
        };
        Ok(URL_SAFE_NO_PAD.encode(signature))
    }
}

/// The crypto library refused to sign (it never should with a key it accepted at start).
#[derive(Debug, thiserror::Error)]
#[error("the signing operation failed")]
pub struct SignError;

/// RFC 7638 thumbprint (SHA-256) of the public key.
fn thumbprint(jwk: &Jwk) -> Result<String, ConfigError> {
    jwk.thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| ConfigError::InvalidKey {
            var: "JWT_PRIVATE_KEY",
            algorithm: "JWK",
            reason: format!("no RFC 7638 thumbprint ({e})"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_secrets_are_refused() {
        let cases: &[(&[u8], Algorithm, bool)] = &[
            (b"k7Qm2vXp9LrT4sWz8YbN3cFh6JdGa1Ue", Algorithm::HS256, true),
            (b"k7Qm2vXp9LrT4sWz8YbN3cFh6JdGa1U", Algorithm::HS256, false),
            (b"k7Qm2vXp9LrT4sWz8YbN3cFh6JdGa1Ue", Algorithm::HS384, false),
            (
                b"super_secretsuper_secretsuper_secret",
                Algorithm::HS256,
                false,
            ),
            (
                b"SUPER_SECRETSUPER_SECRETSUPER_SECRETSUPER_SECRET",
                Algorithm::HS256,
                false,
            ),
            (
                b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                Algorithm::HS256,
                false,
            ),
            (b"abababababababababababababababab", Algorithm::HS256, false),
            (
                b"your-256-bit-secretyour-256-bit-secret",
                Algorithm::HS256,
                false,
            ),
        ];
        for (secret, alg, ok) in cases {
            let result = check_secret(secret, *alg);
            assert_eq!(
                result.is_ok(),
                *ok,
                "{:?} {alg:?}: {result:?}",
                String::from_utf8_lossy(secret)
            );
            if let Err(e) = result {
                assert_eq!(e.error_type(), "Config.InvalidSecret");
                assert!(!e.to_string().contains(&*String::from_utf8_lossy(secret)));
            }
        }
    }
}
