"""The real sidecar for the example's tests: `lambda-sidecar serve` (LAMBDA_SIDECAR_BIN, else
the debug build) with an ES256 key, the audience and claim the example asks for, and a
session token the client sends as Lambda's AWS_SESSION_TOKEN."""

import os
import pathlib
import secrets
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

HERE = pathlib.Path(__file__).resolve().parents[1]
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sidecar():
    binary = os.environ.get("LAMBDA_SIDECAR_BIN") or str(ROOT / "target" / "debug" / "lambda-sidecar")
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    port = free_port()
    session = secrets.token_hex(16)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "SIDECAR_PORT": str(port),
        "JWT_ALGORITHM": "ES256",
        "JWT_PRIVATE_KEY": key.decode(),
        "JWT_AUDIENCE": "orders-api",
        "JWT_ALLOWED_CLAIMS": "role",
        "AWS_SESSION_TOKEN": session,
        "AWS_LAMBDA_FUNCTION_NAME": "orders-fn",
    }
    process = subprocess.Popen([binary, "serve"], env=env, stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        pytest.fail(f"the sidecar did not start: {process.stderr.read()}")
    os.environ["SIDECAR_PORT"] = str(port)
    os.environ["AWS_SESSION_TOKEN"] = session
    import sidecar_client

    sidecar_client.SIDECAR = f"http://127.0.0.1:{port}"
    yield sidecar_client.SIDECAR
    process.terminate()
    process.wait(timeout=10)
