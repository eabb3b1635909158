"""Parsing and validating client frames (docs/protocol.md).

A frame is one JSON object or a JSON array of objects; each object is an event with a
string ``type``. These helpers turn raw text into events and pull typed fields out of
them, raising `ChatError` with a documented code for anything malformed. No I/O here.

The rules every event follows (docs/protocol.md): ids are decimal strings, never JSON
numbers; unknown fields are refused; ``null`` for an optional field is the same as
leaving the field out.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import orjson

from .errors import ChatError, bad_request
from .snowflake import parse_id

MAX_CLIENT_MSG_ID = 64  # characters
MAX_CURSORS = 100_000
PING_FIELDS = frozenset({"type"})


def parse_frame(text: str | bytes, max_events: int) -> list[dict[str, Any]]:
    """Decode one frame into its events."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ChatError("invalid_json") from None
    events = data if isinstance(data, list) else [data]
    if len(events) > max_events:
        raise ChatError("too_many_events", f"at most {max_events} events per frame")
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise bad_request("every event must be a JSON object with a string 'type'")
        if event["type"] == "ping":  # the one event whose handler reads no field to check
            check_fields(event, PING_FIELDS)
    return events


def check_fields(event: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = event.keys() - allowed
    if unknown:
        raise bad_request(f"unknown field(s) in {event['type']}: {', '.join(sorted(unknown))}")


# A required field comes back typed as present: a missing one raised `bad_request`.
@overload
def get_id(event: dict[str, Any], field: str, *, required: Literal[True] = ...) -> int: ...
@overload
def get_id(event: dict[str, Any], field: str, *, required: bool) -> int | None: ...
def get_id(event: dict[str, Any], field: str, *, required: bool = True) -> int | None:
    value = event.get(field)
    if value is None:
        if required:
            raise bad_request(f"'{field}' is required")
        return None
    try:
        return parse_id(value)
    except ValueError as exc:
        raise bad_request(f"'{field}': {exc}") from None


@overload
def get_int(event: dict[str, Any], field: str, *, minimum: int = 0, required: Literal[True] = ...) -> int: ...
@overload
def get_int(event: dict[str, Any], field: str, *, minimum: int = 0, required: bool) -> int | None: ...
def get_int(event: dict[str, Any], field: str, *, minimum: int = 0, required: bool = True) -> int | None:
    value = event.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or value >= 1 << 63:
        raise bad_request(f"'{field}' must be an integer >= {minimum}")
    return value


@overload
def get_str(event: dict[str, Any], field: str, *, max_bytes: int, required: Literal[True] = ...,
            empty: bool = False) -> str: ...
@overload
def get_str(event: dict[str, Any], field: str, *, max_bytes: int, required: bool, empty: bool = False) -> str | None: ...
def get_str(event: dict[str, Any], field: str, *, max_bytes: int, required: bool = True, empty: bool = False) -> str | None:
    value = event.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise bad_request(f"'{field}' must be a string")
    if not value and not empty:
        raise bad_request(f"'{field}' must not be empty")
    if len(value) > max_bytes or len(value.encode()) > max_bytes:
        raise ChatError("too_large", f"'{field}' is longer than {max_bytes} bytes")
    return value


def get_client_msg_id(event: dict[str, Any]) -> str:
    """1-64 printable characters (characters, not bytes: up to 256 bytes of UTF-8)."""
    value = event.get("client_msg_id")
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_CLIENT_MSG_ID or not value.isprintable():
        raise bad_request(f"'client_msg_id' must be 1 to {MAX_CLIENT_MSG_ID} characters, all printable")
    return value


def get_cursors(event: dict[str, Any], field: str = "cursors") -> dict[int, int]:
    """A map of chat id -> seq, as sent in hello (all optional; null is none)."""
    raw = event.get(field)
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_CURSORS:
        raise bad_request(f"'{field}' must be an object of chat id -> seq")
    cursors: dict[int, int] = {}
    for key, seq in raw.items():
        try:
            chat_id = parse_id(key)
        except ValueError:
            raise bad_request(f"'{field}': {key!r} is not a chat id") from None
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise bad_request(f"'{field}': the seq for {key} must be an integer >= 0")
        cursors[chat_id] = seq
    return cursors


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)
