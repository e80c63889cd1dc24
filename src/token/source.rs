//! Where the signing key comes from (`JWT_KEY_SOURCE`), and the key ring that lets it change.
//!
//! `env` parses the configured key; `secretsmanager:` and `ssm:` fetch the key (an HMAC secret
//! or a PEM) and parse it the same way; `kms:` fetches only the public key (`GetPublicKey`),
//! and every token is then signed by KMS. All of it happens at start, inside Lambda's init,
//! under [`FETCH_TIMEOUT`] per call; a failure is a typed [`KeySourceError`] for `init/error`.
//!
//! Rotation: the [`KeyRing`] holds the active key behind a lock that `/token` takes once, for
//! a pointer copy. [`Refresher::on_invoke`] (called at INVOKE, or at each tick of the
//! periodic flush on Managed Instances, which send no INVOKE; under the flush's bound, never
//! on the `/token` path) re-reads a Secrets Manager or SSM key at most every
//! `JWT_KEY_REFRESH_SECONDS`; a new version becomes the signing key, and the previous public
//! key stays in the JWKS for `JWT_MAX_TTL_SECONDS`, the longest any token it signed lives.
//! Every kid in the JWKS names one key: with `JWT_KEY_ID` set, each version of a rotating
//! key is published under a kid of its own ([`version_kid`]).
//!
//! Never: puts key material in an error, a log line or a metric.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::Jwk;
use serde_json::{Value, json};

use super::keys::SigningKey;
use crate::aws::{AwsClient, AwsError, Fetched, SourceError};
use crate::config::{Algorithm, ConfigError, KeyMaterial, KeySource, TokenConfig};
use crate::selftrace;
use tracing::Instrument as _;

/// The longest one fetch at start (or at a refresh) may take. Lambda's init phase is 10 s.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// What went wrong with a key source, as `init/error` reports it (`KeySource.<Kind>`).
pub use crate::aws::SourceErrorKind as KeySourceErrorKind;

/// A key source that could not give a usable key. Names the source, never the key.
#[derive(Debug, thiserror::Error)]
#[error("JWT_KEY_SOURCE={origin}: {detail}")]
pub struct KeySourceError {
    pub kind: KeySourceErrorKind,
    pub origin: String,
    pub detail: String,
}

impl KeySourceError {
    pub fn error_type(&self) -> &'static str {
        match self.kind {
            KeySourceErrorKind::NotFound => "KeySource.NotFound",
            KeySourceErrorKind::AccessDenied => "KeySource.AccessDenied",
            KeySourceErrorKind::WrongKeyType => "KeySource.WrongKeyType",
            KeySourceErrorKind::KeyDisabled => "KeySource.KeyDisabled",
            KeySourceErrorKind::Unreachable => "KeySource.Unreachable",
            KeySourceErrorKind::ServiceError => "KeySource.ServiceError",
            KeySourceErrorKind::NoCredentials => "KeySource.NoCredentials",
        }
    }

    fn from_aws(origin: &str, error: AwsError) -> KeySourceError {
        KeySourceError {
            kind: KeySourceErrorKind::of(&error),
            origin: origin.to_string(),
            detail: error.to_string(),
        }
    }

    fn from_source(origin: &str, error: SourceError) -> KeySourceError {
        KeySourceError {
            kind: error.kind,
            origin: origin.to_string(),
            detail: error.detail,
        }
    }

    fn wrong_type(origin: &str, detail: String) -> KeySourceError {
        KeySourceError {
            kind: KeySourceErrorKind::WrongKeyType,
            origin: origin.to_string(),
            detail,
        }
    }
}

/// Why the key could not be loaded: a local key refused (as before key sources), or a source.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Source(#[from] KeySourceError),
}

impl LoadError {
    /// The `init/error` type.
    pub fn error_type(&self) -> &'static str {
        match self {
            LoadError::Config(e) => e.error_type(),
            LoadError::Source(e) => e.error_type(),
        }
    }
}

/// The signing key in use, with its JOSE header.
pub struct ActiveKey {
    pub key: SigningKey,
    /// The base64url JOSE header (`alg`, `typ`, `kid`), encoded once per key.
    pub header_b64: String,
}

/// The active key and the JWKS, each swappable. `/token` reads the key once per request
/// ([`KeyRing::active`]): a read lock held for an `Arc` clone, never across an await.
pub struct KeyRing {
    typ: String,
    active: RwLock<Arc<ActiveKey>>,
    /// The JWKS document, serialized once per change.
    jwks: RwLock<Bytes>,
    /// Published whatever the active key (`JWT_KMS_VERIFY_KEYS`).
    verify_keys: Vec<Jwk>,
}

/// Reads a lock whose writers only ever replace the whole value: a poisoned one is still whole.
fn read<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(value) => value.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn write<T>(lock: &RwLock<T>, value: T) {
    match lock.write() {
        Ok(mut slot) => *slot = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

impl KeyRing {
    /// `verify_keys` are public keys published beside the key's own (`JWT_KMS_VERIFY_KEYS`).
    pub fn new(key: SigningKey, typ: &str, verify_keys: Vec<Jwk>) -> KeyRing {
        let ring = KeyRing {
            typ: typ.to_string(),
            active: RwLock::new(Arc::new(active_key(key, typ))),
            jwks: RwLock::new(Bytes::new()),
            verify_keys,
        };
        ring.publish(&[]);
        ring
    }

    pub fn active(&self) -> Arc<ActiveKey> {
        read(&self.active)
    }

    pub fn jwks(&self) -> Bytes {
        read(&self.jwks)
    }

    /// Makes `key` the signing key and publishes it with `retired`.
    fn install(&self, key: SigningKey, retired: &[Jwk]) {
        write(&self.active, Arc::new(active_key(key, &self.typ)));
        self.publish(retired);
    }

    /// The JWKS: the active key's public JWK, then `retired`, then the verify keys; a key
    /// whose kid is already published is left out (the same key put again as a new version,
    /// or listed twice), so that every kid in the JWKS names one key.
    fn publish(&self, retired: &[Jwk]) {
        let active = self.active();
        let mut keys: Vec<&Jwk> = Vec::new();
        for jwk in active
            .key
            .public_jwk()
            .into_iter()
            .chain(retired)
            .chain(&self.verify_keys)
        {
            if !keys.iter().any(|k| k.common.key_id == jwk.common.key_id) {
                keys.push(jwk);
            }
        }
        write(&self.jwks, Bytes::from(json!({ "keys": keys }).to_string()));
    }
}

fn active_key(key: SigningKey, typ: &str) -> ActiveKey {
    let header = json!({"alg": key.algorithm().name(), "typ": typ, "kid": key.kid()});
    ActiveKey {
        header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
        key,
    }
}

/// The key ring, and what re-reads the key when the source can change.
pub struct Loaded {
    pub ring: Arc<KeyRing>,
    /// `Some` for Secrets Manager and SSM.
    pub refresher: Option<Refresher>,
}

/// Loads the configured key: parses it (`env`), or fetches it (AWS sources).
pub async fn load(config: &TokenConfig) -> Result<Loaded, LoadError> {
    let started = Instant::now();
    let origin = config.key.describe();
    let client = match &config.aws {
        Some(settings) => Some(Arc::new(
            AwsClient::new(settings.clone()).map_err(|e| KeySourceError::from_aws(&origin, e))?,
        )),
        None => None,
    };
    let (key, also, refresher) = match (&config.key, client) {
        (KeySource::Env(material), _) => {
            let (algorithm, material, kid) =
                (config.algorithm, material.clone(), config.key_id.clone());
            // RSA parsing takes milliseconds: off the runtime thread, which is registering.
            let key = tokio::task::spawn_blocking(move || {
                SigningKey::from_material(algorithm, &material, kid.as_deref())
            })
            .await
            .map_err(|e| ConfigError::InvalidKey {
                var: "JWT_PRIVATE_KEY",
                algorithm: config.algorithm.name(),
                reason: format!("the parsing task failed ({e})"),
            })??;
            (key, Vec::new(), None)
        }
        (KeySource::Kms(kms_key), Some(client)) => {
            let key =
                kms_key_of(config.algorithm, &client, kms_key, config.key_id.as_deref()).await?;
            let mut also = Vec::new();
            for extra in &config.kms_verify_keys {
                let key = kms_key_of(config.algorithm, &client, extra, None).await?;
                also.extend(key.public_jwk().cloned());
            }
            (key, also, None)
        }
        (KeySource::SecretsManager(_) | KeySource::Ssm(_), Some(client)) => {
            let fetched = fetch(&client, &config.key).await?;
            let key = parse_fetched(config, &fetched)?;
            let refresher = Refresher {
                client,
                config: config.clone(),
                version: fetched.version,
                last_check: Instant::now(),
                retired: Vec::new(),
                ring: None,
            };
            (key, Vec::new(), Some(refresher))
        }
        (_, None) => {
            return Err(KeySourceError {
                kind: KeySourceErrorKind::ServiceError,
                origin,
                detail: "no AWS settings".to_string(),
            }
            .into());
        }
    };
    tracing::info!(
        source = %origin,
        kid = key.kid(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "signing key loaded"
    );
    let ring = Arc::new(KeyRing::new(key, &config.typ, also));
    let refresher = refresher.map(|mut r| {
        r.ring = Some(ring.clone());
        r
    });
    Ok(Loaded { ring, refresher })
}

async fn fetch(client: &AwsClient, source: &KeySource) -> Result<Fetched, KeySourceError> {
    let origin = source.describe();
    let secret = source
        .secret()
        .ok_or_else(|| KeySourceError::wrong_type(&origin, "not fetchable".into()))?;
    crate::aws::fetch(client, &secret, FETCH_TIMEOUT)
        .await
        .map_err(|e| KeySourceError::from_source(&origin, e))
}

/// Parses a fetched key as `env` would parse the same text. The kid of an HMAC key names the
/// version (not secret), so that a rotated secret shows in the tokens' `kid`. With
/// `JWT_KEY_ID` set, every version gets a kid of its own ([`version_kid`]).
fn parse_fetched(config: &TokenConfig, fetched: &Fetched) -> Result<SigningKey, KeySourceError> {
    let origin = config.key.describe();
    let algorithm = config.algorithm;
    let material = if algorithm.is_hmac() {
        KeyMaterial::Secret(fetched.material.clone())
    } else {
        KeyMaterial::Pem {
            pem: fetched.material.clone(),
            source: "JWT_KEY_SOURCE",
        }
    };
    // An HMAC kid is given here; an asymmetric key is parsed under its RFC 7638 thumbprint
    // (the default kid), which `JWT_KEY_ID` then prefixes.
    let hmac_kid = match &config.key_id {
        Some(prefix) => version_kid(prefix, None, &fetched.version),
        None => format!(
            "{}-hmac-{}",
            algorithm.name().to_ascii_lowercase(),
            fetched.version
        ),
    };
    let kid = algorithm.is_hmac().then_some(hmac_kid.as_str());
    let key = SigningKey::from_material(algorithm, &material, kid).map_err(|e| {
        let reason = match e {
            ConfigError::WeakSecret { reason } | ConfigError::InvalidKey { reason, .. } => reason,
            other => other.to_string(),
        };
        KeySourceError::wrong_type(
            &origin,
            format!("not a usable key for {}: {reason}", algorithm.name()),
        )
    })?;
    Ok(match (&config.key_id, algorithm.is_hmac()) {
        (Some(prefix), false) => {
            let kid = version_kid(prefix, Some(key.kid()), &fetched.version);
            key.with_kid(kid)
        }
        _ => key,
    })
}

/// How many characters of the RFC 7638 thumbprint (base64url, 6 bits each) a version kid
/// keeps: 72 bits, so two versions of one key never share a kid by chance.
const THUMBPRINT_CHARS: usize = 12;

/// The kid of one version of a rotating (`secretsmanager:`/`ssm:`) key when `JWT_KEY_ID` is
/// set: `<JWT_KEY_ID>-<what tells the version apart>`: the start of the public key's RFC 7638
/// `thumbprint`, or for an HMAC secret (never published, and whose hash would reveal a little of
/// it) the version id. A fixed kid would put two keys under one kid in the JWKS after a
/// rotation, and a relying party that takes the first key with the token's kid (PyJWT does)
/// would reject every token of the other. Derived from the key rather than from the order of
/// the versions an environment happened to see, so that every environment, and the JWKS a
/// deploy step prints, give one key the same kid.
fn version_kid(prefix: &str, thumbprint: Option<&str>, version: &str) -> String {
    match thumbprint {
        Some(thumbprint) => {
            let end = thumbprint
                .char_indices()
                .nth(THUMBPRINT_CHARS)
                .map_or(thumbprint.len(), |(i, _)| i);
            format!("{prefix}-{}", &thumbprint[..end])
        }
        None => format!("{prefix}-{version}"),
    }
}

/// A KMS key as a [`SigningKey`]: its public key from `GetPublicKey`, checked to be a signing
/// key that can sign with `algorithm`.
async fn kms_key_of(
    algorithm: Algorithm,
    client: &Arc<AwsClient>,
    key: &str,
    kid: Option<&str>,
) -> Result<SigningKey, KeySourceError> {
    let origin = format!("kms:{key}");
    // GetPublicKey answers for a disabled key too (moto does; and a key may be pending
    // deletion): DescribeKey's state is checked, in parallel, so that init fails rather than
    // every /token.
    let body = json!({ "KeyId": key });
    let (described, answer) = tokio::join!(
        client.call("DescribeKey", &body, FETCH_TIMEOUT),
        client.call("GetPublicKey", &body, FETCH_TIMEOUT),
    );
    let described = described.map_err(|e| KeySourceError::from_aws(&origin, e))?;
    let state = described["KeyMetadata"]["KeyState"]
        .as_str()
        .unwrap_or("unknown");
    if state != "Enabled" {
        return Err(KeySourceError {
            kind: KeySourceErrorKind::KeyDisabled,
            origin,
            detail: format!("the key's state is {state}, not Enabled"),
        });
    }
    let answer = answer.map_err(|e| KeySourceError::from_aws(&origin, e))?;
    let usage = answer.get("KeyUsage").and_then(Value::as_str);
    if usage != Some("SIGN_VERIFY") {
        return Err(KeySourceError::wrong_type(
            &origin,
            format!(
                "its KeyUsage is {}, not SIGN_VERIFY",
                usage.unwrap_or("unknown")
            ),
        ));
    }
    let spki = answer
        .get("PublicKey")
        .and_then(Value::as_str)
        .and_then(|k| STANDARD.decode(k).ok())
        .ok_or_else(|| KeySourceError::wrong_type(&origin, "no PublicKey in the answer".into()))?;
    let spec = answer
        .get("KeySpec")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    SigningKey::kms(algorithm, client.clone(), key, &spki, kid).map_err(|e| {
        KeySourceError::wrong_type(
            &origin,
            format!("a {spec} key cannot sign {}: {e}", algorithm.name()),
        )
    })
}

/// Re-reads a Secrets Manager or SSM key, at INVOKE or a Managed Instances tick (see the
/// module doc).
pub struct Refresher {
    client: Arc<AwsClient>,
    config: TokenConfig,
    /// The version signing now.
    version: String,
    last_check: Instant,
    /// Public keys of earlier versions, each with the moment it leaves the JWKS.
    retired: Vec<(Jwk, Instant)>,
    ring: Option<Arc<KeyRing>>,
}

impl Refresher {
    /// Drops retired public keys whose tokens have all expired, and re-reads the key when
    /// `JWT_KEY_REFRESH_SECONDS` have passed since the last attempt. The caller bounds the
    /// time: dropping this future mid-fetch cancels the request and changes nothing. A failed
    /// re-read keeps the current key (logged; `Err` for the caller to count); the next attempt
    /// is one interval later.
    pub async fn on_invoke(&mut self, now: Instant) -> Result<(), KeySourceError> {
        let Some(ring) = self.ring.clone() else {
            return Ok(());
        };
        let before = self.retired.len();
        self.retired.retain(|(_, until)| *until > now);
        if self.retired.len() != before {
            ring.publish(&self.published());
        }
        if now.duration_since(self.last_check) < self.config.key_refresh {
            return Ok(());
        }
        self.last_check = now;
        // A re-read is a key load too: its self-trace span holds its AWS call.
        let span =
            tracing::info_span!(target: selftrace::TARGET, "sidecar.key_load", refresh = true);
        let fetched = fetch(&self.client, &self.config.key)
            .instrument(span)
            .await?;
        if fetched.version == self.version {
            return Ok(());
        }
        let key = parse_fetched(&self.config, &fetched)?;
        let old = ring.active();
        // A key that signs again (a version rolled back, or the same key put anew) is no
        // longer retired; the one it replaces is, unless it is that same key.
        self.retired
            .retain(|(jwk, _)| jwk.common.key_id.as_deref() != Some(key.kid()));
        // Its tokens live `max_ttl` from the switch, not from the start of the fetch: the old
        // key signs until then.
        let switched = Instant::now().max(now);
        if let Some(jwk) = old.key.public_jwk()
            && old.key.kid() != key.kid()
        {
            self.retired.push((
                jwk.clone(),
                switched + Duration::from_secs(self.config.max_ttl),
            ));
        }
        tracing::info!(
            old_kid = old.key.kid(),
            new_kid = key.kid(),
            "signing key rotated"
        );
        self.version = fetched.version;
        ring.install(key, &self.published());
        Ok(())
    }

    fn published(&self) -> Vec<Jwk> {
        self.retired.iter().map(|(jwk, _)| jwk.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenAuth;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

    fn config(algorithm: Algorithm, key_id: Option<&str>) -> TokenConfig {
        TokenConfig {
            algorithm,
            key: KeySource::SecretsManager("jwt".into()),
            key_refresh: Duration::from_secs(1),
            kms_verify_keys: Vec::new(),
            aws: None,
            key_id: key_id.map(String::from),
            issuer: "lambda-sidecar".into(),
            audiences: Vec::new(),
            default_subject: "fn".into(),
            ttl: 900,
            max_ttl: 3600,
            allowed_claims: Default::default(),
            typ: "JWT".into(),
            auth: TokenAuth::Off,
            jwks_uri: None,
        }
    }

    fn es256_pem() -> Vec<u8> {
        let der =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(der.as_ref())
        )
        .into_bytes()
    }

    fn fetched(material: &[u8], version: &str) -> Fetched {
        Fetched {
            material: material.to_vec(),
            version: version.to_string(),
        }
    }

    #[test]
    fn a_version_kid_is_the_key_id_and_what_tells_the_version_apart() {
        let thumbprint = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        let cases: &[(&str, Option<&str>, &str, &str)] = &[
            ("mykid", Some(thumbprint), "v2", "mykid-NzbLsXh8uDCc"),
            ("mykid", Some("short"), "v2", "mykid-short"),
            ("mykid", None, "3f2a-uuid", "mykid-3f2a-uuid"),
            ("mykid", None, "2", "mykid-2"),
        ];
        for &(prefix, thumbprint, version, kid) in cases {
            assert_eq!(version_kid(prefix, thumbprint, version), kid);
        }
    }

    /// With `JWT_KEY_ID`, two versions of a rotating key never share a kid, one key keeps its
    /// kid whatever its version id (as every environment and `lambda-sidecar jwks` see it),
    /// and the JWK names the kid the tokens carry.
    #[test]
    fn each_version_of_a_rotating_key_has_a_kid_of_its_own() {
        let es = config(Algorithm::ES256, Some("mykid"));
        let (a, b) = (es256_pem(), es256_pem());
        let first = parse_fetched(&es, &fetched(&a, "v1")).unwrap();
        let second = parse_fetched(&es, &fetched(&b, "v2")).unwrap();
        let again = parse_fetched(&es, &fetched(&a, "v3")).unwrap();
        assert_ne!(first.kid(), second.kid());
        assert_eq!(first.kid(), again.kid());
        for key in [&first, &second] {
            assert!(key.kid().starts_with("mykid-"), "{}", key.kid());
            assert_eq!(
                key.public_jwk().unwrap().common.key_id.as_deref(),
                Some(key.kid())
            );
        }
        // Without JWT_KEY_ID: the thumbprint, as before.
        let plain = parse_fetched(&config(Algorithm::ES256, None), &fetched(&a, "v1")).unwrap();
        assert!(first.kid()[6..].starts_with(&plain.kid()[..THUMBPRINT_CHARS]));

        let secret = b"Qm9vZ2llIHdvb2dpZSBpcyBub3QgYSBzZWNyZXQgZm9yIHJlYWw".to_vec();
        let hs = config(Algorithm::HS256, Some("mykid"));
        let hmac = parse_fetched(&hs, &fetched(&secret, "v7")).unwrap();
        assert_eq!(hmac.kid(), "mykid-v7");
        let hs = config(Algorithm::HS256, None);
        let hmac = parse_fetched(&hs, &fetched(&secret, "v7")).unwrap();
        assert_eq!(hmac.kid(), "hs256-hmac-v7");
    }

    fn published_kids(ring: &KeyRing) -> Vec<String> {
        let jwks: Value = serde_json::from_slice(&ring.jwks()).unwrap();
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    }

    /// The same key put again as a new version is published once.
    #[test]
    fn a_kid_is_published_once() {
        let es = config(Algorithm::ES256, Some("mykid"));
        let pem = es256_pem();
        let key = parse_fetched(&es, &fetched(&pem, "v1")).unwrap();
        let same = parse_fetched(&es, &fetched(&pem, "v2")).unwrap();
        let retired: Vec<Jwk> = key.public_jwk().cloned().into_iter().collect();
        let ring = KeyRing::new(key, "JWT", Vec::new());
        ring.install(same, &retired);
        assert_eq!(published_kids(&ring).len(), 1);
    }
}
