"""What a message may contain: validation of the content fields of a `send` event."""

from __future__ import annotations

from typing import Any

from ..config import LimitsSection
from .errors import bad_request
from .groups import check_ttl
from .protocol import check_fields, get_id, get_str

SEND_FIELDS = frozenset({"type", "client_msg_id", "chat", "kind", "text", "reply_to", "ttl", "target", "media"})
MEDIA_KINDS = frozenset({"image", "audio", "video", "file"})
SEND_KINDS = frozenset({"text", "edit", "delete"} | MEDIA_KINDS)


def content_from_send(event: dict[str, Any], limits: LimitsSection) -> dict[str, Any]:
    """The content of a message from a client's `send` event, validated.

    - ``text``: ``text``; optional ``reply_to`` (a message id) and ``ttl`` (seconds).
    - ``image`` / ``audio`` / ``video`` / ``file``: ``media`` (an uploaded media id),
      optional ``text`` (a caption), ``reply_to``, ``ttl``.
    - ``edit``: ``target`` (a message id) and the new ``text``.
    - ``delete``: ``target``.
    """
    check_fields(event, SEND_FIELDS)
    kind = event.get("kind")
    if kind not in SEND_KINDS:
        what = "is required" if kind is None else "must be"
        raise bad_request(f"'kind' {what} one of: {', '.join(sorted(SEND_KINDS))}")
    content: dict[str, Any] = {"kind": kind}
    if kind in ("edit", "delete"):
        content["target"] = str(get_id(event, "target"))
        extra = {"reply_to", "ttl", "media"} & event.keys()
        if extra:
            raise bad_request(f"{kind} does not take {', '.join(sorted(extra))}")
        if kind == "edit":
            content["text"] = get_str(event, "text", max_bytes=limits.max_message_bytes)
        elif "text" in event:
            raise bad_request("delete does not take text")
        return content
    if kind in MEDIA_KINDS:
        content["media"] = str(get_id(event, "media"))
        caption = get_str(event, "text", max_bytes=limits.max_message_bytes, required=False)
        if caption:
            content["text"] = caption
    else:
        if "media" in event:
            raise bad_request("text messages do not take media")
        content["text"] = get_str(event, "text", max_bytes=limits.max_message_bytes)
    if event.get("reply_to") is not None:
        content["reply_to"] = str(get_id(event, "reply_to"))
    if event.get("ttl") is not None:
        content["ttl"] = check_ttl(event["ttl"])
    return content
