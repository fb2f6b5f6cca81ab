"""Logging setup of `pyserving serve`: level, text or JSON lines, and the access log.

Text lines look like `2024-05-01T12:00:00.123Z INFO pyserving: message`; with the JSON format each
record is one JSON object on one line: `ts`, `level`, `logger`, `message`, `exc_info` when there is
a traceback, and every field a caller passed with `extra=` (the access log passes `method`, `path`,
`status`, `duration_ms`, `model`, `client`). This module imports nothing from the package.

No record can forge a line: in the text format, control characters in a message (a `%0a` a
client put in a path, say) are written escaped (`\n`, `\x1b`, `\u2028`), and the lines of a
traceback are indented, so every line that starts at column 0 starts a real record. JSON strings
escape control characters by themselves.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import IO, Any

import orjson

__all__ = [
    "ACCESS_LOGGER",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "configure_logging",
    "escape_controls",
]

#: the logger the REST access log writes to (one INFO line per request)
ACCESS_LOGGER = "pyserving.access"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "color_message", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (UTC timestamps, `extra=` fields kept)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class _TextFormatter(logging.Formatter):
    """The text format with UTC ISO-8601 timestamps; one line per record, plus an indented
    traceback."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc_timestamp(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _indent(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indent(super().formatStack(stack_info))


#: C0 and C1 controls, DEL, and Unicode's line and paragraph separators
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """`text` with every control character written as a Python escape (`\\n`, `\\x1b`)."""
    if _CONTROLS.search(text) is None:
        return text
    return _CONTROLS.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _indent(text: str) -> str:
    """Each line of `text` indented two spaces, other control characters escaped."""
    return "\n".join("  " + escape_controls(line) for line in text.split("\n"))


def configure_logging(
    level: str = "info",
    log_format: str = "text",
    access_log: bool = False,
    stream: IO[str] | None = None,
) -> None:
    """Send every log record at `level` or above to `stream` (stderr) as text or JSON lines.

    Replaces the root logger's handlers (call once, at start-up, before serving). The access
    log's logger is enabled only with `access_log`. Raises ValueError for an unknown level or
    format.
    """
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r} (expected one of {', '.join(LOG_LEVELS)})")
    if log_format not in LOG_FORMATS:
        raise ValueError(
            f"unknown log format {log_format!r} (expected one of {', '.join(LOG_FORMATS)})"
        )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else _TextFormatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The access log is INFO per request: on only when asked for, whatever the level.
    access = logging.getLogger(ACCESS_LOGGER)
    access.disabled = not access_log
    access.setLevel(logging.INFO if access_log else logging.CRITICAL + 1)


def _utc_timestamp(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"
