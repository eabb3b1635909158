"""In-memory chat state, loaded from storage on demand and owned by the chat sequencer.

Only the sequencer task (`node.core.chats.Chats`) mutates these objects; everyone else
reads them on the event loop. Records are plain dicts in the same JSON shape as stored.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import attrs
import orjson

from ..storage import LoadedChat

#: Message kinds that count as content (unread counts, push, contacts, chat-list previews).
CONTENT_KINDS = frozenset({"text", "image", "audio", "video", "file"})
PREVIEW_KINDS = frozenset({"text", "image", "audio", "video", "file", "system", "deleted"})
RECENT_SENDERS = 1024  # per chat: (seq, sender) of the last messages, for receipts


class Watermark:
    """The minimum of many cursors that only move up, kept current cheaply: members sit
    at a few distinct values, so a count per value finds the new minimum in few steps."""

    __slots__ = ("counts", "floor")

    def __init__(self, values: list[int]) -> None:
        self.counts: dict[int, int] = {}
        for value in values:
            self.counts[value] = self.counts.get(value, 0) + 1
        self.floor = min(self.counts) if self.counts else 0

    def move(self, old: int, new: int) -> int:
        """One cursor went from `old` to `new`; returns the (possibly raised) minimum."""
        counts = self.counts
        left = counts.get(old, 0) - 1
        if left > 0:
            counts[old] = left
        else:
            counts.pop(old, None)
        counts[new] = counts.get(new, 0) + 1
        if old == self.floor and left <= 0:
            self.floor = min(counts)
        return self.floor


@attrs.define(eq=False)
class ChatState:
    id: int
    record: dict[str, Any]
    members: dict[int, dict[str, Any]]  # every member record, former members included
    committed_seq: int  # the newest seq durably in the log: what readers may see
    last_message: dict[str, Any] | None  # the newest committed entry, for chat lists
    recent: deque[tuple[int, int]] = attrs.Factory(lambda: deque(maxlen=RECENT_SENDERS))
    last_seq: int = -1  # the newest seq assigned by the sequencer, committed or not
    _watermarks: dict[str, Watermark] = attrs.Factory(dict)  # built on demand, dropped on member changes
    announced_delivered: int = 0  # the group watermark senders were last told of
    stored_seq: int = -1  # the last seq as stored (the expected value of the next set_chat_seq)

    def __attrs_post_init__(self) -> None:
        if self.last_seq < 0:
            self.last_seq = self.committed_seq
        if self.stored_seq < 0:
            self.stored_seq = self.committed_seq

    @property
    def kind(self) -> str:
        return self.record["kind"]

    def member(self, user_id: int) -> dict[str, Any] | None:
        """The member record of a *current* member, else None."""
        record = self.members.get(user_id)
        if record is None or record.get("until_seq") is not None:
            return None
        return record

    def active_ids(self) -> list[int]:
        return [uid for uid, m in self.members.items() if m.get("until_seq") is None]

    def watermark(self, field: str) -> Watermark:
        """The lowest `delivered` or `read` cursor among current members."""
        mark = self._watermarks.get(field)
        if mark is None:
            mark = self._watermarks[field] = Watermark([self.members[u][field] for u in self.active_ids()])
        return mark

    def members_changed(self) -> None:
        self._watermarks.clear()

    def visible_range(self, user_id: int) -> tuple[int, int] | None:
        """First and last seq `user_id` may see (current or former member), else None.
        A history the user cleared for themselves (`cleared_seq`) is not visible."""
        record = self.members.get(user_id)
        if record is None:
            return None
        until = record.get("until_seq")
        first = max(record["from_seq"], record.get("cleared_seq", 0) + 1)
        return first, self.committed_seq if until is None else min(until, self.committed_seq)


def is_muted(member: Mapping[str, Any], now: int) -> bool:
    """Whether a member muted the chat: for good (`muted`) or until `muted_until` (ms)."""
    if member.get("muted"):
        return True
    until = member.get("muted_until")
    if not until:
        return False
    return until > now


def chat_from_loaded(chat_id: int, stored: LoadedChat) -> ChatState:
    """The in-memory state of a chat as the engine returned it."""
    last_message = None
    recent: deque[tuple[int, int]] = deque(maxlen=RECENT_SENDERS)
    last_seq = stored.last_seq
    for seq, raw in stored.tail:
        record = orjson.loads(raw)
        last_seq = max(last_seq, seq)
        if record["kind"] in PREVIEW_KINDS:
            last_message = record
        if record.get("from"):
            recent.append((seq, int(record["from"])))
    chat = ChatState(chat_id, stored.record, stored.members, last_seq, last_message, recent,
                     stored_seq=stored.last_seq)
    if chat.kind == "direct":
        # A member record from before `wrote` was kept: a message of theirs among the
        # loaded tail counts (an older one is not looked for: that errs towards hiding).
        for _seq, raw in stored.tail:
            record = orjson.loads(raw)
            sender = int(record.get("from") or 0)
            if sender in chat.members and record["kind"] in CONTENT_KINDS:
                chat.members[sender].setdefault("wrote", True)
    if chat.kind == "group":
        chat.announced_delivered = chat.watermark("delivered").floor  # senders already knew this much
    return chat
