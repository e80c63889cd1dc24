"""docs/your-function.md's client snippets, Python and Node.js, run as written against the
real sidecar (its port put in place of 3003), and the tokens they print verified."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

import sidecar_client

GUIDE = pathlib.Path(__file__).resolve().parents[3] / "docs" / "your-function.md"


def snippet(name, port):
    text = GUIDE.read_text()
    match = re.search(rf"<!-- test: {name} -->\n```\w+\n(.*?)```", text, re.S)
    assert match, f"no {name} snippet in {GUIDE}"
    return match.group(1).replace("127.0.0.1:3003", f"127.0.0.1:{port}")


@pytest.mark.parametrize(
    "name, command",
    [
        ("python-client", [sys.executable, "-c"]),
        ("node-client", ["node", "--input-type=module", "-e"]),
    ],
)
def test_the_snippet_gets_a_token_the_jwks_verifies(sidecar, name, command):
    port = sidecar.rsplit(":", 1)[1]
    r = subprocess.run(
        command + [snippet(name, port)],
        env=dict(os.environ), capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    claims = sidecar_client.verify(r.stdout.strip(), audience="orders-api")
    assert (claims["sub"], claims["role"]) == ("alice", "reader")


def test_the_readme_requests_work_on_the_default_configuration(tmp_path):
    """README's first requests (GET, and a POST with another subject and lifetime) are
    answered by a sidecar with nothing but a key and the session token."""
    import secrets
    import time
    import urllib.request

    from conftest import ROOT, free_port

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Getting a token.*?```sh\n(.*?)```", readme, re.S).group(1)
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "JWT_SECRET": secrets.token_urlsafe(48),
        "AWS_SESSION_TOKEN": secrets.token_hex(16),
        "SIDECAR_PORT": str(port),
    }
    binary = os.environ.get("LAMBDA_SIDECAR_BIN") or str(ROOT / "target" / "debug" / "lambda-sidecar")
    process = subprocess.Popen([binary, "serve"], env=env, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        commands = block.replace("127.0.0.1:3003", f"127.0.0.1:{port}").replace("curl -s", "curl -sf")
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        # Two answers, each a token (curl -f fails on an error status).
        assert r.stdout.count('"token":"') == 2, r.stdout
    finally:
        process.terminate()
        process.wait(timeout=10)
