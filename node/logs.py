"""The node's log: one line per event on stderr, as text or as JSON lines, never a secret.

`configure` is called once by `chatnode serve` (settings in ``[log]``). Every record
becomes exactly one line: a traceback is folded into it (newlines as ``\\n``), so a log
shipper never splits an event. JSON lines carry stable field names, documented in
docs/operations.md: ``ts``, ``level``, ``logger``, ``msg``, ``request_id`` (during an HTTP
request), ``exc`` (a traceback), plus the fields an event adds with
``extra={"fields": {...}}`` (the access log's ``method``, ``path``, ``status``,
``duration_ms``, ``bytes``, ``client``).

Secrets stay out by construction (no call site logs a password, a token or a message's
text, and message operations leave their content out of their repr); as a last line of
defence every line is also scrubbed of anything shaped like a node token or a bearer
header.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from typing import IO, Any

import orjson

#: The id of the HTTP request being handled, set by node/web/access.py.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")

_SECRETS = re.compile(r"\bcn_[A-Za-z0-9_-]{8,}|(?i:bearer)\s+\S+")


def scrub(text: str) -> str:
    """`text` with node tokens and bearer credentials replaced by a placeholder."""
    return _SECRETS.sub("[redacted]", text)


class RequestContext(logging.Filter):
    """Adds the current request id to every record (None outside HTTP requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


def _timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds: 2026-12-06T04:05:06.789Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _exception(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    if record.exc_text:
        return record.exc_text
    return None


class TextFormatter(logging.Formatter):
    """``2026-12-06T04:05:06.789Z INFO node.app: message [request id]`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        request_id = getattr(record, "request_id", None)  # set by the access log's `extra`
        if request_id:
            line += f" [{request_id}]"
        exc = _exception(self, record)
        if exc:
            line += f" | {exc}"
        return scrub(line.replace("\r", "").replace("\n", "\\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the documented field names."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in entry})
        exc = _exception(self, record)
        if exc:
            entry["exc"] = exc
        clean = {k: scrub(v) if isinstance(v, str) else v for k, v in entry.items()}  # values, not the JSON
        return orjson.dumps(clean, default=str).decode()


def configure(level: str = "INFO", format: str = "text", stream: IO[str] | None = None) -> None:
    """Send every log record, one line each, to `stream` (stderr) at `level` and above."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    handler.addFilter(RequestContext())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)  # its own start-up chatter
    logging.captureWarnings(True)
