"""Group operations: create, rename, add, remove, promote, demote, leave, the disappearing
timer. Every change is also a `system` entry in the chat's log, so members see it in
order with the messages, live or on resync.

Membership is a seq range: a member sees the log from the entry that added them
(`from_seq`) and, once removed or gone, up to the entry that removed them (`until_seq`).
A removed member keeps what they had and gets nothing after: the group as they see it is
frozen at that entry (node/core/former.py).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import attrs

from ..storage import WriteBatch
from .chats import Awaitable, Chats, Effect, Reads
from .errors import ChatError, bad_request
from .former import note_role_change, snapshot_on_leaving
from .state import ChatState
from .text import check_name

MAX_TITLE = 100
MAX_TTL = 365 * 24 * 3600  # seconds


def check_title(title: object) -> str:
    """1-100 characters, by the rule of display names (node/core/text.py)."""
    return check_name(title, "title", MAX_TITLE)


def check_ttl(ttl: object) -> int:
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_TTL:
        raise bad_request(f"'ttl' must be an integer number of seconds from 0 (off) to {MAX_TTL}")
    return ttl


def _system(chats: Chats, chat: ChatState, batch: WriteBatch, now: int, by: int, event: str, **fields: Any):
    content = {"kind": "system", "event": event, "by": str(by) if by else None, **fields}
    return chats.append(chat, batch, now, 0, content)


def _announce(chats: Chats, chat: ChatState, record: dict, raw: bytes) -> None:
    if record.get("event") in ("created", "added", "removed", "left"):  # whose chat lists changed
        chats.routing.members_changed(chat.id, [int(u) for u in record.get("users", ())])
    chats.fan_out(chat, record, raw)
    change = {k: v for k, v in record.items() if k not in ("id", "chat", "seq", "from", "ts", "kind")}
    chats.plugins.notify("on_membership_changed", chat_id=chat.id, change=change)


def _require_group(chats: Chats, chat_id: int, user_id: int, *, admin: bool = False) -> tuple[ChatState, dict]:
    chat, member = chats.require_chat(chat_id, user_id)
    if chat.kind != "group":
        raise ChatError("bad_request", "this is not a group")
    if admin and member["role"] != "admin":
        raise ChatError("forbidden", "only group admins may do this")
    return chat, member


def _check_can_add(chats: Chats, chat: ChatState, adder: int, users: list[int]) -> None:
    """Users must exist and neither block the adder nor be blocked (loaded by `Reads.users`)."""
    for uid in users:
        if chats.users.peek_user(uid) is None:
            raise ChatError("not_found", f"no user {uid}")
        if chats.blocks.either(uid, adder):
            raise ChatError("blocked", f"user {uid} cannot be added by you")
    if len(chat.active_ids()) + len(users) > chats.max_group_members:
        raise ChatError("group_full", f"a group has at most {chats.max_group_members} members")


@attrs.define(eq=False)
class CreateGroup(Awaitable):
    user_id: int = 0
    title: str = ""
    members: list[int] = attrs.Factory(list)
    chat_id: int = 0  # chosen by `route`

    def reads(self, reads: Reads) -> None:
        reads.users.update(self.members, (self.user_id,))

    async def route(self, chats: Chats) -> None:
        if not self.chat_id:
            self.chat_id = chats.ids.next_id()

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        others = [uid for uid in dict.fromkeys(self.members) if uid != self.user_id]
        chat = ChatState(0, {"kind": "group"}, {}, 0, None)  # for the size check only
        _check_can_add(chats, chat, self.user_id, others + [self.user_id])
        chat = chats.create_chat(batch, now, kind="group", creator=self.user_id, chat_id=self.chat_id,
                                 title=self.title, ttl=0)
        chats.add_member(chat, self.user_id, now, role="admin", batch=batch)
        for uid in others:
            chats.add_member(chat, uid, now, role="member", batch=batch)
        record, raw = _system(chats, chat, batch, now, self.user_id, "created", title=self.title,
                              users=[str(u) for u in [self.user_id, *others]])

        def effect() -> None:
            _announce(chats, chat, record, raw)
            self.resolve(chat)

        return effect


@attrs.define(eq=False)
class AddMembers(Awaitable):
    user_id: int = 0
    chat_id: int = 0
    users: list[int] = attrs.Factory(list)

    def reads(self, reads: Reads) -> None:
        reads.chats.add(self.chat_id)
        reads.users.update(self.users, (self.user_id,))

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        chat, _ = _require_group(chats, self.chat_id, self.user_id, admin=True)
        new = [uid for uid in dict.fromkeys(self.users) if chat.member(uid) is None]
        if not new:
            raise ChatError("conflict", "they are all members already")
        _check_can_add(chats, chat, self.user_id, new)
        for uid in new:
            chats.add_member(chat, uid, now, role="member", batch=batch)
        record, raw = _system(chats, chat, batch, now, self.user_id, "added", users=[str(u) for u in new])

        def effect() -> None:
            _announce(chats, chat, record, raw)
            self.resolve(chat)

        return effect


def _end_membership(chats: Chats, chat: ChatState, user_id: int, entry: dict[str, Any]) -> None:
    """The member sees `entry` (the one saying they left or were removed), then nothing:
    the group as it was then is frozen into their record (node/core/former.py)."""
    chat.members[user_id]["until_seq"] = entry["seq"]
    chat.members_changed()
    snapshot_on_leaving(chat, user_id, entry)
    chats.mark_dirty(chat.id, user_id)


@attrs.define(eq=False)
class RemoveMember(Awaitable):
    user_id: int = 0
    chat_id: int = 0
    target: int = 0

    def reads(self, reads: Reads) -> None:
        reads.chats.add(self.chat_id)

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        chat, _ = _require_group(chats, self.chat_id, self.user_id, admin=True)
        if self.target == self.user_id:
            raise bad_request("to remove yourself, leave the group")
        if chat.member(self.target) is None:
            raise ChatError("not_found", "that user is not a member")
        record, raw = _system(chats, chat, batch, now, self.user_id, "removed", users=[str(self.target)])
        _end_membership(chats, chat, self.target, record)  # they see their removal, then nothing

        def effect() -> None:
            _announce(chats, chat, record, raw)
            self.resolve(chat)

        return effect


@attrs.define(eq=False)
class Leave(Awaitable):
    user_id: int = 0
    chat_id: int = 0

    def reads(self, reads: Reads) -> None:
        reads.chats.add(self.chat_id)

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        chat, member = _require_group(chats, self.chat_id, self.user_id)
        records = [_system(chats, chat, batch, now, self.user_id, "left", users=[str(self.user_id)])]
        _end_membership(chats, chat, self.user_id, records[0][0])
        remaining = chat.active_ids()
        if member["role"] == "admin" and remaining and not any(chat.members[u]["role"] == "admin" for u in remaining):
            heir = min(remaining, key=lambda u: (chat.members[u]["joined"], u))  # the longest-standing member
            chat.members[heir]["role"] = "admin"
            chats.mark_dirty(chat.id, heir)
            records.append(_system(chats, chat, batch, now, 0, "promoted", users=[str(heir)]))
            note_role_change(chat.members[heir], records[-1][0]["seq"], "admin")

        def effect() -> None:
            for record, raw in records:
                _announce(chats, chat, record, raw)
            self.resolve(chat)

        return effect


@attrs.define(eq=False)
class SetRole(Awaitable):
    user_id: int = 0
    chat_id: int = 0
    target: int = 0
    role: str = "member"

    def reads(self, reads: Reads) -> None:
        reads.chats.add(self.chat_id)

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        chat, _ = _require_group(chats, self.chat_id, self.user_id, admin=True)
        target = chat.member(self.target)
        if target is None:
            raise ChatError("not_found", "that user is not a member")
        if target["role"] == self.role:  # a repeated PUT or DELETE: done already, nothing to log
            return partial(self.resolve, chat)
        if self.role == "member" and sum(chat.members[u]["role"] == "admin" for u in chat.active_ids()) == 1:
            raise ChatError("conflict", "a group needs at least one admin")
        target["role"] = self.role
        chats.mark_dirty(chat.id, self.target)
        event = "promoted" if self.role == "admin" else "demoted"
        record, raw = _system(chats, chat, batch, now, self.user_id, event, users=[str(self.target)])
        note_role_change(target, record["seq"], self.role)

        def effect() -> None:
            _announce(chats, chat, record, raw)
            self.resolve(chat)

        return effect


@attrs.define(eq=False)
class UpdateChat(Awaitable):
    """Rename a group (any member) or set the disappearing-message timer (any member)."""

    user_id: int = 0
    chat_id: int = 0
    title: str | None = None
    ttl: int | None = None

    def reads(self, reads: Reads) -> None:
        reads.chats.add(self.chat_id)

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        chat, _ = chats.require_chat(self.chat_id, self.user_id)
        records = []
        if self.title is not None:
            if chat.kind != "group":
                raise bad_request("only groups have a title")
            if self.title != chat.record.get("title"):
                chat.record["title"] = self.title
                records.append(_system(chats, chat, batch, now, self.user_id, "renamed", title=self.title))
        if self.ttl is not None and self.ttl != chat.record.get("ttl", 0):
            chat.record["ttl"] = self.ttl
            records.append(_system(chats, chat, batch, now, self.user_id, "ttl_changed", ttl=self.ttl))
        if records:
            chats.save_chat_record(chat, batch)

        def effect() -> None:
            for record, raw in records:
                _announce(chats, chat, record, raw)
            self.resolve(chat)

        return effect
