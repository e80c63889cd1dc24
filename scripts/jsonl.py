"""Reading a JSON-lines file that another process may still be appending to (lambda-env's
sink output, `otlp.jsonl`).

A record is complete only once its newline is written. Until then the last line may be half
a record (`JSONDecodeError: Unterminated string` in `make demo`), so it is left out here and
read whole by a later call: every call reads the file again from the start.
"""

import json


def complete_lines(path):
    """The newline-terminated, non-blank lines of `path` (none when it does not exist yet)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    complete = data[: data.rfind(b"\n") + 1]
    return [line for line in complete.decode("utf-8").splitlines() if line.strip()]


def read_records(path):
    """The complete JSON records of `path`, one a line."""
    return [json.loads(line) for line in complete_lines(path)]
