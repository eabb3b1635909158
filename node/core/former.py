"""What a former member of a group sees: the group as it was when they left.

A member who leaves or is removed keeps read access to the log up to the entry that says
so (their `until_seq`), and nothing after: no new entries, and no later state either. So
every view of the group they still have is frozen at that entry: the chat list's
`last_message`, `last_seq`, title, disappearing timer and member count come from a
snapshot taken into their member record when their membership ended (`left`), the member
list is the one of that moment (rebuilt from the member records' seq ranges, roles as they
were: `roles` keeps each member's role changes), message statuses use the other members'
cursors of that moment, reactions are those made before it, and the group's photo, which
is for current members, is not shown. The log entries themselves are shown as stored: an
edit or a deletion for everyone that their author made later rewrote them (the node keeps
no copy of what they said before).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .services import Services
    from .state import ChatState

MAX_ROLE_CHANGES = 16  # role changes kept per member record (the oldest go first)


def left_seq(chat: ChatState, user_id: int) -> int | None:
    """The seq of the entry that ended the user's membership, or None (a current member,
    or never a member)."""
    record = chat.members.get(user_id)
    return None if record is None else record.get("until_seq")


def snapshot_on_leaving(chat: ChatState, user_id: int, entry: dict[str, Any]) -> None:
    """Freeze the group as `user_id` sees it from now on (sequencer only): called once the
    entry ending their membership (`entry`, at their `until_seq`) is appended."""
    member = chat.members[user_id]
    others = [chat.members[uid] for uid in chat.active_ids() if uid != user_id]
    member["left"] = {
        "title": chat.record.get("title", ""),
        "ttl": chat.record.get("ttl", 0),
        "members": len(others),
        "last": entry,
        "delivered": min((m["delivered"] for m in others), default=0),
        "read": min((m["read"] for m in others), default=0),
    }


def note_role_change(member: dict[str, Any], seq: int, role: str) -> None:
    """Remember that a member took `role` at entry `seq` (for `role_at`)."""
    changes = member.setdefault("roles", [])
    changes.append([seq, role])
    del changes[:-MAX_ROLE_CHANGES]


def role_at(member: dict[str, Any], seq: int) -> str:
    """A member's role just after entry `seq`: every change is a toggle, so the first change
    after `seq` tells what it was."""
    for change_seq, role in member.get("roles", ()):
        if change_seq > seq:
            return "member" if role == "admin" else "admin"
    return member["role"]


def members_at(chat: ChatState, seq: int) -> list[tuple[int, dict[str, Any]]]:
    """The members of the group just after entry `seq` (someone removed and added again
    since counts from their new membership only)."""
    return [(uid, m) for uid, m in chat.members.items()
            if m["from_seq"] <= seq and (m.get("until_seq") is None or m["until_seq"] > seq)]


async def left_entry(node: Services, chat: ChatState, user_id: int) -> dict[str, Any] | None:
    """The entry that ended a former member's membership (from the snapshot; records of
    older versions have none: read from the log)."""
    member = chat.members.get(user_id)
    if member is None or member.get("until_seq") is None:
        return None
    snapshot = member.get("left")
    if snapshot is not None:
        return snapshot["last"]
    rows = await node.chats.read_range(chat.id, member["until_seq"], member["until_seq"], 1)
    return orjson.loads(rows[0][1]) if rows else None


async def left_at(node: Services, chat: ChatState, user_id: int) -> int | None:
    """When (Unix ms) a former member's membership ended; None for a current member."""
    entry = await left_entry(node, chat, user_id)
    if entry is not None:
        return entry["ts"]
    return 0 if left_seq(chat, user_id) is not None else None
