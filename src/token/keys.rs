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

pub use crate::config::Algorithm;

/// jsonwebtoken's name for `algorithm`, for the JWK it derives.
fn jsonwebtoken_algorithm(algorithm: Algorithm) -> jsonwebtoken::Algorithm {
    match algorithm {
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

/// Secrets known from tutorials, defaults and leaked examples: the dictionary of
/// [`estimated_bits`], so that they cost a few bits whatever their case, and also when
/// repeated to reach the minimum length.
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

/// The least estimated entropy of an HMAC secret. 128 bits is beyond brute force; a random
/// secret of the minimum length (32 bytes) is estimated far above it, a secret made by a
/// person out of words, runs and repeats far below.
const MIN_SECRET_BITS: f64 = 128.0;

/// Only the first bytes are analysed, which bounds the quadratic repeat search. A secret
/// whose first 256 bytes hold 128 bits is strong whatever follows.
const ANALYSED_BYTES: usize = 256;

/// Refuses secrets below the RFC 7518 §3.2 minimum (a key at least as long as the hash
/// output) and secrets whose [`estimated_bits`] are below [`MIN_SECRET_BITS`]. The reason
/// never quotes the secret.
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
    let bits = estimated_bits(secret);
    if bits < MIN_SECRET_BITS {
        return weak(format!(
            "it is made of repeats, runs or well-known words (about {bits:.0} bits of entropy, \
             at least {MIN_SECRET_BITS:.0} needed); use random bytes, e.g. openssl rand -base64 48"
        ));
    }
    Ok(())
}

/// An estimate of the entropy of `secret`, in bits: the cheapest description of it as a
/// sequence of pieces, each one of
/// - a literal byte: log2 of the alphabet the secret draws from (the union of digits,
///   lower case, upper case, other ASCII, other bytes that it uses);
/// - a repeat of earlier text ("abcabc", "passwordpassword"): its offset and length;
/// - a run of consecutive characters ("0123456789", "zyx"): its first byte, direction and
///   length;
/// - a [`KNOWN_WEAK_SECRETS`] entry, in any case: its index.
///
/// This is zxcvbn's method (find the patterns, then the cheapest sequence of them) with
/// only the patterns that make a key guessable. zxcvbn itself was measured: it adds 2.7 MB
/// of word lists and regexes to a 300 KB binary and takes 30-120 ms on its first call; and
/// its scale tops out at human passwords (score 4 is 10^10 guesses, about 33 bits), far
/// below what an HMAC key needs. Not detected: English words other than the known
/// secrets, keyboard walks, dates.
fn estimated_bits(secret: &[u8]) -> f64 {
    let s = &secret[..secret.len().min(ANALYSED_BYTES)];
    let lower = s.to_ascii_lowercase();
    let alphabet: u32 = [
        (10, s.iter().any(u8::is_ascii_digit)),
        (26, s.iter().any(u8::is_ascii_lowercase)),
        (26, s.iter().any(u8::is_ascii_uppercase)),
        (
            33,
            s.iter().any(|b| b.is_ascii() && !b.is_ascii_alphanumeric()),
        ),
        (128, s.iter().any(|b| !b.is_ascii())),
    ]
    .iter()
    .filter(|(_, used)| *used)
    .map(|(size, _)| size)
    .sum();
    let literal = f64::from(alphabet.max(2)).log2();
    let n = s.len();
    // cheapest[i]: the cheapest description of s[..i].
    let mut cheapest = vec![f64::INFINITY; n + 1];
    cheapest[0] = 0.0;
    let relax = |cheapest: &mut [f64], to: usize, cost: f64| {
        if cost < cheapest[to] {
            cheapest[to] = cost;
        }
    };
    for i in 0..n {
        let base = cheapest[i];
        relax(&mut cheapest, i + 1, base + literal);
        for word in KNOWN_WEAK_SECRETS {
            if lower[i..].starts_with(word.as_bytes()) {
                let cost = (KNOWN_WEAK_SECRETS.len() as f64).log2();
                relax(&mut cheapest, i + word.len(), base + cost);
            }
        }
        // The longest repeat of earlier text starting here (it may overlap itself); the
        // search stops at a repeat that reaches the end, which nothing can beat.
        let mut longest = 0;
        for j in 0..i {
            let len = s[j..]
                .iter()
                .zip(&s[i..])
                .take_while(|(a, b)| a == b)
                .count();
            longest = longest.max(len);
            if longest == n - i {
                break;
            }
        }
        for len in 2..=longest {
            relax(
                &mut cheapest,
                i + len,
                base + (i as f64).log2() + (len as f64).log2(),
            );
        }
        for step in [1i16, -1] {
            let run = 1 + s[i..]
                .windows(2)
                .take_while(|w| i16::from(w[1]) - i16::from(w[0]) == step)
                .count();
            for len in 3..=run {
                relax(
                    &mut cheapest,
                    i + len,
                    base + literal + 1.0 + (len as f64).log2(),
                );
            }
        }
    }
    cheapest[n]
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
                let mut jwk = Jwk::from_encoding_key(key, jsonwebtoken_algorithm(algorithm))
                    .map_err(|e| ConfigError::InvalidKey {
                        var: "JWT_PRIVATE_KEY",
                        algorithm: algorithm.name(),
                        reason: format!("its public key could not be derived ({e})"),
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
            // Both accepted by the previous heuristics (issue 10, finding 8).
            (
                b"0123456789012345678901234567890123456789",
                Algorithm::HS256,
                false,
            ),
            (
                b"passwordpassword1234567890passwordpassword",
                Algorithm::HS256,
                false,
            ),
            (
                b"zyxwvutsrqponmlkjihgfedcbaZYXWVUTSRQPONMLKJIHGFEDCBA",
                Algorithm::HS256,
                false,
            ),
            (
                b"changeme-changeme-2024-changeme-changeme",
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

    /// What the README and the error message recommend always passes: random bytes as
    /// base64 (`openssl rand -base64 32`, Python's `token_urlsafe`) or hex.
    #[test]
    fn random_secrets_are_accepted() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        for _ in 0..500 {
            let mut bytes = [0u8; 64];
            getrandom::fill(&mut bytes).unwrap();
            let hex: String = bytes[..24].iter().map(|b| format!("{b:02x}")).collect();
            for (secret, alg) in [
                (STANDARD.encode(&bytes[..32]), Algorithm::HS256),
                (URL_SAFE_NO_PAD.encode(&bytes[..48]), Algorithm::HS384),
                (STANDARD.encode(&bytes[..48]), Algorithm::HS512),
                (hex, Algorithm::HS256),
            ] {
                let result = check_secret(secret.as_bytes(), alg);
                assert!(result.is_ok(), "{secret} {alg:?}: {result:?}");
            }
            // Raw random bytes, as from a file, too.
            assert!(check_secret(&bytes[..32], Algorithm::HS256).is_ok());
        }
    }
}
