"""Example handler (Python runtime, Function URL or API Gateway HTTP API event): GET returns
a token with the sidecar's defaults, POST {"subject": "...", "role": "..."} one for that
subject, audience orders-api and a role claim (JWT_AUDIENCE=orders-api and
JWT_ALLOWED_CLAIMS=role must be set). Each answer carries the token's verified claims."""

import base64
import json
import urllib.error

import sidecar_client

AUDIENCE = "orders-api"


def handler(event, context):
    method = event.get("requestContext", {}).get("http", {}).get("method", "GET")
    claims = None
    if method == "POST":
        body = event.get("body") or "{}"
        if event.get("isBase64Encoded"):
            body = base64.b64decode(body).decode()
        asked = json.loads(body)
        claims = {"sub": asked.get("subject", "anonymous"), "aud": AUDIENCE, "ttl_seconds": 300}
        if "role" in asked:
            claims["claims"] = {"role": asked["role"]}
    request_id = getattr(context, "aws_request_id", None)
    try:
        answer = sidecar_client.fetch_token(claims, request_id=request_id)
    except urllib.error.HTTPError as e:
        return {"statusCode": e.code, "body": e.read().decode()}
    verified = sidecar_client.verify(answer["token"], audience=AUDIENCE)
    return {
        "statusCode": 200,
        "headers": {"content-type": "application/json"},
        "body": json.dumps({"token": answer["token"], "claims": verified}),
    }
