"""Receipts: read status ("read up to here", per chat and user) and who has read what.

Delivered state is kept by the core (a device's `received` acknowledgements). This plugin
adds the `read` event and `POST /api/chats/{id}/read`, tells the other members' devices
and the reader's own other devices, and answers "who has read this message" for its
sender.

In 1-1 chats and in groups of at most `member_events_group_limit` members, the authors
of the messages a member received or read are told per member (`delivered` and `read`
events with `user`); in every group they are also told when the group's watermark rises
(`"all": true`: every member has, or has read, everything up to `seq`). Bigger groups get
only the watermark, so 500 members reading are not 500 events per author.

A user who turns read receipts off (`PATCH /api/me/settings {"read_receipts": false}`)
is never revealed: no `read` event names them, a group's read watermark is not announced
while a member hides their reads, and the receipts endpoint lists them as delivered. As
in WhatsApp it is reciprocal: they see no one else's reads either.
"""

from __future__ import annotations

from typing import Any

import attrs

from ... import (
    Chat,
    ChatError,
    Client,
    PluginContext,
    Request,
    Route,
    check_fields,
    get_id,
    get_int,
    hookimpl,
    parse_id,
)

READ_FIELDS = frozenset({"type", "chat", "seq"})
DIRECTS_REMEMBERED = 65_536  # 1-1 chats known as such (forgotten all at once past this)


@attrs.frozen
class ReceiptsSettings:
    # Per-member `delivered` and `read` events go to authors in groups of at most this many
    # members; bigger groups get only the all-members watermark (0: watermark only).
    member_events_group_limit: int = attrs.field(default=32, validator=attrs.validators.ge(0))


class ReceiptsPlugin:
    name = "receipts"

    def __init__(self) -> None:
        self._group_read: dict[int, int] = {}  # group -> the all-read watermark last announced
        self._directs: set[int] = set()  # 1-1 chats seen: their `delivered` is the core's
        self.settings = ReceiptsSettings()

    @hookimpl
    def register_settings(self):
        return ("receipts", ReceiptsSettings)

    @hookimpl
    async def startup(self, ctx: PluginContext) -> None:
        self.settings = ctx.settings or ReceiptsSettings()

    def _per_member(self, chat: Chat) -> bool:
        return chat.kind == "group" and len(chat.member_ids) <= self.settings.member_events_group_limit
    @hookimpl
    def register_frame_types(self, ctx: PluginContext):
        async def on_read(client: Client, event: dict[str, Any]) -> None:
            check_fields(event, READ_FIELDS)
            await ctx.mark_read(client.user_id, get_id(event, "chat"), get_int(event, "seq"))

        return {"read": on_read}

    @hookimpl
    def register_routes(self, ctx: PluginContext):
        async def mark_read(request: Request, chat_id: str):
            user_id = await request.user_id()
            body = await request.json(fields=("seq",))
            seq = body.get("seq")
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
                raise ChatError("bad_request", "'seq' must be an integer >= 0")
            return {"read_seq": await ctx.mark_read(user_id, _id(chat_id), seq)}

        async def receipts(request: Request, chat_id: str, seq: str):
            user_id = await request.user_id()
            chat = await ctx.chat(_id(chat_id))
            if chat is None or user_id not in chat.member_ids:
                raise ChatError("not_member")
            if not seq.isascii() or not seq.isdigit() or int(seq) >= 1 << 63:
                raise ChatError("not_found")
            member = await ctx.member(chat.id, user_id)
            if member is None or int(seq) < member.from_seq:  # before they joined: not theirs to see
                raise ChatError("not_found")
            found = await ctx.messages(chat.id, int(seq), int(seq), 1)
            if not found:
                raise ChatError("not_found", "no such message in this chat")
            if found[0].sender != user_id:
                raise ChatError("forbidden", "only the sender may see who has read a message")
            return await who_has(ctx, chat, user_id, int(seq))

        return [
            Route("POST", "/api/chats/<chat_id>/read", mark_read),
            Route("GET", "/api/chats/<chat_id>/messages/<seq>/receipts", receipts),
        ]

    @hookimpl
    def on_delivered(self, ctx: PluginContext, chat_id: int, user_id: int, seq: int, previous: int):
        """Small groups: the authors of what a member now has are told. 1-1 chats are the
        core's: a plain function passes over one seen before without a task switch."""
        if chat_id in self._directs:
            return None
        return self._delivered(ctx, chat_id, user_id, seq, previous)

    async def _delivered(self, ctx: PluginContext, chat_id: int, user_id: int, seq: int, previous: int) -> None:
        chat = await ctx.chat(chat_id)
        if chat is not None and chat.kind == "direct":
            if len(self._directs) >= DIRECTS_REMEMBERED:
                self._directs.clear()
            self._directs.add(chat_id)
        if chat is None or not self._per_member(chat) or user_id not in chat.member_ids:
            return
        authors = [a for a in await ctx.authors_between(chat_id, previous, seq, exclude=user_id)
                   if a in chat.member_ids]
        ctx.send_to_users(authors, {"type": "delivered", "chat": str(chat_id), "user": str(user_id), "seq": seq})

    @hookimpl
    async def on_read(self, ctx: PluginContext, chat_id: int, user_id: int, seq: int, previous: int) -> None:
        chat = await ctx.chat(chat_id)
        if chat is None:
            return
        event = {"type": "read", "chat": str(chat_id), "user": str(user_id), "seq": seq}
        ctx.send_to_user(user_id, event)  # the reader's other devices clear their unread count
        if chat.kind == "group":
            await self._announce_group(ctx, chat)
            if not self._per_member(chat):
                return
        if user_id not in chat.member_ids or not await ctx.reads_shared(user_id):
            return
        for author in await ctx.authors_between(chat_id, previous, seq, exclude=user_id):
            if author in chat.member_ids and await ctx.reads_shared(author):
                ctx.send_to_user(author, event)

    async def _announce_group(self, ctx: PluginContext, chat: Chat) -> None:
        """Groups: one `read` event with `"all": true` each time every member has read
        further, to the authors of what they read. Only while every member shares read
        receipts: the watermark would otherwise tell how far one who hides them read."""
        floor = chat.read_floor
        before = self._group_read.get(chat.id)
        if before is None:
            members = await ctx.members(chat.id, former=True)
            before = min(m.from_seq for m in members) - 1 if members else 0
        if floor <= before:
            return
        users = await ctx.users(chat.member_ids)
        if not all(user.settings.get("read_receipts", True) for user in users.values()):
            return  # not announced (nor remembered: announced once all share again)
        self._group_read[chat.id] = floor
        event = {"type": "read", "chat": str(chat.id), "all": True, "seq": floor}
        for author in await ctx.authors_between(chat.id, before, floor):
            if author in chat.member_ids:
                ctx.send_to_user(author, event)


async def who_has(ctx: PluginContext, chat: Chat, viewer: int, seq: int) -> dict[str, list[str]]:
    """Per member: read, delivered (not read), or still pending, for one message. A member
    is listed as having read it only when both they and the viewer share read receipts."""
    share = await ctx.reads_shared(viewer)
    out: dict[str, list[str]] = {"read": [], "delivered": [], "pending": []}
    for member in await ctx.members(chat.id):
        if member.user_id == viewer:
            continue
        uid = str(member.user_id)
        if share and member.read >= seq and await ctx.reads_shared(member.user_id):
            out["read"].append(uid)
        elif member.delivered >= seq:
            out["delivered"].append(uid)
        else:
            out["pending"].append(uid)
    return out


def _id(value: str) -> int:
    try:
        return parse_id(value)
    except ValueError:
        raise ChatError("not_found") from None
