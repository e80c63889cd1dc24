"""The real layer zips run in lambda-env (scripts/package/smoke.sh): arm64 under
qemu-aarch64-static, x86_64 natively (on an x86_64 machine); and the checker that judges
such a run."""

import importlib.util
import json
import subprocess

import pytest

from conftest import ARCHES, ROOT

spec = importlib.util.spec_from_file_location("check_smoke", ROOT / "scripts/package/check_smoke.py")
check_smoke = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_smoke)


TRACE = "6b08e8c5c14dbb45904948e43235a99f"
PARENT = "b99bcfe8878467a2"
# What lambda-env's sink writes, one JSON object a line.
SINK = [{"span": {"trace_id": TRACE, "span_id": "fc4c1b40d7c5cd02", "parent_span_id": PARENT}},
        {"metric": {"name": "faas.invocations", "value": 1.0}}]


def good_report():
    return {
        "registrations": [{"name": "lambda-sidecar", "events": ["INVOKE", "SHUTDOWN"], "id": "x"}],
        "subscriptions": [{"types": ["platform"]}],
        "init": {"initialization_type": "on-demand", "duration_ms": 50.0, "error": None},
        "invokes": [{"trace_id": TRACE, "tokens": [{"method": "GET", "http_status": 200,
                                                    "traceparent": f"00-{TRACE}-{PARENT}-01"}],
                     "extensions_returned": True, "hold_ms": 1.0}],
        "exit_errors": [],
        "telemetry": {"events_sent": 7},
        "shutdown": {"exit_code": 0, "killed": False},
    }


def test_checker_accepts_a_good_run_and_names_each_fault():
    assert check_smoke.problems(good_report(), SINK) == []
    faults = [
        (lambda r: r["invokes"][0]["tokens"][0].update(http_status=500), "token GET -> 500"),
        (lambda r: r["shutdown"].update(exit_code=None, killed=True), "unclean shutdown"),
        (lambda r: r.update(registrations=[]), "no registration"),
        (lambda r: r["telemetry"].update(events_sent=0), "no telemetry event"),
        (lambda r: r["invokes"][0].update(extensions_returned=False), "did not come back"),
    ]
    for fault, message in faults:
        report = good_report()
        fault(report)
        found = check_smoke.problems(report, SINK)
        assert any(message in p for p in found), (message, found)
    assert any("0 spans" in p for p in check_smoke.problems(good_report(), SINK[1:]))
    # A token span in another trace, or under another parent, is not a flushed invoke.
    stray = [{"span": {"trace_id": "f" * 32, "span_id": "1" * 16, "parent_span_id": PARENT}}, SINK[1]]
    found = check_smoke.problems(good_report(), stray)
    assert any("no span of trace" in p for p in found) and any("child of" in p for p in found), found


@pytest.mark.parametrize("arch", ARCHES)
def test_layer_runs_in_lambda_env(arch, tmp_path):
    zip_path = ROOT / "dist" / f"lambda-sidecar-{arch}.zip"
    assert zip_path.exists(), f"run make layer-{arch}"
    r = subprocess.run([str(ROOT / "scripts/package/smoke.sh"), arch, str(zip_path), str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    ext_err = (tmp_path / "extension.stderr")
    detail = r.stdout + r.stderr + (ext_err.read_text()[-3000:] if ext_err.exists() else "")
    assert r.returncode == 0, detail
    report = json.loads((tmp_path / "report.json").read_text())
    # The checker passed; spell out the headline facts here too.
    assert report["registrations"][0]["name"] == "lambda-sidecar"
    assert all(t["http_status"] == 200 for inv in report["invokes"] for t in inv["tokens"])
    assert report["shutdown"]["exit_code"] == 0
