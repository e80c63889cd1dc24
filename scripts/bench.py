#!/usr/bin/env python3
"""`make bench`: measures the release binary in the lambda-env Lambda environment.

Figures: cold start (process start -> every extension in event/next, median of 8), the
post-runtime hold per invoke (p50/p99/max over 20 invokes, freezing between invokes) with a
healthy, dead, slow and failing collector, spans delivered, and the SHUTDOWN exit time.
Budgets are checked here, not in the tests: the hold never exceeds the flush cap (plus
scheduling slack), the sidecar always exits 0 before the deadline.

Prints a Markdown table; exits 1 if a budget is broken.
"""
import http.client
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
SIDECAR = os.environ.get("LAMBDA_SIDECAR_BIN", os.path.join(TARGET, "release", "lambda-sidecar"))
LAMBDA_ENV = os.path.join(TARGET, "release", "lambda-env")
CAP_MS = 500
SLACK_MS = 50
INVOKES = 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """`lambda-env sink` in a given mode; counts what it received when stopped."""

    def __init__(self, mode):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [LAMBDA_ENV, "sink", "--listen", f"127.0.0.1:{self.port}", "--mode", mode],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("sink did not start")

    def stop(self):
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        # "sink: N spans, M metric points; ..."
        line = [l for l in out.splitlines() if l.startswith("sink:")][-1]
        return int(line.split()[1])


def run_env(env, invokes=INVOKES, function_ms=20, tokens=2):
    port = free_port()
    with tempfile.TemporaryDirectory() as work:
        report_path = os.path.join(work, "report.json")
        args = [LAMBDA_ENV, "run", "--extension", SIDECAR, "--invokes", str(invokes),
                "--tokens-per-invoke", str(tokens), "--function-ms", str(function_ms),
                "--token-url", f"http://127.0.0.1:{port}/token", "--report", report_path,
                "--work-dir", work,
                "--env", f"JWT_SECRET={secrets.token_urlsafe(48)}", "--env", f"SIDECAR_PORT={port}",
                "--env", f"SIDECAR_FLUSH_TIMEOUT_MS={CAP_MS}"]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=120)
        with open(report_path) as f:
            return json.load(f)


def token_latency():
    """GET /token over one keep-alive connection against `serve`, per algorithm (the client
    is Python's http.client, so its own cost is included)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def pem(key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

    rows = []
    for alg, env in (("HS256", {"JWT_SECRET": secrets.token_urlsafe(48)}),
                     ("ES256", {"JWT_ALGORITHM": "ES256", "JWT_PRIVATE_KEY": pem(ec.generate_private_key(ec.SECP256R1()))}),
                     ("RS256", {"JWT_ALGORITHM": "RS256", "JWT_PRIVATE_KEY": pem(rsa.generate_private_key(65537, 2048))})):
        port = free_port()
        session_token = secrets.token_hex(32)  # what Lambda gives the function and the sidecar
        proc = subprocess.Popen([SIDECAR, "serve"], env={"PATH": os.environ["PATH"], "SIDECAR_PORT": str(port),
                                                         "AWS_SESSION_TOKEN": session_token, **env},
                                stderr=subprocess.DEVNULL)
        try:
            conn = None
            for _ in range(100):
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port)
                    conn.request("GET", "/health")
                    conn.getresponse().read()
                    break
                except OSError:
                    time.sleep(0.02)
            latencies = []
            for _ in range(2000):
                start = time.perf_counter()
                conn.request("GET", "/token", headers={"X-Sidecar-Token": session_token})
                response = conn.getresponse()
                response.read()
                latencies.append((time.perf_counter() - start) * 1e6)
                if response.status != 200:
                    raise RuntimeError(f"{alg}: /token answered {response.status}")
            latencies = latencies[200:]  # warm-up
            rows.append(f"| GET /token, {alg} | p50 {pct(latencies, 50):.0f} us / p99 {pct(latencies, 99):.0f} us (1,800 requests, keep-alive) |")
        finally:
            proc.terminate()
            proc.wait(timeout=5)
    return rows


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    for path in (SIDECAR, LAMBDA_ENV):
        if not os.path.exists(path):
            sys.exit(f"bench: {path} is missing; run `make build` first")
    broken = []
    rows = []

    # Cold start: median of 8 starts, without and with OTLP export configured.
    for label, env in (("no export", {}), ("OTLP/HTTP export", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})):
        inits = [run_env(env, invokes=1, tokens=0)["init"]["duration_ms"] for _ in range(8)]
        rows.append(f"| cold start, {label} | process start -> ready in event/next: median {statistics.median(inits):.1f} ms, min {min(inits):.1f} ms |")

    scenarios = [
        ("healthy collector, 20 ms function", "ok", 20, 2),
        ("healthy collector, 0 ms function without token requests", "ok", 0, 0),
        ("collector down (connection refused)", None, 20, 2),
        ("collector answering 503", "fail:503", 20, 2),
        ("collector too slow (2 s per request)", "slow:2000", 20, 2),
    ]
    for label, mode, function_ms, tokens in scenarios:
        sink = Sink(mode) if mode else None
        endpoint = f"http://127.0.0.1:{sink.port if sink else free_port()}"
        report = run_env({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}, function_ms=function_ms, tokens=tokens)
        spans = sink.stop() if sink else 0
        holds = [i["hold_ms"] for i in report["invokes"]]
        shutdown = report["shutdown"]
        before = shutdown.get("exited_before_deadline_ms") or 0
        rss = (shutdown.get("peak_rss_kb") or 0) / 1024
        rows.append(
            f"| {label} | hold p50 {pct(holds, 50):.2f} / p99 {pct(holds, 99):.2f} / max {max(holds):.2f} ms;"
            f" spans received {spans}; peak RSS {rss:.1f} MiB; exit {shutdown['exit_code']} {2000 - before:.0f} ms after SHUTDOWN |")
        if max(holds) > CAP_MS + SLACK_MS:
            broken.append(f"{label}: hold {max(holds):.1f} ms > cap {CAP_MS} ms")
        if shutdown["exit_code"] != 0 or shutdown["killed"]:
            broken.append(f"{label}: shutdown {shutdown}")

    rows += token_latency()
    size = os.path.getsize(SIDECAR)
    rows.append(f"| release binary (host, glibc) | {size:,} bytes |")
    print(f"| lambda-env, {INVOKES} invokes, 2 tokens each, freezing between invokes, flush cap {CAP_MS} ms | figure |")
    print("|---|---|")
    print("\n".join(rows))
    if broken:
        print("\nbudgets broken:\n  " + "\n  ".join(broken))
        sys.exit(1)


if __name__ == "__main__":
    main()
