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

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::{
    EllipticCurveKeyParameters, EllipticCurveKeyType, RSAKeyParameters, RSAKeyType,
};
use serde_json::json;

use crate::aws::AwsClient;
use crate::config::{ConfigError, KeyMaterial};
use crate::selftrace;
use tracing::Instrument as _;

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

/// The private key tokens are signed with, ready to sign (or, with KMS, the key KMS signs with).
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
    /// KMS signs: the private key never enters the sandbox.
    Kms(Box<KmsSigner>),
}

/// The longest one KMS `Sign` may take: the function is waiting for its token.
pub const KMS_SIGN_TIMEOUT: Duration = Duration::from_secs(2);

/// KMS signs a message of at most this many bytes as given (`MessageType=RAW`); a longer
/// signing input (a token with large claims) is hashed here and sent as `DIGEST`, which is
/// the same signature for KMS.
const KMS_RAW_LIMIT: usize = 4096;

/// A KMS key and how to turn its signatures into JWS ones.
pub struct KmsSigner {
    client: Arc<AwsClient>,
    key_id: String,
    /// KMS's `SigningAlgorithm` for the configured JOSE algorithm.
    kms_algorithm: &'static str,
    /// For ECDSA, the width of R and of S in the JWS form (32 for P-256, 48 for P-384).
    ecdsa_width: Option<usize>,
    /// The hash a `DIGEST` message is made with.
    digest: &'static aws_lc_rs::digest::Algorithm,
}

impl SigningKey {
    /// Parses a key: at start-up, or when a rotated key is fetched.
    pub fn from_material(
        algorithm: Algorithm,
        material: &KeyMaterial,
        key_id: Option<&str>,
    ) -> Result<SigningKey, ConfigError> {
        let (signer, encoding_key) = match material {
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
        let kid = match (key_id, &public_jwk) {
            (Some(kid), _) => kid.to_string(),
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

    /// A key KMS holds, whose public key `GetPublicKey` returned as `spki` (DER
    /// SubjectPublicKeyInfo). `key_id` overrides the RFC 7638 kid, as `JWT_KEY_ID` does.
    pub fn kms(
        algorithm: Algorithm,
        client: Arc<AwsClient>,
        kms_key: &str,
        spki: &[u8],
        key_id: Option<&str>,
    ) -> Result<SigningKey, String> {
        let (kms_algorithm, ecdsa_width, digest) = match algorithm {
            Algorithm::ES256 => ("ECDSA_SHA_256", Some(32), &aws_lc_rs::digest::SHA256),
            Algorithm::ES384 => ("ECDSA_SHA_384", Some(48), &aws_lc_rs::digest::SHA384),
            Algorithm::RS256 => (
                "RSASSA_PKCS1_V1_5_SHA_256",
                None,
                &aws_lc_rs::digest::SHA256,
            ),
            Algorithm::PS256 => ("RSASSA_PSS_SHA_256", None, &aws_lc_rs::digest::SHA256),
            other => return Err(format!("KMS does not sign {}", other.name())),
        };
        let mut jwk = jwk_from_spki(algorithm, spki)?;
        let kid = match key_id {
            Some(kid) => kid.to_string(),
            None => thumbprint(&jwk).map_err(|e| e.to_string())?,
        };
        jwk.common.key_id = Some(kid.clone());
        Ok(SigningKey {
            algorithm,
            kid,
            signer: Signer::Kms(Box::new(KmsSigner {
                client,
                key_id: kms_key.to_string(),
                kms_algorithm,
                ecdsa_width,
                digest,
            })),
            public_jwk: Some(jwk),
            rng: SystemRandom::new(),
        })
    }

    /// The same key under another kid, in its JWK too (a rotating source's version kid).
    pub fn with_kid(mut self, kid: String) -> SigningKey {
        if let Some(jwk) = &mut self.public_jwk {
            jwk.common.key_id = Some(kid.clone());
        }
        self.kid = kid;
        self
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

    /// Signs `message` (the JWS signing input) and returns the signature's bytes, which the
    /// caller base64url-encodes straight into the token. Local keys sign at once; a KMS key
    /// makes one `Sign` call, bounded by [`KMS_SIGN_TIMEOUT`].
    pub async fn sign(&self, message: &[u8]) -> Result<Signature, SignError> {
        match &self.signer {
            Signer::Kms(kms) => {
                let span = tracing::info_span!(target: selftrace::TARGET, "sidecar.kms_sign");
                let signed = kms.sign(message).instrument(span).await?;
                Ok(Signature::Bytes(signed))
            }
            _ => self.sign_now(message),
        }
    }

    /// Whether [`SigningKey::sign_now`] can sign: every key but a KMS one.
    pub fn signs_locally(&self) -> bool {
        !matches!(self.signer, Signer::Kms(_))
    }

    /// Signs with a local key, without an await (`GET /token`'s shortcut); a KMS key, which
    /// needs the network, fails here as [`SignError::Local`]: use [`SigningKey::sign`].
    pub fn sign_now(&self, message: &[u8]) -> Result<Signature, SignError> {
        Ok(match &self.signer {
            Signer::Hmac(key) => Signature::Hmac(hmac::sign(key, message)),
            Signer::Ecdsa(pair) => Signature::Asymmetric(
                pair.sign(&self.rng, message)
                    .map_err(|_| SignError::Local)?,
            ),
            Signer::Rsa(pair, encoding) => {
                let mut out = vec![0; pair.public_modulus_len()];
                pair.sign(*encoding, &self.rng, message, &mut out)
                    .map_err(|_| SignError::Local)?;
                Signature::Bytes(out)
            }
            Signer::Ed25519(pair) => Signature::Asymmetric(pair.sign(message)),
            Signer::Kms(_) => return Err(SignError::Local),
        })
    }
}

/// A signature as the signer returned it: HMAC tags and ECDSA/Ed25519 signatures stay on the
/// stack (no allocation per token); RSA and KMS ones are already a `Vec`. The size gap
/// between the variants is the point: boxing the large one is the allocation this avoids.
#[allow(clippy::large_enum_variant)]
pub enum Signature {
    Hmac(hmac::Tag),
    Asymmetric(sig::Signature),
    Bytes(Vec<u8>),
}

impl AsRef<[u8]> for Signature {
    fn as_ref(&self) -> &[u8] {
        match self {
            Signature::Hmac(tag) => tag.as_ref(),
            Signature::Asymmetric(signature) => signature.as_ref(),
            Signature::Bytes(bytes) => bytes,
        }
    }
}

impl KmsSigner {
    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        // RAW, not DIGEST, whenever KMS takes the message whole: moto's KMS verifies DIGEST
        // messages unreliably (issue 8), and RAW is what real KMS documents for short ones.
        let (message_type, payload) = if message.len() <= KMS_RAW_LIMIT {
            ("RAW", STANDARD.encode(message))
        } else {
            let hash = aws_lc_rs::digest::digest(self.digest, message);
            ("DIGEST", STANDARD.encode(hash.as_ref()))
        };
        let body = json!({
            "KeyId": self.key_id,
            "Message": payload,
            "MessageType": message_type,
            "SigningAlgorithm": self.kms_algorithm,
        });
        let answer = self
            .client
            .call("Sign", &body, KMS_SIGN_TIMEOUT)
            .await
            .map_err(|e| SignError::Kms(e.to_string()))?;
        let der = answer
            .get("Signature")
            .and_then(serde_json::Value::as_str)
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or_else(|| SignError::Kms("the answer has no Signature".to_string()))?;
        match self.ecdsa_width {
            Some(width) => ecdsa_der_to_jws(&der, width)
                .ok_or_else(|| SignError::Kms("not a DER ECDSA signature".to_string())),
            None => Ok(der),
        }
    }
}

/// Why a token could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The crypto library refused (it never should with a key it accepted at start).
    #[error("the signing operation failed")]
    Local,
    /// KMS did not sign: unreachable, too slow, or refused (key disabled, access denied).
    #[error("KMS did not sign the token: {0}")]
    Kms(String),
}

/// One DER TLV: `(tag, contents, rest)`. Definite lengths of up to 4 bytes only, which covers
/// every key and signature KMS returns.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, tail) = rest.split_at(count);
        rest = tail;
        bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// KMS's ECDSA signature (DER `SEQUENCE { INTEGER r, INTEGER s }`) in the JWS form RFC 7518
/// §3.4 requires: R and S as unsigned big-endian, each left-padded to `width` bytes.
fn ecdsa_der_to_jws(signature: &[u8], width: usize) -> Option<Vec<u8>> {
    let (0x30, seq, []) = der(signature)? else {
        return None;
    };
    let (0x02, r, rest) = der(seq)? else {
        return None;
    };
    let (0x02, s, []) = der(rest)? else {
        return None;
    };
    let mut out = vec![0u8; 2 * width];
    for (i, int) in [r, s].into_iter().enumerate() {
        let int = match int {
            [0, tail @ ..] => tail,
            _ => int,
        };
        if int.len() > width {
            return None;
        }
        out[(i + 1) * width - int.len()..(i + 1) * width].copy_from_slice(int);
    }
    Some(out)
}

/// The public JWK of a DER SubjectPublicKeyInfo (what KMS `GetPublicKey` returns), checked
/// against `algorithm`: a P-256 point for ES256, P-384 for ES384, RSA of 2048 bits or more
/// for RS256 and PS256.
fn jwk_from_spki(algorithm: Algorithm, spki: &[u8]) -> Result<Jwk, String> {
    let wrong = |what: &str| Err(format!("the public key is not {what}"));
    let parsed = der(spki)
        .filter(|(tag, _, rest)| *tag == 0x30 && rest.is_empty())
        .and_then(|(_, seq, _)| der(seq))
        .filter(|(tag, _, _)| *tag == 0x30)
        .and_then(|(_, _, rest)| der(rest))
        .filter(|(tag, bits, _)| *tag == 0x03 && bits.first() == Some(&0));
    let Some((_, bits, _)) = parsed else {
        return wrong("a DER SubjectPublicKeyInfo");
    };
    let key = &bits[1..];
    let (params, key_algorithm) = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => {
            let (width, curve, name) = if algorithm == Algorithm::ES256 {
                (32, EllipticCurve::P256, "a P-256 (ECC_NIST_P256) key")
            } else {
                (48, EllipticCurve::P384, "a P-384 (ECC_NIST_P384) key")
            };
            if key.len() != 1 + 2 * width || key[0] != 4 {
                return wrong(name);
            }
            (
                AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
                    key_type: EllipticCurveKeyType::EC,
                    curve,
                    x: URL_SAFE_NO_PAD.encode(&key[1..=width]),
                    y: URL_SAFE_NO_PAD.encode(&key[1 + width..]),
                }),
                if algorithm == Algorithm::ES256 {
                    KeyAlgorithm::ES256
                } else {
                    KeyAlgorithm::ES384
                },
            )
        }
        _ => {
            let rsa = der(key)
                .filter(|(tag, _, rest)| *tag == 0x30 && rest.is_empty())
                .and_then(|(_, seq, _)| der(seq))
                .filter(|(tag, _, _)| *tag == 0x02)
                .and_then(|(_, n, rest)| der(rest).map(|(tag, e, _)| (n, tag, e)))
                .filter(|(_, tag, _)| *tag == 0x02);
            let Some((n, _, e)) = rsa else {
                return wrong("an RSA key");
            };
            let strip = |int: &[u8]| match int {
                [0, tail @ ..] => tail.to_vec(),
                _ => int.to_vec(),
            };
            let n = strip(n);
            if n.len() < 256 {
                return wrong("an RSA key of at least 2048 bits");
            }
            (
                AlgorithmParameters::RSA(RSAKeyParameters {
                    key_type: RSAKeyType::RSA,
                    n: URL_SAFE_NO_PAD.encode(&n),
                    e: URL_SAFE_NO_PAD.encode(strip(e)),
                }),
                if algorithm == Algorithm::RS256 {
                    KeyAlgorithm::RS256
                } else {
                    KeyAlgorithm::PS256
                },
            )
        }
    };
    Ok(Jwk {
        common: CommonParameters {
            key_algorithm: Some(key_algorithm),
            public_key_use: Some(PublicKeyUse::Signature),
            ..CommonParameters::default()
        },
        algorithm: params,
    })
}

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

    /// Random bytes always pass, however they are written: base64 (`openssl rand -base64 32`,
    /// or the 48 bytes the docs and the error message recommend), Python's `token_urlsafe`, hex.
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

    /// DER INTEGERs carry a leading zero when the top bit is set and drop leading zeros:
    /// both come out as fixed-width big-endian halves.
    #[test]
    fn ecdsa_der_becomes_fixed_width_r_and_s() {
        let r: Vec<u8> = std::iter::once(0x80).chain(1..32).collect();
        let s: Vec<u8> = (1..31).collect();
        let mut der = vec![0x30, (2 + 33 + 2 + 30) as u8, 0x02, 33, 0x00];
        der.extend(&r);
        der.extend([0x02, 30]);
        der.extend(&s);
        let jws = ecdsa_der_to_jws(&der, 32).unwrap();
        assert_eq!(&jws[..32], &r[..]);
        assert_eq!(&jws[32..34], &[0, 0]);
        assert_eq!(&jws[34..], &s[..]);
        assert_eq!(ecdsa_der_to_jws(&der[..der.len() - 1], 32), None);
        assert_eq!(ecdsa_der_to_jws(&der, 16), None);
    }

    /// KMS's SPKI for a P-256 key gives the JWK of the same point; the wrong algorithm for
    /// it is refused.
    #[test]
    fn kms_public_keys_become_jwks() {
        use aws_lc_rs::encoding::AsDer as _;
        let rng = SystemRandom::new();
        let pkcs8 =
            sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .unwrap();
        let point = sig::KeyPair::public_key(&pair).as_ref().to_vec();
        let spki = sig::KeyPair::public_key(&pair).as_der().unwrap();
        let jwk = jwk_from_spki(Algorithm::ES256, spki.as_ref()).unwrap();
        let AlgorithmParameters::EllipticCurve(ec) = &jwk.algorithm else {
            panic!("{jwk:?}")
        };
        assert_eq!(ec.x, URL_SAFE_NO_PAD.encode(&point[1..33]));
        assert_eq!(ec.y, URL_SAFE_NO_PAD.encode(&point[33..]));
        assert!(jwk_from_spki(Algorithm::ES384, spki.as_ref()).is_err());
        assert!(jwk_from_spki(Algorithm::RS256, spki.as_ref()).is_err());
    }
}
