"""What a message may contain: validation of the content fields of a `send` event."""

from __future__ import annotations

from typing import Any

from ..config import LimitsSection
from .errors import bad_request
from .protocol import check_fields, get_str

SEND_FIELDS = frozenset({"type", "client_msg_id", "chat", "kind", "text"})
CONTENT_KINDS = frozenset({"text"})


def content_from_send(event: dict[str, Any], limits: LimitsSection) -> dict[str, Any]:
    """The stored content of a message from a client's `send` event, validated."""
    check_fields(event, SEND_FIELDS)
    kind = event.get("kind", "text")
    if kind not in CONTENT_KINDS:
        raise bad_request(f"'kind' must be one of: {', '.join(sorted(CONTENT_KINDS))}")
    text = get_str(event, "text", max_bytes=limits.max_message_bytes)
    return {"kind": kind, "text": text}
