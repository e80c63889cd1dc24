"""Files read while another process appends to them (issue 10, finding 9): a reader sees a
half-written last line, leaves it out, and reads it whole once its newline is there."""

import importlib.util
import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import jsonl  # noqa: E402

spec = importlib.util.spec_from_file_location("check_smoke", ROOT / "scripts/package/check_smoke.py")
check_smoke = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_smoke)

SPAN = {"span": {"trace_id": "6b08e8c5c14dbb45904948e43235a99f", "name": "orders"}}
METRIC = {"metric": {"name": "faas.invocations", "value": 1.0}}


def test_an_unterminated_last_line_is_read_once_complete(tmp_path):
    path = tmp_path / "otlp.jsonl"
    assert jsonl.read_records(path) == []  # not created yet
    whole = json.dumps(METRIC) + "\n"
    cut = len(whole) // 2
    path.write_text(json.dumps(SPAN) + "\n" + whole[:cut])
    assert jsonl.read_records(path) == [SPAN]
    with open(path, "a") as f:
        f.write(whole[cut:])
    assert jsonl.read_records(path) == [SPAN, METRIC]


def test_the_smoke_checker_reads_a_file_still_being_written(tmp_path, capsys):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"invokes": []}))
    sink = tmp_path / "otlp.jsonl"
    sink.write_text(json.dumps(SPAN) + "\n" + json.dumps(METRIC) + "\n" + '{"metric": {"name": "faas.in')
    # The run itself is judged a failure (empty report); the point is that reading does not
    # raise JSONDecodeError and counts only the complete records.
    assert check_smoke.main(["check_smoke.py", str(report), str(sink)]) == 1
    assert "1 spans, 1 metric points and 0 log records exported" in capsys.readouterr().out
