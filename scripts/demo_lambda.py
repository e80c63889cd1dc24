#!/usr/bin/env python3
"""`make demo`, part 2: the sidecar as a Lambda extension, end to end, with no AWS account.

lambda-env (the project's local Lambda environment) starts the release binary as an
extension, runs five invocations of a function that fetches two tokens each (with its trace
context), sends Telemetry API events, freezes the extension between invokes and shuts it down.
The sidecar exports to a real OpenTelemetry collector (rotel), which forwards to lambda-env's
OTLP sink. Then a summary: what the function got, what the collector delivered.

Everything started here is stopped on exit.
"""
import collections
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time

import jwt
import rotel

from jsonl import read_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
SIDECAR = os.environ.get("LAMBDA_SIDECAR_BIN", os.path.join(TARGET, "x86_64-unknown-linux-musl", "release", "lambda-sidecar"))
LAMBDA_ENV = os.path.join(TARGET, "release", "lambda-env")
ROTEL = os.path.join(os.path.dirname(rotel.__file__), "rotel-agent")
FUNCTION = "orders-demo"
INVOKES, TOKENS = 5, 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, name):
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{name} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{name} did not start listening on {port}")


def step(text):
    print(f"\n==> {text}", flush=True)


def main():
    procs = []
    work = tempfile.mkdtemp(prefix="lambda-sidecar-demo-")
    try:
        step("Starting an OTLP receiver (lambda-env sink) and a real collector (rotel) in front of it")
        sink_port, grpc_port, http_port = free_port(), free_port(), free_port()
        sink_out = os.path.join(work, "otlp.jsonl")
        sink = subprocess.Popen([LAMBDA_ENV, "sink", "--listen", f"127.0.0.1:{sink_port}", "--out", sink_out],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(sink)
        wait_listening(sink_port, sink, "sink")
        collector = subprocess.Popen(
            [ROTEL, "start", "--exporter", "otlp", "--otlp-exporter-protocol", "http",
             "--otlp-exporter-endpoint", f"http://127.0.0.1:{sink_port}",
             "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}", "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
             "--batch-timeout", "50ms"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(collector)
        wait_listening(http_port, collector, "rotel")
        print(f"rotel on 127.0.0.1:{http_port} -> sink on 127.0.0.1:{sink_port}")

        step(f"Running lambda-sidecar as an extension: init, {INVOKES} invokes fetching {TOKENS} tokens each, SHUTDOWN")
        secret = secrets.token_urlsafe(48)
        token_port = free_port()
        report_path = os.path.join(work, "report.json")
        subprocess.run(
            [LAMBDA_ENV, "run", "--extension", SIDECAR, "--function-name", FUNCTION, "--invokes", str(INVOKES),
             "--tokens-per-invoke", str(TOKENS), "--function-ms", "30",
             "--token-url", f"http://127.0.0.1:{token_port}/token", "--report", report_path, "--work-dir", work,
             "--env", f"JWT_SECRET={secret}", "--env", f"SIDECAR_PORT={token_port}",
             "--env", "JWT_ISSUER=https://demo.lambda-sidecar", "--env", "JWT_AUDIENCE=orders-api",
             "--env", f"OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{http_port}"],
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        with open(report_path) as f:
            report = json.load(f)
        if report["init"].get("error"):
            sys.exit(f"init failed: {report['init']['error']}")
        print(f"init (process start -> ready): {report['init']['duration_ms']:.1f} ms")
        for i, inv in enumerate(report["invokes"]):
            statuses = " ".join(str(t["http_status"]) for t in inv["tokens"])
            print(f"invoke {i + 1}: request {inv['request_id'][:8]}…  trace {inv['trace_id']}  "
                  f"tokens [{statuses}]  held after the response: {inv['hold_ms']:.2f} ms")
        sd = report["shutdown"]
        print(f"SHUTDOWN: exit code {sd['exit_code']}, {2000 - (sd['exited_before_deadline_ms'] or 0):.0f} ms after"
              f" the event, {sd['exited_before_deadline_ms'] or 0:.0f} ms before the deadline")

        step("A token the function received, verified by PyJWT")
        body = report["invokes"][0]["tokens"][1]["body"]
        claims = jwt.decode(body["token"], secret, algorithms=["HS256"], issuer="https://demo.lambda-sidecar",
                            audience="orders-api", options={"require": ["iss", "sub", "aud", "iat", "exp", "jti"]})
        print("header:", json.dumps(jwt.get_unverified_header(body["token"])))
        print("claims:", json.dumps(claims))

        step("What reached the collector")
        deadline = time.time() + 10
        spans, points = [], []
        while time.time() < deadline:
            # The sink is still appending: only complete lines (scripts/jsonl.py).
            lines = read_records(sink_out)
            spans = [line["span"] for line in lines if "span" in line]
            points = [line["metric"] for line in lines if "metric" in line]
            if len({s["trace_id"] for s in spans if s["name"] == FUNCTION}) >= INVOKES:
                break
            time.sleep(0.2)
        by_trace = collections.defaultdict(list)
        for s in spans:
            by_trace[s["trace_id"]].append(s)
        for inv in report["invokes"]:
            names = collections.Counter(s["name"] for s in by_trace.get(inv["trace_id"], []))
            print(f"trace {inv['trace_id']}: " + ", ".join(f"{n} x{c}" for n, c in sorted(names.items())))
        latest = {}
        for p in points:
            key = (p["name"], json.dumps(p.get("attributes", {}), sort_keys=True))
            if key not in latest or p["time_unix_nanos"] >= latest[key]["time_unix_nanos"]:
                latest[key] = p
        totals = collections.defaultdict(float)
        for (name, _), p in latest.items():
            totals[name] += p["value"] if p.get("value") is not None else (p.get("count") or 0)
        for name in ("faas.invocations", "faas.coldstarts", "sidecar.token.requests", "sidecar.telemetry.events",
                     "sidecar.export.failures"):
            print(f"{name:28} {totals.get(name, 0):g}")
        print(f"\n{len(spans)} spans and {len(points)} metric points delivered; raw records in {sink_out}")
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
