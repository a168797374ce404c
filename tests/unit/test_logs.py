"""engine.logs' JSON lines, formatted in this process."""

from __future__ import annotations

import json
import logging
import sys

from engine.logs import JsonFormatter


def test_a_json_line_has_its_fields_and_the_traceback_as_a_string() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "engine.x", logging.ERROR, __file__, 1, "failed: %s", ("a",), exc_info
    )
    record.node, record.worker = "n1", "2"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    fields = json.loads(line)
    assert list(fields)[:6] == ["time", "level", "logger", "message", "node", "worker"]
    assert fields["time"].endswith("+00:00")  # ISO 8601, UTC
    assert (fields["level"], fields["logger"], fields["message"]) == (
        "ERROR",
        "engine.x",
        "failed: a",
    )
    assert (fields["node"], fields["worker"]) == ("n1", "2")
    assert isinstance(fields["exc_info"], str) and "RuntimeError: boom" in fields["exc_info"]
