"""Tokens from the real sidecar, verified by PyJWT (an implementation independent of jsonwebtoken).

For each algorithm the sidecar is started in serve mode with a key made here, tokens are
fetched with GET and POST /token, and each is verified twice: with the key this test holds,
and through the sidecar's JWKS (PyJWKClient fetches /.well-known/jwks.json). The JWKS entry
is also compared member by member with the public key made here, and its kid with an RFC 7638
thumbprint computed here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from harness import get_json, http, post_json, start_serve

ISSUER = "https://issuer.verify.test"
AUDIENCE = "verify-api"
# JWT_AUDIENCE lists the audiences a caller may ask for; the first is the default.
OTHER_AUDIENCE = "orders-api"
DEFAULT_SUBJECT = "verify-function"
TTL = 600
ALLOWED_CLAIMS = "role,tenant"
REQUIRED = ["iss", "sub", "aud", "iat", "nbf", "exp", "jti"]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def int_bytes(n: int, length: int | None = None) -> bytes:
    return n.to_bytes(length or max(1, (n.bit_length() + 7) // 8), "big")


def public_jwk(key) -> dict[str, str]:
    """The RFC 7638 required members of a public key, computed here from `cryptography`."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        size = (key.curve.key_size + 7) // 8
        nums = key.public_numbers()
        crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[key.curve.name]
        return {"crv": crv, "kty": "EC", "x": b64url(int_bytes(nums.x, size)),
                "y": b64url(int_bytes(nums.y, size))}
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        return {"e": b64url(int_bytes(nums.e)), "kty": "RSA", "n": b64url(int_bytes(nums.n))}
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url(raw)}
    raise TypeError(type(key))


def thumbprint(members: dict[str, str]) -> str:
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return b64url(hashlib.sha256(canonical).digest())


def pkcs8(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def pkcs1(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def new_key(alg: str):
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg in ("RS256", "PS256"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


# (alg, how the key reaches the sidecar, JWT_KEY_ID or None). Together they cover the env
# variable and the file, PKCS#8 and PKCS#1, the RFC 7638 kid and a configured one.
CASES = [
    ("HS256", "secret", None),
    ("ES256", "env-pkcs8", None),
    ("ES384", "file-pkcs8", "es384-configured-kid"),
    ("RS256", "file-pkcs1", None),
    ("PS256", "env-pkcs8", None),
    ("EdDSA", "file-pkcs8", None),
]
# An algorithm of the same family that a pinned verifier must refuse.
OTHER_ALG = {"HS256": "HS512", "ES256": "ES384", "ES384": "ES256", "RS256": "PS256",
             "PS256": "RS256", "EdDSA": "ES256"}


@dataclass
class Sidecar:
    alg: str
    base: str
    verify_key: object  # the HS secret, or the public key made here
    wrong_key: object  # a key of the same kind that did not sign
    expected_kid: str | None  # None for HS: its kid is whatever the sidecar chose
    public_members: dict[str, str] | None
    secret: str | None


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def sidecar(request, tmp_path_factory):
    alg, how, key_id = request.param
    tmp: Path = tmp_path_factory.mktemp(alg)
    env = {"JWT_ALGORITHM": alg, "JWT_ISSUER": ISSUER,
           "JWT_AUDIENCE": f"{AUDIENCE},{OTHER_AUDIENCE}",
           "JWT_DEFAULT_SUBJECT": DEFAULT_SUBJECT, "JWT_TTL_SECONDS": str(TTL),
           "JWT_ALLOWED_CLAIMS": ALLOWED_CLAIMS}
    if key_id:
        env["JWT_KEY_ID"] = key_id
    secret = None
    if how == "secret":
        secret = secrets.token_urlsafe(48)
        env["JWT_SECRET"] = secret
        verify_key, wrong_key, members = secret, secrets.token_urlsafe(48), None
    else:
        key = new_key(alg)
        pem = pkcs1(key) if how.endswith("pkcs1") else pkcs8(key)
        if how.startswith("env"):
            env["JWT_PRIVATE_KEY"] = pem
        else:
            key_file = tmp / "key.pem"
            key_file.write_text(pem)
            key_file.chmod(0o600)
            env["JWT_PRIVATE_KEY_FILE"] = str(key_file)
        verify_key, wrong_key = key.public_key(), new_key(alg).public_key()
        members = public_jwk(verify_key)
    expected_kid = key_id or (thumbprint(members) if members else None)
    proc, base = start_serve(env, tmp, name=f"sidecar-{alg}")
    try:
        yield Sidecar(alg, base, verify_key, wrong_key, expected_kid, members, secret)
    finally:
        proc.stop()


def decode(sc: Sidecar, token: str, key=None, audience: str = AUDIENCE) -> dict:
    return jwt.decode(token, key if key is not None else sc.verify_key, algorithms=[sc.alg],
                      audience=audience, issuer=ISSUER, options={"require": REQUIRED})


def check_header(sc: Sidecar, token: str) -> dict:
    header = jwt.get_unverified_header(token)
    assert header["alg"] == sc.alg
    assert header["typ"] == "JWT"
    assert isinstance(header.get("kid"), str) and header["kid"]
    if sc.expected_kid is not None:
        assert header["kid"] == sc.expected_kid
    return header


def check_times(claims: dict, ttl: int) -> None:
    now = int(time.time())
    assert claims["exp"] - claims["iat"] == ttl
    assert abs(claims["iat"] - now) <= 60
    assert claims["nbf"] <= claims["iat"]


def test_get_token_carries_default_claims(sidecar):
    resp = get_json(f"{sidecar.base}/token")
    assert resp["token_type"] == "Bearer"
    header = check_header(sidecar, resp["token"])
    claims = decode(sidecar, resp["token"])
    assert claims["iss"] == ISSUER
    assert claims["sub"] == DEFAULT_SUBJECT
    assert claims["aud"] == AUDIENCE
    assert isinstance(claims["jti"], str) and claims["jti"]
    check_times(claims, TTL)
    assert resp["expires_at"] == claims["exp"]
    assert resp["expires_in"] == TTL
    assert resp["user_id"] == claims["sub"]
    assert resp["kid"] == header["kid"]


def test_post_token_with_subject_audience_and_claims(sidecar):
    body = {"sub": "user-42", "aud": OTHER_AUDIENCE, "ttl_seconds": 120,
            "claims": {"role": "admin", "tenant": "t-7"}}
    resp = post_json(f"{sidecar.base}/token", body)
    check_header(sidecar, resp["token"])
    claims = decode(sidecar, resp["token"], audience=OTHER_AUDIENCE)
    assert claims["sub"] == "user-42"
    assert claims["aud"] == OTHER_AUDIENCE
    assert claims["iss"] == ISSUER
    assert claims["role"] == "admin"
    assert claims["tenant"] == "t-7"
    check_times(claims, 120)
    assert resp["user_id"] == "user-42"
    assert resp["expires_in"] == 120
    # The audience is checked: the default audience no longer verifies.
    with pytest.raises(jwt.InvalidAudienceError):
        decode(sidecar, resp["token"], audience=AUDIENCE)
    # An audience outside JWT_AUDIENCE gets no token at all.
    status, _, raw = http("POST", f"{sidecar.base}/token", {"aud": "not-configured"})
    assert status == 400
    assert "JWT_AUDIENCE" in json.loads(raw)["message"]


def test_jti_unique_across_tokens(sidecar):
    tokens = [get_json(f"{sidecar.base}/token")["token"] for _ in range(5)]
    tokens += [post_json(f"{sidecar.base}/token", {"sub": f"s{i}"})["token"] for i in range(5)]
    jtis = [decode(sidecar, t)["jti"] for t in tokens]
    assert len(set(jtis)) == len(jtis)


def test_wrong_key_and_other_algorithm_rejected(sidecar):
    token = get_json(f"{sidecar.base}/token")["token"]
    with pytest.raises(jwt.InvalidSignatureError):
        decode(sidecar, token, key=sidecar.wrong_key)
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(token, sidecar.verify_key, algorithms=[OTHER_ALG[sidecar.alg]],
                   audience=AUDIENCE, issuer=ISSUER)
    # A tampered payload fails with the right key too.
    head, payload, sig = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged["sub"] = "someone-else"
    forged_payload = b64url(json.dumps(forged).encode())
    with pytest.raises(jwt.InvalidSignatureError):
        decode(sidecar, f"{head}.{forged_payload}.{sig}")


def test_jwks_publishes_public_key_only(sidecar):
    status, headers, raw = http("GET", f"{sidecar.base}/.well-known/jwks.json")
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    jwks = json.loads(raw)
    if sidecar.alg.startswith("HS"):
        # An HMAC key is never published, and its kid says nothing about the secret.
        assert jwks == {"keys": []}
        secret = sidecar.secret
        assert secret not in raw.decode()
        kid = check_header(sidecar, get_json(f"{sidecar.base}/token")["token"])["kid"]
        assert secret not in kid
        assert kid != thumbprint({"k": b64url(secret.encode()), "kty": "oct"})
        assert kid != hashlib.sha256(secret.encode()).hexdigest()
        return
    assert len(jwks["keys"]) == 1
    jwk = jwks["keys"][0]
    assert jwk["kid"] == sidecar.expected_kid
    for member, value in sidecar.public_members.items():
        assert jwk[member] == value, member
    assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk)
    assert jwk.get("alg", sidecar.alg) == sidecar.alg
    assert jwk.get("use", "sig") == "sig"


def test_tokens_verify_through_jwks(sidecar):
    client = jwt.PyJWKClient(f"{sidecar.base}/.well-known/jwks.json", cache_keys=False)
    token_get = get_json(f"{sidecar.base}/token")["token"]
    if sidecar.alg.startswith("HS"):
        with pytest.raises((jwt.PyJWKClientError, jwt.PyJWKSetError)):
            client.get_signing_key_from_jwt(token_get)
        return
    token_post = post_json(f"{sidecar.base}/token",
                           {"sub": "jwks-user", "claims": {"tenant": "t-1"}})["token"]
    for token in (token_get, token_post):
        signing_key = client.get_signing_key_from_jwt(token)
        assert signing_key.key_id == check_header(sidecar, token)["kid"]
        claims = decode(sidecar, token, key=signing_key.key)
        assert claims["iss"] == ISSUER
    assert decode(sidecar, token_post)["tenant"] == "t-1"

