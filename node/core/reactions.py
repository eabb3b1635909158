"""Reactions: one emoji per user per message, changed or taken back at will.

A reaction is not a log entry: it would bump unread counts and replay as a message. It
is a small record in the core's `_core/reactions` namespace (chat | seq | user -> emoji
and time), set through the sequencer like every change to a chat, and told to the
chat's members with a `reaction` event. History pages carry each message's current
reactions, and a device that was away asks for those of the messages it holds (`GET
/api/chats/{id}/reactions`), so reactions survive reconnects. Deleting a message for
everyone, or its expiry, removes its reactions with it.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Any

import attrs
import orjson

from ..storage import Storage, WriteBatch
from .chats import CONTENT_KINDS, Awaitable, Chats, Effect, Reads, is_expired
from .corekv import REACTIONS, SCAN_PAGE, ints, key
from .errors import ChatError, bad_request
from .text import emoji_char as _emoji_char

if TYPE_CHECKING:
    from .state import ChatState

MAX_EMOJI_BYTES = 64
MAX_EMOJI_CODEPOINTS = 16
ZWJ, VS16, KEYCAP = "\u200d", "\ufe0f", "\u20e3"


def check_emoji(value: object) -> str:
    """One emoji (a sequence of them joined by ZWJ, a flag, a keycap, with skin tones and
    presentation selectors), or `bad_request`."""
    if not isinstance(value, str) or not value:
        raise bad_request("'emoji' must be one emoji")
    value = unicodedata.normalize("NFC", value)
    if len(value) > MAX_EMOJI_CODEPOINTS or len(value.encode()) > MAX_EMOJI_BYTES:
        raise bad_request("'emoji' must be one emoji")
    if len(value) >= 2 and value[-1] == KEYCAP and value[0] in "0123456789#*" and set(value[1:-1]) <= {VS16}:
        return value  # 1️⃣ #️⃣ *️⃣
    chars = [ch for ch in value if ch not in (ZWJ, VS16)]
    if not chars or not all(_emoji_char(ch) for ch in chars) or value[0] in (ZWJ, VS16) or value[-1] == ZWJ:
        raise bad_request("'emoji' must be one emoji")
    pictographs = [ch for ch in chars if not (0x1F3FB <= ord(ch) <= 0x1F3FF or 0xE0020 <= ord(ch) <= 0xE007F)]
    flags = [ch for ch in chars if 0x1F1E6 <= ord(ch) <= 0x1F1FF]
    if flags and (len(flags) != 2 or len(pictographs) != 2):
        raise bad_request("'emoji' must be one emoji")
    if not flags and len(pictographs) > value.count(ZWJ) + 1:
        raise bad_request("'emoji' must be one emoji, not several")
    return value


def summarize(rows: list[tuple[int, str, int]]) -> list[dict[str, Any]]:
    """(user, emoji, ts) of one message -> [{"emoji", "users"}], the most used first (then
    the earliest), users in the order they reacted."""
    groups: dict[str, list[tuple[int, int]]] = {}
    for user, emoji, ts in rows:
        groups.setdefault(emoji, []).append((ts, user))
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), min(item[1])))
    return [{"emoji": emoji, "users": [str(u) for _, u in sorted(people)]} for emoji, people in ordered]


async def reactions_between(storage: Storage, chat_id: int, first: int, last: int, *, until_ts: int | None = None
                            ) -> dict[int, list[dict[str, Any]]]:
    """The reactions of the messages first <= seq <= last of a chat, by seq (those that
    have any); with `until_ts`, only those made by then (what a former member saw)."""
    if last < first:
        return {}
    start, end = key(chat_id, first), key(chat_id, last + 1)
    per_seq: dict[int, list[tuple[int, str, int]]] = {}
    while True:
        rows = await storage.kv_scan(REACTIONS, start, end, SCAN_PAGE)
        for raw_key, value in rows:
            _chat, seq, user = ints(raw_key)
            record = orjson.loads(value)
            if until_ts is None or record["ts"] <= until_ts:
                per_seq.setdefault(seq, []).append((user, record["e"], record["ts"]))
        if len(rows) < SCAN_PAGE:
            break
        start = rows[-1][0] + b"\x00"
    return {seq: summarize(rows) for seq, rows in per_seq.items()}


def forget_reactions(batch: WriteBatch, chat_id: int, seq: int) -> None:
    """Remove every reaction to a message (it was deleted, or expired)."""
    batch.kv_delete_range(REACTIONS, key(chat_id, seq), key(chat_id, seq + 1))


def _target(chats: Chats, chat: ChatState, user_id: int, message_id: int, seq: int, now: int) -> dict[str, Any]:
    target = chats.find_message(chat, message_id)
    visible = chat.visible_range(user_id)
    if (target is None or target["seq"] != seq or target["kind"] not in CONTENT_KINDS or is_expired(target, now)
            or visible is None or not visible[0] <= seq <= visible[1]):
        raise ChatError("not_found", "no such message in this chat")
    return target


@attrs.define(eq=False)
class SetReaction(Awaitable):
    """React to a message with `emoji` (None: take the reaction back). Resolves to the
    `reaction` event sent to the chat's members."""

    user_id: int = 0
    chat_id: int = 0
    seq: int = 0
    message_id: int = 0
    emoji: str | None = None

    def reads(self, reads: Reads) -> None:
        reads.chats.add(self.chat_id)
        reads.messages.add(self.message_id)

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        chat, _member = chats.require_chat(self.chat_id, self.user_id)
        if chat.kind == "direct":
            peer = next((uid for uid in chat.members if uid != self.user_id), 0)
            if chats.blocks.either(self.user_id, peer):
                raise ChatError("blocked")
        target = _target(chats, chat, self.user_id, self.message_id, self.seq, now)
        record_key = key(chat.id, self.seq, self.user_id)
        if self.emoji is None:
            batch.kv_delete(REACTIONS, record_key)
        else:
            batch.kv_put(REACTIONS, record_key, orjson.dumps({"e": self.emoji, "ts": now}))
        event = {"type": "reaction", "chat": str(chat.id), "seq": self.seq, "message": target["id"],
                 "user": str(self.user_id), "emoji": self.emoji, "ts": now}
        author = int(target.get("from") or 0)

        def effect() -> None:
            payload = orjson.dumps(event)
            seq = self.seq
            viewers = set()
            for uid in chat.active_ids():
                visible = chat.visible_range(uid)
                if visible is not None and visible[0] <= seq <= visible[1]:
                    viewers.add(uid)
            chats.send_to_members(chat, payload, viewers)
            if self.emoji is not None and author and author != self.user_id and author in viewers:
                chats.plugins.notify("on_reaction", chat_id=chat.id, seq=seq, message_id=self.message_id,
                                     user_id=self.user_id, emoji=self.emoji, author_id=author)
            self.resolve(event)

        return effect
