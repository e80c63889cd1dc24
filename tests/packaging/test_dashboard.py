"""dashboards/cloudwatch-dashboard.json: valid, complete, and the body template.yaml deploys."""

import json
import re
import subprocess
import sys

from conftest import DASHBOARD, ROOT

LAMBDA_METRICS = {
    "Invocations", "Errors", "Throttles", "Duration", "ConcurrentExecutions",
    "PostRuntimeExtensionsDuration",
}
# The sidecar's metrics the dashboard must show; each must be defined in src/metrics/table.rs
# (the one table every output is generated from), checked below.
SIDECAR_METRICS = {
    "faas.invocations", "faas.errors", "faas.timeouts", "faas.invoke_duration",
    "faas.coldstarts", "faas.init_duration", "aws.lambda.billed_duration",
    "faas.mem_usage", "sidecar.token.requests", "sidecar.token.duration",
    "sidecar.hold", "sidecar.export.failures", "sidecar.export.dropped_items",
    "sidecar.telemetry.events", "sidecar.telemetry.unknown_events",
}
DEFINED_METRICS = set(re.findall(r'name: "([a-z_.]+)"', (ROOT / "src/metrics/table.rs").read_text()))
# Fn::Sub placeholders the body may use: a pseudo parameter and the function's logical id.
PLACEHOLDERS = {"${AWS::Region}", "${ExampleFunction}"}


def dashboard():
    return json.loads(DASHBOARD.read_text())


def metric_rows(body):
    """Every metric row; search-expression rows are in expressions()."""
    for w in body["widgets"]:
        if w["type"] == "metric":
            yield from (row for row in w["properties"]["metrics"] if isinstance(row[0], str))


def expressions(body):
    for w in body["widgets"]:
        if w["type"] == "metric":
            yield from (row[0]["expression"] for row in w["properties"]["metrics"]
                        if isinstance(row[0], dict))


def test_template_body_is_the_dashboard_file(template):
    sub = template["Resources"]["SidecarDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert json.loads(sub) == dashboard(), "run scripts/package/sync_dashboard.py"
    r = subprocess.run([sys.executable, str(ROOT / "scripts/package/sync_dashboard.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_required_metric_is_shown():
    rows = list(metric_rows(dashboard()))
    by_ns = {}
    for row in rows:
        by_ns.setdefault(row[0], set()).add(row[1])
    assert LAMBDA_METRICS <= by_ns["AWS/Lambda"], LAMBDA_METRICS - by_ns["AWS/Lambda"]
    assert SIDECAR_METRICS <= by_ns["LambdaSidecar"], SIDECAR_METRICS - by_ns["LambdaSidecar"]
    assert set(by_ns) == {"AWS/Lambda", "LambdaSidecar"}


def test_duration_percentiles_and_function_dimension():
    rows = list(metric_rows(dashboard()))
    stats = {row[-1]["stat"] for row in rows if row[1] == "Duration"}
    assert {"p50", "p99"} <= stats
    for row in rows:
        # [namespace, metric, "FunctionName", <the function>, (key, value)..., {options}]
        assert row[2:4] == ["FunctionName", "${ExampleFunction}"], row
        assert isinstance(row[-1], dict) and "stat" in row[-1], row
        assert all(isinstance(v, str) for v in row[4:-1]) and len(row[4:-1]) % 2 == 0, row


def test_widgets_fit_the_grid_without_overlap():
    cells = set()
    for w in dashboard()["widgets"]:
        assert 0 <= w["x"] and w["x"] + w["width"] <= 24, w
        for x in range(w["x"], w["x"] + w["width"]):
            for y in range(w["y"], w["y"] + w["height"]):
                assert (x, y) not in cells, f"overlap at {(x, y)}: {w}"
                cells.add((x, y))


def test_only_known_placeholders():
    # Anything else in ${...} would make Fn::Sub fail at deploy time.
    assert set(re.findall(r"\$\{[^}]*\}", DASHBOARD.read_text())) <= PLACEHOLDERS


def test_every_sidecar_metric_on_the_dashboard_is_defined_in_signals():
    shown = {row[1] for row in metric_rows(dashboard()) if row and row[0] == "LambdaSidecar"}
    assert SIDECAR_METRICS <= DEFINED_METRICS, SIDECAR_METRICS - DEFINED_METRICS
    assert shown <= DEFINED_METRICS, f"not defined in src/metrics/table.rs: {shown - DEFINED_METRICS}"


def test_search_expressions_name_a_defined_metric_of_the_function():
    found = list(expressions(dashboard()))
    assert found, "the token rejections widget searches by outcome"
    for expression in found:
        name = re.search(r'MetricName="([^"]+)"', expression).group(1)
        assert name in DEFINED_METRICS, expression
        assert expression.startswith("SEARCH('{LambdaSidecar,FunctionName"), expression
        assert 'FunctionName="${ExampleFunction}"' in expression, expression
