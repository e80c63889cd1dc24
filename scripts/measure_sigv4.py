"""What signing the OTLP requests costs (docs/performance.md, "CloudWatch without a collector").

    .venv/bin/python scripts/measure_sigv4.py [BINARY] [RUNS]

BINARY defaults to target/x86_64-unknown-linux-musl/release/lambda-sidecar. The sidecar runs in
lambda-env (`target/debug/lambda-env run`), exporting every signal to tests/sigv4_receiver.py
(which checks each signature with botocore), in three ways: unsigned (SIDECAR_OTLP_SIGV4=off),
signed with the access-key variables, and signed with the exporter headers read from a Secrets
Manager secret in moto. For each: RUNS cold starts with one invoke (lambda-env's init duration:
process start -> ready in event/next), then one run of 20 invokes for the per-invoke hold (the
flush, which signs every request). Prints a Markdown table.
"""

from __future__ import annotations

import json
import secrets
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_keys import ROOT, free_port, run  # noqa: E402

KEY, SECRET, TOKEN = "ASIAMEASURE", "measure-secret", "measure-token"


def main() -> None:
    binary = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target/x86_64-unknown-linux-musl/release/lambda-sidecar")
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    config = {"credentials": [{"key": KEY, "secret": SECRET, "token": TOKEN},
                              {"key": "testing", "secret": "testing", "token": None}],
              "accept_unsigned": True}
    receiver = subprocess.Popen([str(ROOT / ".venv/bin/python"), str(ROOT / "tests/sigv4_receiver.py"),
                                 json.dumps(config)], stdout=subprocess.PIPE, text=True)
    moto_port = free_port()
    moto_url = f"http://127.0.0.1:{moto_port}"
    moto = subprocess.Popen([str(ROOT / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{receiver.stdout.readline().strip()}"
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", moto_port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        boto3.client("secretsmanager", endpoint_url=moto_url, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_secret(
            Name="otlp-headers", SecretString="x-api-key=measure-value")
        base = {"OTEL_EXPORTER_OTLP_ENDPOINT": url, "SIDECAR_OTLP_SIGV4_REGION": "us-east-1",
                "JWT_SECRET": secrets.token_hex(36), "SIDECAR_TOKEN_AUTH": "off"}
        keys = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN}
        cases = [
            ("unsigned (`SIDECAR_OTLP_SIGV4=off`)", {**base, **keys, "SIDECAR_OTLP_SIGV4": "off"}),
            ("SigV4, access-key variables", {**base, **keys, "SIDECAR_OTLP_SIGV4": "on"}),
            ("SigV4 + headers from Secrets Manager", {
                **base, "SIDECAR_OTLP_SIGV4": "on", "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "",
                "AWS_ENDPOINT_URL": moto_url, "SIDECAR_OTLP_HEADERS_SOURCE": "secretsmanager:otlp-headers"}),
        ]
        print(f"| export | cold start (median of {runs}, min) | per-invoke hold p50 / max (20 invokes) |")
        print("|---|---|---|")
        for label, env in cases:
            inits = [run(binary, env, 1, 0)[0]["init"]["duration_ms"] for _ in range(runs)]
            report, _ = run(binary, env, 20, 1)
            holds = sorted(i["hold_ms"] for i in report["invokes"])
            print(f"| {label} | {statistics.median(inits):.1f} ms, {min(inits):.1f} ms | "
                  f"{statistics.median(holds):.1f} / {holds[-1]:.1f} ms |")
        with urllib.request.urlopen(f"{url}/requests") as answer:
            requests = json.load(answer)
        signed = [r for r in requests if r["key"] is not None]
        print(f"\n{len(requests)} requests received, {len(signed)} signed, "
              f"{sum(r['valid'] for r in signed)} of them verified by botocore")
    finally:
        for process in (receiver, moto):
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
