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
