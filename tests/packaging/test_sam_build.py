"""`sam build` of template.yaml (scripts/package/sam-build.sh), and the bundle it makes,
run as Lambda's Node runtime would (import handler.mjs, call handler) against the real
sidecar in serve mode; the token it returns is verified with PyJWT."""

import json
import os
import pathlib
import secrets
import socket
import subprocess
import time
import urllib.request

import jwt
import pytest
import yaml

from conftest import ROOT, CfnLoader, sam_env

LAMBDA_SIDECAR_BIN = pathlib.Path(os.environ.get("LAMBDA_SIDECAR_BIN", ROOT / "target/x86_64-unknown-linux-musl/release/lambda-sidecar"))
if not LAMBDA_SIDECAR_BIN.is_absolute():
    LAMBDA_SIDECAR_BIN = ROOT / LAMBDA_SIDECAR_BIN

# Calls the bundle's handler with a Function URL event (payload 2.0), prints the result.
INVOKE_JS = r"""
const [bundle, method, path, body] = process.argv.slice(1);
const { handler } = await import(bundle);
const event = {
  version: "2.0", routeKey: "$default", rawPath: path, rawQueryString: "",
  headers: { host: "x.lambda-url.us-east-1.on.aws", "content-type": "application/json" },
  requestContext: { accountId: "123456789012", apiId: "x", domainName: "x.lambda-url.us-east-1.on.aws",
    domainPrefix: "x", http: { method, path, protocol: "HTTP/1.1", sourceIp: "192.0.2.1", userAgent: "t" },
    requestId: "r", routeKey: "$default", stage: "$default", time: "", timeEpoch: Date.now() },
  body: body || undefined, isBase64Encoded: false,
};
const res = await handler(event, { awsRequestId: "r", getRemainingTimeInMillis: () => 5000 });
console.log(JSON.stringify(res));
"""


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sam-build")
    r = subprocess.run([str(ROOT / "scripts/package/sam-build.sh"), str(out)], env=sam_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sidecar():
    assert LAMBDA_SIDECAR_BIN.exists(), f"{LAMBDA_SIDECAR_BIN} missing: run make build or set LAMBDA_SIDECAR_BIN"
    port, key = free_port(), secrets.token_urlsafe(48)
    # What Lambda gives the function and the sidecar alike; the handler sends it back.
    session_token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "SIDECAR_", "AWS_LAMBDA"))}
    env.update(SIDECAR_PORT=str(port), JWT_ALGORITHM="HS256", JWT_SECRET=key, JWT_ISSUER="sam-build-test",
               SIDECAR_LOG_FORMAT="text", AWS_SESSION_TOKEN=session_token)
    proc = subprocess.Popen([str(LAMBDA_SIDECAR_BIN), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sidecar did not start: {proc.stdout.read().decode(errors='replace')}")
                time.sleep(0.05)
        yield port, key, session_token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_sam_build_bundles_one_esm_handler(build_dir):
    fn = build_dir / "ExampleFunction"
    assert sorted(p.name for p in fn.iterdir()) == ["handler.mjs", "handler.mjs.map"]
    built = yaml.load((build_dir / "template.yaml").read_text(), Loader=CfnLoader)
    props = built["Resources"]["ExampleFunction"]["Properties"]
    assert props["Handler"] == "handler.handler"
    assert props["CodeUri"] == "ExampleFunction"


@pytest.mark.parametrize("method,body,subject", [("GET", "", "lambda-sidecar"),
                                                 ("POST", '{"subject":"dave"}', "dave")])
def test_built_handler_returns_a_verifiable_token(build_dir, sidecar, method, body, subject):
    port, key, session_token = sidecar
    bundle = (build_dir / "ExampleFunction" / "handler.mjs").as_uri()
    env = {k: v for k, v in os.environ.items() if k != "_X_AMZN_TRACE_ID"}
    env["SIDECAR_PORT"] = str(port)
    env["AWS_SESSION_TOKEN"] = session_token
    r = subprocess.run(["node", "--input-type=module", "-e", INVOKE_JS, bundle, method, "/get-auth-token", body],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["statusCode"] == 200, res
    token = json.loads(res["body"])["token"]
    claims = jwt.decode(token, key, algorithms=["HS256"], issuer="sam-build-test",
                        options={"require": ["exp", "iat", "sub", "jti"]})
    assert claims["sub"] == subject
