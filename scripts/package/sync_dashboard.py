#!/usr/bin/env python3
"""Copies dashboards/cloudwatch-dashboard.json into template.yaml's DashboardBody.

Usage: sync_dashboard.py [--check]

CloudFormation wants DashboardBody as a string, and neither SAM nor CloudFormation can
read a local file into a string property (AWS::Include needs the file in S3 and yields an
object, not a string, and cfn-lint / sam validate can't follow it offline). So the JSON
file in dashboards/ is the source, written with Fn::Sub placeholders (${AWS::Region},
${ExampleFunction}), and this script writes it, one widget per line, into the
`DashboardBody: !Sub |` block of template.yaml. tests/packaging checks that both agree.
With --check it changes nothing and exits 1 when the template is out of date.
"""

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "cloudwatch-dashboard.json"
TEMPLATE = ROOT / "template.yaml"
MARKER = "DashboardBody: !Sub |"


def render(body, indent):
    """The dashboard as the YAML block scalar's lines: readable, one widget per line."""
    pad = " " * indent
    head = {k: v for k, v in body.items() if k != "widgets"}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
    lines.append('  "widgets": [')
    widgets = [json.dumps(w, separators=(",", ":")) for w in body["widgets"]]
    lines += [f"    {w}," for w in widgets[:-1]] + [f"    {widgets[-1]}"]
    lines += ["  ]", "}"]
    return [pad + line + "\n" for line in lines]


def synced_template():
    """template.yaml's text with the dashboard block replaced by the JSON file's content."""
    body = json.loads(DASHBOARD.read_text())
    lines = TEMPLATE.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == MARKER]
    if len(starts) != 1:
        raise SystemExit(f"{TEMPLATE}: expected one line '{MARKER}', found {len(starts)}")
    start = starts[0] + 1
    key_indent = len(lines[starts[0]]) - len(lines[starts[0]].lstrip())
    end = start
    # The block scalar runs until the first non-blank line indented no deeper than its key.
    while end < len(lines) and (
        not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > key_indent
    ):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return "".join(lines[:start] + render(body, key_indent + 2) + lines[end:])


def main(argv):
    new = synced_template()
    if "--check" in argv:
        if new != TEMPLATE.read_text():
            print("template.yaml's DashboardBody differs from dashboards/cloudwatch-dashboard.json:"
                  " run scripts/package/sync_dashboard.py", file=sys.stderr)
            return 1
        return 0
    TEMPLATE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
