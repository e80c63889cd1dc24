"""Cold start and per-token latency by key source, against moto on loopback (docs/performance.md, "Key sources").

    .venv/bin/python scripts/measure_keys.py [BINARY] [RUNS]

BINARY defaults to target/x86_64-unknown-linux-musl/release/lambda-sidecar. For each source the sidecar runs in lambda-env
(`target/debug/lambda-env run`): RUNS cold starts with one invoke (lambda-env's init duration:
process start -> ready in event/next; and the sidecar's own "signing key loaded" elapsed_ms,
which is mostly the round trip to moto), then one run of 20 invokes x 10 tokens for the
function's /token latency. Prints a Markdown table.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parent.parent
LAMBDA_ENV = ROOT / "target/debug/lambda-env"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(binary: str, env: dict[str, str], invokes: int, tokens: int) -> tuple[dict, str]:
    port = free_port()
    with tempfile.TemporaryDirectory() as work:
        report_path = Path(work) / "report.json"
        args = [str(LAMBDA_ENV), "run", "--extension", binary, "--invokes", str(invokes),
                "--tokens-per-invoke", str(tokens), "--gap-ms", "20", "--work-dir", work,
                "--token-url", f"http://127.0.0.1:{port}/token", "--report", str(report_path),
                "--env", f"SIDECAR_PORT={port}"]
        for k, v in env.items():
            args += ["--env", f"{k}={v}"]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        report = json.loads(report_path.read_text())
        stderr = Path(report["stderr_path"]).read_text() if report.get("stderr_path") else ""
    if report["init"]["error"]:
        raise SystemExit(f"init failed: {report['init']['error']}\n{stderr}")
    return report, stderr


def key_loaded_ms(stderr: str) -> float:
    for line in stderr.splitlines():
        if '"signing key loaded"' in line:
            return json.loads(line)["elapsed_ms"]
    return float("nan")


def main() -> None:
    binary = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target/x86_64-unknown-linux-musl/release/lambda-sidecar")
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen([str(ROOT / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        aws = {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                region_name="us-east-1")
        secret = secrets.token_hex(36)
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode()
        session.client("secretsmanager", endpoint_url=endpoint).create_secret(
            Name="hs", SecretString=secret)
        kms = session.client("kms", endpoint_url=endpoint)
        kms_key = kms.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]["KeyId"]
        cases = [
            ("env, HS256", {"JWT_SECRET": secret}),
            ("secretsmanager, HS256", {**aws, "JWT_KEY_SOURCE": "secretsmanager:hs"}),
            ("env, ES256", {"JWT_ALGORITHM": "ES256", "JWT_PRIVATE_KEY": pem}),
            ("kms, ES256", {**aws, "JWT_KEY_SOURCE": f"kms:{kms_key}", "JWT_ALGORITHM": "ES256"}),
        ]
        print("| source | cold start (median of %d, min) | key loaded in (median) | GET /token p50 / p99 (200 tokens) |" % runs)
        print("|---|---|---|---|")
        for label, env in cases:
            inits, loads = [], []
            for _ in range(runs):
                report, stderr = run(binary, env, 1, 0)
                inits.append(report["init"]["duration_ms"])
                loads.append(key_loaded_ms(stderr))
            report, _ = run(binary, env, 20, 10)
            latencies = sorted(t["latency_ms"] for i in report["invokes"] for t in i["tokens"]
                               if t["http_status"] == 200)
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            print(f"| {label} | {statistics.median(inits):.1f} ms, {min(inits):.1f} ms | "
                  f"{statistics.median(loads):.2f} ms | {statistics.median(latencies):.2f} / "
                  f"{p99:.2f} ms ({len(latencies)} ok) |")
    finally:
        moto.kill()
        moto.wait()


if __name__ == "__main__":
    main()
