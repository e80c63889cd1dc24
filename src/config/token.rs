//! The token service's settings: `JWT_*` (algorithm, key and where it comes from, claims),
//! `SIDECAR_TOKEN_AUTH` and the value it checks callers against: `AWS_SESSION_TOKEN`, or,
//! with SnapStart, which gives no `AWS_SESSION_TOKEN`, `AWS_CONTAINER_AUTHORIZATION_TOKEN`.

use std::collections::BTreeSet;
use std::time::Duration;

use super::aws::{AwsService, AwsSettings, KEY_SOURCE, SecretRef, aws_settings, container_token};
use super::{ConfigError, Env, Errors};

/// Claims only the sidecar sets. A request that names one is refused, never silently ignored
/// (`token::claims`), and `JWT_ALLOWED_CLAIMS` may not name one. Defined here, as plain data,
/// so that `config` depends on nothing in `token`.
pub const SIDECAR_CLAIMS: &[&str] = &["iss", "exp", "iat", "nbf", "jti"];

/// `JWT_ALGORITHM`, parsed: the algorithms the sidecar signs with. Plain data; `token::keys`
/// turns it into a signer.
/// `none` and anything else are not representable.
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
}

/// What the token service needs to mint tokens. The key material is kept as given; it is
/// parsed into a signing key once, by `token::keys::SigningKey::load`.
#[derive(Clone)]
pub struct TokenConfig {
    pub algorithm: Algorithm,
    /// `JWT_KEY_SOURCE`, with the key material itself for `env`.
    pub key: KeySource,
    /// `JWT_KEY_REFRESH_SECONDS`: how often a Secrets Manager or SSM key is re-read, at most.
    pub key_refresh: Duration,
    /// `JWT_KMS_VERIFY_KEYS`: more KMS keys whose public keys the JWKS publishes.
    pub kms_verify_keys: Vec<String>,
    /// Region, credentials and endpoints, for the AWS key sources only.
    pub aws: Option<AwsSettings>,
    /// `JWT_KEY_ID`; when absent the kid is derived from the public key (RFC 7638).
    pub key_id: Option<String>,
    pub issuer: String,
    /// `JWT_AUDIENCE`: the audiences a caller may ask for; the first is the default.
    pub audiences: Vec<String>,
    pub default_subject: String,
    pub ttl: u64,
    pub max_ttl: u64,
    /// Extra claims a caller may set through `POST /token`.
    pub allowed_claims: BTreeSet<String>,
    /// `JWT_TYP`: the JOSE header's `typ`, e.g. `at+jwt` for RFC 9068 access tokens.
    pub typ: String,
    /// Who may ask for a token (`SIDECAR_TOKEN_AUTH`).
    pub auth: TokenAuth,
    /// `JWT_JWKS_URI`: the public https URL where the JWKS is published for relying parties
    /// outside the sandbox. Set, it makes the OIDC discovery document buildable (see
    /// `token::discovery`), which also needs `JWT_ISSUER` to be an https URL: both are
    /// checked here, so a half-configured issuer fails at start, not at a relying party.
    pub jwks_uri: Option<String>,
}

/// How `/token` tells the function from anything else that can reach 127.0.0.1, such as a
/// server-side request forgery through the function's own HTTP client.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenAuth {
    /// `X-Sidecar-Token` must equal this value, the `AWS_SESSION_TOKEN` Lambda gives the
    /// function and every extension: a per-environment secret that a URL cannot carry.
    SessionToken(String),
    /// With SnapStart, where Lambda gives no `AWS_SESSION_TOKEN` (credentials come from the
    /// container credentials endpoint, so that none expire inside a snapshot):
    /// `X-Sidecar-Token` must equal `AWS_CONTAINER_AUTHORIZATION_TOKEN`, which the function's
    /// process has too, a per-environment secret of the same kind.
    ContainerToken(String),
    /// `SIDECAR_TOKEN_AUTH=off`: any local caller gets a token, as before the header existed.
    Off,
}

impl TokenAuth {
    /// The value `X-Sidecar-Token` must carry; `None` with `SIDECAR_TOKEN_AUTH=off`.
    pub fn expected(&self) -> Option<&str> {
        match self {
            TokenAuth::SessionToken(token) | TokenAuth::ContainerToken(token) => Some(token),
            TokenAuth::Off => None,
        }
    }

    /// The variable that value comes from, for a log line (never the value).
    pub fn variable(&self) -> Option<&'static str> {
        match self {
            TokenAuth::SessionToken(_) => Some("AWS_SESSION_TOKEN"),
            TokenAuth::ContainerToken(_) => Some("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
            TokenAuth::Off => None,
        }
    }
}

impl std::fmt::Debug for TokenAuth {
    /// Written by hand so that the session token never reaches a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenAuth::SessionToken(_) => "SessionToken(<redacted>)",
            TokenAuth::ContainerToken(_) => "ContainerToken(<redacted>)",
            TokenAuth::Off => "Off",
        })
    }
}

impl std::fmt::Debug for TokenConfig {
    /// Written by hand so that a secret never reaches a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("algorithm", &self.algorithm)
            .field("key", &self.key.describe())
            .field("key_refresh", &self.key_refresh)
            .field("kms_verify_keys", &self.kms_verify_keys)
            .field("aws", &self.aws)
            .field("key_id", &self.key_id)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("default_subject", &self.default_subject)
            .field("ttl", &self.ttl)
            .field("max_ttl", &self.max_ttl)
            .field("allowed_claims", &self.allowed_claims)
            .field("typ", &self.typ)
            .field("auth", &self.auth)
            .field("jwks_uri", &self.jwks_uri)
            .finish()
    }
}

/// `JWT_KEY_SOURCE`: where the signing key comes from. Only names here; `token::source`
/// fetches.
#[derive(Clone)]
pub enum KeySource {
    /// `env` (the default): `JWT_SECRET`, `JWT_PRIVATE_KEY` or `JWT_PRIVATE_KEY_FILE`.
    Env(KeyMaterial),
    /// `secretsmanager:<secret id or ARN>`: an HMAC secret or a PEM in `SecretString`.
    SecretsManager(String),
    /// `ssm:<parameter name>`: the same in a SecureString parameter.
    Ssm(String),
    /// `kms:<key id, ARN or alias>`: KMS signs; the private key never enters the sandbox.
    Kms(String),
}

impl KeySource {
    /// What errors and logs call it: `env`, or `kind:id` (an id is not secret).
    pub fn describe(&self) -> String {
        match self {
            KeySource::Env(_) => "env".to_string(),
            KeySource::SecretsManager(id) => format!("secretsmanager:{id}"),
            KeySource::Ssm(name) => format!("ssm:{name}"),
            KeySource::Kms(key) => format!("kms:{key}"),
        }
    }
}

impl KeySource {
    /// The secret a `secretsmanager:` or `ssm:` source reads; `None` for the others.
    pub fn secret(&self) -> Option<SecretRef> {
        match self {
            KeySource::SecretsManager(id) => Some(SecretRef::SecretsManager(id.clone())),
            KeySource::Ssm(name) => Some(SecretRef::Ssm(name.clone())),
            KeySource::Env(_) | KeySource::Kms(_) => None,
        }
    }
}

/// Key material as configured, not yet parsed.
#[derive(Clone)]
pub enum KeyMaterial {
    /// `JWT_SECRET`, for the HS* algorithms.
    Secret(Vec<u8>),
    /// A PEM private key, for the asymmetric algorithms; `source` names where it came from.
    Pem { pem: Vec<u8>, source: &'static str },
}

/// `JWT_KEY_SOURCE`: `None` for `env` (the default), else the remote source, after checking
/// that no local key is set beside it and that the algorithm fits it. Its errors never show
/// the value (a key pasted there by mistake would be printed in the log and `init/error`),
/// only its scheme: see [`scheme_of`].
fn key_source(env: &Env<'_>, algorithm: Algorithm) -> Result<Option<KeySource>, ConfigError> {
    const EXPECTED: &str = "env, secretsmanager:<secret id or ARN>, ssm:<parameter name> or \
                            kms:<key id, ARN or alias>";
    let Some(raw) = env.get("JWT_KEY_SOURCE") else {
        return Ok(None);
    };
    let trimmed = raw.trim();
    let invalid = |expected: &str| ConfigError::Invalid {
        var: "JWT_KEY_SOURCE",
        value: "<not shown>".to_string(),
        expected: format!("{expected}; {}", scheme_of(trimmed)),
    };
    if trimmed.eq_ignore_ascii_case("env") {
        return Ok(None);
    }
    let (kind, id) = trimmed.split_once(':').ok_or_else(|| invalid(EXPECTED))?;
    let source = match kind.to_ascii_lowercase().as_str() {
        "secretsmanager" => KeySource::SecretsManager(id.to_string()),
        "ssm" => KeySource::Ssm(id.to_string()),
        "kms" => KeySource::Kms(id.to_string()),
        _ => return Err(invalid(EXPECTED)),
    };
    if !valid_aws_id(id) {
        return Err(invalid(&format!(
            "{EXPECTED}, with a non-empty id of printable characters without spaces"
        )));
    }
    if let Some(var) = ["JWT_SECRET", "JWT_PRIVATE_KEY", "JWT_PRIVATE_KEY_FILE"]
        .into_iter()
        .find(|v| env.get(v).is_some())
    {
        return Err(ConfigError::Invalid {
            var,
            value: "<set>".to_string(),
            expected: format!(
                "unset when JWT_KEY_SOURCE={} (the key comes from there)",
                source.describe()
            ),
        });
    }
    if let KeySource::Kms(_) = source
        && !matches!(
            algorithm,
            Algorithm::ES256 | Algorithm::ES384 | Algorithm::RS256 | Algorithm::PS256
        )
    {
        return Err(ConfigError::Invalid {
            var: "JWT_ALGORITHM",
            value: algorithm.name().to_string(),
            expected: "ES256, ES384, RS256 or PS256 with JWT_KEY_SOURCE=kms:<key> (what KMS \
                       signs with)"
                .to_string(),
        });
    }
    Ok(Some(source))
}

/// An AWS resource name, id, ARN or alias: 1 to 2048 printable characters without spaces.
fn valid_aws_id(id: &str) -> bool {
    (1..=2048).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// What an error about `JWT_KEY_SOURCE` may say of its value: the scheme before the first
/// `:`, when it has the shape of one (1 to 16 ASCII letters), and nothing else. A secret or a
/// PEM pasted there by mistake has no such prefix (base64 and hex have no `:`, a PEM starts
/// with dashes), so none of it is shown; a Secrets Manager or KMS ARN given without its
/// scheme shows `arn:`, with what to write instead.
fn scheme_of(value: &str) -> String {
    match value.split_once(':') {
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("arn") => "got a value starting with \
            \"arn:\" (not shown): an ARN needs its source in front, such as \
            secretsmanager:arn:aws:secretsmanager:… or kms:arn:aws:kms:…"
            .to_string(),
        Some((scheme, _))
            if (1..=16).contains(&scheme.len())
                && scheme.bytes().all(|b| b.is_ascii_alphabetic()) =>
        {
            format!("got a value starting with \"{scheme}:\" (the rest not shown)")
        }
        _ => "got a value without a scheme (not shown: it may be a key)".to_string(),
    }
}

/// The key of `JWT_KEY_SOURCE=env`: `JWT_SECRET` for HS*, else a PEM from `JWT_PRIVATE_KEY`
/// or the file `JWT_PRIVATE_KEY_FILE` names.
fn env_key(env: &Env<'_>, algorithm: Algorithm) -> Result<KeyMaterial, ConfigError> {
    let material = if algorithm.is_hmac() {
        if env.get("JWT_PRIVATE_KEY").is_some() || env.get("JWT_PRIVATE_KEY_FILE").is_some() {
            return Err(ConfigError::Invalid {
                var: "JWT_ALGORITHM",
                value: algorithm.name().to_string(),
                expected: "an asymmetric algorithm (ES256, ES384, RS256, PS256, EdDSA) when \
                           JWT_PRIVATE_KEY or JWT_PRIVATE_KEY_FILE is set"
                    .to_string(),
            });
        }
        let secret = env.get("JWT_SECRET").ok_or(ConfigError::Missing {
            var: "JWT_SECRET",
            why: "an HS* algorithm needs a secret of at least 32 random bytes; there is no default",
        })?;
        KeyMaterial::Secret(secret.into_bytes())
    } else {
        if env.get("JWT_SECRET").is_some() {
            return Err(ConfigError::Invalid {
                var: "JWT_SECRET",
                value: "<redacted>".to_string(),
                expected: format!(
                    "unset when JWT_ALGORITHM={} (it signs with JWT_PRIVATE_KEY)",
                    algorithm.name()
                ),
            });
        }
        match (env.get("JWT_PRIVATE_KEY"), env.get("JWT_PRIVATE_KEY_FILE")) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    var: "JWT_PRIVATE_KEY_FILE",
                    value: "<set>".to_string(),
                    expected: "only one of JWT_PRIVATE_KEY and JWT_PRIVATE_KEY_FILE".to_string(),
                });
            }
            (Some(pem), None) => KeyMaterial::Pem {
                pem: pem.into_bytes(),
                source: "JWT_PRIVATE_KEY",
            },
            (None, Some(path)) => {
                let pem = std::fs::read(&path).map_err(|e| ConfigError::Invalid {
                    var: "JWT_PRIVATE_KEY_FILE",
                    // Not kept even here, where Display hides it: `{:?}` would show it.
                    value: "<not shown>".to_string(),
                    expected: format!(
                        "the path of a readable PEM file, but it is not a readable file path \
                         ({e}); the value is not shown because it may be key material: if it \
                         is a PEM key itself, put it in JWT_PRIVATE_KEY"
                    ),
                })?;
                KeyMaterial::Pem {
                    pem,
                    source: "JWT_PRIVATE_KEY_FILE",
                }
            }
            (None, None) => {
                return Err(ConfigError::Missing {
                    var: "JWT_PRIVATE_KEY",
                    why: "an asymmetric algorithm needs a PEM private key in JWT_PRIVATE_KEY or \
                          JWT_PRIVATE_KEY_FILE; there is no default",
                });
            }
        }
    };
    Ok(material)
}

pub(super) fn token_config(env: &Env<'_>) -> Result<TokenConfig, ConfigError> {
    let mut errors = Errors::default();
    let algorithm = errors.take(env.choice(
        "JWT_ALGORITHM",
        &Algorithm::ALL.map(|a| (a.name(), a)),
        Algorithm::HS256,
    ));
    // The key is checked against the algorithm: an invalid algorithm leaves nothing to check
    // it against, and the algorithm's error says what to fix first.
    let key = algorithm.and_then(|algorithm| errors.take(key(env, algorithm)));
    let kms_verify_keys = errors.take(kms_verify_keys(env, key.as_ref()));
    let key_refresh = errors.take(env.number("JWT_KEY_REFRESH_SECONDS", 300, 1, 86_400));
    let aws = key.as_ref().and_then(|key| errors.take(key_aws(env, key)));
    let key_id = errors.take(key_id(env));
    let issuer = errors.take(env.non_empty("JWT_ISSUER", "lambda-sidecar"));
    let audiences = env.list("JWT_AUDIENCE");
    let default_subject = errors.take(match env.get("JWT_DEFAULT_SUBJECT") {
        Some(s) => env.non_empty("JWT_DEFAULT_SUBJECT", &s),
        None => Ok(env
            .get("AWS_LAMBDA_FUNCTION_NAME")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "lambda-sidecar".to_string())),
    });
    let max_ttl = errors.take(env.number("JWT_MAX_TTL_SECONDS", 3600, 1, 31 * 24 * 3600));
    // The default lifetime is bounded by the longest: unknown while that one is invalid.
    let ttl = max_ttl.and_then(|max_ttl| {
        errors.take(env.number("JWT_TTL_SECONDS", 900.min(max_ttl), 1, max_ttl))
    });
    let allowed_claims = errors.take(allowed_claims(env));
    let typ = errors.take(typ(env));
    let jwks_uri = match (algorithm, &issuer) {
        (Some(algorithm), Some(issuer)) => errors.take(jwks_uri(env, algorithm, issuer)),
        _ => None,
    };
    let auth = errors.take(token_auth(env));
    errors.into_result()?;
    let (
        Some(algorithm),
        Some(key),
        Some(kms_verify_keys),
        Some(key_refresh),
        Some(aws),
        Some(key_id),
        Some(issuer),
        Some(default_subject),
        Some(max_ttl),
        Some(ttl),
        Some(allowed_claims),
        Some(typ),
        Some(jwks_uri),
        Some(auth),
    ) = (
        algorithm,
        key,
        kms_verify_keys,
        key_refresh,
        aws,
        key_id,
        issuer,
        default_subject,
        max_ttl,
        ttl,
        allowed_claims,
        typ,
        jwks_uri,
        auth,
    )
    else {
        // Every part is `Some` when no error was kept.
        return Err(ConfigError::Several(Vec::new()));
    };
    Ok(TokenConfig {
        algorithm,
        key,
        key_refresh: Duration::from_secs(key_refresh),
        kms_verify_keys,
        aws,
        key_id,
        jwks_uri,
        issuer,
        audiences,
        default_subject,
        ttl,
        max_ttl,
        allowed_claims,
        typ,
        auth,
    })
}

/// Where the signing key comes from: `JWT_KEY_SOURCE`, else the key variables.
fn key(env: &Env<'_>, algorithm: Algorithm) -> Result<KeySource, ConfigError> {
    match key_source(env, algorithm)? {
        Some(remote) => Ok(remote),
        None => Ok(KeySource::Env(env_key(env, algorithm)?)),
    }
}

/// `JWT_KMS_VERIFY_KEYS`: only beside a KMS signing key (`key`, when it is known).
fn kms_verify_keys(env: &Env<'_>, key: Option<&KeySource>) -> Result<Vec<String>, ConfigError> {
    let kms_verify_keys = env.list("JWT_KMS_VERIFY_KEYS");
    if !kms_verify_keys.is_empty() && key.is_some_and(|key| !matches!(key, KeySource::Kms(_))) {
        return Err(ConfigError::Invalid {
            var: "JWT_KMS_VERIFY_KEYS",
            value: env.get("JWT_KMS_VERIFY_KEYS").unwrap_or_default(),
            expected: "unset unless JWT_KEY_SOURCE=kms:<key>".to_string(),
        });
    }
    if let Some(bad) = kms_verify_keys.iter().find(|k| !valid_aws_id(k)) {
        return Err(ConfigError::Invalid {
            var: "JWT_KMS_VERIFY_KEYS",
            value: bad.clone(),
            expected: "comma-separated KMS key ids, ARNs or aliases".to_string(),
        });
    }
    Ok(kms_verify_keys)
}

/// The AWS settings a remote key source needs; none for a key from the environment.
fn key_aws(env: &Env<'_>, key: &KeySource) -> Result<Option<AwsSettings>, ConfigError> {
    let service = match key {
        KeySource::Env(_) => return Ok(None),
        KeySource::SecretsManager(_) => AwsService::SecretsManager,
        KeySource::Ssm(_) => AwsService::Ssm,
        KeySource::Kms(_) => AwsService::Kms,
    };
    aws_settings(env, service, KEY_SOURCE).map(Some)
}

/// `JWT_KEY_ID`, when set: what the JWKS and the tokens' `kid` may hold.
fn key_id(env: &Env<'_>) -> Result<Option<String>, ConfigError> {
    let key_id = env.get("JWT_KEY_ID");
    if let Some(kid) = &key_id
        && (kid.is_empty() || kid.len() > 128 || kid.chars().any(|c| c.is_control()))
    {
        return Err(ConfigError::Invalid {
            var: "JWT_KEY_ID",
            value: kid.clone(),
            expected: "1 to 128 printable characters".to_string(),
        });
    }
    Ok(key_id)
}

/// `JWT_ALLOWED_CLAIMS`: never one of the claims the sidecar sets itself.
fn allowed_claims(env: &Env<'_>) -> Result<BTreeSet<String>, ConfigError> {
    let allowed_claims: BTreeSet<String> = env.list("JWT_ALLOWED_CLAIMS").into_iter().collect();
    if let Some(c) = allowed_claims
        .iter()
        .find(|c| SIDECAR_CLAIMS.contains(&c.as_str()))
    {
        return Err(ConfigError::Invalid {
            var: "JWT_ALLOWED_CLAIMS",
            value: c.clone(),
            expected: format!(
                "claim names other than {} (the sidecar sets those itself)",
                SIDECAR_CLAIMS.join(", ")
            ),
        });
    }
    Ok(allowed_claims)
}

/// `JWT_TYP`, default `JWT`.
fn typ(env: &Env<'_>) -> Result<String, ConfigError> {
    let typ = env.get("JWT_TYP").unwrap_or_else(|| "JWT".to_string());
    // RFC 6838 restricted-name characters plus the `/` of a full media type: what `typ`
    // holds (RFC 7515 section 4.1.9), and nothing that needs escaping in a header.
    if typ.is_empty()
        || typ.len() > 64
        || !typ
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+/".contains(&b))
    {
        return Err(ConfigError::Invalid {
            var: "JWT_TYP",
            value: typ,
            expected: "a media type name of 1 to 64 characters (letters, digits and ! # $ & - ^ \
                       _ . + /), such as JWT or at+jwt"
                .to_string(),
        });
    }
    Ok(typ)
}

/// `JWT_JWKS_URI`, checked with what publishing needs around it. API Gateway's JWT
/// authorizer (like any OIDC relying party) fetches `<JWT_ISSUER>/.well-known/openid-configuration`
/// and follows its `jwks_uri`, so the issuer must be an https URL too; and an HMAC secret is
/// never published, so there is nothing for the URL to point at.
fn jwks_uri(
    env: &Env<'_>,
    algorithm: Algorithm,
    issuer: &str,
) -> Result<Option<String>, ConfigError> {
    let Some(uri) = env.get("JWT_JWKS_URI") else {
        return Ok(None);
    };
    if !is_https_url(&uri) {
        return Err(ConfigError::Invalid {
            var: "JWT_JWKS_URI",
            value: uri,
            expected: "an https URL without query or fragment, where relying parties fetch the \
                       JWKS, such as https://<bucket>.s3.<region>.amazonaws.com/.well-known/jwks.json"
                .to_string(),
        });
    }
    if algorithm.is_hmac() {
        return Err(ConfigError::Invalid {
            var: "JWT_JWKS_URI",
            value: uri,
            expected: format!(
                "unset with JWT_ALGORITHM={}: an HMAC secret is never published, so there is no \
                 JWKS; relying parties outside the sandbox need an asymmetric algorithm \
                 (ES256, ES384, RS256, PS256, EdDSA)",
                algorithm.name()
            ),
        });
    }
    if !is_https_url(issuer) {
        return Err(ConfigError::Invalid {
            var: "JWT_ISSUER",
            value: issuer.to_string(),
            expected: "an https URL without query or fragment when JWT_JWKS_URI is set: relying \
                       parties fetch <JWT_ISSUER>/.well-known/openid-configuration, e.g. \
                       https://<bucket>.s3.<region>.amazonaws.com"
                .to_string(),
        });
    }
    Ok(Some(uri))
}

/// An absolute `https://host[:port][/path]` URL: no user info, query or fragment, which
/// OIDC Discovery (section 3) forbids in an issuer and which have no place in a JWKS URL.
pub fn is_https_url(raw: &str) -> bool {
    let Ok(uri) = raw.parse::<http::Uri>() else {
        return false;
    };
    uri.scheme_str() == Some("https")
        && uri.host().is_some_and(|h| !h.is_empty())
        && uri.authority().is_some_and(|a| !a.as_str().contains('@'))
        && uri.query().is_none()
        && !raw.contains('#')
}

/// `SIDECAR_TOKEN_AUTH` and, when it asks for one, the value callers must send:
/// `AWS_SESSION_TOKEN` when it is set and not empty (every Lambda environment but SnapStart);
/// otherwise, in a SnapStart environment (`AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`, or
/// `AWS_CONTAINER_CREDENTIALS_FULL_URI` set), `AWS_CONTAINER_AUTHORIZATION_TOKEN`. The
/// function reads the same variables, in the same order.
fn token_auth(env: &Env<'_>) -> Result<TokenAuth, ConfigError> {
    #[derive(Clone, Copy)]
    enum Mode {
        SessionToken,
        Off,
    }
    let mode = env.choice(
        "SIDECAR_TOKEN_AUTH",
        &[("session-token", Mode::SessionToken), ("off", Mode::Off)],
        Mode::SessionToken,
    )?;
    if let Mode::Off = mode {
        return Ok(TokenAuth::Off);
    }
    let session = env.get("AWS_SESSION_TOKEN");
    let snapstart = env
        .get("AWS_LAMBDA_INITIALIZATION_TYPE")
        .is_some_and(|t| t == "snap-start")
        || env
            .get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .is_some_and(|u| !u.trim().is_empty());
    if snapstart && session.as_deref().is_none_or(str::is_empty) {
        return match container_token(env)? {
            Some(token) => Ok(TokenAuth::ContainerToken(token)),
            None => Err(ConfigError::Missing {
                var: "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                why: "this is a SnapStart environment without AWS_SESSION_TOKEN, and \
                      SIDECAR_TOKEN_AUTH=session-token (the default) makes /token require \
                      AWS_SESSION_TOKEN, else AWS_CONTAINER_AUTHORIZATION_TOKEN, in the \
                      X-Sidecar-Token header; Lambda sets one of them, elsewhere set one to a \
                      random value shared with the caller, or set SIDECAR_TOKEN_AUTH=off",
            }),
        };
    }
    match session {
        None => Err(ConfigError::Missing {
            var: "AWS_SESSION_TOKEN",
            why: "SIDECAR_TOKEN_AUTH=session-token (the default) makes /token require it in \
                  the X-Sidecar-Token header; Lambda sets it, elsewhere set it to a random value \
                  shared with the caller, or set SIDECAR_TOKEN_AUTH=off",
        }),
        Some(token) if token.is_empty() => Err(ConfigError::Missing {
            var: "AWS_SESSION_TOKEN",
            why: "it is empty, and SIDECAR_TOKEN_AUTH=session-token (the default) makes /token \
                  require it in the X-Sidecar-Token header; set it, or set SIDECAR_TOKEN_AUTH=off",
        }),
        // Callers send it as a header value, which cannot carry these bytes.
        Some(token) if !token.bytes().all(|b| b.is_ascii_graphic()) => Err(ConfigError::Invalid {
            var: "AWS_SESSION_TOKEN",
            value: "<redacted>".to_string(),
            expected: "printable ASCII without spaces, as it is sent in the X-Sidecar-Token \
                           header (SIDECAR_TOKEN_AUTH=session-token)"
                .to_string(),
        }),
        Some(token) => Ok(TokenAuth::SessionToken(token)),
    }
}
