#!/usr/bin/env python3
"""Judges a smoke run of the layer in lambda-env (scripts/package/smoke.sh).

Usage: check_smoke.py REPORT.json OTLP.jsonl

Prints what it checked and exits 1 listing every failed check.
"""

import json
import os
import sys

# The shared reader of files another process appends to.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from jsonl import read_records  # noqa: E402


def problems(report, sink_lines):
    """Every way the run falls short of a working extension; empty when it is fine."""
    bad = []
    regs = report.get("registrations", [])
    if not any(r.get("name") == "lambda-sidecar" and {"INVOKE", "SHUTDOWN"} <= set(r.get("events", [])) for r in regs):
        bad.append(f"no registration of lambda-sidecar for INVOKE and SHUTDOWN: {regs}")
    if report.get("init", {}).get("error"):
        bad.append(f"init failed: {report['init']['error']}")
    if not report.get("subscriptions"):
        bad.append("no Telemetry API subscription")
    invokes = report.get("invokes", [])
    if not invokes:
        bad.append("no invoke ran")
    for i, inv in enumerate(invokes):
        tokens = inv.get("tokens", [])
        if not tokens:
            bad.append(f"invoke {i}: no token request")
        for t in tokens:
            if t.get("http_status") != 200:
                bad.append(f"invoke {i}: token {t.get('method')} -> {t.get('http_status')} {t.get('error') or t.get('body')}")
        if not inv.get("extensions_returned", False):
            bad.append(f"invoke {i}: the extension did not come back to event/next")
    telemetry = report.get("telemetry", {})
    if not telemetry.get("events_sent"):
        bad.append(f"no telemetry event delivered to the extension: {telemetry}")
    if report.get("exit_errors"):
        bad.append(f"exit errors: {report['exit_errors']}")
    shutdown = report.get("shutdown", {})
    if shutdown.get("killed") or shutdown.get("exit_code") != 0:
        bad.append(f"unclean shutdown: {shutdown}")
    spans = [line["span"] for line in sink_lines if "span" in line]
    metrics = [line["metric"] for line in sink_lines if "metric" in line]
    if not spans or not metrics:
        bad.append(f"the OTLP sink received {len(spans)} spans and {len(metrics)} metric points")
    # Flushed per invoke: each invocation's trace reached the collector, and each token
    # request's span is the child of the traceparent it was sent with.
    exported = {(s.get("trace_id"), s.get("parent_span_id")) for s in spans}
    traces = {t for t, _ in exported}
    for i, inv in enumerate(invokes):
        if spans and inv.get("trace_id") not in traces:
            bad.append(f"invoke {i}: no span of trace {inv.get('trace_id')} exported")
        for t in inv.get("tokens", []):
            parts = (t.get("traceparent") or "").split("-")
            if spans and len(parts) == 4 and (parts[1], parts[2]) not in exported:
                bad.append(f"invoke {i}: no exported span is a child of {t.get('traceparent')}")
    return bad


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        report = json.load(f)
    # The sink may still be appending when the run ends: only complete lines count.
    sink_lines = read_records(argv[2])
    bad = problems(report, sink_lines)
    holds = sorted(inv.get("hold_ms", 0.0) for inv in report.get("invokes", []))
    tokens = sum(len(inv.get("tokens", [])) for inv in report.get("invokes", []))
    spans = sum(1 for line in sink_lines if "span" in line)
    points = sum(1 for line in sink_lines if "metric" in line)
    logs = sum(1 for line in sink_lines if "log" in line)
    print(
        f"smoke: {len(report.get('invokes', []))} invokes, {tokens} token requests, "
        f"{report.get('telemetry', {}).get('events_sent')} telemetry events delivered, "
        f"{spans} spans, {points} metric points and {logs} log records exported, "
        f"hold max {holds[-1] if holds else 0:.1f} ms, init {report.get('init', {}).get('duration_ms', 0):.0f} ms, "
        f"shutdown exit code {report.get('shutdown', {}).get('exit_code')}"
    )
    for p in bad:
        print(f"FAIL: {p}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
