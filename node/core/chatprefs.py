"""Per-user chat preferences: mute, archive, pin, mark as unread, clear history, delete
for me. Each is the user's own: kept in their member record of the chat (alongside
`hidden` and the cursors), changed through the sequencer, and told to the user's other
devices with a `chat_prefs` event (docs/protocol.md, "Chat management").

Member record fields (all optional):

- ``muted``: true while muted with no end; ``muted_until``: Unix ms a timed mute ends.
- ``archived``: the chat is in the user's archive. A new content message takes it out,
  unless the chat is muted (Chats.append).
- ``pinned``: Unix ms it was pinned (pinned chats come first, the latest pin on top);
  at most `MAX_PINNED` per user.
- ``marked_unread``: marked as unread; reading the chat clears it (MarkRead).
- ``cleared_seq``: the history up to this seq is cleared for the user: history, replay,
  unread counts and search start after it (`ChatState.visible_range`).
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from ..storage import WriteBatch
from .chats import Awaitable, Chats, Effect, Reads
from .errors import ChatError, bad_request
from .state import ChatState, is_muted

MAX_PINNED = 3
MAX_MUTE_SECONDS = 10 * 365 * 24 * 3600
PREF_FIELDS = frozenset({"mute", "archived", "pinned", "marked_unread"})


def prefs_of(member: dict[str, Any], now: int) -> dict[str, Any]:
    """What the chat summary and the `chat_prefs` event say of a member's preferences."""
    muted = is_muted(member, now)
    return {
        "muted": muted,
        "muted_until": member.get("muted_until") if muted and not member.get("muted") else None,
        "archived": bool(member.get("archived")),
        "pinned": member.get("pinned") or None,
        "marked_unread": bool(member.get("marked_unread")),
        "cleared_seq": member.get("cleared_seq", 0),
    }


def check_changes(body: dict[str, Any]) -> dict[str, Any]:
    """The changes of `PATCH /api/chats/{id}/prefs`, validated (nothing else changes)."""
    unknown = body.keys() - PREF_FIELDS
    if unknown or not body:
        raise bad_request(f"give one or more of: {', '.join(sorted(PREF_FIELDS))}")
    for field in ("archived", "pinned", "marked_unread"):
        if field in body and not isinstance(body[field], bool):
            raise bad_request(f"'{field}' must be true or false")
    if "mute" in body:
        mute = body["mute"]
        if not isinstance(mute, bool) and not (isinstance(mute, int) and 1 <= mute <= MAX_MUTE_SECONDS):
            raise bad_request(f"'mute' must be true (always), false (off) or seconds from 1 to {MAX_MUTE_SECONDS}")
    return dict(body)


def announce_prefs(chats: Chats, chat: ChatState, user_id: int, now: int) -> None:
    """Tell the user's devices what their preferences for a chat are now."""
    event = {"type": "chat_prefs", "chat": str(chat.id), **prefs_of(chat.members[user_id], now)}
    chats.send_to_members(chat, orjson.dumps(event), {user_id})


def _member(chats: Chats, chat_id: int, user_id: int) -> tuple[ChatState, dict[str, Any]]:
    """The chat and the member record of a current or former member (whose chat still
    shows in their list), else `not_member`."""
    chat = chats.get(chat_id)
    member = chat.members.get(user_id) if chat is not None else None
    if chat is None or member is None:
        raise ChatError("not_member")
    return chat, member


@attrs.define(eq=False)
class SetChatPrefs(Awaitable):
    """Mute, archive, pin or mark as unread (changes as checked by `check_changes`)."""

    user_id: int = 0
    chat_id: int = 0
    changes: dict[str, Any] = attrs.Factory(dict)

    def reads(self, reads: Reads) -> None:
        reads.chats.add(self.chat_id)
        if self.changes.get("pinned"):
            reads.user_chats.add(self.user_id)  # the pin limit counts the user's other chats

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        chat, member = _member(chats, self.chat_id, self.user_id)
        changes = self.changes
        if changes.get("pinned") and not member.get("pinned"):
            pinned = sum(1 for other in chats.loaded_chats_of(self.user_id)
                         if other.id != chat.id and other.members.get(self.user_id, {}).get("pinned")
                         and not other.members[self.user_id].get("hidden"))
            if pinned >= MAX_PINNED:
                raise ChatError("conflict", f"at most {MAX_PINNED} chats can be pinned")
        if "mute" in changes:
            mute = changes["mute"]
            member.pop("muted", None)
            member.pop("muted_until", None)
            if mute is True:
                member["muted"] = True
            elif mute is not False:
                member["muted_until"] = now + mute * 1000
        if "archived" in changes:
            member["archived"] = changes["archived"]
            if changes["archived"]:
                member.pop("pinned", None)  # an archived chat is not pinned (as in WhatsApp)
        if "pinned" in changes:
            if changes["pinned"] and not member.get("pinned"):
                member["pinned"] = now
                member["archived"] = False
            elif not changes["pinned"]:
                member.pop("pinned", None)
        if "marked_unread" in changes:
            member["marked_unread"] = changes["marked_unread"]
        chats.mark_dirty(chat.id, self.user_id)

        def effect() -> None:
            announce_prefs(chats, chat, self.user_id, now)
            self.resolve(chat)

        return effect


@attrs.define(eq=False)
class ClearHistory(Awaitable):
    """Clear a chat's history for the user (everything stored so far); with `hide`, the
    chat also leaves their list until a new message arrives (delete for me)."""

    user_id: int = 0
    chat_id: int = 0
    hide: bool = False

    def reads(self, reads: Reads) -> None:
        reads.chats.add(self.chat_id)

    def apply(self, chats: Chats, batch: WriteBatch, now: int) -> Effect | None:
        chat, member = _member(chats, self.chat_id, self.user_id)
        until = member.get("until_seq")
        last = chat.committed_seq if until is None else min(until, chat.committed_seq)
        # Unread counts start after the cleared part; the read cursor (and so what others
        # are told of reading) does not move.
        member["cleared_seq"] = max(member.get("cleared_seq", 0), last)
        member["marked_unread"] = False
        if self.hide:
            member["hidden"] = True
            member.pop("pinned", None)
            member["archived"] = False
        chats.mark_dirty(chat.id, self.user_id)

        def effect() -> None:
            announce_prefs(chats, chat, self.user_id, now)
            self.resolve(chat)

        return effect
