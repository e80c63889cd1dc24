"""A Lambda function's client of the lambda-sidecar layer, standard library only.

The sidecar listens on http://127.0.0.1:3003 in the function's execution environment. Every
/token call carries X-Sidecar-Token: the AWS_SESSION_TOKEN Lambda gives the function (and,
with SnapStart, which gives none, AWS_CONTAINER_AUTHORIZATION_TOKEN). A POST is JSON:
urllib sends form encoding unless told otherwise, which the sidecar answers with 415.
"""

import json
import os
import re
import urllib.request

SIDECAR = "http://127.0.0.1:" + os.environ.get("SIDECAR_PORT", "3003")

_ROOT = re.compile(r"^1-([0-9a-f]{8})-([0-9a-f]{24})$")
_SPAN = re.compile(r"^[0-9a-f]{16}$")


def traceparent_from_xray(header):
    """Lambda's X-Ray header (`Root=1-…;Parent=…;Sampled=1`, in `_X_AMZN_TRACE_ID` for the
    current invocation) as a W3C traceparent, so the token's span joins the invocation's
    trace; None when it lacks a root or a parent."""
    if not header:
        return None
    fields = {}
    for part in header.split(";"):
        key, eq, value = part.partition("=")
        if eq:
            fields[key.strip()] = value.strip().lower()
    root = _ROOT.match(fields.get("Root", ""))
    parent = fields.get("Parent", "")
    if not root or not _SPAN.match(parent):
        return None
    trace_id = root.group(1) + root.group(2)
    if set(trace_id) == {"0"} or set(parent) == {"0"}:
        return None
    flags = "01" if fields.get("Sampled") == "1" else "00"
    return f"00-{trace_id}-{parent}-{flags}"


def session_token():
    return os.environ.get("AWS_SESSION_TOKEN") or os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN", "")


def token_request(claims=None, traceparent=None, request_id=None):
    """The /token request: GET for the configured defaults, else a JSON POST of `claims`
    (`sub`, `aud`, `ttl_seconds`, `claims`)."""
    headers = {"X-Sidecar-Token": session_token()}
    data = None
    if claims is not None:
        data = json.dumps(claims).encode()
        headers["Content-Type"] = "application/json"
    traceparent = traceparent or traceparent_from_xray(os.environ.get("_X_AMZN_TRACE_ID"))
    if traceparent:
        headers["traceparent"] = traceparent
    if request_id:
        # Names the invocation, so the token span is placed in it however requests overlap.
        headers["Lambda-Runtime-Aws-Request-Id"] = request_id
    return urllib.request.Request(f"{SIDECAR}/token", data=data, headers=headers)


def fetch_token(claims=None, traceparent=None, request_id=None, timeout=2.0):
    """The sidecar's answer: {"token", "token_type", "expires_at", "expires_in", "user_id",
    "kid"}. An error status raises urllib.error.HTTPError, whose body names what to fix."""
    with urllib.request.urlopen(token_request(claims, traceparent, request_id), timeout=timeout) as r:
        return json.load(r)


def verify(token, audience=None, issuer=None):
    """The token's claims, verified against the sidecar's JWKS with PyJWT, as a relying party
    does (asymmetric algorithms only: an HMAC secret is never published)."""
    import jwt  # PyJWT[crypto]

    jwks = jwt.PyJWKClient(f"{SIDECAR}/.well-known/jwks.json")
    key = jwks.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        key.key,
        algorithms=[jwt.get_unverified_header(token)["alg"]],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "iss", "sub", "jti"]},
    )
