"""Receipts: read status ("read up to here", per chat and user) and who has read what.

Delivered state is kept by the core (a device's `received` acknowledgements). This plugin
adds the `read` event and `POST /api/chats/{id}/read`, tells the other members' devices
and the reader's own other devices, and answers "who has read this message" for its
sender. A user who turns read receipts off (`PATCH /api/me/settings {"read_receipts":
false}`) sends none and, as in WhatsApp, sees no one else's.
"""

from __future__ import annotations

from typing import Any

import orjson

from ... import ChatError, check_fields, get_id, get_int, hookimpl, json_body, parse_id

READ_FIELDS = frozenset({"type", "chat", "seq"})


class ReceiptsPlugin:
    name = "receipts"

    @hookimpl
    def register_frame_types(self, node):
        async def on_read(session, event: dict[str, Any]) -> None:
            check_fields(event, READ_FIELDS)
            await node.mark_read(session.user_id, get_id(event, "chat"), get_int(event, "seq"))

        return {"read": on_read}

    @hookimpl
    def register_routes(self, node):
        async def mark_read(chat_id: str):
            device = await node.current_device()
            body = await json_body()
            seq = body.get("seq")
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
                raise ChatError("bad_request", "'seq' must be an integer >= 0")
            return node.json_response({"read_seq": await node.mark_read(device.user_id, _id(chat_id), seq)})

        async def receipts(chat_id: str, seq: str):
            device = await node.current_device()
            chat = await node.chats.load(_id(chat_id))
            if chat is None or chat.member(device.user_id) is None:
                raise ChatError("not_member")
            if not seq.isdigit():
                raise ChatError("not_found")
            message = await _message(node, chat.id, int(seq))
            if message is None or message.get("from") != str(device.user_id):
                raise ChatError("forbidden", "only the sender may see who has read a message")
            return node.json_response(await who_has(node, chat, device.user_id, int(seq)))

        return [
            ("POST", "/api/chats/<chat_id>/read", mark_read),
            ("GET", "/api/chats/<chat_id>/messages/<seq>/receipts", receipts),
        ]

    def __init__(self) -> None:
        self._group_read: dict[int, int] = {}  # group -> the all-read watermark last announced

    @hookimpl
    async def on_read(self, node, chat_id: int, user_id: int, seq: int, previous: int) -> None:
        chat = await node.chats.load(chat_id)
        if chat is None:
            return
        event = {"type": "read", "chat": str(chat_id), "user": str(user_id), "seq": seq}
        node.send_to_user(user_id, event)  # the reader's other devices clear their unread count
        if chat.kind == "group":
            self._announce_group(node, chat)
            return
        if not await node.reads_shared(user_id):
            return
        for author in node.chats.authors_between(chat, user_id, previous, seq):
            if chat.member(author) is not None and await node.reads_shared(author):
                node.send_to_user(author, event)

    def _announce_group(self, node, chat) -> None:
        """Groups: one `read` event with `"all": true` each time every member has read
        further (as in WhatsApp, group reads ignore the per-user setting); per-member
        detail is in the receipts endpoint."""
        floor = chat.watermark("read").floor
        before = self._group_read.get(chat.id, chat.members[next(iter(chat.members))]["from_seq"] - 1)
        if floor <= before:
            return
        self._group_read[chat.id] = floor
        event = {"type": "read", "chat": str(chat.id), "all": True, "seq": floor}
        for author in node.chats.authors_between(chat, 0, before, floor):
            if chat.member(author) is not None:
                node.send_to_user(author, event)


async def who_has(node, chat, viewer: int, seq: int) -> dict[str, list[str]]:
    """Per member: read, delivered (not read), or still pending, for one message."""
    share = chat.kind == "group" or await node.reads_shared(viewer)
    out: dict[str, list[str]] = {"read": [], "delivered": [], "pending": []}
    for uid in chat.active_ids():
        if uid == viewer:
            continue
        member = chat.members[uid]
        if share and member["read"] >= seq and (chat.kind == "group" or await node.reads_shared(uid)):
            out["read"].append(str(uid))
        elif member["delivered"] >= seq:
            out["delivered"].append(str(uid))
        else:
            out["pending"].append(str(uid))
    return out


def _id(value: str) -> int:
    try:
        return parse_id(value)
    except ValueError:
        raise ChatError("not_found") from None


async def _message(node, chat_id: int, seq: int) -> dict[str, Any] | None:
    rows = await node.chats.read_range(chat_id, seq, seq, 1)
    return orjson.loads(rows[0][1]) if rows else None
