"""What a message may contain: validation of the content fields of a `send` event."""

from __future__ import annotations

from typing import Any

from ..config import LimitsSection
from .errors import bad_request
from .groups import check_ttl
from .protocol import check_fields, get_id, get_str
from .snowflake import parse_id

SEND_FIELDS = frozenset({"type", "client_msg_id", "chat", "kind", "text", "reply_to", "ttl", "target", "media",
                         "forwarded", "mentions"})
MEDIA_KINDS = frozenset({"image", "audio", "video", "file"})
SEND_KINDS = frozenset({"text", "edit", "delete"} | MEDIA_KINDS)


MAX_MENTIONS = 256


def get_mentions(raw: object) -> list[str]:
    """The users a message mentions: a list of user ids (each once, in order)."""
    if not isinstance(raw, list) or len(raw) > MAX_MENTIONS:
        raise bad_request(f"'mentions' must be a list of at most {MAX_MENTIONS} user ids")
    ids = []
    for value in raw:
        try:
            ids.append(str(parse_id(value)))
        except (ValueError, TypeError):
            raise bad_request(f"'mentions': {str(value)[:40]!r} is not a user id") from None
    return list(dict.fromkeys(ids))


#: The fields a `send` takes besides these, by kind (docs/protocol.md, "send by kind").
SEND_COMMON = frozenset({"type", "client_msg_id", "chat", "kind"})
_CONTENT_FIELDS = frozenset({"text", "reply_to", "ttl", "forwarded", "mentions"})
KIND_FIELDS: dict[str, frozenset[str]] = {
    "text": _CONTENT_FIELDS,
    **{kind: _CONTENT_FIELDS | {"media"} for kind in MEDIA_KINDS},
    "edit": frozenset({"target", "text"}),
    "delete": frozenset({"target"}),
}
_SEND_ALLOWED = {kind: SEND_COMMON | fields for kind, fields in KIND_FIELDS.items()}


def _check_send_fields(event: dict[str, Any], kind: object) -> None:
    """Refuse an unknown field, a bad kind, or a field the kind does not take (one set to
    ``null`` is as if absent)."""
    check_fields(event, SEND_FIELDS)
    if not isinstance(kind, str) or kind not in SEND_KINDS:
        what = "is required" if kind is None else "must be"
        raise bad_request(f"'kind' {what} one of: {', '.join(sorted(SEND_KINDS))}")
    extra = {key for key in event.keys() - _SEND_ALLOWED[kind] if event[key] is not None}
    if extra:
        raise bad_request(f"{kind} does not take {', '.join(sorted(extra))}")


def content_from_send(event: dict[str, Any], limits: LimitsSection) -> dict[str, Any]:
    """The content of a message from a client's `send` event, validated.

    - ``text``: ``text``; optional ``reply_to`` (a message id) and ``ttl`` (seconds).
    - ``image`` / ``audio`` / ``video`` / ``file``: ``media`` (an uploaded media id),
      optional ``text`` (a caption), ``reply_to``, ``ttl``.
    - any of those: ``forwarded`` (true: the content came from another message) and
      ``mentions`` (user ids of members of the group the message mentions).
    - ``edit``: ``target`` (a message id) and the new ``text``.
    - ``delete``: ``target``.

    A field the kind does not take is refused; ``null`` is the same as leaving a field out.
    """
    kind = event.get("kind")
    allowed = _SEND_ALLOWED.get(kind) if isinstance(kind, str) else None
    if allowed is None or not event.keys() <= allowed:  # (the common case costs one subset test)
        _check_send_fields(event, kind)
    content: dict[str, Any] = {"kind": kind}
    if kind in ("edit", "delete"):
        content["target"] = str(get_id(event, "target"))
        if kind == "edit":
            content["text"] = get_str(event, "text", max_bytes=limits.max_message_bytes)
        return content
    if kind in MEDIA_KINDS:
        content["media"] = str(get_id(event, "media"))
        caption = get_str(event, "text", max_bytes=limits.max_message_bytes, required=False)
        if caption:
            content["text"] = caption
    else:
        content["text"] = get_str(event, "text", max_bytes=limits.max_message_bytes)
    if event.get("reply_to") is not None:
        content["reply_to"] = str(get_id(event, "reply_to"))
    if event.get("mentions") is not None:
        content["mentions"] = get_mentions(event["mentions"])
    forwarded = event.get("forwarded")
    if forwarded is not None and not isinstance(forwarded, bool):
        raise bad_request("'forwarded' must be true or false")
    if forwarded:
        content["forwarded"] = True  # shown as "Forwarded"
    if event.get("ttl") is not None:
        content["ttl"] = check_ttl(event["ttl"])
    return content
