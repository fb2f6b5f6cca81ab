"""logs.py: JSON lines with `extra=` fields, the access log switch, bad settings refused."""

from __future__ import annotations

import io
import json
import logging

import pytest

from pyserving.logs import ACCESS_LOGGER, configure_logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    logging.getLogger(ACCESS_LOGGER).disabled = False
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.NOTSET)


def test_json_format_writes_one_object_per_line_with_extra_fields(restore_logging):
    stream = io.StringIO()
    configure_logging("info", "json", access_log=True, stream=stream)
    logging.getLogger("pyserving.lifecycle").info(
        "model=%s state=%s", "mlp", "AVAILABLE", extra={"model": "mlp", "version": 2}
    )
    logging.getLogger("pyserving").debug("hidden at info")
    logging.getLogger(ACCESS_LOGGER).info("GET /x 200", extra={"status": 200})
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("pyserving").exception("failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == [
        "model=mlp state=AVAILABLE",
        "GET /x 200",
        "failed",
    ]
    assert lines[0]["model"] == "mlp"
    assert lines[0]["version"] == 2
    assert lines[0]["level"] == "INFO"
    assert lines[0]["logger"] == "pyserving.lifecycle"
    assert lines[0]["ts"].endswith("Z")
    assert lines[1]["status"] == 200
    assert "ValueError: boom" in lines[2]["exc_info"]


def test_access_log_is_silent_unless_enabled_even_at_debug(restore_logging):
    stream = io.StringIO()
    configure_logging("debug", "text", access_log=False, stream=stream)
    logging.getLogger(ACCESS_LOGGER).info("GET /x 200")
    logging.getLogger("pyserving").warning("kept")
    assert stream.getvalue().count("\n") == 1
    assert " WARNING pyserving: kept" in stream.getvalue()


def test_unknown_level_or_format_is_refused():
    with pytest.raises(ValueError, match="log level"):
        configure_logging("loud")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")


def test_text_lines_cannot_be_forged_by_control_characters_issue_14(restore_logging):
    stream = io.StringIO()
    configure_logging("info", "text", access_log=True, stream=stream)
    forged = "/v2/x\n2026-01-01T00:00:00.000Z INFO pyserving: forged\r\x1b[2J\u2028"
    logging.getLogger(ACCESS_LOGGER).info('"GET %s" %d', forged, 404)
    try:
        raise ValueError("bad name\n2026-01-01T00:00:00.000Z INFO pyserving: forged too")
    except ValueError:
        logging.getLogger("pyserving").exception("failed on %s", forged)
    lines = stream.getvalue().splitlines()
    records = [line for line in lines if not line.startswith("  ")]
    assert len(records) == 2, lines
    assert records[0].endswith(
        '"GET /v2/x\\n2026-01-01T00:00:00.000Z INFO pyserving: forged\\r\\x1b[2J\\u2028" 404'
    )
    assert "failed on /v2/x\\n" in records[1]
    assert any("bad name" in line for line in lines[2:])


def test_json_lines_escape_control_characters_issue_14(restore_logging):
    stream = io.StringIO()
    configure_logging("info", "json", access_log=True, stream=stream)
    logging.getLogger(ACCESS_LOGGER).info("GET %s", "/a\nb", extra={"path": "/a\nb"})
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["path"] == "/a\nb"
