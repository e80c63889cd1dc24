"""The example against the real sidecar: tokens fetched with the header, claims posted as
JSON, verified against the served JWKS with PyJWT; the trace context turned into a
traceparent."""

import json
import types
import urllib.error

import pytest

import app
import sidecar_client

XRAY = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


def invoke(method, body=None):
    event = {"requestContext": {"http": {"method": method}}}
    if body is not None:
        event["body"] = json.dumps(body)
    context = types.SimpleNamespace(aws_request_id="8476a536-e9f4-11e8-9739-2dfe598c3fcd")
    return app.handler(event, context)


def test_get_returns_a_verified_token_with_the_defaults(sidecar):
    answer = invoke("GET")
    assert answer["statusCode"] == 200, answer
    claims = json.loads(answer["body"])["claims"]
    assert claims["sub"] == "orders-fn"
    assert claims["aud"] == "orders-api"
    assert claims["iss"] == "lambda-sidecar"


def test_post_sends_json_claims_the_configuration_allows(sidecar):
    answer = invoke("POST", {"subject": "alice", "role": "reader"})
    assert answer["statusCode"] == 200, answer
    claims = json.loads(answer["body"])["claims"]
    assert (claims["sub"], claims["role"], claims["exp"] - claims["iat"]) == ("alice", "reader", 300)


def test_a_claim_the_configuration_does_not_allow_is_refused_with_a_reason(sidecar):
    with pytest.raises(urllib.error.HTTPError) as refused:
        sidecar_client.fetch_token({"sub": "alice", "claims": {"admin": True}})
    assert refused.value.code == 400
    assert "JWT_ALLOWED_CLAIMS" in refused.value.read().decode()


def test_without_the_session_token_the_sidecar_refuses(sidecar, monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "not-the-session-token")
    with pytest.raises(urllib.error.HTTPError) as refused:
        sidecar_client.fetch_token()
    assert refused.value.code == 401


def test_a_token_signed_by_another_key_is_not_verified(sidecar):
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    real = sidecar_client.fetch_token()["token"]
    kid = jwt.get_unverified_header(real)["kid"]
    forged = jwt.encode(
        {"sub": "mallory", "aud": "orders-api", "iss": "lambda-sidecar", "iat": 1, "exp": 4102444800, "jti": "x"},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": kid},
    )
    with pytest.raises(jwt.InvalidSignatureError):
        sidecar_client.verify(forged, audience="orders-api")


def test_the_trace_context_goes_as_a_traceparent(monkeypatch):
    monkeypatch.setenv("_X_AMZN_TRACE_ID", XRAY)
    request = sidecar_client.token_request({"sub": "alice"}, request_id="r1")
    assert request.get_header("Traceparent") == "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-01"
    assert request.get_header("Content-type") == "application/json"
    assert request.get_header("Lambda-runtime-aws-request-id") == "r1"
    for header, want in [
        ("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0",
         "00-5759e988bd862e3fe1be46a994272793-53995c3f42cd8ad8-00"),
        ("Root=1-5759e988-bd862e3fe1be46a994272793", None),
        ("Root=1-00000000-000000000000000000000000;Parent=53995c3f42cd8ad8", None),
        ("", None),
    ]:
        assert sidecar_client.traceparent_from_xray(header) == want, header
